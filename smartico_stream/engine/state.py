"""Per-user state: profile fields, aggregates, platform aggregates, points, level, tags, rule progress.

State holds no personal data: profile events contribute ``has_email``/``has_phone`` flags, never the
email or phone themselves (the PII guard keeps those in their own store). The state serialises to
JSON with Decimals as strings, so a round trip through the store is exact.
"""

from __future__ import annotations

from base64 import b64decode, b64encode
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any, NamedTuple

import orjson

from smartico_stream.engine.conditions import FieldType
from smartico_stream.events.models import (
    AccountStatus,
    CanonicalEvent,
    EventType,
    PlatformAggregates,
    UserProfile,
)

ZERO = Decimal(0)

# The parts of a state the store writes separately (store/sql.py), so a batch rewrites only the parts
# it changed. The rest (aggregates, times, points, level, tags) changes with every event and is always
# written. A flag set too often costs a rewrite; a flag missed loses a change, so every code path
# that changes a part sets its flag: the profile fold, :meth:`UserState.progress` (and
# :meth:`UserState.rule_changed`), and the payments memory (engine/payments.py).
PROFILE_PART = 1
PROGRESS_PART = 2
PAYMENTS_PART = 4
ALL_PARTS = PROFILE_PART | PROGRESS_PART | PAYMENTS_PART


@dataclass(slots=True)
class RuleProgress:
    """One user's progress on one rule."""

    remainder: Decimal = ZERO  # accumulation carried to the next event
    executions: int = 0  # executions ever (once-in-a-lifetime looks at this)
    qualified_at: datetime | None = None
    qualified_until: datetime | None = None  # None with qualified_at set: no qualification period
    iterations: int = 0  # completions since the last qualification

    def is_qualified(self, at: datetime) -> bool:
        return self.qualified_at is not None and (self.qualified_until is None or at <= self.qualified_until)


@dataclass(slots=True)
class UserState:
    """Everything rules may know about one user. Fields read by conditions are listed in
    :data:`USER_SCHEMA`; ``smartico-stream rules fields`` prints them."""

    brand: str
    user: str
    # profile
    account_status: str | None = None
    registration_date: datetime | None = None
    language: str | None = None
    wallet_currency: str | None = None
    country: str | None = None
    birthdate: datetime | None = None
    username: str | None = None
    gender: str | None = None
    kyc_status: str | None = None
    affiliate_id: int | None = None
    affiliate_str: str | None = None
    is_email_disabled_by_platform: bool | None = None
    is_sms_disabled_by_platform: bool | None = None
    has_email: bool = False
    has_phone: bool = False
    phone_valid: bool | None = None
    email_domain: str | None = None
    custom: dict[str, Any] = field(default_factory=dict)  # operator custom properties of the profile
    # aggregates the engine maintains (totals per currency)
    deposit_count: int = 0
    deposit_total: dict[str, Decimal] = field(default_factory=dict)
    failed_deposit_count: int = 0
    withdrawal_count: int = 0  # completed withdrawals
    withdrawal_total: dict[str, Decimal] = field(default_factory=dict)
    withdrawal_requested_count: int = 0
    bet_count: int = 0
    bet_total: dict[str, Decimal] = field(default_factory=dict)
    win_count: int = 0
    win_total: dict[str, Decimal] = field(default_factory=dict)
    sport_bet_count: int = 0
    sport_stake_total: dict[str, Decimal] = field(default_factory=dict)
    sport_win_count: int = 0
    first_deposit_time: datetime | None = None
    last_deposit_time: datetime | None = None
    last_deposit_amount: Decimal | None = None
    last_bet_time: datetime | None = None
    last_event_time: datetime | None = None
    # aggregates the platform computed, taken as given when an event carries them (the spec
    # recommends platform-side aggregation); one field per PlatformAggregates field
    platform_total_deposit_amount: Decimal | None = None
    platform_total_deposit_count: int | None = None
    platform_total_withdrawal_amount: Decimal | None = None
    platform_total_withdrawal_count: int | None = None
    platform_total_bet_amount: Decimal | None = None
    platform_total_bet_count: int | None = None
    platform_total_win_amount: Decimal | None = None
    platform_total_win_count: int | None = None
    platform_first_deposit_time: datetime | None = None
    platform_last_deposit_time: datetime | None = None
    # gamification
    points: Decimal = ZERO
    level: int | None = None
    tags: set[str] = field(default_factory=set)
    rules: dict[str, RuleProgress] = field(default_factory=dict)
    # money transactions already applied (engine.payments): 12 bytes each, oldest first; not a
    # field rules can read
    payment_ids: bytes = b""
    version: int = 0  # store version this state was loaded at (optimistic concurrency)
    # The parts (*_PART flags) changed since the store last had them: all of them for a new state.
    changed: int = field(default=ALL_PARTS, compare=False, repr=False)

    @property
    def is_active(self) -> bool:
        """Only ACTIVE users get marketing actions; a user with no profile yet counts as the spec's
        default for a new account, ACTIVE."""
        return self.account_status in (None, AccountStatus.ACTIVE)

    def progress(self, rule_id: str) -> RuleProgress:
        """The user's progress on ``rule_id``, to change (read-only callers use ``rules.get``)."""
        self.changed |= PROGRESS_PART
        found = self.rules.get(rule_id)
        if found is None:
            found = self.rules[rule_id] = RuleProgress()
        return found

    def rule_changed(self) -> None:
        """A progress read through ``rules.get`` was changed: the store must write the rules part."""
        self.changed |= PROGRESS_PART

    def currency_for(self, event: CanonicalEvent) -> str | None:
        """The currency an event's amounts are in: the user's wallet currency, else the event's."""
        return self.wallet_currency or getattr(event, "currency", None)

    # serialisation -----------------------------------------------------------------------------

    def to_json(self) -> bytes:
        """The whole state as one compact JSON document: fields at their default (None, 0, False,
        empty) are left out, Decimals are strings, rule progress is written per rule with only its
        non-default parts, payment ids in base64. Byte-stable: the same state always gives the same
        bytes. (The store writes it in parts: :meth:`stored_parts`.)"""
        document = self._core()
        document.update(self._profile())
        if self.rules:
            document["rules"] = self._rules()
        if self.payment_ids:
            document["payment_ids"] = b64encode(self.payment_ids).decode("ascii")
        return orjson.dumps(document, default=_encode)

    def stored_parts(self) -> StoredParts:
        """The state as the store writes it: the core document (what changes with every event),
        then the profile, rule progress and payment ids, each ``None`` when :attr:`changed` says the
        store already has it. The core and profile together are what conditions read."""
        # Encoded for every touched user of every batch: leaving out the parts a batch did not
        # change is most of what "write only what changed" saves (docs/performance.md).
        changed = self.changed
        return StoredParts(
            orjson.dumps(self._core(), default=_encode),
            orjson.dumps(self._profile(), default=_encode) if changed & PROFILE_PART else None,
            orjson.dumps(self._rules()) if changed & PROGRESS_PART else None,
            self.payment_ids if changed & PAYMENTS_PART else None,
        )

    def _core(self) -> dict[str, Any]:
        document: dict[str, Any] = {"brand": self.brand, "user": self.user}
        _put_scalars(self, _CORE_SCALARS, document)
        for name in _DECIMAL_MAP_FIELDS:
            totals = getattr(self, name)
            if totals:
                document[name] = {currency: str(amount) for currency, amount in totals.items()}
        if self.points:
            document["points"] = str(self.points)
        if self.tags:
            document["tags"] = sorted(self.tags)
        return document

    def _profile(self) -> dict[str, Any]:
        document: dict[str, Any] = {}
        _put_scalars(self, _PROFILE_SCALARS, document)
        if self.custom:
            document["custom"] = self.custom
        return document

    def _rules(self) -> dict[str, Any]:
        return {rule_id: _progress_document(self.rules[rule_id]) for rule_id in sorted(self.rules)}

    @classmethod
    def from_json(cls, raw: bytes | str) -> UserState:
        """Read :meth:`to_json`'s document, or the older form with every field present."""
        data = orjson.loads(raw)
        # absent in states written before money events were remembered: nothing remembered yet
        data["payment_ids"] = b64decode(data.get("payment_ids") or "")
        return cls._from_document(data)

    @classmethod
    def from_stored_parts(cls, core: bytes, profile: bytes | None, progress: bytes | None,
                          payments: bytes | None) -> UserState:
        """Read :meth:`stored_parts` back. A row written before the store kept parts has its whole
        document as ``core`` and no parts: read as :meth:`from_json`, and all of it is written again
        at the next commit, in parts."""
        if profile is None or progress is None or payments is None:
            return cls.from_json(core)
        data = orjson.loads(core)
        data.update(orjson.loads(profile))
        data["rules"] = orjson.loads(progress)
        data["payment_ids"] = bytes(payments)
        state = cls._from_document(data)
        state.changed = 0
        return state

    @classmethod
    def _from_document(cls, data: dict[str, Any]) -> UserState:
        for name in _DATETIME_FIELDS:
            if name in data:
                data[name] = _dt(data[name])
        for name in _DECIMAL_MAP_FIELDS:
            if name in data:
                data[name] = {k: Decimal(v) for k, v in (data[name] or {}).items()}
        data["points"] = Decimal(data.get("points", "0"))
        for name in _OPTIONAL_DECIMAL_FIELDS:
            if data.get(name) is not None:
                data[name] = Decimal(data[name])
        data["tags"] = set(data.get("tags") or ())
        data["rules"] = {
            rid: RuleProgress(
                remainder=Decimal(p.get("remainder", "0")),
                executions=p.get("executions", 0),
                qualified_at=_dt(p.get("qualified_at")),
                qualified_until=_dt(p.get("qualified_until")),
                iterations=p.get("iterations", 0),
            )
            for rid, p in (data.get("rules") or {}).items()
        }
        return cls(**{k: v for k, v in data.items() if k in _KNOWN_FIELDS})


class StoredParts(NamedTuple):
    """A state as the store's ``users`` row holds it (see :meth:`UserState.stored_parts`)."""

    core: bytes
    profile: bytes | None
    progress: bytes | None
    payments: bytes | None


def readable_document(core: bytes, profile: bytes | None) -> bytes:
    """The stored core and profile parts as the one JSON document conditions read (their fields
    are disjoint, so the objects are joined as bytes, never decoded here)."""
    core = bytes(core)
    if not profile or profile == b"{}":
        return core
    return core[:-1] + b"," + bytes(profile)[1:]


def _put_scalars(state: UserState, names: tuple[tuple[str, Any], ...], document: dict[str, Any]) -> None:
    for name, default in names:
        value = getattr(state, name)
        if value is default or (value.__class__ is default.__class__ and value == default):
            continue
        document[name] = str(value) if value.__class__ is Decimal else value


def _progress_document(progress: RuleProgress) -> dict[str, Any]:
    document: dict[str, Any] = {}
    if progress.remainder:
        document["remainder"] = str(progress.remainder)
    if progress.executions:
        document["executions"] = progress.executions
    if progress.qualified_at is not None:
        document["qualified_at"] = progress.qualified_at
    if progress.qualified_until is not None:
        document["qualified_until"] = progress.qualified_until
    if progress.iterations:
        document["iterations"] = progress.iterations
    return document


# Computed once: dataclasses.fields() is slow enough to show in profiles when called per user.
_KNOWN_FIELDS = frozenset(f.name for f in fields(UserState)) - {"changed"}
_DATETIME_FIELDS = tuple(
    f.name for f in fields(UserState) if "datetime" in str(f.type)
)
_DECIMAL_MAP_FIELDS = tuple(f.name for f in fields(UserState) if str(f.type).startswith("dict[str, Decimal]"))
_OPTIONAL_DECIMAL_FIELDS = tuple(f.name for f in fields(UserState) if str(f.type) == "Decimal | None")
# What a profile event copies when sent (_apply_profile), and the flags the PII guard derived.
_PROFILE_COPIED = ("country", "birthdate", "username", "kyc_status", "affiliate_id", "affiliate_str",
                   "is_email_disabled_by_platform", "is_sms_disabled_by_platform")
_PROFILE_FLAGS = ("has_email", "has_phone", "phone_valid", "email_domain")
# The profile part: what profile events set (_apply_profile), and only they.
PROFILE_FIELDS = ("account_status", "registration_date", "language", "wallet_currency", "gender", "custom",
                  *_PROFILE_COPIED, *_PROFILE_FLAGS)
# (name, default): written one by one unless at the default; the rest have their own forms.
_SCALAR_FIELDS = tuple(
    (f.name, f.default) for f in fields(UserState)
    if f.name not in ("brand", "user", "custom", "points", "tags", "rules", "payment_ids", "version", "changed",
                      *_DECIMAL_MAP_FIELDS)
)
_PROFILE_SCALARS = tuple(item for item in _SCALAR_FIELDS if item[0] in PROFILE_FIELDS)
_CORE_SCALARS = tuple(item for item in _SCALAR_FIELDS if item[0] not in PROFILE_FIELDS)


def _encode(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, set):
        return sorted(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


# What conditions may read as user.*; derived from the dataclass so the two cannot drift.
def _field_type(name: str, annotation: str) -> FieldType | None:
    if name in ("rules", "payment_ids", "version", "changed"):
        return None
    if name in ("brand", "user"):
        return FieldType.STRING
    if name == "tags":
        return FieldType.STRING_SET
    if name == "custom":
        return FieldType.ANY_MAP
    if annotation.startswith("dict[str, Decimal]"):
        return FieldType.NUMBER_MAP
    if "datetime" in annotation:
        return FieldType.TIMESTAMP
    if annotation.startswith("bool"):
        return FieldType.BOOL
    if annotation.startswith(("int", "Decimal")):
        return FieldType.NUMBER
    return FieldType.STRING


USER_SCHEMA: dict[str, FieldType] = {
    f"user.{f.name}": t for f in fields(UserState) if (t := _field_type(f.name, str(f.type))) is not None
}
USER_SCHEMA["user.is_active"] = FieldType.BOOL


# Applying events -------------------------------------------------------------------------------


# Totals are exact: an amount may have 36 digits (events.types), more than the default context's 28,
# and this one holds the sum of a billion of them without rounding.
_TOTALS = Context(prec=100, rounding=ROUND_HALF_EVEN, Emax=999_999, Emin=-999_999)


def _add(totals: dict[str, Decimal], currency: str | None, amount: Decimal) -> None:
    key = currency or "?"
    totals[key] = _TOTALS.add(totals.get(key, ZERO), amount)


def apply_event(state: UserState, event: CanonicalEvent) -> None:
    """Fold one event into the user's profile and aggregates (before rules see it, so a rule
    triggered by a deposit sees a deposit count that includes it). ``event`` is a record or a model:
    dispatch is on its ``type``, never its class (see events/records.py)."""
    state.last_event_time = event.event_time
    if event.aggregates is not None:
        _apply_platform_aggregates(state, event.aggregates)
    fold = _FOLDS.get(event.type)
    if fold is not None:
        fold(state, event)


def _deposit(state: UserState, event: Any) -> None:
    state.deposit_count += 1
    _add(state.deposit_total, state.currency_for(event), event.amount)
    state.first_deposit_time = state.first_deposit_time or event.event_time
    state.last_deposit_time = event.event_time
    state.last_deposit_amount = event.amount


def _failed_deposit(state: UserState, event: Any) -> None:
    state.failed_deposit_count += 1


def _withdrawal_requested(state: UserState, event: Any) -> None:
    state.withdrawal_requested_count += 1


def _withdrawal_completed(state: UserState, event: Any) -> None:
    state.withdrawal_count += 1
    _add(state.withdrawal_total, state.currency_for(event), event.amount)


def _casino_bet(state: UserState, event: Any) -> None:
    state.bet_count += 1
    _add(state.bet_total, state.currency_for(event), event.bet_amount)
    state.last_bet_time = event.event_time


def _casino_win(state: UserState, event: Any) -> None:
    state.win_count += 1
    _add(state.win_total, state.currency_for(event), event.win_amount)


def _sport_bet_open(state: UserState, event: Any) -> None:
    state.sport_bet_count += 1
    _add(state.sport_stake_total, state.currency_for(event), event.stake)
    state.last_bet_time = event.event_time


def _sport_bet_settled(state: UserState, event: Any) -> None:
    if event.result in ("WON", "HALF_WON", "CASHED_OUT"):
        state.sport_win_count += 1


def _apply_profile(state: UserState, profile: UserProfile) -> None:
    state.changed |= PROFILE_PART
    # A partial profile update without a status must not re-activate a blocked user; the model's
    # ACTIVE default applies only to a user whose status was never sent. A record's status is None
    # when the update did not carry one (events/records.py SENT_ONLY).
    status: AccountStatus | None = profile.account_status
    if "account_status" not in getattr(profile, "model_fields_set", ("account_status",)):
        status = None  # a model (tests build them): its ACTIVE default was not sent
    if status is not None:
        state.account_status = AccountStatus(status).value
    elif state.account_status is None:
        state.account_status = AccountStatus.ACTIVE.value
    state.registration_date = profile.registration_date
    state.language = profile.language
    # The spec: "once set this value cannot be changed for user".
    state.wallet_currency = state.wallet_currency or profile.wallet_currency
    for name in _PROFILE_COPIED:
        value = getattr(profile, name)
        if value is not None:
            setattr(state, name, value)
    if profile.gender is not None:
        state.gender = profile.gender.value
    # Only derived flags: the PII guard removed the values before the engine (docs/pii.md).
    for name in _PROFILE_FLAGS:
        value = getattr(profile, name)
        if value is not None:
            setattr(state, name, value)
    if profile.extra:
        state.custom.update(profile.extra)


_AGGREGATE_FIELDS = tuple(PlatformAggregates.model_fields)


def _apply_platform_aggregates(state: UserState, aggregates: PlatformAggregates) -> None:
    for name in _AGGREGATE_FIELDS:
        value = getattr(aggregates, name)
        if value is not None:
            setattr(state, f"platform_{name}", value)


# What each event type folds into the state; the other types change only the times above.
_FOLDS: dict[str, Any] = {
    EventType.USER_PROFILE.value: _apply_profile,
    EventType.DEPOSIT.value: _deposit,
    EventType.DEPOSIT_FAILED.value: _failed_deposit,
    EventType.DEPOSIT_CANCELLED.value: _failed_deposit,
    EventType.WITHDRAWAL_REQUESTED.value: _withdrawal_requested,
    EventType.WITHDRAWAL_COMPLETED.value: _withdrawal_completed,
    EventType.CASINO_BET.value: _casino_bet,
    EventType.CASINO_WIN.value: _casino_win,
    EventType.SPORT_BET_OPEN.value: _sport_bet_open,
    EventType.SPORT_BET_SETTLED.value: _sport_bet_settled,
}
