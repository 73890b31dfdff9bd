"""Properties of checking a request's events (pure functions, no server): one result per event, in
order; a rejection never quotes a value it was given; a user always lands in the same partition."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from smartico_stream.adapters.registry import load_adapter
from smartico_stream.events.raw import Stream
from smartico_stream.sources.rest.keys import matches, new_key, parse_token
from smartico_stream.sources.rest.validation import check_events, partition_of, rest_pipeline

PIPELINE = rest_pipeline(load_adapter("reference"), 1_000_000)
SECRET = st.text(alphabet="QXZJKVW", min_size=12, max_size=20)  # letters no field name or message uses
# Integers within 64 bits: the request decoder keeps longer literals as text (load_json_keeping_literals).
JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | SECRET,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(SECRET, inner, max_size=3),
                    max_leaves=8)


def _deposit(user: str, tx: str, amount: object) -> dict[str, object]:
    return {"type": "deposit", "dt_finalized": 1_700_000_000_000, "ext_brand_id": "b1", "user_ext_id": user,
            "transaction_id": tx, "amount": amount}


EVENT = st.one_of(
    st.builds(_deposit, SECRET, SECRET, st.sampled_from(["10", "1.5", 3])),
    st.builds(_deposit, SECRET, SECRET, SECRET),  # an amount that is no number: rejected, never quoted
    st.dictionaries(st.sampled_from(["type", "ext_brand_id", "user_ext_id", "amount", "user_email"]), JSON),
    JSON,
)


@given(st.lists(EVENT, max_size=20), st.sampled_from(list(Stream)))
def test_one_result_per_event_in_order_and_no_value_quoted(items, stream):
    checked = check_events(PIPELINE, items, stream)
    assert [c.index for c in checked] == list(range(len(items)))
    secrets = set()

    def collect(value: object) -> None:
        if isinstance(value, str) and len(value) >= 12:
            secrets.add(value)
        elif isinstance(value, dict):
            for key, inner in value.items():
                collect(key)
                collect(inner)
        elif isinstance(value, list):
            for inner in value:
                collect(inner)

    collect(items)
    for item in checked:
        if item.rejected is not None:
            text = " ".join(item.rejected)
            assert not any(secret in text for secret in secrets), text
        elif not item.ignored:
            assert item.brand == "b1" and item.user is not None


@given(st.text(max_size=30), st.text(max_size=30), st.integers(min_value=1, max_value=1024))
def test_a_user_has_one_partition(brand, user, partitions):
    first = partition_of(brand, user, partitions)
    assert 0 <= first < partitions and partition_of(brand, user, partitions) == first


def test_keys_round_trip_and_only_the_secret_matches():
    key = new_key()
    key_id, secret = parse_token(key.token) or ("", "")
    assert key_id == key.key_id and matches(secret, key.key_hash)
    assert not matches(secret[:-1] + ("a" if secret[-1] != "a" else "b"), key.key_hash)
    assert parse_token(key.token + "x") is None and parse_token("Bearer " + key.token) is None
    assert key.key_hash not in key.token
