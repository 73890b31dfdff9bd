"""The reference adapter: the flat message shapes of the Smartico data-integration spec.

One JSON object per record, ``snake_case`` keys, epoch milliseconds or ISO-8601 timestamps, ids as
int/string/uuid and amounts as decimal numbers or strings in the user's currency. The stream a topic
is configured as decides the kind of message, except that ``"type": "user_profile"`` marks a
profile on any stream. The field tables below are the whole mapping (see also docs/adapters.md).

Every top-level key named like a ``PlatformAggregates`` field goes into ``aggregates``; every other
key the mapping does not use (custom properties, or a fallback key when its primary is present)
goes into ``extra`` unchanged. A key present with ``null`` counts as absent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from smartico_stream.adapters.base import AdapterError, EventDraft, MissingField, RecordContext, UnknownEventType
from smartico_stream.events.models import PAYMENT_TYPES, EventType, PlatformAggregates
from smartico_stream.events.raw import Stream

__all__ = ["ReferenceAdapter"]


@dataclass(frozen=True, slots=True)
class Rule:
    """Canonical field ``target`` takes the first non-null of ``sources`` (the later ones are
    fallbacks); ``required`` raises ``MissingField`` naming them when all are absent."""

    target: str
    sources: tuple[str, ...]
    required: bool = False
    convert: Callable[[Any], Any] | None = None


def _rule(target: str, *sources: str, required: bool = False, convert: Callable[[Any], Any] | None = None) -> Rule:
    return Rule(target, sources or (target,), required, convert)


def _upper(value: Any) -> Any:
    # Case-insensitive enums; anything that is not a string is left for pydantic to reject.
    return value.strip().upper() if isinstance(value, str) else value


_IDENTITY = (
    _rule("brand_id", "ext_brand_id", required=True),
    _rule("user_id", "user_ext_id", required=True),
)

PROFILE_RULES: tuple[Rule, ...] = (
    _rule("event_time", "dt_update", required=True),
    *_IDENTITY,
    _rule("account_status", "core_account_status"),
    _rule("registration_date", "core_registration_date", required=True),
    _rule("language", "core_user_language", required=True),
    _rule("wallet_currency", "core_wallet_currency", required=True),
    _rule("username", "core_username"),
    _rule("birthdate", "user_birthdate"),
    _rule("country", "user_country"),
    _rule("email", "user_email"),
    _rule("first_name", "user_first_name"),
    _rule("last_name", "user_last_name"),
    _rule("phone", "user_phone"),
    _rule("affiliate_id", "core_affiliate_id"),
    _rule("affiliate_str", "core_affiliate_str"),
    _rule("is_email_disabled_by_platform", "core_is_email_disabled_by_platform"),
    _rule("is_sms_disabled_by_platform", "core_is_sms_disabled_by_platform"),
    _rule("gender", "core_user_gender"),
    _rule("kyc_status", "core_kyc_status"),
)

PAYMENT_RULES: tuple[Rule, ...] = (
    _rule("event_time", "dt_finalized", "transaction_date", required=True),
    *_IDENTITY,
    _rule("event_id", "transaction_id", required=True),
    _rule("amount", "amount", "deposit_amount", required=True),
    _rule("currency", "core_wallet_currency"),
    # deposit_method is the spec's replica-DB name for the same thing.
    _rule("method", "payment_method", "deposit_method"),
    _rule("status", "deposit_status", "withdrawal_status", "status"),
    _rule("code", "deposit_code"),
    _rule("provider", "provider_name"),
    _rule("real_balance"),
    _rule("bonus_balance"),
    _rule("total_balance"),
)

_CASINO_COMMON: tuple[Rule, ...] = (
    _rule("event_time", "bet_date", required=True),
    *_IDENTITY,
    _rule("event_id", "transaction_id", "bet_id", required=True),
    _rule("bet_amount", required=True),
    _rule("bet_amount_real"),
    _rule("bet_amount_bonus"),
    _rule("currency", "core_wallet_currency"),
    _rule("game_name", required=True),
    _rule("game_id", "game_id", "casino_game_ext_id", required=True),
    _rule("game_category"),
    _rule("game_category_id"),
    _rule("game_provider"),
    _rule("game_provider_id"),
    _rule("game_vendor"),
    _rule("catalog_game_id", "casino_game_ext_id"),
    _rule("catalog_game_type_id", "casino_game_type_ext_id"),
    _rule("catalog_provider_id", "casino_game_provider_ext_id"),
)
CASINO_BET_RULES: tuple[Rule, ...] = _CASINO_COMMON
CASINO_WIN_RULES: tuple[Rule, ...] = (
    *_CASINO_COMMON,
    _rule("win_amount", required=True),
    _rule("win_amount_real"),
    _rule("win_amount_bonus"),
)

_SPORT_COMMON: tuple[Rule, ...] = (
    _rule("event_time", "event_date", required=True),
    *_IDENTITY,
    _rule("event_id", "transaction_id", required=True),
    _rule("bet_id", required=True),
    _rule("currency", "core_wallet_currency"),
    _rule("is_live"),
)
_SELECTION: tuple[Rule, ...] = (
    _rule("selection_id", required=True),
    _rule("odds"),
    _rule("sport"),
    _rule("tournament"),
    _rule("match_name"),
    _rule("match_id"),
    _rule("market"),
    _rule("outcome"),
    _rule("match_start_time", "match_start_date"),
)
_RESULT = _rule("result", required=True, convert=_upper)
SPORT_OPEN_RULES: tuple[Rule, ...] = (
    *_SPORT_COMMON,
    _rule("stake", required=True),
    _rule("stake_real"),
    _rule("stake_bonus"),
    _rule("total_odds"),
    _rule("bet_type"),
    _rule("selections_count"),
)
SPORT_SELECTION_OPEN_RULES: tuple[Rule, ...] = (*_SPORT_COMMON, *_SELECTION)
SPORT_SETTLED_RULES: tuple[Rule, ...] = (
    *_SPORT_COMMON,
    _RESULT,
    _rule("stake", required=True),
    _rule("payout", required=True),
    _rule("total_odds"),
)
SPORT_SELECTION_SETTLED_RULES: tuple[Rule, ...] = (*_SPORT_COMMON, *_SELECTION, _RESULT)

_Kind = tuple[str, tuple[Rule, ...]]

# `type` value (lower case) -> (canonical type, rules), per stream.
_KINDS: dict[Stream, dict[str, _Kind]] = {
    Stream.PAYMENTS: {t.value: (t.value, PAYMENT_RULES) for t in sorted(PAYMENT_TYPES)},
    Stream.CASINO: {
        "bet": (EventType.CASINO_BET.value, CASINO_BET_RULES),
        "casino_bet": (EventType.CASINO_BET.value, CASINO_BET_RULES),
        "win": (EventType.CASINO_WIN.value, CASINO_WIN_RULES),
        "casino_win": (EventType.CASINO_WIN.value, CASINO_WIN_RULES),
    },
    Stream.SPORT: {
        EventType.SPORT_BET_OPEN.value: (EventType.SPORT_BET_OPEN.value, SPORT_OPEN_RULES),
        EventType.SPORT_BET_SELECTION_OPEN.value: (
            EventType.SPORT_BET_SELECTION_OPEN.value, SPORT_SELECTION_OPEN_RULES
        ),
        EventType.SPORT_BET_SETTLED.value: (EventType.SPORT_BET_SETTLED.value, SPORT_SETTLED_RULES),
        EventType.SPORT_BET_SELECTION_SETTLED.value: (
            EventType.SPORT_BET_SELECTION_SETTLED.value, SPORT_SELECTION_SETTLED_RULES
        ),
    },
}

AGGREGATE_FIELDS: frozenset[str] = frozenset(PlatformAggregates.model_fields)

_PROFILE_TYPE = EventType.USER_PROFILE.value


def _describe_sources(sources: tuple[str, ...]) -> str:
    return " or ".join(repr(source) for source in sources)


def apply_rules(message: Mapping[str, Any], rules: tuple[Rule, ...], what: str) -> tuple[dict[str, Any], set[str]]:
    """Canonical keyword arguments from ``message`` and the set of message keys the rules used."""
    fields: dict[str, Any] = {}
    used: set[str] = set()
    for rule in rules:
        for source in rule.sources:
            value = message.get(source)
            if value is not None:
                fields[rule.target] = rule.convert(value) if rule.convert else value
                used.add(source)
                break
            if source in message:
                used.add(source)  # an explicit null: known, empty, not a custom property
        else:
            if rule.required:
                raise MissingField(f"{what}: missing required field {_describe_sources(rule.sources)}")
    return fields, used


def split_leftovers(message: Mapping[str, Any], used: set[str]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(aggregates or None, extra) from the keys the mapping did not use."""
    aggregates: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in message.items():
        if key in used:
            continue
        if key in AGGREGATE_FIELDS:
            if value is not None:
                aggregates[key] = value
        else:
            extra[key] = value
    return aggregates or None, extra


def _describe_type(value: Any) -> str:
    # Never the value itself: a hostile or broken record can carry personal data in any field.
    if value is None:
        return "no 'type'"
    return "an unknown 'type'" if isinstance(value, str) else "a 'type' that is not a string"


class ReferenceAdapter:
    """Maps the spec's reference message shapes (profile, payments, casino, sport) to canonical events."""

    name: ClassVar[str] = "reference"

    def adapt(self, message: Mapping[str, Any], context: RecordContext) -> list[EventDraft]:
        """One message -> one canonical event draft (see the module docstring for the field tables)."""
        raw_type = message.get("type")
        try:
            if context.stream is Stream.PROFILE or (
                isinstance(raw_type, str) and raw_type.strip().lower() == _PROFILE_TYPE
            ):
                return [self._profile(message)]
            return [self._transaction(message, context.stream, raw_type)]
        except OverflowError as exc:
            # events.types lets OverflowError escape for far-out-of-range epoch numbers; the
            # contract promises AdapterError or ValidationError for bad input.
            raise AdapterError(f"{context.stream.value}: a timestamp or number is out of range") from exc

    @staticmethod
    def _profile(message: Mapping[str, Any]) -> EventDraft:
        fields, used = apply_rules(message, PROFILE_RULES, "profile")
        fields["event_id"] = _profile_event_id(message, used)
        raw_type = message.get("type")
        if isinstance(raw_type, str) and raw_type.strip().lower() == _PROFILE_TYPE:
            used.add("type")
        aggregates, extra = split_leftovers(message, used)
        return {**fields, "type": _PROFILE_TYPE, "aggregates": aggregates, "extra": extra}

    @staticmethod
    def _transaction(message: Mapping[str, Any], stream: Stream, raw_type: Any) -> EventDraft:
        kinds = _KINDS[stream]
        kind = kinds.get(raw_type.strip().lower()) if isinstance(raw_type, str) else None
        if kind is None:
            expected = ", ".join(sorted(kinds))
            found = _describe_type(raw_type)
            raise UnknownEventType(f"{stream.value} stream: {found}; expected one of {expected}")
        event_type, rules = kind
        fields, used = apply_rules(message, rules, f"{stream.value} {event_type}")
        used.add("type")
        aggregates, extra = split_leftovers(message, used)
        return {**fields, "type": event_type, "aggregates": aggregates, "extra": extra}


def _profile_event_id(message: Mapping[str, Any], used: set[str]) -> Any:
    # Profiles rarely carry an id of their own. The update time is unique per user only, and the dedup
    # key is brand + type + id, so the user must be part of the id.
    for key in ("event_id", "transaction_id"):
        value = message.get(key)
        if value is not None:
            used.add(key)
            return value
        if key in message:
            used.add(key)
    return f"profile:{str(message.get('user_ext_id')).strip()}:{message['dt_update']}"
