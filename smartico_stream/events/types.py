"""Reusable field types of the canonical event contract.

Each type normalises what operators really send (epoch milliseconds or ISO-8601 with offsets, ids as
int/str/uuid, amounts as numbers or strings) into one canonical form, and rejects what cannot be
trusted (NaN, infinities, negative amounts, dates in the future where the spec demands the past).
"""

from __future__ import annotations

import functools
import math
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

import pycountry
from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, ValidationInfo, WithJsonSchema

# Timestamps ------------------------------------------------------------------------------------

# The spec sends epoch milliseconds; anything outside these years is a unit mistake, not a date.
_MIN_MS = -2_208_988_800_000  # 1900-01-01
_MAX_MS = 7_258_118_400_000  # 2200-01-01
# Business times (event, registration, deposit and match times) are never before 1973-03-03, which
# is 1e11 ms: a smaller integer is epoch seconds (1e11 s is the year 5138), never milliseconds.
MIN_BUSINESS_MS = 100_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# "Must be in the past" tolerates this much clock skew between the operator and us.
FUTURE_TOLERANCE = timedelta(minutes=5)
# A digit string longer than this is out of range in any unit; int() of a huge one is slow.
_MAX_EPOCH_DIGITS = 24
_FAR_OUT = 10**_MAX_EPOCH_DIGITS

_NOT_A_TIMESTAMP = "is not a timestamp: use epoch milliseconds or ISO-8601"


def _epoch_millis(value: Any) -> int | None:
    """The epoch number in ``value`` (int, float, Decimal or ASCII digit string), rounded to whole
    milliseconds, or None when ``value`` is not a number. Raises ValueError for booleans and
    non-finite numbers."""
    if isinstance(value, bool):
        raise ValueError("a timestamp must be epoch milliseconds or ISO-8601, not a boolean")
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text.startswith("-") else text
        # isascii: str.isdigit() is true for digits int() refuses, such as superscripts.
        if not (digits.isascii() and digits.isdigit()):
            return None
        if len(digits) > _MAX_EPOCH_DIGITS:
            return _MAX_MS * 10**12  # far out of range: reported as such
        return int(text)
    if isinstance(value, int | float | Decimal):
        if not math.isfinite(value):
            raise ValueError("a timestamp must be a finite number")
        if not -_FAR_OUT < value < _FAR_OUT:
            return _MAX_MS * 10**12  # round() of 1e999999 would build a million-digit int
        return round(value)
    return None


def _out_of_range(millis: int) -> str:
    """Why ``millis`` is not a timestamp: the unit it most likely is, never the number itself."""
    if _MAX_MS < millis <= _MAX_MS * 1000:
        return "is outside 1900..2200 as epoch milliseconds: looks like epoch microseconds; send milliseconds"
    if _MAX_MS * 1000 < millis <= _MAX_MS * 1_000_000:
        return "is outside 1900..2200 as epoch milliseconds: looks like epoch nanoseconds; send milliseconds"
    return "is outside 1900..2200 as epoch milliseconds (the spec's unit)"


def _from_millis(millis: int) -> datetime:
    if not _MIN_MS <= millis <= _MAX_MS:
        raise ValueError(_out_of_range(millis))
    return _EPOCH + timedelta(milliseconds=millis)


def _from_text_or_datetime(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(_NOT_A_TIMESTAMP) from None
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


def parse_utc_timestamp(value: Any) -> datetime:
    """Turn epoch milliseconds (int, float, Decimal or digit string) over 1900..2200, an ISO-8601
    string or a datetime into an aware UTC datetime truncated to millisecond precision. Naive values
    are taken as UTC (the spec's zone). Raises ValueError, never anything else, for input that is
    not a timestamp; the message never quotes the input."""
    if type(value) is int and _MIN_MS <= value <= _MAX_MS:
        return _EPOCH + timedelta(milliseconds=value)  # the common case, first
    millis = _epoch_millis(value)
    if millis is not None:
        return _from_millis(millis)
    return _from_text_or_datetime(value)


def parse_business_timestamp(value: Any) -> datetime:
    """:func:`parse_utc_timestamp` for the time of something that happened on the platform (events,
    registrations, deposits, matches): an epoch integer below 1e11 ms (before 1973-03-03) can only
    be epoch seconds and is refused with that reason, rather than read as a date in 1970."""
    if type(value) is int and MIN_BUSINESS_MS <= value <= _MAX_MS:
        return _EPOCH + timedelta(milliseconds=value)  # the common case, first
    millis = _epoch_millis(value)
    if millis is None:
        return _from_text_or_datetime(value)
    if 0 <= millis < MIN_BUSINESS_MS:
        raise ValueError("is before 1973-03-03 as epoch milliseconds: looks like epoch seconds; send milliseconds")
    if _MIN_MS <= millis < 0:
        raise ValueError("is before 1973-03-03 as epoch milliseconds: too early for a platform event")
    return _from_millis(millis)


def _must_be_past(moment: datetime, info: ValidationInfo) -> datetime:
    # A batch validation passes its one clock reading as the context's "now".
    context = info.context
    now = context.get("now") if isinstance(context, dict) else None
    if moment > (now or datetime.now(UTC)) + FUTURE_TOLERANCE:
        raise ValueError("must be in the past")
    return moment


def _iso_millis(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _timestamp_schema(minimum: int) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": minimum, "maximum": _MAX_MS, "description": "epoch milliseconds"},
                {"type": "string", "format": "date-time"},
            ]
        }
    )


UtcTimestamp = Annotated[
    datetime,
    BeforeValidator(parse_utc_timestamp),
    PlainSerializer(_iso_millis, return_type=str, when_used="json"),
    _timestamp_schema(_MIN_MS),
    Field(description="UTC timestamp, millisecond precision (input: epoch ms over 1900..2200 or ISO-8601)"),
]
PastUtcTimestamp = Annotated[UtcTimestamp, AfterValidator(_must_be_past)]
BusinessTimestamp = Annotated[
    datetime,
    BeforeValidator(parse_business_timestamp),
    PlainSerializer(_iso_millis, return_type=str, when_used="json"),
    _timestamp_schema(MIN_BUSINESS_MS),
    Field(
        description="UTC timestamp, millisecond precision (input: epoch ms from 1973-03-03 to 2200, or ISO-8601; "
        "smaller integers are epoch seconds and refused)"
    ),
]
PastBusinessTimestamp = Annotated[BusinessTimestamp, AfterValidator(_must_be_past)]


# Identifiers -----------------------------------------------------------------------------------

MAX_ID_LENGTH = 256
_ID_INT_LIMIT = 10**MAX_ID_LENGTH


def _storable_id(text: str) -> str:
    # Every store must accept what the model accepts: PostgreSQL refuses NUL and lone surrogates in
    # text, and a bounded length keeps keys and indexes sane.
    if len(text) > MAX_ID_LENGTH:
        raise ValueError(f"an id must have at most {MAX_ID_LENGTH} characters")
    if "\x00" in text:
        raise ValueError("an id must not contain a NUL character (\\u0000)")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("an id must not contain a lone surrogate (\\ud800-\\udfff)") from None
    return text


def normalise_id(value: Any) -> str:
    """Ids arrive as int, string or uuid; the canonical form is a non-empty string of at most 256
    characters that every store accepts (no NUL, no lone surrogate)."""
    if type(value) is str and value and not value[0].isspace() and not value[-1].isspace():
        # The common case, first (and inline: ids are the most frequent field).
        if len(value) <= MAX_ID_LENGTH and value.isascii() and "\x00" not in value:
            return value
        return _storable_id(value)
    if isinstance(value, bool) or value is None:
        raise ValueError("an id must be an int, a string or a uuid")
    if isinstance(value, int):
        # Compared first: str() of a huge int is slow, and refused past 4300 digits.
        if not -_ID_INT_LIMIT < value < _ID_INT_LIMIT:
            raise ValueError(f"an id must have at most {MAX_ID_LENGTH} characters")
        return str(value)
    if isinstance(value, Decimal) and value.is_finite() and value.as_tuple().exponent == 0:
        return _storable_id(str(value))  # an integer literal too long for int() (exact JSON decoding)
    if isinstance(value, float | Decimal):
        raise ValueError("an id must be an int, a string or a uuid, not a number with a fraction or an exponent")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("an id must not be empty")
        return _storable_id(text)
    raise ValueError(f"an id must be an int, a string or a uuid, not {_kind(value)}")


def _kind(value: Any) -> str:
    """A JSON-ish name for the type of ``value`` (a type, never the value)."""
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


Identifier = Annotated[
    str,
    BeforeValidator(normalise_id),
    # The length is checked by normalise_id (pydantic's own message would speak of "items").
    Field(json_schema_extra={"maxLength": MAX_ID_LENGTH}, description="int, string or uuid, normalised to a string"),
]


# Money -----------------------------------------------------------------------------------------

# The range every amount must fit: 18 digits on each side of the point. Exact in every store (the
# state keeps Decimals as text, PostgreSQL NUMERIC would need only NUMERIC(36, 18)) and in the
# engine, whose decimal context has at least 50 digits of precision, so sums of many such amounts
# stay exact.
MAX_INTEGER_DIGITS = 18
MAX_FRACTION_DIGITS = 18
_INTEGER_LIMIT = 10**MAX_INTEGER_DIGITS
_FLOAT_LIMIT = float(_INTEGER_LIMIT)  # exactly 1e18
_SHORT_TEXT = MAX_INTEGER_DIGITS + 1


def _bounded(number: Decimal) -> Decimal:
    _, digits, exponent = number.as_tuple()
    if not isinstance(exponent, int):  # "n", "N" or "F": NaN, sNaN, infinity
        raise ValueError("must be a finite number")  # also catches sNaN, which breaks comparisons
    if exponent < -MAX_FRACTION_DIGITS:
        raise ValueError(f"at most {MAX_FRACTION_DIGITS} digits after the decimal point")
    if len(digits) + exponent > MAX_INTEGER_DIGITS and number.copy_abs() >= _INTEGER_LIMIT:
        raise ValueError(f"at most {MAX_INTEGER_DIGITS} digits before the decimal point")
    return number


def _exact_decimal(value: Any) -> Any:
    """Money as the operator wrote it, within the range the schema allows (see MAX_INTEGER_DIGITS)."""
    kind = type(value)
    if kind is float:
        # A JSON float such as 0.1 would become Decimal('0.1000000000000000055511151231257827');
        # going through repr keeps what the operator wrote.
        text = repr(value)
        # Fast path: no exponent and at most 19 characters cannot exceed 18 digits after the point.
        if -_FLOAT_LIMIT < value < _FLOAT_LIMIT and len(text) <= _SHORT_TEXT and "e" not in text:
            return Decimal(text)
        return _bounded(Decimal(text))  # also NaN and infinities, which _bounded refuses
    if kind is str:
        text = value.strip()
        try:
            number = Decimal(text)
        except ArithmeticError:
            return value  # not a number: pydantic reports it as such
        # Fast path: 18 characters without an exponent cannot exceed 18 digits on either side.
        if len(text) < _SHORT_TEXT and number.is_finite() and "e" not in text and "E" not in text:
            return number
        return _bounded(number)
    if isinstance(value, Decimal):  # exact JSON decoding and adapters' own arithmetic give Decimals
        return _bounded(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _INTEGER_LIMIT:
        raise ValueError(f"at most {MAX_INTEGER_DIGITS} digits before the decimal point")
    return value


_DECIMAL_TEXT = rf"^\s*-?\d{{1,{MAX_INTEGER_DIGITS}}}(\.\d{{1,{MAX_FRACTION_DIGITS}}})?\s*$"


def _decimal_schema(minimum: int | None) -> WithJsonSchema:
    bounds = f"at most {MAX_INTEGER_DIGITS} digits before and {MAX_FRACTION_DIGITS} after the decimal point"
    number: dict[str, Any] = {"type": "number", "exclusiveMaximum": _INTEGER_LIMIT, "description": bounds}
    text: dict[str, Any] = {"type": "string", "pattern": _DECIMAL_TEXT, "description": f"a decimal number, {bounds}"}
    if minimum is not None:
        number["minimum"] = minimum
        text["description"] = f"a decimal number >= {minimum}, {bounds}"
    else:
        number["exclusiveMinimum"] = -_INTEGER_LIMIT
    return WithJsonSchema({"anyOf": [number, text]})


# The constraints come before the validator so pydantic-core checks them natively on the Decimal
# (after a BeforeValidator they would run as Python functions, twice the cost per amount).
Amount = Annotated[
    Decimal,
    Field(ge=0, allow_inf_nan=False, description="non-negative money amount in the user's currency"),
    _decimal_schema(0),
    BeforeValidator(_exact_decimal),
]
Balance = Annotated[
    Decimal,
    Field(allow_inf_nan=False, description="money balance; may be negative on credit platforms"),
    _decimal_schema(None),
    BeforeValidator(_exact_decimal),
]
Odds = Annotated[
    Decimal,
    Field(ge=1, allow_inf_nan=False, description="decimal odds"),
    _decimal_schema(1),
    BeforeValidator(_exact_decimal),
]

# Counts and numeric ids: the state is JSON written by orjson, which holds 64-bit integers only.
MAX_INT64 = 2**63 - 1
Count = Annotated[int, Field(ge=0, le=MAX_INT64)]


# Custom properties (extra) ---------------------------------------------------------------------

MAX_NESTING = 32
"""How deep objects and arrays may nest inside one field of a record (and one value of extra)."""

_UINT64_END = 2**64
_INT64_MIN = -(2**63)
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-\[\]]{0,63}")


def is_field_name(key: object) -> bool:
    """Whether ``key`` is shaped like a field name (``vip_tier``, ``player.id``, ``legs[1]``), so
    that a message may quote it: keys are the operator's vocabulary, but a hostile record can put
    personal data (an email, a phone) in a key too."""
    return isinstance(key, str) and _PLAIN_KEY.fullmatch(key) is not None


def field_label(key: object) -> str:
    """``key`` quoted for a message when :func:`is_field_name`, else a placeholder."""
    return repr(key) if is_field_name(key) else "a key"


def _exact_json_number(number: Decimal) -> float | str:
    # A double when it holds the literal's value exactly (as JSON numbers usually are), else the
    # literal's text: custom fields are never silently rounded.
    if number.is_finite():
        double = float(number)
        if math.isfinite(double) and Decimal(repr(double)) == number:
            return double
    return str(number)


def _normalised(value: Any, depth: int, key: object) -> Any:
    """``value`` with long numbers made exact, or the same object when nothing needed changing."""
    kind = type(value)
    if kind is str:
        if "\x00" in value:
            raise ValueError(f"{field_label(key)} contains a NUL character (\\u0000), which stores refuse")
        return value
    if kind is int:
        return value if _INT64_MIN <= value < _UINT64_END else str(value)  # orjson writes 64-bit ints only
    if kind is Decimal:
        return _exact_json_number(value)
    if kind is dict or kind is list:
        if depth >= MAX_NESTING:
            raise ValueError(f"{field_label(key)} is nested deeper than {MAX_NESTING} levels")
        if kind is dict:
            return _normalised_object(value, depth + 1, key)
        changed = None
        for index, item in enumerate(value):
            new = _normalised(item, depth + 1, key)
            if new is not item:
                changed = changed if changed is not None else list(value)
                changed[index] = new
        return value if changed is None else changed
    return value  # bool, float, None, or not JSON at all (pydantic reports that)


# Values _normalised returns unchanged without a look inside (str is checked inline for NUL).
_SIMPLE = frozenset({float, bool, type(None)})


def _normalised_object(value: dict[Any, Any], depth: int, owner: object) -> dict[Any, Any]:
    changed = None
    for key, item in value.items():
        if type(key) is str and "\x00" in key:
            where = "a key" if owner is None else f"a key inside {field_label(owner)}"
            raise ValueError(f"{where} contains a NUL character (\\u0000), which stores refuse")
        kind = type(item)
        if (
            kind in _SIMPLE
            or (kind is str and "\x00" not in item)
            or (kind is int and _INT64_MIN <= item < _UINT64_END)
        ):
            continue  # the common cases, without a call
        new = _normalised(item, depth, key if owner is None else owner)
        if new is not item:
            changed = changed if changed is not None else dict(value)
            changed[key] = new
    return value if changed is None else changed


def normalise_extra(value: Any) -> Any:
    """Check and normalise the custom properties of an event: values nest at most MAX_NESTING
    levels, no string or key holds NUL (PostgreSQL refuses it), and a number a JSON double or a
    64-bit integer cannot hold exactly is kept as its literal text. Other values pass unchanged,
    for pydantic to check as JSON."""
    if type(value) is not dict or not value:
        return value
    return _normalised_object(value, 0, None)


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
            raise ValueError(f"not an {kind}")
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
