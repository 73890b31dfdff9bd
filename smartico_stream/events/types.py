"""Reusable field types of the canonical event contract.

Each type normalises what operators really send (epoch milliseconds or ISO-8601 with offsets, ids as
int/str/uuid, amounts as numbers or strings) into one canonical form, and rejects what cannot be
trusted (NaN, infinities, negative amounts, dates in the future where the spec demands the past).
"""

from __future__ import annotations

import functools
import math
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

import pycountry
from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, WithJsonSchema

# Timestamps ------------------------------------------------------------------------------------

# The spec sends epoch milliseconds; anything outside these years is a unit mistake, not a date.
_MIN_MS = -2_208_988_800_000  # 1900-01-01
_MAX_MS = 7_258_118_400_000  # 2200-01-01
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# "Must be in the past" tolerates this much clock skew between the operator and us.
FUTURE_TOLERANCE = timedelta(minutes=5)


def parse_utc_timestamp(value: Any) -> datetime:
    """Turn epoch milliseconds (int, float or digit string), an ISO-8601 string or a datetime into
    an aware UTC datetime truncated to millisecond precision. Naive values are taken as UTC (the
    spec's zone). Raises ValueError, never anything else, for input that is not a timestamp."""
    if isinstance(value, bool):
        raise ValueError("a timestamp must be epoch milliseconds or ISO-8601, not a boolean")
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, int | float | Decimal):
        if not math.isfinite(value):
            raise ValueError("a timestamp must be a finite number")
        millis = round(value)
        if not _MIN_MS <= millis <= _MAX_MS:
            raise ValueError(
                f"{millis} is outside 1900..2200 as epoch milliseconds (the spec's unit); seconds or "
                "microseconds are not accepted"
            )
        return _EPOCH + timedelta(milliseconds=millis)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value[:40]!r} is not a timestamp: use epoch milliseconds or ISO-8601") from None
    elif isinstance(value, datetime):
        moment = value
    else:
        raise ValueError("a timestamp must be epoch milliseconds or an ISO-8601 string")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 has no UTC representation
        raise ValueError("timestamp is outside the representable range") from None
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _must_be_past(moment: datetime) -> datetime:
    if moment > datetime.now(UTC) + FUTURE_TOLERANCE:
        raise ValueError("must be in the past")
    return moment


def _iso_millis(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


UtcTimestamp = Annotated[
    datetime,
    BeforeValidator(parse_utc_timestamp),
    PlainSerializer(_iso_millis, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": _MIN_MS, "maximum": _MAX_MS, "description": "epoch milliseconds"},
                {"type": "string", "format": "date-time"},
            ]
        }
    ),
    Field(description="UTC timestamp, millisecond precision (input: epoch ms or ISO-8601)"),
]
PastUtcTimestamp = Annotated[UtcTimestamp, AfterValidator(_must_be_past)]


# Identifiers -----------------------------------------------------------------------------------


def normalise_id(value: Any) -> str:
    """Ids arrive as int, string or uuid; the canonical form is a non-empty string."""
    if type(value) is str and value and not value[0].isspace() and not value[-1].isspace():
        return value  # the common case, first
    if isinstance(value, bool) or value is None:
        raise ValueError("an id must be an int, a string or a uuid")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("an id must not be empty")
        return text
    raise ValueError(f"an id must be an int, a string or a uuid, not {type(value).__name__}")


Identifier = Annotated[
    str,
    BeforeValidator(normalise_id),
    Field(max_length=256, description="int, string or uuid, normalised to a string"),
]


# Money -----------------------------------------------------------------------------------------


def _exact_decimal(value: Any) -> Any:
    # A JSON float such as 0.1 would become Decimal('0.1000000000000000055511151231257827');
    # going through repr keeps what the operator wrote.
    if isinstance(value, float):
        value = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            value = Decimal(value.strip())
        except ArithmeticError:
            return value  # not a number: pydantic reports it as such
    if isinstance(value, Decimal) and not value.is_finite():
        raise ValueError("must be a finite number")  # also catches sNaN, which breaks comparisons
    return value


_DECIMAL_TEXT = r"^\s*-?\d+(\.\d+)?\s*$"


def _decimal_schema(minimum: int | None) -> WithJsonSchema:
    number: dict[str, Any] = {"type": "number"}
    text: dict[str, Any] = {"type": "string", "pattern": _DECIMAL_TEXT}
    if minimum is not None:
        number["minimum"] = minimum
        text["description"] = f"a decimal number >= {minimum}"
    return WithJsonSchema({"anyOf": [number, text]})


Amount = Annotated[
    Decimal,
    _decimal_schema(0),
    BeforeValidator(_exact_decimal),
    Field(ge=0, allow_inf_nan=False, description="non-negative money amount in the user's currency"),
]
Balance = Annotated[
    Decimal,
    _decimal_schema(None),
    BeforeValidator(_exact_decimal),
    Field(allow_inf_nan=False, description="money balance; may be negative on credit platforms"),
]
Odds = Annotated[
    Decimal,
    _decimal_schema(1),
    BeforeValidator(_exact_decimal),
    Field(ge=1, allow_inf_nan=False, description="decimal odds"),
]


# ISO codes -------------------------------------------------------------------------------------


# Withdrawn currencies operators still send when they re-push history (Croatia joined the euro in
# 2023, Bulgaria in 2026); pycountry lists only current ones.
_WITHDRAWN_CURRENCIES = frozenset({"BGN", "HRK"})


@functools.cache
def _currencies() -> frozenset[str]:
    return frozenset(c.alpha_3 for c in pycountry.currencies) | _WITHDRAWN_CURRENCIES


@functools.cache
def _countries() -> frozenset[str]:
    return frozenset(c.alpha_2 for c in pycountry.countries)


@functools.cache
def _languages() -> frozenset[str]:
    return frozenset(lang.alpha_2.upper() for lang in pycountry.languages if hasattr(lang, "alpha_2"))


def _iso_code(kind: str, known: Any) -> Any:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"{kind} must be a string")
        code = value.strip().upper()
        if code not in known():
            raise ValueError(f"{value[:10]!r} is not an {kind}")
        return code

    return BeforeValidator(check)


CurrencyCode = Annotated[
    str, _iso_code("ISO 4217 currency code", _currencies), Field(description="ISO 4217, e.g. EUR")
]
CountryCode = Annotated[
    str, _iso_code("ISO 3166-1 alpha-2 country code", _countries), Field(description="ISO 3166-1 alpha-2, e.g. UA")
]
LanguageCode = Annotated[
    str, _iso_code("ISO 639-1 language code", _languages), Field(description="ISO 639-1, upper case, e.g. EN")
]
