"""Hostile records through the Pipeline (reference adapter, no broker): what one store would refuse
is a dead letter on every store, with a reason naming the field and the rule and quoting nothing.

One test per class: text (NUL, invalid UTF-8, lone surrogates, id length), timestamps (epoch
milliseconds only: seconds, microseconds and nanoseconds are refused as such), numbers (kept as
written; amounts bounded to 18 digits either side of the point) and the reasons that used to
mislead (integers of 2**64 and more, 1000-digit amounts, deep nesting).
"""

from __future__ import annotations

import sqlite3
import subprocess
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from smartico_stream.events.models import PAYMENT_TYPES, CanonicalEvent, Payment
from smartico_stream.events.raw import RawRecord, Stream
from smartico_stream.pipeline.errors import DeadLetter
from smartico_stream.pipeline.pipeline import DEAD_LETTERED, OK, BatchResult, Pipeline, PipelineLimits
from smartico_stream_adapters.reference import ReferenceAdapter
from tests.support.common import BASE_MS, CLI, DEMO_RULES
from tests.support.service import RecordingEngine

PAY = "payments"
PROFILE = "profile"
STREAMS = {PAY: Stream.PAYMENTS, PROFILE: Stream.PROFILE}
BIRTHDATE_1990 = 639_878_400_000  # 1990-04-12 as epoch milliseconds


def deposit(**changes: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "deposit",
        "dt_finalized": BASE_MS,
        "ext_brand_id": "b1",
        "user_ext_id": "u1",
        "transaction_id": "tx-1",
        "amount": "10.50",
        "payment_method": "card",
    }
    message.update(changes)
    return message


def profile(**changes: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "dt_update": BASE_MS,
        "ext_brand_id": "b1",
        "user_ext_id": "u1",
        "core_registration_date": BASE_MS - 86_400_000,
        "core_user_language": "EN",
        "core_wallet_currency": "EUR",
    }
    message.update(changes)
    return message


def run(value: bytes | dict[str, Any], topic: str = PAY) -> BatchResult:
    """One record between two valid neighbours; the neighbours must always be applied."""
    body = orjson.dumps(value) if isinstance(value, dict) else value
    before, after = orjson.dumps(deposit(transaction_id="before")), orjson.dumps(deposit(transaction_id="after"))
    records = [
        RawRecord("kafka", PAY, 0, 0, b"u1", before, timestamp_ms=BASE_MS),
        RawRecord("kafka", topic, 0, 1, b"u1", body, timestamp_ms=BASE_MS),
        RawRecord("kafka", PAY, 0, 2, b"u1", after, timestamp_ms=BASE_MS),
    ]
    pipeline = Pipeline(ReferenceAdapter(), STREAMS, limits=PipelineLimits(max_message_bytes=10_000_000))
    engine = RecordingEngine()
    result = pipeline.process(records, engine)
    assert {"before", "after"} <= set(engine.event_ids()), "the valid neighbours are applied"
    return result


def dead_letter(value: bytes | dict[str, Any], topic: str = PAY) -> DeadLetter:
    result = run(value, topic)
    [letter] = result.dead_letters
    assert result.count(DEAD_LETTERED) == 1 and result.count(OK) == 2
    return letter


def accepted(value: bytes | dict[str, Any], topic: str = PAY) -> CanonicalEvent:
    result = run(value, topic)
    assert not result.dead_letters, result.dead_letters
    [_, item, _] = result.accepted
    [event] = item.events
    return event


def accepted_payment(value: bytes | dict[str, Any]) -> Payment:
    event = accepted(value)
    assert event.type in PAYMENT_TYPES
    return event


def birthdate_of(value: dict[str, Any]) -> datetime:
    event = accepted(value, PROFILE)
    assert event.type == "user_profile" and event.birthdate is not None
    return event.birthdate


def raw(message: dict[str, Any], field: str, literal: bytes, **more: bytes) -> bytes:
    """``message`` as JSON with ``field`` (and each of ``more``) set to a literal exactly as written."""
    literals = {field: literal, **more}
    body = orjson.dumps({**message, **{name: f"__literal_{name}__" for name in literals}})
    for name, text in literals.items():
        body = body.replace(f'"__literal_{name}__"'.encode(), text)
    return body


# -- text every store accepts -----------------------------------------------------------------------

NUL_CASES = [
    ("user_ext_id", raw(deposit(), "user_ext_id", b'"u\\u00001"'), "user_ext_id:"),
    ("ext_brand_id", raw(deposit(), "ext_brand_id", b'"b\\u0000"'), "ext_brand_id:"),
    ("transaction_id", raw(deposit(), "transaction_id", b'"\\u0000tx"'), "transaction_id:"),
    ("free text", raw(deposit(), "payment_method", b'"card\\u0000"'), "payment_method:"),
    ("custom value", raw(deposit(), "vip", b'{"tier": ["gold\\u0000"]}'), "vip.tier[0]:"),
    ("custom key", raw(deposit(), "vip", b'{"ti\\u0000er": 1}'), "a key in vip"),
    ("top-level key", orjson.dumps(deposit()).replace(b'"payment_method"', b'"pay\\u0000"'), "a top-level key"),
]


@pytest.mark.parametrize(("name", "value", "where"), NUL_CASES, ids=[c[0] for c in NUL_CASES])
def test_a_nul_anywhere_in_the_record_is_a_dead_letter_naming_the_field(name: str, value: bytes, where: str) -> None:
    # PostgreSQL refuses NUL in text and JSONB (asyncpg: CharacterNotInRepertoireError); SQLite
    # would take it. Refused before any store sees it, so both stores agree.
    letter = dead_letter(value)
    assert (letter.stage, letter.error_class) == ("decode", "InvalidText")
    assert letter.message == f"{where} contains a NUL character (\\u0000), which stores refuse"


def test_an_escaped_backslash_before_u0000_is_text_not_a_nul() -> None:
    event = accepted(raw(deposit(), "note", b'"C:\\\\u0000"'))
    assert event.extra["note"] == "C:\\u0000"


def test_invalid_utf8_is_reported_as_such_with_the_byte_and_the_field() -> None:
    value = raw(deposit(), "user_ext_id", b'"u\xff1"')
    letter = dead_letter(value)
    assert (letter.stage, letter.error_class) == ("decode", "DecodeError")
    offset = value.index(b"\xff")
    assert letter.message == f"user_ext_id: not valid UTF-8 (at byte offset {offset})"
    assert "surrogate" not in letter.message


def test_utf8_encoded_surrogates_are_invalid_utf8_too() -> None:
    value = raw(deposit(), "payment_method", b'"\xed\xa0\x80"')
    letter = dead_letter(value)
    offset = value.index(b"\xed")
    assert letter.message == f"payment_method: not valid UTF-8 (at byte offset {offset})"


@pytest.mark.parametrize("escape", [b'"\\ud800"', b'"x\\udc00y"', b'"\\ud800\\u0041"'])
def test_a_lone_surrogate_escape_is_a_dead_letter_naming_the_field(escape: bytes) -> None:
    letter = dead_letter(raw(deposit(), "transaction_id", escape))
    assert (letter.stage, letter.error_class) == ("decode", "InvalidText")
    assert letter.message.startswith("transaction_id: contains a lone surrogate")


def test_a_surrogate_pair_is_one_character_and_accepted() -> None:
    assert accepted_payment(raw(deposit(), "payment_method", b'"\\ud83d\\ude00"')).method == "\U0001f600"


@pytest.mark.parametrize("field", ["user_ext_id", "ext_brand_id", "transaction_id"])
def test_ids_are_at_most_256_characters(field: str) -> None:
    assert accepted(deposit(**{field: "x" * 256}))
    letter = dead_letter(deposit(**{field: "x" * 257}))
    canonical = {"user_ext_id": "user_id", "ext_brand_id": "brand_id", "transaction_id": "event_id"}[field]
    assert f"{canonical}: an id must have at most 256 characters" in letter.message


# -- timestamps: epoch milliseconds ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "unit"),
    [(BASE_MS // 1000, "seconds"), (BASE_MS * 1000, "microseconds"), (BASE_MS * 1_000_000, "nanoseconds")],
)
def test_epoch_numbers_in_another_unit_are_refused_as_that_unit(value: int, unit: str) -> None:
    letter = dead_letter(deposit(dt_finalized=value))
    assert "event_time: is " in letter.message
    assert f"looks like epoch {unit}; send milliseconds" in letter.message
    assert str(value) not in letter.message


@pytest.mark.parametrize("field", ["core_registration_date", "dt_update"])
def test_profile_business_times_in_seconds_are_refused(field: str) -> None:
    letter = dead_letter(profile(**{field: BASE_MS // 1000 - 86_400}), PROFILE)
    assert "looks like epoch seconds" in letter.message


def test_aggregate_deposit_times_and_match_times_follow_the_same_rule() -> None:
    letter = dead_letter(deposit(last_deposit_time=BASE_MS // 1000))
    assert "aggregates.last_deposit_time: is before 1973-03-03 as epoch milliseconds: looks like epoch seconds" in (
        letter.message
    )


def test_a_birthdate_keeps_plain_millisecond_semantics() -> None:
    # A birthdate in 1970..1973 is ordinary, so no seconds heuristic: ms and ISO dates both work.
    assert birthdate_of(profile(user_birthdate=BIRTHDATE_1990)).year == 1990
    assert birthdate_of(profile(user_birthdate=63_072_000_000)).year == 1972
    assert birthdate_of(profile(user_birthdate="1990-04-12")).day == 12
    letter = dead_letter(profile(user_birthdate=BIRTHDATE_1990 * 1000), PROFILE)
    assert "birthdate: is outside 1900..2200 as epoch milliseconds: looks like epoch microseconds" in letter.message


def test_digit_strings_follow_the_rule_and_unicode_digits_are_not_numbers() -> None:
    assert accepted(deposit(dt_finalized=str(BASE_MS))).event_time == accepted(deposit()).event_time
    assert "looks like epoch seconds" in dead_letter(deposit(dt_finalized=str(BASE_MS // 1000))).message
    letter = dead_letter(deposit(dt_finalized="\u00b2" * 13))  # superscript twos: isdigit() but not int()
    assert "event_time: is not a timestamp: use epoch milliseconds or ISO-8601" in letter.message


# -- numbers as written ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "literal",
    [
        b"123456789012345678.123456789012345678",  # 36 significant digits: the most the schema allows
        b"0.30000000000000004",
        b"10.000000000000000001",
        b"1234567890123456.75",
    ],
)
def test_amounts_are_kept_exactly_as_written(literal: bytes) -> None:
    event = accepted_payment(raw(deposit(), "amount", literal))
    assert event.amount == Decimal(literal.decode()) and str(event.amount) == str(Decimal(literal.decode()))


def test_integer_ids_of_any_size_are_kept_as_written() -> None:
    literal = b"18446744073709551616"  # 2**64: orjson would read it as a float
    event = accepted(raw(deposit(), "user_ext_id", literal))
    assert event.user_id == literal.decode()
    assert accepted(raw(deposit(), "transaction_id", b"-9223372036854775809")).event_id == "-9223372036854775809"


def test_custom_numbers_stay_json_numbers_or_keep_their_exact_text() -> None:
    value = raw(deposit(), "ratio", b"0.30000000000000004", big=b"123456789012345678901234567890",
                long=b"1.2345678901234567890123")
    extra = accepted(value).extra
    assert extra["ratio"] == 0.30000000000000004, "a double that holds the literal stays a number"
    assert extra["big"] == "123456789012345678901234567890", "beyond 64 bits: the literal's text"
    assert extra["long"] == "1.2345678901234567890123", "more digits than a double holds: the literal's text"
    assert orjson.loads(orjson.dumps(extra)) == extra, "and the state's JSON writer can store it"


@pytest.mark.parametrize(
    ("literal", "rule"),
    [
        (b"1234567890123456789012345678901234567890.5", "at most 18 digits before the decimal point"),
        (b"1" + b"0" * 1000, "at most 18 digits before the decimal point"),
        (b'"1' + b"0" * 1000 + b'"', "at most 18 digits before the decimal point"),
        (b"1e400", "at most 18 digits before the decimal point"),
        (b"0.0000000000000000001", "at most 18 digits after the decimal point"),
        (b"1e-400", "at most 18 digits after the decimal point"),
        (b"1000000000000000000", "at most 18 digits before the decimal point"),
    ],
)
def test_amounts_beyond_the_schemas_range_are_refused_with_the_rule(literal: bytes, rule: str) -> None:
    letter = dead_letter(raw(deposit(), "amount", literal))
    assert (letter.stage, letter.error_class) == ("adapt", "ValidationError")
    assert letter.message == f"1 invalid field(s) for Payment: amount: {rule}"


def test_the_largest_amount_the_schema_allows_is_accepted() -> None:
    event = accepted_payment(raw(deposit(), "amount", b"999999999999999999.999999999999999999"))
    assert event.amount == Decimal("999999999999999999.999999999999999999")


# -- reasons that used to mislead ---------------------------------------------------------------------


def test_counts_beyond_64_bits_are_refused_not_stored() -> None:
    letter = dead_letter(raw(deposit(), "total_deposit_count", b"18446744073709551616"))
    assert "aggregates.total_deposit_count: Input should be less than or equal to 9223372036854775807" in (
        letter.message
    )


@pytest.mark.parametrize("depth", [33, 300, 1000])
def test_deep_nesting_in_a_custom_field_is_reported_as_such(depth: int) -> None:
    letter = dead_letter(raw(deposit(), "deep", b"[" * depth + b"]" * depth))
    assert letter.message == "1 invalid field(s) for Payment: extra: 'deep' is nested deeper than 32 levels"
    assert "cyclic" not in letter.message


def test_nesting_of_32_levels_is_accepted() -> None:
    assert accepted(raw(deposit(), "deep", b"[" * 32 + b"]" * 32)).extra["deep"]


def test_nesting_beyond_what_any_parser_reads_is_a_decode_error_saying_so() -> None:
    letter = dead_letter(raw(deposit(), "deep", b"[" * 5000 + b"]" * 5000))
    assert (letter.stage, letter.error_class, letter.message) == (
        "decode", "TooDeep", "the record is nested deeper than 32 levels"
    )


def test_a_long_number_next_to_a_deep_array_still_gets_a_true_reason() -> None:
    # The exact re-read (the stdlib parser) would hit Python's recursion limit here.
    value = raw(deposit(), "deep", b"[" * 1020 + b"]" * 1020, amount=b"1e400")
    assert dead_letter(value).error_class == "TooDeep"


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_json_constants_are_refused_on_the_exact_path_too(constant: bytes) -> None:
    value = raw(deposit(), "amount", b"1e400", other=constant)
    letter = dead_letter(value)
    assert letter.error_class == "DecodeError" and "not valid JSON" in letter.message


def test_profiles_and_payments_agree_on_exact_aggregates() -> None:
    event = accepted(raw(profile(), "total_deposit_amount", b"12345678901234567.89"), PROFILE)
    assert event.type == "user_profile" and event.aggregates is not None
    assert event.aggregates.total_deposit_amount == Decimal("12345678901234567.89")


# -- the same through `simulate`, as a user runs it ------------------------------------------------------


def test_simulate_keeps_a_36_digit_amount_exact_in_the_state_and_dead_letters_the_oversized(tmp_path: Path) -> None:
    amounts = [b"123456789012345678.123456789012345678", b"1" + b"0" * 1000, b"1e400", b"12.5"]
    lines = [
        orjson.dumps({"stream": "payments", "key": "u1", "value": {**deposit(transaction_id=f"t{n}"), "amount": "?"}})
        .replace(b'"amount":"?"', b'"amount":' + literal)
        for n, literal in enumerate(amounts)
    ]
    events, state = tmp_path / "events.jsonl", tmp_path / "state.sqlite"
    events.write_bytes(b"\n".join(lines) + b"\n")
    done = subprocess.run(
        [*CLI, "simulate", "--rules", str(DEMO_RULES), "--events", str(events), "--state", str(state)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "records 4, processed 2, deduplicated 0, dead-lettered 2" in done.stderr
    with sqlite3.connect(state) as db:
        [(document,)] = db.execute("SELECT state FROM users").fetchall()
    # The state's totals are exact too (the default decimal context would keep 28 digits).
    assert orjson.loads(document)["deposit_total"] == {"?": "123456789012345690.623456789012345678"}
