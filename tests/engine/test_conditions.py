"""The rule condition language: parsing, type checking, evaluation and error messages.

Every example in docs/conditions.md appears here too; ``test_doc_*`` additionally check that the doc
and the compiler agree.
"""

from __future__ import annotations

import operator
import pickle
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartico_stream.engine.conditions import (
    ALWAYS,
    Condition,
    ConditionError,
    FieldType,
    compile_condition,
    event_schema,
    model_schema,
)
from smartico_stream.events import EVENT_MODELS, AccountStatus, EventType, Payment, UserProfile
from tests.support.common import REPO

NOW = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)

USER_SCHEMA: dict[str, FieldType] = {
    "user.deposit_count": FieldType.NUMBER,
    "user.country": FieldType.STRING,
    "user.tags": FieldType.STRING_SET,
    "user.deposit_total": FieldType.NUMBER_MAP,
    "user.registration_date": FieldType.TIMESTAMP,
    "user.last_deposit_time": FieldType.TIMESTAMP,
    "user.account_status": FieldType.STRING,
    "user.email": FieldType.STRING,
    "user.username": FieldType.STRING,
    "user.is_vip": FieldType.BOOL,
}
SCHEMA: dict[str, FieldType] = {**USER_SCHEMA, **event_schema(Payment)}


@dataclass
class User:
    deposit_count: Any = 2
    country: Any = "CA"
    tags: Any = field(default_factory=lambda: frozenset({"vip", "sports"}))
    deposit_total: Any = field(default_factory=lambda: {"EUR": Decimal("1500.50")})
    registration_date: Any = NOW - timedelta(days=3)
    last_deposit_time: Any = NOW - timedelta(hours=2)
    account_status: Any = AccountStatus.ACTIVE
    email: Any = "jane@example.com"
    username: Any = "vip-jane"
    is_vip: Any = True


def payment(**overrides: Any) -> Payment:
    values: dict[str, Any] = {
        "type": "deposit",
        "brand_id": "brand-1",
        "user_id": "user-1",
        "event_id": "tx-1",
        "event_time": NOW,
        "amount": "250.00",
        "currency": "EUR",
        "method": "PayPal",
        "real_balance": "-2.5",
        "extra": {"vip_level": 4, "segment": "gold", "ratio": 0.1, "flag": True, "labels": ["a", "b"],
                  "nested": {"inner": 7}, "missing": None},
    }
    values.update(overrides)
    return Payment(**values)


def run(text: str, user: Any = None, event: Any = "default", now: datetime = NOW, schema: Any = None) -> bool:
    condition = compile_condition(text, SCHEMA if schema is None else schema)
    return condition(User() if user is None else user, payment() if event == "default" else event, now)


def error(text: str, schema: Any = None) -> ConditionError:
    with pytest.raises(ConditionError) as caught:
        compile_condition(text, SCHEMA if schema is None else schema)
    return caught.value


# API --------------------------------------------------------------------------------------------


def test_compile_returns_a_condition_with_its_text_and_fields() -> None:
    text = 'user.deposit_count > 1 and user.country in ["CA", "US"] and event.amount >= 10'
    condition = compile_condition(text, SCHEMA)
    assert isinstance(condition, Condition)
    assert condition.text == text
    assert condition.fields == frozenset({"user.deposit_count", "user.country", "event.amount"})
    assert condition(User(), payment(), NOW) is True
    assert condition(User(deposit_count=1), payment(), NOW) is False
    assert condition(User(country="FR"), payment(), NOW) is False
    assert condition(User(), payment(amount="9.99"), NOW) is False
    assert condition.evaluate(User(), payment(), NOW) is True


def test_fields_include_indexed_maps_and_has_arguments() -> None:
    condition = compile_condition('has(user.email) or user.deposit_total["EUR"] > 1 or event.extra["k"] == 1', SCHEMA)
    assert condition.fields == frozenset({"user.email", "user.deposit_total", "event.extra"})


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_an_empty_condition_is_always_true(text: str) -> None:
    assert compile_condition(text, SCHEMA) is ALWAYS
    assert ALWAYS(object(), None, NOW) is True
    assert ALWAYS.fields == frozenset()


def test_conditions_are_values() -> None:
    first = compile_condition("user.deposit_count > 1", SCHEMA)
    second = compile_condition("user.deposit_count > 1", SCHEMA)
    assert first == second and hash(first) == hash(second)
    with pytest.raises(AttributeError):
        first.text = "other"  # type: ignore[misc]


def test_evaluation_uses_the_compiled_closures_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from smartico_stream.engine import conditions

    condition = compile_condition('user.country in ["CA"] and event.amount >= 10', SCHEMA)

    def fail(*args: Any) -> None:
        raise AssertionError("parsed again")

    monkeypatch.setattr(conditions, "_tokenize", fail)
    monkeypatch.setattr(conditions, "_infer", fail)
    assert condition(User(), payment(), NOW) is True


# event_schema ------------------------------------------------------------------------------------


def test_event_schema_of_a_payment() -> None:
    assert event_schema(Payment) == {
        "event.type": FieldType.STRING,
        "event.brand_id": FieldType.STRING,
        "event.user_id": FieldType.STRING,
        "event.event_id": FieldType.STRING,
        "event.event_time": FieldType.TIMESTAMP,
        "event.extra": FieldType.ANY_MAP,
        "event.amount": FieldType.NUMBER,
        "event.currency": FieldType.STRING,
        "event.method": FieldType.STRING,
        "event.status": FieldType.STRING,
        "event.code": FieldType.STRING,
        "event.provider": FieldType.STRING,
        "event.real_balance": FieldType.NUMBER,
        "event.bonus_balance": FieldType.NUMBER,
        "event.total_balance": FieldType.NUMBER,
    }


def test_event_schema_maps_enums_optionals_ints_and_bools() -> None:
    schema = event_schema(UserProfile)
    assert schema["event.account_status"] == FieldType.STRING  # StrEnum
    assert schema["event.gender"] == FieldType.STRING  # Optional StrEnum
    assert schema["event.affiliate_id"] == FieldType.NUMBER  # Optional int
    assert schema["event.is_email_disabled_by_platform"] == FieldType.BOOL
    assert schema["event.birthdate"] == FieldType.TIMESTAMP  # Optional annotated datetime
    assert schema["event.country"] == FieldType.STRING  # Optional annotated str
    assert "event.source" not in schema and "event.aggregates" not in schema


@pytest.mark.parametrize("model", EVENT_MODELS, ids=lambda model: model.__name__)
def test_every_canonical_event_has_a_schema(model: type[pydantic.BaseModel]) -> None:
    schema = event_schema(model)
    assert all(name.startswith("event.") for name in schema)
    assert schema["event.type"] == FieldType.STRING


def test_model_schema_maps_sets_and_number_maps_and_rejects_what_it_cannot_read() -> None:
    class State(pydantic.BaseModel):
        tags: frozenset[str] = frozenset()
        deposit_total: dict[str, Decimal] = {}
        misc: dict[str, Any] = {}
        count: int = 0

    assert model_schema(State, "user") == {
        "user.tags": FieldType.STRING_SET,
        "user.deposit_total": FieldType.NUMBER_MAP,
        "user.misc": FieldType.ANY_MAP,
        "user.count": FieldType.NUMBER,
    }

    class Nested(pydantic.BaseModel):
        inner: State

    with pytest.raises(TypeError, match=r"Nested\.inner has type"):
        model_schema(Nested, "user")
    assert model_schema(Nested, "user", skip=frozenset({"inner"})) == {}


# literals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "event.amount == 250",
        "event.amount == 250.00",
        "event.amount > 249.99",
        "event.real_balance == -2.5",
        "event.real_balance < -2",
        "-3 < 0",
        "-12345678901234567890123456789012345 < -12345678901234567890123456789012344",
        'event.method == "PayPal"',
        "event.method == 'PayPal'",
        r'"a\"b" == ' + "'a\"b'",
        r"'it\'s' == " + '"it\'s"',
        r'"\\" == ' + r"'\u005c'",
        r'len("a\nb\tc\r") == 6',
        r'"\u00e9t\u00E9" == "été"',
        "true",
        "not false",
        "true == true",
        "false != true",
        "90s == 1.5m",
        "30m == 0.5h",
        "24h == 1d",
        "2w == 14d",
        "1.5h == 90m",
        "-1d < 0s",
        'ts("2025-03-03T09:00:00Z") == now()',
        'ts("2025-03-03T10:00:00+01:00") == now()',
        'ts("2025-03-03T09:00:00") == now()',
        'ts("2025-03-03T08:00:00Z") in [ts("2025-03-03T08:00:00Z"), ts("2025-03-03T07:00:00Z")]',
        '1d in [24h, -2d,]',
        'user.deposit_count in [-1, 2]',
        "user.is_vip in [true]",
    ],
)
def test_literals(text: str) -> None:
    assert run(text) is True


def test_numbers_are_decimals_never_floats() -> None:
    # 0.1 + 0.2 == 0.3 is false with floats
    assert run("0.1 + 0.2 == 0.3") is True
    assert run("event.extra[\"ratio\"] == 0.1") is True  # a JSON float is taken as written
    assert run("user.deposit_count / 3 == 0.6666666666666666666666666667") is True  # 28 significant digits
    assert run("user.deposit_count / 4 == 0.5", user=User(deposit_count=2)) is True  # int / int


# operators -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "results"),
    [("==", (False, True, False)), ("!=", (True, False, True)), ("<", (True, False, False)),
     ("<=", (True, True, False)), (">", (False, False, True)), (">=", (False, True, True))],
)
@pytest.mark.parametrize(
    ("left", "values"),
    [
        ("event.amount", ("300", "250.00", "100")),
        ("event.method", ('"Skrill"', '"PayPal"', '"Neteller"')),
        ("event.event_time", ('ts("2025-03-04T00:00:00Z")', "now()", 'ts("2025-01-01T00:00:00Z")')),
        ("event.event_time - user.registration_date", ("4d", "72h", "1d")),
    ],
)
def test_comparisons(op: str, results: tuple[bool, bool, bool], left: str, values: tuple[str, str, str]) -> None:
    for value, expected in zip(values, results, strict=True):
        assert run(f"{left} {op} {value}") is expected, f"{left} {op} {value}"


def test_equality_of_numbers_is_numeric() -> None:
    assert run("user.deposit_count == 2.0", user=User(deposit_count=2)) is True
    assert run("user.deposit_count == 2", user=User(deposit_count=Decimal("2.00"))) is True
    assert run("user.deposit_count in [2.0, 3]", user=User(deposit_count=2)) is True


def test_bools_compare_with_equality() -> None:
    assert run("user.is_vip == true") is True
    assert run("user.is_vip != true", user=User(is_vip=False)) is True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('user.country in ["CA", "US"]', True),
        ('user.country in ["FR"]', False),
        ('user.country not in ["CA", "US"]', False),
        ('user.country not in ["FR"]', True),
        ('"vip" in user.tags', True),
        ('"casino" in user.tags', False),
        ('"casino" not in user.tags', True),
        ('user.tags contains "vip"', True),
        ('user.tags contains "vi"', False),
        ('user.email contains "@example.com"', True),
        ('user.email contains "@gmail"', False),
        ('lower(event.method) in ["paypal", "skrill"]', True),
        ("event.amount in [250, 500]", True),
        ("event.amount + 1 in [251]", True),
    ],
)
def test_in_not_in_and_contains(text: str, expected: bool) -> None:
    assert run(text) is expected


@pytest.mark.parametrize(
    "text",
    [
        "1 + 2 * 3 == 7",
        "(1 + 2) * 3 == 9",
        "10 - 4 - 3 == 3",
        "12 / 4 / 3 == 1",
        "2 * -3 == -6",
        "- -3 == 3",
        "-event.amount == -250",
        "-(event.amount - 50) == -200",
        "event.amount * 2 > user.deposit_total[\"EUR\"] / 10",
        "abs(event.real_balance) == 2.5",
        "abs(-2) == 2",
        "event.event_time - 1d == ts(\"2025-03-02T09:00:00Z\")",
        "event.event_time + 1w == ts(\"2025-03-10T09:00:00Z\")",
        "event.event_time - user.registration_date == 3d",
        "1d + 12h == 36h",
        "1d - 12h == 12h",
        "-(1d) == -24h",
    ],
)
def test_arithmetic(text: str) -> None:
    assert run(text) is True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("not false and false", False),  # (not false) and false
        ("true or false and false", True),  # true or (false and false)
        ("(true or false) and false", False),
        ("not 1 == 2", True),  # not (1 == 2)
        ("not not true", True),
        ("false or false or true", True),
        ("true and true and true and false", False),
        ("false or false or false or true", True),
        ("user.is_vip", True),
        ("not user.is_vip", False),
        ("user.is_vip and event.amount > 1", True),
    ],
)
def test_boolean_operators_and_precedence(text: str, expected: bool) -> None:
    assert run(text) is expected


class CountingUser:
    """A user whose every attribute read is counted."""

    def __init__(self, **values: Any) -> None:
        self.values = values
        self.reads: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name in ("values", "reads"):
            raise AttributeError(name)
        self.reads.append(name)
        return self.values.get(name)


def test_and_or_short_circuit() -> None:
    user = CountingUser(deposit_count=0, country="CA")
    assert compile_condition('user.deposit_count > 1 and user.country == "CA"', SCHEMA)(user, None, NOW) is False
    assert user.reads == ["deposit_count"]
    user.reads.clear()
    assert compile_condition('user.country == "CA" or user.deposit_count > 1', SCHEMA)(user, None, NOW) is True
    assert user.reads == ["country"]


# StrEnum values against real canonical events ------------------------------------------------------------


def test_strenum_fields_compare_as_their_values() -> None:
    event = payment()
    assert isinstance(event.type, str)
    assert run('event.type == "deposit"', event=event) is True
    assert run('event.type in ["deposit", "withdrawal_requested"]', event=event) is True
    assert run('event.type == "withdrawal_requested"', event=payment(type=EventType.WITHDRAWAL_REQUESTED)) is True
    assert run('user.account_status == "ACTIVE"') is True
    assert run('user.account_status in ["BLOCKED", "BANNED"]', user=User(account_status=AccountStatus.BANNED)) is True
    assert run('lower(user.account_status) == "active"') is True


def test_a_user_profile_event_as_user_state() -> None:
    profile = UserProfile(
        brand_id="b", user_id="u", event_id="e", event_time=NOW, registration_date=NOW - timedelta(days=10),
        language="EN", wallet_currency="EUR", country="CA", account_status="self_excluded", gender="F",
    )
    schema = model_schema(UserProfile, "user", skip=frozenset({"source", "aggregates"}))
    assert run('user.account_status == "SELF_EXCLUDED" and user.gender == "FEMALE"', user=profile, schema=schema)
    assert run('user.country in ["CA", "US"] and days_since(user.registration_date) == 10', user=profile, schema=schema)
    assert run("has(user.affiliate_id)", user=profile, schema=schema) is False


# maps ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('user.deposit_total["EUR"] >= 1000', True),
        ('user.deposit_total["EUR"] == 1500.5', True),
        ('user.deposit_total["USD"] >= 0', False),
        ('event.extra["vip_level"] >= 3', True),
        ('event.extra["vip_level"] + 1 == 5', True),
        ('event.extra["segment"] == "gold"', True),
        ('upper(event.extra["segment"]) == "GOLD"', True),
        ('event.extra["segment"] in ["gold", "silver"]', True),
        ('event.extra["nested"]["inner"] == 7', True),
        ('event.extra["labels"] contains "a"', True),
        ('"b" in event.extra["labels"]', True),
        ('"c" in event.extra["labels"]', False),
        ('event.extra["segment"] contains "ol"', True),
        ('event.extra["flag"]', True),
        ('event.extra["flag"] == true', True),
        ('has(event.extra["vip_level"])', True),
        ('has(event.extra["missing"])', False),
        ('has(event.extra["absent"])', False),
        ('len(event.extra["labels"]) == 2', True),
    ],
)
def test_map_indexing(text: str, expected: bool) -> None:
    assert run(text) is expected


# functions ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("days_since(user.registration_date) == 3", True),
        ("days_since(user.registration_date) <= 7", True),
        ("days_since(user.last_deposit_time) == 0.125", True),  # 3 hours: fractional
        ("hours_since(user.last_deposit_time) == 3", True),
        ("hours_since(user.last_deposit_time) < 1.5", False),
        ("minutes_since(user.last_deposit_time) == 180", True),
        ("minutes_since(user.last_deposit_time) >= 30", True),
        ("days_since(now()) == 0", True),
        ("days_since(event.event_time + 12h) == -0.5", True),
        ("now() == event.event_time", True),
        ('lower(event.method) == "paypal"', True),
        ('upper(event.method) == "PAYPAL"', True),
        ("len(user.tags) == 2", True),
        ("len(user.tags) > 0", True),
        ("len(event.method) == 6", True),
        ("abs(event.real_balance) < 5", True),
        ("abs(event.amount - 300) == 50", True),
        ("has(user.country)", True),
        ('has(user.deposit_total["EUR"])', True),
        ('has(event.extra["vip_level"])', True),
    ],
)
def test_functions(text: str, expected: bool) -> None:
    user = User(last_deposit_time=NOW - timedelta(hours=3))
    assert run(text, user=user) is expected


def test_time_is_the_event_time_passed_in() -> None:
    condition = compile_condition("user.last_deposit_time > now() - 24h", SCHEMA)
    user = User(last_deposit_time=datetime(2024, 1, 1, 12, tzinfo=UTC))
    assert condition(user, None, datetime(2024, 1, 2, 11, tzinfo=UTC)) is True
    assert condition(user, None, datetime(2024, 1, 2, 13, tzinfo=UTC)) is False


# missing values --------------------------------------------------------------------------------------------

NO_COUNTRY = User(country=None, deposit_total={"EUR": Decimal(100)})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('user.country == "CA"', False),
        ('user.country != "CA"', False),
        ('not (user.country == "CA")', True),
        ('user.country not in ["CA", "US"]', False),
        ('not (user.country in ["CA", "US"])', True),
        ('has(user.country) and user.country != "CA"', False),
        ('not has(user.country) or user.country != "CA"', True),
        ('user.deposit_total["USD"] > 0', False),
        ('user.deposit_total["USD"] + 10 > 5', False),
        ('not (user.deposit_total["USD"] > 0)', True),
        ('has(user.deposit_total["USD"])', False),
        ('user.country < "ZZ"', False),
        ('user.country contains "C"', False),
        ('lower(user.country) == "ca"', False),
        ("len(user.country) == 0", False),
        ('"CA" contains user.country', False),
        ("user.country in [\"CA\"] or true", True),
    ],
)
def test_missing_values_make_comparisons_false(text: str, expected: bool) -> None:
    assert run(text, user=NO_COUNTRY) is expected


def test_a_user_with_a_known_country_other_than_canada() -> None:
    user = User(country="FR")
    assert run('has(user.country) and user.country != "CA"', user=user) is True
    assert run('not has(user.country) or user.country != "CA"', user=user) is True
    assert run('not has(user.country) or user.country != "CA"', user=User(country="CA")) is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("event.amount > 0", False),
        ("event.amount <= 0", False),
        ("not (event.amount > 0)", True),
        ("has(event.amount)", False),
        ('event.type != "deposit"', False),
        ('event.extra["vip_level"] > 0', False),
        ("days_since(event.event_time) >= 0", False),
        ("now() - event.event_time < 1d", False),
        ("user.deposit_count > 1", True),
    ],
)
def test_without_an_event_every_event_field_is_missing(text: str, expected: bool) -> None:
    assert run(text, event=None) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user.is_vip", False),
        ("not user.is_vip", True),
        ("user.is_vip or true", True),
        ("user.is_vip == false", False),
        ("user.deposit_count * 2 > 0", False),
        ("abs(user.deposit_count) >= 0", False),
        ("days_since(user.registration_date) > 0", False),
        ("user.registration_date + 1d > now()", False),
        ("-user.deposit_count < 0", False),
        ("user.tags contains \"vip\"", False),
        ("len(user.tags) >= 0", False),
    ],
)
def test_missing_values_in_arithmetic_functions_and_bool_fields(text: str, expected: bool) -> None:
    user = User(is_vip=None, deposit_count=None, registration_date=None, tags=None)
    assert run(text, user=user) is expected


def test_attributes_that_do_not_exist_are_missing() -> None:
    assert compile_condition("user.deposit_count >= 0", SCHEMA)(object(), None, NOW) is False
    assert compile_condition("not has(user.country)", SCHEMA)(object(), None, NOW) is True


# run-time type surprises -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('event.extra["segment"] >= 3', False),
        ('event.extra["segment"] != 3', False),
        ('event.extra["segment"] == 3', False),
        ('event.extra["segment"] + 1 > 0', False),
        ('days_since(event.extra["segment"]) > 0', False),
        ('abs(event.extra["segment"]) > 0', False),
        ('lower(event.extra["vip_level"]) == "4"', False),
        ('event.extra["flag"] == 1', False),  # true is not the number 1
        ('event.extra["vip_level"] == true', False),
        ('event.extra["flag"] in [1]', False),
        ('event.extra["vip_level"] in ["4"]', False),
        ('4 in event.extra["labels"]', False),
        ('event.extra["labels"] contains event.extra["vip_level"]', False),
        ('event.extra["vip_level"] contains "4"', False),
        ('event.extra["vip_level"]', False),  # not a real true
        ('event.extra["segment"]["x"] == 1', False),
        ('event.extra["labels"] == event.extra["labels"]', False),
        ('event.extra["vip_level"] < event.extra["segment"]', False),
        ('event.extra["segment"] == event.extra["segment"]', True),
        ('event.extra["vip_level"] > event.extra["nested"]["inner"] - 5', True),
        ('event.extra["vip_level"] + event.extra["vip_level"] == 8', True),
        ('-event.extra["vip_level"] == -4', True),
        ('event.extra["segment"] + event.extra["segment"] == "goldgold"', False),  # never concatenates
        ('-event.extra["segment"] == "gold"', False),
        ('now() - event.extra["segment"] < 1d', False),
        ('event.extra["vip_level"] + 1d > now()', False),
    ],
)
def test_values_of_an_unexpected_kind_are_false_not_errors(text: str, expected: bool) -> None:
    assert run(text) is expected


def test_nan_and_infinite_json_numbers_are_missing() -> None:
    event = payment().model_copy(update={"extra": {"x": float("nan"), "y": float("inf")}})
    assert run('event.extra["x"] == event.extra["x"] or has(event.extra["y"])', event=event) is False


@pytest.mark.parametrize(
    ("user", "text"),
    [
        (User(deposit_count="two"), "user.deposit_count > 1"),
        (User(deposit_count="two"), "user.deposit_count + 1 > 1"),
        (User(deposit_count=Decimal("NaN")), "user.deposit_count > 1"),
        (User(deposit_count=1), "user.deposit_count / (user.deposit_count - 1) > 1"),
        (User(deposit_count=0), "user.deposit_count / user.deposit_count > 1"),
        (User(deposit_count=Decimal("9E+999999")), "user.deposit_count * 100 > 1"),
        (User(country=["unhashable"]), 'user.country in ["CA"]'),
        (User(country=["unhashable"]), 'user.country not in ["CA"]'),
        (User(deposit_total=["not", "a", "map"]), 'user.deposit_total["EUR"] > 1'),
        (User(registration_date=datetime(2025, 1, 1)), "user.registration_date < now()"),  # naive
        (User(registration_date=datetime(2025, 1, 1)), "days_since(user.registration_date) > 1"),
        (User(registration_date=datetime.max.replace(tzinfo=UTC)), "user.registration_date + 1d > now()"),
        (User(tags=5), 'user.tags contains "vip"'),
        (User(tags=5), "len(user.tags) > 0"),
    ],
)
def test_broken_state_never_raises(user: User, text: str) -> None:
    assert run(text, user=user) is False


def test_negation_is_exact() -> None:
    big = Decimal("12345678901234567890123456789012345")
    assert run("-user.deposit_count == -12345678901234567890123456789012345", user=User(deposit_count=big))


def test_float_values_in_number_fields_still_do_arithmetic() -> None:
    assert run("user.deposit_count + 0.1 == 0.3", user=User(deposit_count=0.2)) is True


# errors ---------------------------------------------------------------------------------------------------

ERRORS = [
    ('user.contry == "CA"', "unknown field user.contry; did you mean user.country?", 1),
    ('user.favourite_colour == "red"',
     "unknown field user.favourite_colour; see `smartico-stream rules fields` for the known fields", 1),
    ("user.amount > 1", "unknown field user.amount; did you mean event.amount?", 1),
    ("event.amount > 1 and user.deposit_cnt > 1",
     "unknown field user.deposit_cnt; did you mean user.deposit_count?", 22),
    ("user.country > 5", "cannot compare string with number; expected both sides of '>' to have the same type", 14),
    ('user.deposit_count == "1"',
     "cannot compare number with string; expected both sides of '==' to have the same type", 20),
    ("user.registration_date > 7d",
     "cannot compare timestamp with duration; expected both sides of '>' to have the same type", 24),
    ('user.deposit_count in ["1", "2"]',
     "cannot look up number in list of string; expected the left side of 'in' to be a string", 20),
    ("user.deposit_count not in user.tags",
     "cannot look up number in string_set; expected the left side of 'not in' to be a string", 20),
    ("user.tags in [\"a\"]", "'in' cannot look up string_set values", 1),
    ("user.registration_date + 5 > now()",
     "cannot add timestamp and number with '+'; expected number + number, timestamp + duration or "
     "duration + duration", 24),
    ("user.registration_date - 5 > now()",
     "cannot subtract timestamp and number with '-'; expected number - number, timestamp - duration, "
     "timestamp - timestamp or duration - duration", 24),
    ('event.extra["a"] + "x" == 1',
     "cannot add any and string with '+'; expected number + number, timestamp + duration or duration + duration", 18),
    ('event.method * 2 == "x"', "cannot multiply string and number with '*'; expected number * number", 14),
    ("1d / 2 == 12h", "cannot divide duration and number with '/'; expected number / number", 4),
    ('-event.method == "x"', "cannot negate string; expected a number or a duration", 1),
    ("user.deposit_total > 100",
     "'>' cannot compare number_map values; index it, for example user.deposit_total[\"EUR\"]", 1),
    ("event.extra == 1", "'==' cannot compare any_map values; index it, for example event.extra[\"key\"]", 1),
    ('user.tags == "vip"', "'==' cannot compare string_set values; use 'contains' or 'in'", 1),
    ("user.is_vip > false", "'>' cannot compare bool values; only == and != apply to true/false values", 1),
    ('user.country == ["CA"]',
     "'==' cannot compare list of string values; a list can only follow 'in' or 'not in'", 17),
    ('user.country["x"] == "CA"',
     "cannot index user.country (string); only number_map and any_map fields have keys", 13),
    ('user.deposit_total["EUR"]["x"] == 1',
     "cannot index user.deposit_total (number); only number_map and any_map fields have keys", 26),
    ("user.deposit_count",
     "a condition must be true or false, got number; compare it with something, for example "
     "user.deposit_count > 0", 1),
    ('"CA"', "a condition must be true or false, got string; compare it with something, for example "
     "user.deposit_count > 0", 1),
    ('user.deposit_count and user.country == "CA"',
     "expected a true/false operand for 'and', got number; compare it with something, for example "
     "user.deposit_count > 0", 1),
    ('user.country == "CA" or user.email',
     "expected a true/false operand for 'or', got string; compare it with something, for example "
     "user.deposit_count > 0", 25),
    ("not user.country",
     "expected a true/false operand for 'not', got string; compare it with something, for example "
     "user.deposit_count > 0", 5),
    ("1 < user.deposit_count < 3",
     "comparisons cannot be chained; combine them with 'and', for example a < b and b < c", 24),
    ('user.country == "CA" == true',
     "comparisons cannot be chained; combine them with 'and', for example a < b and b < c", 22),
    ('user.country in "CA"',
     "'in' expects a list such as [\"CA\", \"US\"] or a string_set field on the right, got string", 17),
    ('user.country not in user.email',
     "'not in' expects a list such as [\"CA\", \"US\"] or a string_set field on the right, got string", 21),
    ('user.country in ["CA", 1]', "list mixes string and number; expected all elements to have the same type", 24),
    ("user.country in []", 'empty list; expected at least one element, for example ["CA", "US"]', 17),
    ('event.amount >= 10 and user.country in ["CA", user.country]',
     "list elements must be literals (numbers, strings, true, false, durations or ts(...)), got 'user'", 47),
    ('user.country in ["CA" "US"]',
     "expected ']' to close the list at column 17 (or ',' between elements), got string \"US\"", 23),
    ('user.deposit_count contains "1"', "'contains' expects a string or string_set on the left, got number", 1),
    ("user.tags contains 1", "'contains' expects a string on the right, got number", 20),
    ("day_since(user.registration_date) > 7", "unknown function day_since(); did you mean days_since()?", 1),
    ("frobnicate() == 1",
     "unknown function frobnicate(); expected one of abs, days_since, has, hours_since, len, lower, "
     "minutes_since, now, ts, upper", 1),
    ("days_since() > 7", "days_since() takes 1 argument, got 0", 1),
    ("now(1) > now()", "now() takes 0 arguments, got 1", 1),
    ("abs(1, 2) > 0", "abs() takes 1 argument, got 2", 1),
    ("days_since(user.country) > 1", "days_since() expects a timestamp, got string", 12),
    ('lower(user.deposit_count) == "x"', "lower() expects a string, got number", 7),
    ("len(user.deposit_count) > 1", "len() expects a string or string_set, got number", 5),
    ("abs(user.country) > 1", "abs() expects a number, got string", 5),
    ("has(1)", "has() expects a field, for example has(user.country)", 5),
    ("has(user.nope)", "unknown field user.nope; see `smartico-stream rules fields` for the known fields", 5),
    ('ts(1) > now()', 'ts() expects one string such as ts("2025-03-03T09:00:00Z")', 1),
    ('ts("2025-01-01", "x") > now()', 'ts() expects one string such as ts("2025-03-03T09:00:00Z")', 1),
    ('user.registration_date > ts("yesterday")',
     'invalid timestamp "yesterday"; expected ISO-8601 such as ts("2025-03-03T09:00:00Z")', 29),
    ("event.amount / 0 > 1", "division by zero", 14),
    ("event.amount / (1 - 1) > 1", "division by zero", 14),
    ('user.country == "CA', 'unterminated string; expected a closing "', 17),
    ("user.country == 'CA", "unterminated string; expected a closing '", 17),
    ('user.country == "CA\\', 'unterminated string; expected a closing "', 17),
    ("user.country == 'CA\\q'",
     "invalid escape '\\q' in string; expected one of \\\\ \\\" \\' \\n \\t \\r or \\u followed by 4 hex digits", 20),
    ('user.country == "\\u12"',
     "invalid escape '\\u' in string; expected one of \\\\ \\\" \\' \\n \\t \\r or \\u followed by 4 hex digits", 18),
    ("user.deposit_count = 1", "unexpected '='; use '==' to compare", 20),
    ('user.deposit_count > 1 && user.country == "CA"', "unexpected '&&'; use 'and'", 24),
    ('user.deposit_count > 1 || user.country == "CA"', "unexpected '||'; use 'or'", 24),
    ("!user.is_vip", "unexpected '!'; use 'not' to negate, or '!=' to compare", 1),
    ("user.deposit_count > 1 ; true", "unexpected character ';'", 24),
    ('user.deposit_count > 1 AND user.country == "CA"',
     "unexpected 'AND' after a complete expression; expected an operator, 'and', 'or' or the end of the "
     "condition; keywords are lower case", 24),
    ('user.deposit_count > 1 user.country == "CA"',
     "unexpected 'user' after a complete expression; expected an operator, 'and', 'or' or the end of the "
     "condition", 24),
    ("true)", "unexpected ')' after a complete expression; expected an operator, 'and', 'or' or the end of the "
     "condition", 5),
    ("user.deposit_count >",
     "expected a value (a field such as user.country, a literal or a function call), got end of input", 21),
    ("and true", "expected a value (a field such as user.country, a literal or a function call), got 'and'", 1),
    ("TRUE", "unknown name 'TRUE' (keywords are lower case); expected a field such as user.country or "
     "event.amount, true, false or a function call", 1),
    ("x == 1", "unknown name 'x'; expected a field such as user.country or event.amount, true, false or a "
     "function call", 1),
    ("user == 1", "expected '.' and a field name after 'user', for example user.country", 6),
    ('user.deposit_total[1] > 0', "expected a string key such as [\"EUR\"] after '[', got number 1", 20),
    ('user.deposit_total["EUR" > 0', "expected ']' after the map key, got '>'", 26),
    ("(user.deposit_count > 1", "expected ')' to close the '(' at column 1, got end of input", 24),
    ("days_since(user.registration_date > 1", "expected ')' to close the call to days_since(), got end of input", 38),
    ("event.event_time > now() - 24x",
     "invalid number '24x'; expected a number such as 10 or 10.5, or a duration such as 30m, 24h, 7d or 2w", 28),
    ("event.event_time > now() - 99999999999999w", "duration 99999999999999w is out of range", 28),
]


@pytest.mark.parametrize(("text", "message", "column"), ERRORS, ids=[text for text, _, _ in ERRORS])
def test_compile_errors(text: str, message: str, column: int) -> None:
    err = error(text)
    assert (err.message, err.column) == (message, column)
    assert err.expression == text
    assert str(err) == f"{message} (column {column})\n  {text}\n  {' ' * (column - 1)}^"


def test_error_format() -> None:
    assert str(error('user.contry == "CA"')) == (
        "unknown field user.contry; did you mean user.country? (column 1)\n"
        '  user.contry == "CA"\n'
        "  ^"
    )
    assert str(error("user.country > 5")) == (
        "cannot compare string with number; expected both sides of '>' to have the same type (column 14)\n"
        "  user.country > 5\n"
        "               ^"
    )


def test_errors_are_value_errors_and_pickle() -> None:
    err = error("user.country > 5")
    assert isinstance(err, ValueError)
    copy = pickle.loads(pickle.dumps(err))  # noqa: S301 - our own bytes, just made
    assert (copy.message, copy.expression, copy.column) == (err.message, err.expression, err.column)
    assert str(copy) == str(err)


def test_errors_in_multi_line_conditions_are_shown_on_one_line() -> None:
    err = error('user.deposit_count > 1\n  and user.contry == "CA"')
    assert err.column == 30
    assert str(err) == (
        "unknown field user.contry; did you mean user.country? (column 30)\n"
        '  user.deposit_count > 1   and user.contry == "CA"\n'
        "                               ^"
    )


@pytest.mark.parametrize(
    "text",
    ["(" * 1000 + "true" + ")" * 1000, "not " * 1000 + "true", "-" * 1000 + "1 > 0",
     " + ".join(["1"] * 1000) + " > 0", "abs(" * 1000 + "1" + ")" * 1000 + " > 0",
     'event.extra' + '["k"]' * 1000 + " == 1"],
    ids=["parentheses", "not", "minus", "plus", "calls", "index"],
)
def test_deep_nesting_is_a_condition_error(text: str) -> None:
    assert "nests too deeply (more than 32 levels)" in error(text).message


def test_long_flat_conditions_are_fine() -> None:
    text = " or ".join(f"user.deposit_count == {i}" for i in range(500))
    assert run(text, user=User(deposit_count=499)) is True


def test_any_values_type_check_as_anything() -> None:
    for text in ['event.extra["k"] == "x"', 'event.extra["k"] > 1', 'event.extra["k"] < now()',
                 'event.extra["k"] and true', 'not event.extra["k"]', 'event.extra["k"] in [1d]',
                 'lower(event.extra["k"]) == "x"', 'event.extra["k"] contains event.extra["j"]',
                 'event.extra["k"]', 'now() - event.extra["k"] < 1d', 'event.extra["k"] + 1d > now()',
                 'event.extra["k"] - event.extra["j"] == 1', '-event.extra["k"] < 0s']:
        compile_condition(text, SCHEMA)


# the documentation ----------------------------------------------------------------------------------------------

DOC = REPO / "docs" / "conditions.md"
DOC_USER = User(country=None, deposit_total={"EUR": Decimal(100)})


def doc_blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_doc_conditions_compile() -> None:
    lines = [line for block in doc_blocks("condition") for line in block.splitlines() if line.strip()]
    assert len(lines) >= 20
    for line in lines:
        compile_condition(line, SCHEMA)


DOC_EXAMPLES = [
    "user.deposit_count > 1",
    'user.country in ["CA", "US"]',
    'user.deposit_count > 1 and user.country in ["CA", "US"] and event.amount >= 10',
    'event.type == "deposit" and event.amount >= 100',
    'user.account_status == "ACTIVE"',
    'user.country not in ["CA", "US"]',
    '"vip" in user.tags',
    'user.tags contains "vip"',
    'user.username contains "vip"',
    'user.deposit_total["EUR"] >= 1000',
    'event.amount * 2 > user.deposit_total["EUR"] / 10',
    "event.event_time - user.registration_date < 1d",
    "user.last_deposit_time > now() - 24h",
    'user.registration_date >= ts("2025-01-01T00:00:00Z")',
    'not (user.country == "CA" or user.country == "US")',
    "days_since(user.registration_date) <= 7",
    "hours_since(user.last_deposit_time) < 1.5",
    "minutes_since(user.last_deposit_time) >= 30",
    'lower(event.method) == "paypal"',
    "len(user.tags) > 0",
    "abs(event.real_balance) < 5",
    "has(user.country)",
    'has(event.extra["vip_level"])',
]


def test_doc_conditions_compile_against_the_real_user_state() -> None:
    """The reference must not show fields a rule author cannot use."""
    from smartico_stream.engine.state import USER_SCHEMA as REAL_USER_SCHEMA

    real = {**REAL_USER_SCHEMA, **event_schema(Payment)}
    for line in (line for block in doc_blocks("condition") for line in block.splitlines() if line.strip()):
        compile_condition(line, real)


def test_doc_examples_are_all_listed_here() -> None:
    in_doc = [line for block in doc_blocks("condition") for line in block.splitlines() if line.strip()]
    assert sorted(in_doc) == sorted(DOC_EXAMPLES)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user.deposit_count > 1", True),
        ('user.country in ["CA", "US"]', True),
        ('user.deposit_count > 1 and user.country in ["CA", "US"] and event.amount >= 10', True),
        ('event.type == "deposit" and event.amount >= 100', True),
        ('user.account_status == "ACTIVE"', True),
        ('user.country not in ["CA", "US"]', False),
        ('"vip" in user.tags', True),
        ('user.tags contains "vip"', True),
        ('user.username contains "vip"', True),
        ('user.deposit_total["EUR"] >= 1000', True),
        ('event.amount * 2 > user.deposit_total["EUR"] / 10', True),
        ("event.event_time - user.registration_date < 1d", False),
        ("user.last_deposit_time > now() - 24h", True),
        ('user.registration_date >= ts("2025-01-01T00:00:00Z")', True),
        ('not (user.country == "CA" or user.country == "US")', False),
        ("days_since(user.registration_date) <= 7", True),
        ("hours_since(user.last_deposit_time) < 1.5", False),
        ("minutes_since(user.last_deposit_time) >= 30", True),
        ('lower(event.method) == "paypal"', True),
        ("len(user.tags) > 0", True),
        ("abs(event.real_balance) < 5", True),
        ("has(user.country)", True),
        ('has(event.extra["vip_level"])', True),
    ],
)
def test_doc_examples_evaluate(text: str, expected: bool) -> None:
    assert run(text) is expected


def doc_tables() -> list[tuple[str, bool]]:
    rows = re.findall(r"^\| `(.+?)`\s*\| (true|false)\s*\|$", DOC.read_text(), flags=re.MULTILINE)
    return [(text, result == "true") for text, result in rows]


def test_doc_missing_value_tables() -> None:
    rows = doc_tables()
    assert rows == [
        ('user.country == "CA"', False),
        ('user.country != "CA"', False),
        ('not (user.country == "CA")', True),
        ('user.country not in ["CA", "US"]', False),
        ('not (user.country in ["CA", "US"])', True),
        ('has(user.country) and user.country != "CA"', False),
        ('not has(user.country) or user.country != "CA"', True),
        ('user.deposit_total["USD"] > 0', False),
        ('user.deposit_total["USD"] + 10 > 5', False),
        ('not (user.deposit_total["USD"] > 0)', True),
        ('has(user.deposit_total["USD"])', False),
    ]
    for text, expected in rows:
        assert run(text, user=DOC_USER) is expected, text


def test_doc_unexpected_kind_example() -> None:
    event = payment(extra={"vip_level": "gold"})
    assert run('event.extra["vip_level"] >= 3', event=event) is False
    assert run('event.extra["vip_level"] != 3', event=event) is False


def test_doc_errors_are_printed_exactly() -> None:
    blocks = doc_blocks("text")
    assert len(blocks) >= 15
    for block in blocks:
        expression = block.splitlines()[1][2:]
        assert str(error(expression)) + "\n" == block
        assert any(text == expression for text, _, _ in ERRORS), f"{expression!r} is not in ERRORS"


# properties ------------------------------------------------------------------------------------------------

COMPARE = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge
}
NUMBERS = {"user.a": FieldType.NUMBER, "user.b": FieldType.NUMBER}


@dataclass
class Pair:
    a: Any
    b: Any


@settings(max_examples=300, deadline=None)
@given(a=st.integers(-10**30, 10**30), b=st.integers(-10**30, 10**30), op=st.sampled_from(sorted(COMPARE)),
       as_int=st.booleans())
def test_property_number_comparisons_match_python(a: int, b: int, op: str, as_int: bool) -> None:
    expected = COMPARE[op](Decimal(a), Decimal(b))
    values = Pair(a, b) if as_int else Pair(Decimal(a), Decimal(b))
    assert compile_condition(f"user.a {op} user.b", NUMBERS)(values, None, NOW) is expected
    assert compile_condition(f"user.a {op} {b}", NUMBERS)(values, None, NOW) is expected
    assert compile_condition(f"{a} {op} user.b", NUMBERS)(values, None, NOW) is expected
    assert compile_condition(f"{a} {op} {b}", NUMBERS)(values, None, NOW) is expected


@settings(max_examples=200, deadline=None)
@given(a=st.integers(-10**12, 10**12), b=st.integers(-10**12, 10**12))
def test_property_arithmetic_matches_python(a: int, b: int) -> None:
    values = Pair(Decimal(a), b)
    assert compile_condition(f"user.a + user.b == {a + b}", NUMBERS)(values, None, NOW)
    assert compile_condition(f"user.a - user.b == {a - b}", NUMBERS)(values, None, NOW)
    assert compile_condition(f"user.a * user.b == {a * b}", NUMBERS)(values, None, NOW)


BOOLS = {f"user.b{i}": FieldType.BOOL for i in range(4)}


@dataclass
class Flags:
    b0: bool | None
    b1: bool | None
    b2: bool | None
    b3: bool | None


def bool_expressions() -> st.SearchStrategy[tuple[str, Any]]:
    """(text, python evaluator over Flags) pairs; a missing (None) flag counts as false."""
    leaves = st.one_of(
        st.sampled_from(range(4)).map(lambda i: (f"user.b{i}", lambda f, i=i: getattr(f, f"b{i}") is True)),
        st.sampled_from([("true", lambda f: True), ("false", lambda f: False)]),
    )

    def extend(children: st.SearchStrategy[tuple[str, Any]]) -> st.SearchStrategy[tuple[str, Any]]:
        def combine(op: str, a: tuple[str, Any], b: tuple[str, Any]) -> tuple[str, Any]:
            (ta, fa), (tb, fb) = a, b
            if op == "and":
                return f"({ta} and {tb})", lambda f: fa(f) and fb(f)
            return f"({ta} or {tb})", lambda f: fa(f) or fb(f)

        negated = children.map(lambda c: (f"not {c[0]}", lambda f, c=c: not c[1](f)))
        return st.one_of(negated, st.builds(combine, st.sampled_from(["and", "or"]), children, children))

    return st.recursive(leaves, extend, max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(expression=bool_expressions(), flags=st.builds(Flags, *[st.sampled_from([True, False, None])] * 4))
def test_property_boolean_combinations_match_python(expression: tuple[str, Any], flags: Flags) -> None:
    text, evaluate = expression
    assert compile_condition(text, BOOLS)(flags, None, NOW) is evaluate(flags)


TOKENS = [
    "user.deposit_count", "user.country", "user.tags", "user.deposit_total", '["EUR"]', "event.amount",
    "event.extra", '["k"]', "event.type", "user.nope", "user.", "event", "and", "or", "not", "in", "not in",
    "contains", "==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/", "(", ")", "[", "]", ",", "true", "false",
    "1", "-3", "10.5", "0", "30m", "7d", "2w", '"CA"', "'US'", '"', "'", "\\", "now()", "days_since(",
    "has(", "len(", "lower(", "abs(", "ts(", '"2025-03-03T09:00:00Z"', "foo(", "=", "&&", "!", ".", "é", "\n",
]


@settings(max_examples=1000, deadline=None)
@given(text=st.one_of(st.text(max_size=80), st.lists(st.sampled_from(TOKENS), max_size=25).map(" ".join),
                      st.lists(st.sampled_from(TOKENS), max_size=25).map("".join)))
def test_property_compile_raises_only_condition_errors(text: str) -> None:
    error: ConditionError | None = None
    try:
        condition = compile_condition(text, SCHEMA)
    except ConditionError as err:
        error = err
    if error is not None:
        assert 1 <= error.column <= len(text) + 1
        assert "Traceback" not in str(error)
        return
    assert isinstance(condition, Condition)
    for user, event in ((User(), payment()), (User(country=None, tags=None, deposit_total={}), None), (object(), None)):
        assert condition(user, event, NOW) in (True, False)
