"""A seeded corpus of hostile operator records, labelled, for the live hostile-input test.

Every record starts from a *valid* golden-file input of a built-in adapter (``adapters/reference/golden``,
``adapters/betwave/golden``: the lines whose expectation is events), re-addressed to a user of the test
and given fresh ids. The valid records are those, unchanged otherwise. Each hostile record is one of
them with one mutation of a named class (``CLASSES``), and carries:

- ``label``: its class;
- ``planted``: the PII values (emails, phones) written into it, which must never appear in plaintext
  outside the PII vault, whatever happens to the record;
- ``expect``: ``DEAD_LETTER`` (it must not be applied: the only right outcome is a dead letter),
  ``ACCEPT`` (a well-formed record whose PII sits in a custom field: applied, with the PII protected) or
  ``EXACT_OR_DEAD_LETTER`` (an integer id beyond 2^64: a dead letter with a true reason, or applied
  with the id exactly as written, never rounded through a float);
- ``reason``: for classes whose old rejection reason was misleading, a pattern the dead letter's reason
  must match (what the record really did wrong).

What "wrong acceptance" means, per class, is in each generator's docstring. Generation is pure: the
same seed gives byte-identical records.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson

from tests.support.common import REPO

Path_ = tuple[str, ...]


class Expect(Enum):
    DEAD_LETTER = "dead_letter"
    ACCEPT = "accept"
    # A dead letter with a true reason, or applied with ``Record.literal`` kept exactly as written.
    EXACT_OR_DEAD_LETTER = "exact_or_dead_letter"


@dataclass(frozen=True, slots=True)
class Template:
    """A valid golden input: its adapter, the stream it is sent on and the decoded message."""

    adapter: str
    stream: str
    value: Mapping[str, Any]
    source: str  # "<case>.input.jsonl:<line>", for failure messages


@dataclass(frozen=True, slots=True)
class Record:
    """One record to produce: on ``stream``'s topic, with Kafka key ``key`` and exactly these bytes."""

    adapter: str
    stream: str
    key: str | None  # None: produced without a key
    value: bytes
    label: str  # "valid" or a hostile class
    user: str  # the user the record is addressed to (a neighbour's id, or a fresh one)
    planted: tuple[str, ...] = ()
    expect: Expect = Expect.ACCEPT
    reason: str | None = None  # regex the dead letter's reason must match (None: not checked)
    detail: str = ""  # what exactly was done, for failure messages
    template: str = ""
    literal: str | None = None  # EXACT_OR_DEAD_LETTER: the text that must survive unchanged if applied
    literal_path: str = ""  # where it was written ("user_ext_id", "player.id", ...)

    @property
    def hostile(self) -> bool:
        return self.label != "valid"


# -- where things are in each adapter's format --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shape:
    """Where one adapter's format keeps the fields the mutations target."""

    name: str
    user: Path_
    brand: Path_
    ids: tuple[Path_, ...]  # event-id-like fields, made unique per record
    times: tuple[Path_, ...]  # event-time fields
    other_times: tuple[Path_, ...]  # other timestamps (registration, aggregates, match start)
    amounts: tuple[Path_, ...]
    amount_is_minor_string: bool  # betwave: "amountMinor": "1050"
    currencies: tuple[Path_, ...]
    kind: Path_
    codes: tuple[Path_, ...]  # ISO language / country fields
    unknown_kind: Any
    lanes: Mapping[str, str]  # template stream -> the stream a user's records all go to (per-user order)

    def lane(self, template: Template) -> str:
        return self.lanes.get(template.stream, template.stream)


REFERENCE = Shape(
    name="reference",
    user=("user_ext_id",),
    brand=("ext_brand_id",),
    ids=(("transaction_id",), ("bet_id",), ("event_id",), ("selection_id",)),
    times=(("dt_update",), ("dt_finalized",), ("transaction_date",), ("bet_date",), ("event_date",)),
    other_times=(("core_registration_date",), ("first_deposit_time",), ("last_deposit_time",), ("match_start_date",)),
    amounts=(("amount",), ("deposit_amount",), ("bet_amount",), ("win_amount",), ("stake",), ("payout",)),
    amount_is_minor_string=False,
    currencies=(("core_wallet_currency",),),
    kind=("type",),
    codes=(("core_user_language",), ("user_country",)),
    unknown_kind="refund_reversal",
    # A profile goes on the payments stream as "type": "user_profile", so that a user's profile and
    # payments are one partition's records, read in order (two topics interleave differently per run).
    lanes={"profile": "payments"},
)

BETWAVE = Shape(
    name="betwave",
    user=("player", "id"),
    brand=("player", "brand", "code"),
    ids=(("meta", "eventId"), ("payment", "id"), ("round", "id"), ("slip", "id")),
    times=(("meta", "occurredAt"),),
    other_times=(("player", "registeredAt"), ("totals", "firstDepositAt"), ("totals", "lastDepositAt")),
    amounts=(
        ("money", "amountMinor"), ("bet", "amountMinor"), ("win", "amountMinor"), ("slip", "stake", "amountMinor"),
    ),
    amount_is_minor_string=True,
    currencies=(("money", "currency"), ("bet", "currency"), ("player", "walletCurrency")),
    kind=("meta", "kind"),
    codes=(("player", "locale"), ("player", "contact", "country")),
    unknown_kind=999,
    # meta.kind alone decides the mapping, so every record can go on one stream.
    lanes={"profile": "payments", "casino": "payments", "sport": "payments"},
)

SHAPES = {shape.name: shape for shape in (REFERENCE, BETWAVE)}


def golden_templates(adapter: str) -> list[Template]:
    """The valid inputs of ``adapter``'s golden files (lines whose expectation is events), in file order."""
    directory = REPO / "adapters" / adapter / "golden"
    templates = []
    for path in sorted(directory.glob("*.input.jsonl")):
        expected = path.with_name(path.name.replace(".input.", ".expected."))
        inputs = [line for line in path.read_bytes().splitlines() if line.strip()]
        outcomes = [line for line in expected.read_bytes().splitlines() if line.strip()]
        for number, (line, outcome) in enumerate(zip(inputs, outcomes, strict=True), start=1):
            item, verdict = orjson.loads(line), orjson.loads(outcome)
            if "events" in verdict and verdict["events"] and isinstance(item["value"], dict):
                templates.append(Template(adapter, item["stream"], item["value"], f"{path.name}:{number}"))
    return templates


# -- path helpers ---------------------------------------------------------------------------------------


def _get(obj: Any, path: Path_) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def _has(obj: Any, path: Path_) -> bool:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return False
        obj = obj[key]
    return True


def _set(obj: dict[str, Any], path: Path_, value: Any) -> None:
    for key in path[:-1]:
        nxt = obj.get(key)
        if not isinstance(nxt, dict):
            nxt = obj[key] = {}
        obj = nxt
    obj[path[-1]] = value


def _delete(obj: dict[str, Any], path: Path_) -> None:
    for key in path[:-1]:
        obj = obj[key]
    del obj[path[-1]]


def _present(message: Mapping[str, Any], paths: Sequence[Path_]) -> list[Path_]:
    return [path for path in paths if _get(message, path) is not None]


def _primary(message: Mapping[str, Any], paths: Sequence[Path_]) -> list[Path_]:
    """The field the mapping reads among fallbacks (``a / b``: ``a`` when present), as a list."""
    return _present(message, paths)[:1]


def _event_ids(shape: Shape, message: Mapping[str, Any]) -> list[Path_]:
    """The ids the mapping turns into the event id (not ids that only land in ``extra``)."""
    if shape.name == "reference":
        if message.get("type") == "user_profile":
            return [("event_id",)]
        return _primary(message, (("transaction_id",), ("bet_id",)))
    return _present(message, (("payment", "id"), ("round", "id"), ("slip", "id")))


# -- raw splices: bytes orjson would never write -----------------------------------------------------------

_SPLICE = "@@splice{}@@"


def _dump(message: Any, splices: Mapping[str, bytes] | None = None) -> bytes:
    """``message`` as JSON, then every ``"@@spliceN@@"`` string (or key) replaced by raw bytes."""
    raw = orjson.dumps(message)
    for token, replacement in (splices or {}).items():
        quoted = orjson.dumps(token)
        assert quoted in raw, token
        raw = raw.replace(quoted, replacement)
    return raw


# -- the generator ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Ctx:
    rng: random.Random
    shape: Shape
    seed: int
    n: int = 0
    splice_n: int = 0
    planted: list[str] = field(default_factory=list)
    literal: tuple[str, str] | None = None  # (path, text) an EXACT_OR_DEAD_LETTER mutation wrote
    keyless: bool = False  # produce the record without a Kafka key

    def email(self) -> str:
        value = f"hx{self.seed}.leak{self.n}.{self.rng.randrange(10**6):06d}@pii-probe.example"
        self.planted.append(value)
        return value

    def phone(self) -> str:
        value = f"+49176{self.rng.randrange(10**8):08d}"
        self.planted.append(value)
        return value

    def secret(self) -> str:
        """A value that is personal data only because of the field it is in (a listed custom field)."""
        value = f"Qzmaiden{self.seed}x{self.n}x{self.rng.randrange(10**6):06d}"
        self.planted.append(value)
        return value

    def pii(self) -> str:
        return self.email() if self.rng.random() < 0.5 else self.phone()

    def splice(self) -> str:
        self.splice_n += 1
        return _SPLICE.format(self.splice_n)


Mutation = Callable[[_Ctx, dict[str, Any], Template], tuple[bytes, str]]


@dataclass(frozen=True, slots=True)
class HostileClass:
    """One class of hostile input: how to make a record of it from a template."""

    name: str
    mutate: Mutation
    expect: Expect = Expect.DEAD_LETTER
    reason: str | None = None
    fits: Callable[[Shape, Template], bool] = lambda shape, template: True
    fresh_user: bool = False  # addressed to a user of its own (an accepted record changes its user)
    count: int | None = None  # records of this class per corpus (default: make_corpus's per_class)
    doc: str = ""


def _plant_custom(ctx: _Ctx, message: dict[str, Any]) -> None:
    """A PII value in a custom field, so that a leak of the record's content anywhere is seen."""
    message[f"note_{ctx.rng.randrange(100)}"] = ctx.pii()


def _mutate_drop(ctx: _Ctx, message: dict[str, Any], template: Template) -> tuple[bytes, str]:
    shape = ctx.shape
    chains = [[shape.user], [shape.brand], [shape.kind], _present(message, shape.times), _event_ids(shape, message)]
    if shape.name == "reference" and message.get("type") == "user_profile":
        chains.pop()  # a profile without an event id gets one derived from user and time
    chain = ctx.rng.choice([[p for p in c if _has(message, p)] for c in chains if any(_has(message, p) for p in c)])
    if shape.name == "reference" and chain and chain[0] == ("transaction_id",):
        chain += _present(message, (("bet_id",),))  # the casino fallback
    for path in chain:
        _delete(message, path)
    _plant_custom(ctx, message)
    return _dump(message), f"dropped {', '.join('.'.join(path) for path in chain)}"


def _mutate_duplicate(ctx: _Ctx, message: dict[str, Any], template: Template) -> tuple[bytes, str]:
    # The user id twice in one object, the last one empty: orjson keeps the last (empty: rejected),
    # a parser keeping the first would take the valid one. Either way, never two readings applied.
    path = ctx.shape.user
    token = ctx.splice()
    _set(message, (*path[:-1], token), "")
    _plant_custom(ctx, message)
    return _dump(message, {token: orjson.dumps(path[-1])}), f"duplicate key {'.'.join(path)} (last empty)"


def _mutate_retype(ctx: _Ctx, message: dict[str, Any], template: Template) -> tuple[bytes, str]:
    shape = ctx.shape
    candidates = [shape.user, shape.brand, *_primary(message, shape.times), *_primary(message, shape.amounts)]
    path = ctx.rng.choice([p for p in candidates if _has(message, p)])
    original = _get(message, path)
    replacement = ctx.rng.choice([[original], {"value": original}, [], {}, [ctx.pii()]])
    _set(message, path, replacement)
    _plant_custom(ctx, message)
    return _dump(message), f"{'.'.join(path)} retyped to {type(replacement).__name__}"


def _mutate_huge_id(ctx: _Ctx, message: dict[str, Any], template: Template) -> tuple[bytes, str]:
    shape = ctx.shape
    path = ctx.rng.choice([shape.user, *_event_ids(shape, message)])
    size = ctx.rng.choice([10_000, 100_000, 300_000])
    _set(message, path, "x" * size)
    _plant_custom(ctx, message)
    return _dump(message), f"{'.'.join(path)} is {size} characters"


def _mutate_deep(ctx: _Ctx, message: dict[str, Any], template: Template) -> tuple[bytes, str]:
    depth = ctx.rng.choice([300, 600, 2_000, 10_000])
    token = ctx.splice()
    message["deep_custom"] = token
    leaf = orjson.dumps(ctx.pii())
    return _dump(message, {token: b"[" * depth + leaf + b"]" * depth}), f"custom field nested {depth} deep"


def _id_or_custom(ctx: _Ctx, message: dict[str, Any], in_id: bool) -> tuple[Path_, str]:
    if in_id:
        path = ctx.rng.choice([ctx.shape.user, ctx.shape.brand, *_event_ids(ctx.shape, message)])
        return path, f"in id {'.'.join(path)}"
    return ("custom_field",), "in custom field"


def _with_text(ctx: _Ctx, message: dict[str, Any], in_id: bool, raw_middle: bytes | None, text_middle: str | None,
               what: str) -> tuple[bytes, str]:
    path, where = _id_or_custom(ctx, message, in_id)
    base = str(_get(message, path) or "abc")
    if text_middle is not None:
        _set(message, path, base[:2] + text_middle + base[2:])
        _plant_custom(ctx, message)
        return _dump(message), f"{what} {where}"
    assert raw_middle is not None
    token = ctx.splice()
    _set(message, path, token)
    _plant_custom(ctx, message)
    literal = orjson.dumps(base[:2])[:-1] + raw_middle + orjson.dumps(base[2:])[1:]
    return _dump(message, {token: literal}), f"{what} {where}"


def _mutate_nul_id(ctx: _Ctx, message: dict[str, Any], template: Template) -> tuple[bytes, str]:
    return _with_text(ctx, message, True, None, "\x00", "NUL")


def _mutate_nul_custom(ctx: _Ctx, message: dict[str, Any], template: Template) -> tuple[bytes, str]:
    return _with_text(ctx, message, False, None, ctx.rng.choice(["\x00", "a\x00b"]), "NUL")


def _mutate_surrogate_id(ctx: _Ctx, message: dict[str, Any], template: Template) -> tuple[bytes, str]:
    return _with_text(ctx, message, True, ctx.rng.choice([b"\\ud800", b"\\udfff", b"\\ud83d"]), None, "lone surrogate")


def _mutate_surrogate_custom(ctx: _Ctx, message: dict[str, Any], template: Template) -> tuple[bytes, str]:
    return _with_text(ctx, message, False, ctx.rng.choice([b"\\ud800", b"\\udc00x"]), None, "lone surrogate")


def _mutate_utf8_id(ctx: _Ctx, message: dict[str, Any], template: Template) -> tuple[bytes, str]:
    return _with_text(ctx, message, True, ctx.rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xe2\x82"]), None,
                      "invalid UTF-8")


def _mutate_utf8_custom(ctx: _Ctx, message: dict[str, Any], template: Template) -> tuple[bytes, str]:
    return _with_text(ctx, message, False, ctx.rng.choice([b"\xff\xfe", b"\xc0\xaf", b"\x80"]), None, "invalid UTF-8")


def _mutate_big_int_id(ctx: _Ctx, message: dict[str, Any], template: Template) -> tuple[bytes, str]:
    path = ctx.shape.user  # where an exact acceptance is visible: the user's key in the store
    token = ctx.splice()
    _set(message, path, token)
    # No PII planted: the record may rightly be applied, and custom-field PII is another class.
    base = 2**64 if ctx.rng.random() < 0.5 else 10**30
    number = base + ctx.rng.randrange(10**6)
    detail = f"{'.'.join(path)} = integer of {len(str(number))} digits, >= 2^64"
    ctx.literal = (".".join(path), str(number))
    return _dump(message, {token: str(number).encode()}), detail


def _digits(ctx: _Ctx, count: int) -> str:
    return str(ctx.rng.randrange(1, 10)) + "".join(str(ctx.rng.randrange(10)) for _ in range(count - 1))


def _mutate_amount(count: int) -> Mutation:
    def mutate(ctx: _Ctx, message: dict[str, Any], template: Template) -> tuple[bytes, str]:
        path = ctx.rng.choice(_primary(message, ctx.shape.amounts))
        digits = _digits(ctx, count)
        _plant_custom(ctx, message)
        if ctx.shape.amount_is_minor_string:
            _set(message, path, digits)  # minor units are digit strings in this format
            return _dump(message), f"{'.'.join(path)} = {count}-digit minor units"
        token = ctx.splice()
        _set(message, path, token)
        literal = (digits if ctx.rng.random() < 0.5 else f"{digits[:-2]}.{digits[-2:]}").encode()
        return _dump(message, {token: literal}), f"{'.'.join(path)} = {count}-digit JSON number"

    return mutate


def _mutate_epoch(unit: str) -> Mutation:
    def mutate(ctx: _Ctx, message: dict[str, Any], template: Template) -> tuple[bytes, str]:
        # The event time mostly; any other timestamp the record has, sometimes.
        others = _present(message, ctx.shape.other_times)
        path = ctx.rng.choice(others if others and ctx.rng.random() < 0.35 else _primary(message, ctx.shape.times))
        # A plausible recent instant (2023-11-14 .. 2024-03), in the wrong unit, as a number or a digit string.
        seconds = 1_700_000_000 + ctx.rng.randrange(10_000_000)
        value: int | str = seconds if unit == "seconds" else seconds * 1_000_000
        if ctx.rng.random() < 0.3:
            value = str(value)
        _set(message, path, value)
        _plant_custom(ctx, message)
        return _dump(message), f"{'.'.join(path)} in epoch {unit}"

    return mutate


def _mutate_pii_wrong_field(ctx: _Ctx, message: dict[str, Any], template: Template) -> tuple[bytes, str]:
    shape = ctx.shape
    candidates = [shape.kind, *_primary(message, shape.times), *_present(message, shape.currencies),
                  *_present(message, shape.codes)]
    path = ctx.rng.choice([p for p in candidates if _has(message, p)])
    _set(message, path, ctx.pii())
    return _dump(message), f"PII in {'.'.join(path)}"


_CONTACT_KEYS = ("contact_email", "mobile", "backup_email", "alt_phone", "whatsapp", "emailAddress")


def _mutate_pii_custom(ctx: _Ctx, message: dict[str, Any], template: Template) -> tuple[bytes, str]:
    """Accepted, protected: the profile is valid; its custom fields hold an email and a phone."""
    keys = ctx.rng.sample(_CONTACT_KEYS, 2)
    message[keys[0]] = ctx.email()
    message[keys[1]] = ctx.phone()
    return _dump(message), f"PII in custom profile fields {keys}"


# The custom field the live test lists in pii.custom_fields (personal data whatever the value looks like).
LISTED_CUSTOM_FIELD = "mothers_maiden_name"


def _mutate_pii_listed_custom(ctx: _Ctx, message: dict[str, Any], template: Template) -> tuple[bytes, str]:
    """Accepted, protected: a valid record whose custom field listed in ``pii.custom_fields`` holds a
    value that looks like neither an email nor a phone."""
    message[LISTED_CUSTOM_FIELD] = ctx.secret()
    return _dump(message), f"a value in the listed custom field {LISTED_CUSTOM_FIELD}"


def _mutate_missing_key(ctx: _Ctx, message: dict[str, Any], template: Template) -> tuple[bytes, str]:
    """A valid body without a Kafka key: per-user order cannot be kept, so it is a dead letter
    (limits.require_key, on by default)."""
    ctx.keyless = True
    _plant_custom(ctx, message)
    return _dump(message), "no Kafka key"


def _mutate_oversized(ctx: _Ctx, message: dict[str, Any], template: Template) -> tuple[bytes, str]:
    """Larger than limits.max_message_bytes (1,000,000 by default): a dead letter read no further,
    its value truncated and encrypted. The PII sits at the very end, past any truncation point."""
    size = ctx.rng.choice([1_000_100, 1_200_000])
    message["padding"] = ""
    message["zz_contact"] = ctx.pii()
    message["padding"] = "p" * (size - len(_dump(message)))
    value = _dump(message)
    assert len(value) == size
    return value, f"a record of {size} bytes"


def _mutate_unknown_type(ctx: _Ctx, message: dict[str, Any], template: Template) -> tuple[bytes, str]:
    value = ctx.shape.unknown_kind if ctx.rng.random() < 0.5 else ctx.rng.choice(["", "DEPOSITT", "Ünknown", 12345])
    _set(message, ctx.shape.kind, value)
    _plant_custom(ctx, message)
    return _dump(message), f"{'.'.join(ctx.shape.kind)} unknown"


def _mutate_non_object(ctx: _Ctx, message: dict[str, Any], template: Template) -> tuple[bytes, str]:
    pii = ctx.pii()
    choice = ctx.rng.randrange(6)
    value = [
        orjson.dumps([message, pii]), orjson.dumps(pii), b"42", b"null", b"true", orjson.dumps([[pii]]),
    ][choice]
    return value, f"non-object JSON ({value[:1]!r}...)"


def _mutate_empty(ctx: _Ctx, message: dict[str, Any], template: Template) -> tuple[bytes, str]:
    choice = ctx.rng.randrange(5)
    if choice == 0:
        return b"", "empty payload"
    if choice == 1:
        return b"{}", "empty object"
    if choice == 2:
        return b"   \n", "whitespace payload"
    path = ctx.rng.choice([ctx.shape.user, ctx.shape.brand, *_event_ids(ctx.shape, message)])
    _set(message, path, "" if choice == 3 else "   ")
    _plant_custom(ctx, message)
    return _dump(message), f"{'.'.join(path)} empty"


def _has_amount(shape: Shape, template: Template) -> bool:
    return bool(_present(template.value, shape.amounts))


def _has_time(shape: Shape, template: Template) -> bool:
    return bool(_present(template.value, shape.times))


def _is_profile(shape: Shape, template: Template) -> bool:
    if shape.name == "betwave":
        return _get(template.value, ("meta", "kind")) in (100, 101)
    return template.stream == "profile" or template.value.get("type") == "user_profile"


_NUMBER_REASON = r"(?i)digit|range|too (large|big|long)|exceed|precision|magnitude|maximum|at most"

CLASSES: tuple[HostileClass, ...] = (
    # Mutations of the golden inputs.
    HostileClass("drop_required_field", _mutate_drop, doc="a required field removed: applied means invented data"),
    HostileClass("duplicate_key", _mutate_duplicate, doc="the user id twice, the last empty"),
    HostileClass("retype_field", _mutate_retype, doc="a required scalar sent as a list or an object"),
    HostileClass("huge_string_in_id", _mutate_huge_id, reason=r"(?i)long|length|characters|size|large|at most",
                 doc="an id of 10k-300k characters (no store indexes that)"),
    HostileClass("deep_nesting", _mutate_deep, reason=r"(?i)nest|deep|depth",
                 doc="a custom field nested 300-10,000 deep (cannot be stored as JSON)"),
    HostileClass("nul_in_id", _mutate_nul_id, doc="the PostgreSQL poison pill: NUL in user, brand or event id"),
    HostileClass("nul_in_custom_field", _mutate_nul_custom, doc="NUL in a custom field (PostgreSQL jsonb refuses it)"),
    HostileClass("lone_surrogate_in_id", _mutate_surrogate_id, doc="a \\ud800-style escape in an id"),
    HostileClass("lone_surrogate_in_custom_field", _mutate_surrogate_custom, doc="the same in a custom field"),
    HostileClass("invalid_utf8_in_id", _mutate_utf8_id, reason=r"(?i)utf-?8",
                 doc="bytes that are not UTF-8 inside an id string (reason must say UTF-8)"),
    HostileClass("invalid_utf8_in_custom_field", _mutate_utf8_custom, reason=r"(?i)utf-?8",
                 doc="the same in a custom field"),
    HostileClass("integer_beyond_2_64", _mutate_big_int_id, reason=r"(?i)64|range|too (large|big|long)|exceed|digits",
                 expect=Expect.EXACT_OR_DEAD_LETTER, fresh_user=True,
                 doc="an integer id >= 2^64: rejected with a reason that does not say 'float', or kept as written"),
    HostileClass("amount_40_digits", _mutate_amount(40), reason=_NUMBER_REASON, fits=_has_amount,
                 doc="an amount of 40 digits: beyond the schema's Decimal range, so a clear rejection, never a float"),
    HostileClass("amount_1000_digits", _mutate_amount(1000), reason=_NUMBER_REASON, fits=_has_amount,
                 doc="an amount of 1000 digits (reason must not be 'Input should be a finite number')"),
    HostileClass("epoch_seconds", _mutate_epoch("seconds"), reason=r"(?i)second", fits=_has_time,
                 doc="the event time in epoch seconds: applying it means an event dated January 1970"),
    HostileClass("epoch_microseconds", _mutate_epoch("microseconds"), reason=r"(?i)micro", fits=_has_time,
                 doc="the event time in epoch microseconds"),
    HostileClass("pii_in_wrong_field", _mutate_pii_wrong_field,
                 doc="an email or phone as event type, timestamp, currency or ISO code: rejected, never echoed"),
    HostileClass("pii_in_custom_profile_field", _mutate_pii_custom, expect=Expect.ACCEPT, fits=_is_profile,
                 fresh_user=True, doc="contact data in custom profile fields: accepted, stored protected"),
    HostileClass("pii_in_listed_custom_field", _mutate_pii_listed_custom, expect=Expect.ACCEPT, fresh_user=True,
                 doc="a custom field listed in pii.custom_fields: accepted, stored protected"),
    HostileClass("unknown_event_type", _mutate_unknown_type, doc="a type (kind) the adapter does not map"),
    HostileClass("missing_key", _mutate_missing_key, doc="no Kafka key (per-user order cannot hold)"),
    HostileClass("oversized_record", _mutate_oversized, count=3, doc="a record above limits.max_message_bytes"),
    HostileClass("non_object_json", _mutate_non_object, doc="JSON that is an array, a string, a number, null or true"),
    HostileClass("empty_values", _mutate_empty, doc="an empty payload, {}, or an empty or blank id"),
)

CLASS_NAMES = tuple(cls.name for cls in CLASSES)
BY_NAME = {cls.name: cls for cls in CLASSES}


# -- addressing templates to test users ------------------------------------------------------------------------


def _address(shape: Shape, template: Template, user: str, suffix: str) -> dict[str, Any]:
    """A copy of ``template`` for ``user``, with every id made unique by ``suffix``."""
    message = copy.deepcopy(dict(template.value))
    _set(message, shape.user, user)
    for path in _present(message, shape.ids):
        _set(message, path, f"{_get(message, path)}-{suffix}")
    if shape.name == "reference" and (template.stream == "profile" or message.get("type") == "user_profile"):
        message["type"] = "user_profile"  # on the payments lane
        message["event_id"] = f"profile-{suffix}"
    if shape.name == "betwave" and isinstance(_get(message, ("slip", "legs")), list):
        for leg in message["slip"]["legs"]:
            if isinstance(leg, dict) and "id" in leg:
                leg["id"] = f"{leg['id']}-{suffix}"
    return message


@dataclass(frozen=True, slots=True)
class Corpus:
    """Valid and hostile records of one adapter, interleaved; ``valid`` alone is the control run."""

    adapter: str
    seed: int
    records: tuple[Record, ...]

    @property
    def valid(self) -> tuple[Record, ...]:
        return tuple(r for r in self.records if not r.hostile)

    @property
    def hostile(self) -> tuple[Record, ...]:
        return tuple(r for r in self.records if r.hostile)

    def of_class(self, name: str) -> tuple[Record, ...]:
        return tuple(r for r in self.records if r.label == name)

    def lanes(self) -> set[str]:
        return {r.stream for r in self.records}


def valid_records(shape: Shape, templates: Sequence[Template], rng: random.Random, count: int,
                  users_per_lane: int) -> Iterator[tuple[Template, Record]]:
    """``count`` valid records, each a template addressed to one of ``users_per_lane`` users of its lane."""
    for index in range(count):
        template = rng.choice(templates)
        lane = shape.lane(template)
        user = f"hx-{shape.name}-{lane}-{rng.randrange(users_per_lane)}"
        message = _address(shape, template, user, f"v{index}")
        yield template, Record(shape.name, lane, user, orjson.dumps(message), "valid", user, template=template.source)


def hostile_record(cls: HostileClass, shape: Shape, template: Template, rng: random.Random, seed: int, index: int,
                   user: str) -> Record:
    """One record of class ``cls`` made from ``template`` for ``user``."""
    ctx = _Ctx(rng, shape, seed, n=index)
    message = _address(shape, template, user, f"h{index}")
    value, detail = cls.mutate(ctx, message, template)
    return Record(
        adapter=shape.name, stream=shape.lane(template), key=None if ctx.keyless else user, value=value,
        label=cls.name, user=user,
        planted=tuple(ctx.planted), expect=cls.expect, reason=cls.reason, detail=detail, template=template.source,
        literal=ctx.literal[1] if ctx.literal else None, literal_path=ctx.literal[0] if ctx.literal else "",
    )


def make_corpus(adapter: str, *, seed: int = 15, valid: int = 500, per_class: int = 14,
                users_per_lane: int = 40) -> Corpus:
    """``valid`` valid records with ``per_class`` hostile records of every class mixed in at random
    positions, for users shared with the valid ones (fresh users for classes that must be accepted)."""
    shape = SHAPES[adapter]
    rng = random.Random(f"{seed}:{adapter}")
    templates = golden_templates(adapter)
    assert templates, f"no valid golden inputs for {adapter}"
    records = [record for _, record in valid_records(shape, templates, rng, valid, users_per_lane)]
    index = 0
    for cls in CLASSES:
        fitting = [t for t in templates if cls.fits(shape, t)]
        assert fitting, f"no golden input of {adapter} fits {cls.name}"
        for _ in range(per_class if cls.count is None else cls.count):
            template = rng.choice(fitting)
            lane = shape.lane(template)
            user = (f"hx-{adapter}-fresh-{index}" if cls.fresh_user
                    else f"hx-{adapter}-{lane}-{rng.randrange(users_per_lane)}")
            records.insert(rng.randrange(len(records) + 1),
                           hostile_record(cls, shape, template, rng, seed, index, user))
            index += 1
    return Corpus(adapter, seed, tuple(records))


# -- PII needles --------------------------------------------------------------------------------------------------


def needles(value: str) -> set[str]:
    """Every plaintext form of a planted value: as written, lower-cased, and a phone's digits."""
    forms = {value, value.lower()}
    if value.startswith("+"):
        forms.add(value[1:])
    return forms


def find_needles(blobs: Mapping[str, bytes], values: Sequence[str], limit: int = 10) -> list[str]:
    """Where any planted value occurs (case-insensitively) in any blob: ``"VALUE in NAME: ...context..."``."""
    forms = sorted({form.lower().encode() for value in values for form in needles(value)}, key=len, reverse=True)
    if not forms:
        return []
    pattern = re.compile(b"|".join(re.escape(form) for form in forms))
    hits = []
    for name, blob in blobs.items():
        for match in pattern.finditer(blob.lower()):
            start, stop = match.span()
            context = blob[max(0, start - 60) : stop + 60]
            hits.append(f"{match.group().decode(errors='replace')!r} in {name}: ...{context!r}")
            if len(hits) >= limit:
                return hits
    return hits
