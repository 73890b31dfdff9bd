"""No rejection reason quotes a value from a record.

Personal data planted in any field of any canonical model, or in any field of a real message of
either built-in adapter (the golden inputs) and run through the Pipeline, may be rejected; the
reason (what reaches the dead-letter header and the log line) must contain neither the value nor
any 6-character piece of it.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from smartico_stream.adapters.base import AdapterError
from smartico_stream.adapters.registry import load_adapter
from smartico_stream.events import EVENT_MODELS, PAYMENT_TYPES, CanonicalEvent
from smartico_stream.events.raw import RawRecord, Stream
from smartico_stream.pipeline.errors import describe_error
from smartico_stream.pipeline.pipeline import Pipeline, PipelineLimits
from tests.support.common import BASE_MS, REPO
from tests.support.service import RecordingEngine

PIECE = 6  # the shortest piece of a value that must not appear in a reason

# Letters that spell no word of a message ("should", "number", ...), so a planted piece can only
# show up in a reason if the reason quotes it.
_RARE = "bcdfghjkmpqvwxz"
emails = st.builds(
    lambda local, domain: f"{local}@{domain}.com",
    st.text(alphabet=_RARE, min_size=6, max_size=12),
    st.text(alphabet=_RARE, min_size=4, max_size=8),
)
phones = st.builds(lambda n: f"+380{n}", st.integers(10**8, 10**9 - 1))
names = st.sampled_from(["Olena Kovalenko", "Taras Shevchenko", "Bohdana Hrytsenko", "Jozefina Wszolek"])
pii_text = st.one_of(emails, phones, names)
# Numbers too: a phone sent as a JSON number, in a field that expects a code or a time.
pii_values: st.SearchStrategy[Any] = st.one_of(pii_text, phones.map(lambda p: int(p[1:])))


def pieces(value: Any) -> set[str]:
    text = str(value)
    return {text[i : i + PIECE] for i in range(len(text) - PIECE + 1)} | {text}


def assert_no_piece_of(value: Any, reason: str) -> None:
    leaked = sorted(piece for piece in pieces(value) if piece in reason)
    assert not leaked, f"the reason quotes {leaked!r}: {reason}"


# -- every field of every model --------------------------------------------------------------------

_COMMON = {"brand_id": "b1", "user_id": "u1", "event_id": "e1", "event_time": BASE_MS}
_CASINO = {"bet_amount": "1.00", "game_name": "20 Super Hot", "game_id": "g1"}
_SPORT = {"bet_id": "s1"}
_SELECTION = {**_SPORT, "selection_id": "l1"}
VALID: dict[str, dict[str, Any]] = {
    "UserProfile": {"registration_date": BASE_MS - 1, "language": "EN", "wallet_currency": "EUR"},
    "Payment": {"type": sorted(PAYMENT_TYPES)[0].value, "amount": "1.00"},
    "CasinoBet": _CASINO,
    "CasinoWin": {**_CASINO, "win_amount": "0"},
    "SportBetOpen": {**_SPORT, "stake": "1"},
    "SportBetSelectionOpen": _SELECTION,
    "SportBetSettled": {**_SPORT, "result": "WON", "stake": "1", "payout": "2"},
    "SportBetSelectionSettled": {**_SELECTION, "result": "LOST"},
}
# Nested models: their fields are planted one level down.
_NESTED = {"aggregates", "source"}
_AGGREGATE_FIELDS = ("total_deposit_amount", "total_deposit_count", "first_deposit_time", "last_deposit_time")
_SOURCE_FIELDS = ("transport", "topic", "partition", "offset", "timestamp")


def _targets() -> list[tuple[type[CanonicalEvent], tuple[str, ...]]]:
    targets: list[tuple[type[CanonicalEvent], tuple[str, ...]]] = []
    for model in EVENT_MODELS:
        for name in model.model_fields:
            if name == "aggregates":
                targets += [(model, (name, inner)) for inner in _AGGREGATE_FIELDS]
            elif name == "source":
                targets += [(model, (name, inner)) for inner in _SOURCE_FIELDS]
            else:
                targets.append((model, (name,)))
        targets.append((model, ("extra", "custom")))
    return targets


TARGETS = _targets()


def test_every_valid_base_event_is_accepted() -> None:
    for model in EVENT_MODELS:
        model.model_validate({**_COMMON, **VALID[model.__name__]})


def test_every_field_of_every_model_is_a_target() -> None:
    planted = {(model, path[0]) for model, path in TARGETS}
    assert planted == {(model, name) for model in EVENT_MODELS for name in model.model_fields}
    assert {path[0] for _, path in TARGETS} >= _NESTED


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(TARGETS), pii_values, st.booleans())
def test_a_reason_never_quotes_a_value_planted_in_any_model_field(
    target: tuple[type[CanonicalEvent], tuple[str, ...]], value: Any, as_list: bool
) -> None:
    model, path = target
    fields: dict[str, Any] = {**_COMMON, **VALID[model.__name__]}
    planted: Any = [value] if as_list else value  # a wrong shape too: some messages describe the input
    if len(path) == 1:
        fields[path[0]] = planted
    else:
        fields[path[0]] = {**({"transport": "kafka", "topic": "t"} if path[0] == "source" else {}), path[1]: planted}
    try:
        model.model_validate(fields)
    except ValidationError as exc:
        error_class, reason = describe_error(exc)
        assert error_class == "ValidationError"
        assert ".".join(path) in reason or path[0] in reason, reason
        assert_no_piece_of(value, reason)


# -- any field of a real message of either adapter, through the Pipeline ------------------------------


def _golden_messages(adapter: str) -> list[tuple[Stream, dict[str, Any]]]:
    messages = []
    for path in sorted((REPO / "adapters" / adapter / "golden").glob("*.input.jsonl")):
        for line in Path(path).read_bytes().splitlines():
            if line.strip():
                item = orjson.loads(line)
                if isinstance(item["value"], dict):
                    messages.append((Stream(item["stream"]), item["value"]))
    return messages


def _leaf_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _leaf_paths(item, (*prefix, key))] or [prefix]
    if isinstance(value, list):
        return [p for index, item in enumerate(value) for p in _leaf_paths(item, (*prefix, index))] or [prefix]
    return [prefix]


def _planted(message: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, *rest = path
    copy = list(message) if isinstance(message, list) else dict(message)
    copy[head] = _planted(message[head], tuple(rest), value)
    return copy


CASES = [
    (adapter, stream, message, path)
    for adapter in ("reference", "betwave")
    for stream, message in _golden_messages(adapter)
    for path in _leaf_paths(message)
]


def test_both_adapters_golden_inputs_give_many_fields_to_plant_into() -> None:
    assert {adapter for adapter, *_ in CASES} == {"reference", "betwave"}
    assert len(CASES) > 500


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CASES), pii_values)
def test_a_dead_letter_never_quotes_a_value_planted_in_any_field_of_a_real_message(
    case: tuple[str, Stream, dict[str, Any], tuple[Any, ...]], value: Any
) -> None:
    adapter_name, stream, message, path = case
    adapter = load_adapter(adapter_name)
    pipeline = Pipeline(adapter, {stream.value: stream}, limits=PipelineLimits(require_key=False))
    body = orjson.dumps(_planted(message, path, value))
    result = pipeline.process([RawRecord("kafka", stream.value, 0, 0, None, body)], RecordingEngine())
    for letter in result.dead_letters:
        # What the dead-letter header (x-smartico-error-message) and the log line carry.
        assert_no_piece_of(value, letter.message)
        assert_no_piece_of(value, letter.error_class)
        assert letter.error_class in {"ValidationError", "DecodeError", "InvalidText"} or issubclass(
            _adapter_error(letter.error_class), AdapterError
        ), letter


def _adapter_error(name: str) -> type[Exception]:
    from smartico_stream.adapters import base

    found = getattr(base, name, None)
    return found if isinstance(found, type) and issubclass(found, Exception) else Exception


# -- messages of exceptions from outside the project ----------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [KeyError("olena@example.com"), ValueError("invalid literal for int(): '+380501234567'"), TypeError("Olena")],
)
def test_an_unexpected_exceptions_message_is_withheld(exc: Exception) -> None:
    error_class, reason = describe_error(exc)
    assert error_class == type(exc).__name__
    assert reason == f"{error_class} (message withheld: it may quote the record)"


def test_a_key_shaped_like_personal_data_is_not_quoted_in_a_location() -> None:
    model = EVENT_MODELS[1]
    with pytest.raises(ValidationError) as caught:
        model.model_validate({**_COMMON, **VALID[model.__name__], "extra": {"olena@example.com": {"a"}}})
    _, reason = describe_error(caught.value)
    assert "olena" not in reason and "example" not in reason, reason
    assert "extra.<key>" in reason


def test_a_safe_alphabet_really_spells_nothing_in_the_reasons() -> None:
    # The property tests rely on it: the vowels a, e, i, o, u, y are missing, and so are l, n, r, s, t.
    assert not set(_RARE) & set("aeiouylnrst")
    assert set(_RARE) <= set(string.ascii_lowercase)
