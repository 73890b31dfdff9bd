"""Canonical events: the contract every adapter targets and the only shape the engine sees.

Field names follow the data-integration specification (``core_*``/``user_*`` profile fields keep
their spec names without the prefix noise where the meaning is plain). Every event carries its type,
brand, user, a unique event id, the business timestamp and the source coordinates of the record it
came from. Operator fields the model does not know travel in ``extra``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue

from smartico_stream.events.types import (
    MAX_INT64,
    MAX_NESTING,
    Amount,
    Balance,
    BusinessTimestamp,
    Count,
    CountryCode,
    CurrencyCode,
    Identifier,
    LanguageCode,
    Odds,
    PastBusinessTimestamp,
    PastUtcTimestamp,
    UtcTimestamp,
    normalise_extra,
)


class EventType(StrEnum):
    """Every canonical event type. Payment types share one model, the rest have one each."""

    USER_PROFILE = "user_profile"
    DEPOSIT = "deposit"
    DEPOSIT_FAILED = "deposit_failed"
    DEPOSIT_CANCELLED = "deposit_cancelled"
    WITHDRAWAL_REQUESTED = "withdrawal_requested"
    WITHDRAWAL_APPROVED = "withdrawal_approved"
    WITHDRAWAL_COMPLETED = "withdrawal_completed"
    WITHDRAWAL_REJECTED = "withdrawal_rejected"
    WITHDRAWAL_CANCELLED = "withdrawal_cancelled"
    CASINO_BET = "casino_bet"
    CASINO_WIN = "casino_win"
    SPORT_BET_OPEN = "sport_bet_open"
    SPORT_BET_SELECTION_OPEN = "sport_bet_selection_open"
    SPORT_BET_SETTLED = "sport_bet_settled"
    SPORT_BET_SELECTION_SETTLED = "sport_bet_selection_settled"


PAYMENT_TYPES: frozenset[EventType] = frozenset(
    t for t in EventType if t.value.startswith(("deposit", "withdrawal"))
)


class AccountStatus(StrEnum):
    """``core_account_status``. Only ACTIVE users receive marketing actions."""

    ACTIVE = "ACTIVE"
    BLOCKED = "BLOCKED"
    SUSPENDED = "SUSPENDED"
    BANNED = "BANNED"
    SELF_EXCLUDED = "SELF_EXCLUDED"
    DEACTIVATED = "DEACTIVATED"
    PENDING = "PENDING"
    LOCKED = "LOCKED"
    APPROVED = "APPROVED"


class Gender(StrEnum):
    """``core_user_gender``. The spec's short forms F and M are accepted and normalised."""

    MALE = "MALE"
    FEMALE = "FEMALE"
    UNKNOWN = "UNKNOWN"


class SourceCoordinates(BaseModel):
    """Where a record came from: enough to find it again in the broker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    transport: Literal["kafka", "rabbitmq", "file"]
    topic: str
    partition: int | None = None
    offset: int | None = None
    timestamp: UtcTimestamp | None = Field(default=None, description="broker timestamp of the record")


class PlatformAggregates(BaseModel):
    """Running totals computed by the operator's platform, taken as given when an event carries them
    (the spec recommends platform-side aggregation over CRM-side)."""

    model_config = ConfigDict(extra="forbid")

    total_deposit_amount: Amount | None = None
    total_deposit_count: Count | None = None
    total_withdrawal_amount: Amount | None = None
    total_withdrawal_count: Count | None = None
    total_bet_amount: Amount | None = None
    total_bet_count: Count | None = None
    total_win_amount: Amount | None = None
    total_win_count: Count | None = None
    first_deposit_time: PastBusinessTimestamp | None = None
    last_deposit_time: PastBusinessTimestamp | None = None


class CanonicalEvent(BaseModel):
    """Fields every canonical event carries."""

    model_config = ConfigDict(extra="forbid")

    event_type: ClassVar[frozenset[EventType]]

    type: str = Field(description="one of EventType")
    brand_id: Identifier = Field(description="ext_brand_id: the brand in a multi-tenant platform")
    user_id: Identifier = Field(description="user_ext_id: int, string or uuid, normalised to a string")
    event_id: Identifier = Field(description="unique id of the transaction/event; the dedup key")
    event_time: PastBusinessTimestamp = Field(description="business timestamp of the event (UTC)")
    source: SourceCoordinates | None = Field(default=None, description="set by the pipeline")
    aggregates: PlatformAggregates | None = None
    # normalise_extra first: it bounds the nesting (pydantic's own limit reports "cyclic reference")
    # and turns numbers that JSON doubles cannot hold into their exact text.
    extra: Annotated[dict[str, JsonValue], BeforeValidator(normalise_extra)] = Field(
        default_factory=dict,
        description="operator fields outside the canonical model (custom properties); values nest at most "
        f"{MAX_NESTING} levels, numbers a double or a 64-bit integer cannot hold exactly are kept as their text",
    )

    @property
    def user_key(self) -> tuple[str, str]:
        """(brand, user): the identity per-user ordering and state are keyed by."""
        return (self.brand_id, self.user_id)


# Before-validators live in the annotations (not as model validators) so the hot path's records,
# derived from these models' fields, apply them too (events/records.py).
def _gender_short_forms(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip().upper()
        return {"M": "MALE", "F": "FEMALE"}.get(value, value)
    return value


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


class UserProfile(CanonicalEvent):
    """A user registered or changed their profile (``dt_update`` is the event time)."""

    event_type: ClassVar = frozenset({EventType.USER_PROFILE})
    type: Literal["user_profile"] = "user_profile"

    account_status: Annotated[AccountStatus, BeforeValidator(_upper)] = Field(
        default=AccountStatus.ACTIVE, description="core_account_status; the spec's default is ACTIVE"
    )
    registration_date: PastBusinessTimestamp = Field(description="core_registration_date")
    language: LanguageCode = Field(description="core_user_language")
    wallet_currency: CurrencyCode = Field(description="core_wallet_currency; fixed once set")
    username: str | None = Field(default=None, max_length=256, description="core_username")
    # Plain epoch milliseconds (no seconds heuristic): birthdates before 1973 are ordinary.
    birthdate: PastUtcTimestamp | None = Field(default=None, description="user_birthdate")
    country: CountryCode | None = Field(default=None, description="user_country")
    email: str | None = Field(default=None, max_length=320, description="user_email (PII)")
    first_name: str | None = Field(default=None, max_length=256, description="user_first_name (PII)")
    last_name: str | None = Field(default=None, max_length=256, description="user_last_name (PII)")
    # Generous bound: an unusable phone is kept (encrypted, flagged invalid), not a reason to reject.
    phone: str | None = Field(default=None, max_length=256, description="user_phone (PII)")
    affiliate_id: int | None = Field(
        default=None, ge=-MAX_INT64 - 1, le=MAX_INT64, description="core_affiliate_id (numeric)"
    )
    affiliate_str: str | None = Field(default=None, max_length=256, description="core_affiliate_str")
    is_email_disabled_by_platform: bool | None = Field(
        default=None, description="core_is_email_disabled_by_platform"
    )
    is_sms_disabled_by_platform: bool | None = Field(default=None, description="core_is_sms_disabled_by_platform")
    gender: Annotated[Gender | None, BeforeValidator(_gender_short_forms)] = Field(
        default=None, description="core_user_gender"
    )
    kyc_status: str | None = Field(default=None, max_length=64, description="core_kyc_status")
    # Set by the PII guard, which removes email, phone and names from the event on arrival.
    has_email: bool | None = Field(default=None, description="derived by the PII guard")
    email_domain: str | None = Field(default=None, max_length=255, description="derived, where configured")
    has_phone: bool | None = Field(default=None, description="derived by the PII guard")
    phone_valid: bool | None = Field(default=None, description="derived: the phone parsed as a valid number")



class Payment(CanonicalEvent):
    """Deposits (approved, failed, cancelled) and withdrawals (requested through cancelled)."""

    event_type: ClassVar = PAYMENT_TYPES
    type: Literal[
        "deposit", "deposit_failed", "deposit_cancelled",
        "withdrawal_requested", "withdrawal_approved", "withdrawal_completed", "withdrawal_rejected",
        "withdrawal_cancelled",
    ]
    amount: Amount = Field(description="amount in the user's wallet currency")
    currency: CurrencyCode | None = Field(default=None, description="core_wallet_currency of the user")
    method: str | None = Field(default=None, max_length=128, description="payment_method, e.g. PayPal")
    status: str | None = Field(default=None, max_length=64, description="operator status, e.g. COMPLETED")
    code: str | None = Field(default=None, max_length=128, description="deposit/voucher code")
    provider: str | None = Field(default=None, max_length=128, description="provider_name")
    real_balance: Balance | None = None
    bonus_balance: Balance | None = None
    total_balance: Balance | None = None


class _CasinoTransaction(CanonicalEvent):
    bet_amount: Amount = Field(description="total bet (real + bonus)")
    bet_amount_real: Amount | None = None
    bet_amount_bonus: Amount | None = None
    currency: CurrencyCode | None = None
    game_name: str = Field(min_length=1, max_length=256)
    game_id: Identifier
    game_category: str | None = Field(default=None, max_length=128)
    game_category_id: Identifier | None = None
    game_provider: str | None = Field(default=None, max_length=128)
    game_provider_id: Identifier | None = None
    game_vendor: str | None = Field(default=None, max_length=128)
    catalog_game_id: Identifier | None = Field(default=None, description="casino_game_ext_id")
    catalog_game_type_id: Identifier | None = Field(default=None, description="casino_game_type_ext_id")
    catalog_provider_id: Identifier | None = Field(default=None, description="casino_game_provider_ext_id")


class CasinoBet(_CasinoTransaction):
    """A casino bet was placed."""

    event_type: ClassVar = frozenset({EventType.CASINO_BET})
    type: Literal["casino_bet"] = "casino_bet"


class CasinoWin(_CasinoTransaction):
    """A casino round resolved (also sent with a zero win by platforms that report only wins)."""

    event_type: ClassVar = frozenset({EventType.CASINO_WIN})
    type: Literal["casino_win"] = "casino_win"
    win_amount: Amount = Field(description="total win (real + bonus)")
    win_amount_real: Amount | None = None
    win_amount_bonus: Amount | None = None


class SportBetResult(StrEnum):
    WON = "WON"
    LOST = "LOST"
    VOID = "VOID"
    CASHED_OUT = "CASHED_OUT"
    HALF_WON = "HALF_WON"
    HALF_LOST = "HALF_LOST"


class _SportBet(CanonicalEvent):
    bet_id: Identifier = Field(description="the bet (container) this event belongs to")
    currency: CurrencyCode | None = None
    is_live: bool | None = None


class SportBetOpen(_SportBet):
    """A sport bet (the container of its selections) was placed."""

    event_type: ClassVar = frozenset({EventType.SPORT_BET_OPEN})
    type: Literal["sport_bet_open"] = "sport_bet_open"
    stake: Amount
    stake_real: Amount | None = None
    stake_bonus: Amount | None = None
    total_odds: Odds | None = None
    bet_type: str | None = Field(default=None, max_length=64, description="single, combo, system, ...")
    selections_count: Annotated[int, Field(ge=1, le=MAX_INT64)] | None = None


class _Selection(_SportBet):
    selection_id: Identifier
    odds: Odds | None = None
    sport: str | None = Field(default=None, max_length=128)
    tournament: str | None = Field(default=None, max_length=256)
    match_name: str | None = Field(default=None, max_length=256)
    match_id: Identifier | None = None
    market: str | None = Field(default=None, max_length=256)
    outcome: str | None = Field(default=None, max_length=256)
    match_start_time: BusinessTimestamp | None = None


class SportBetSelectionOpen(_Selection):
    """One leg of a placed sport bet."""

    event_type: ClassVar = frozenset({EventType.SPORT_BET_SELECTION_OPEN})
    type: Literal["sport_bet_selection_open"] = "sport_bet_selection_open"


class SportBetSettled(_SportBet):
    """Every selection of the bet is resolved."""

    event_type: ClassVar = frozenset({EventType.SPORT_BET_SETTLED})
    type: Literal["sport_bet_settled"] = "sport_bet_settled"
    result: SportBetResult
    stake: Amount
    payout: Amount = Field(description="amount paid out (0 for a lost bet)")
    total_odds: Odds | None = None


class SportBetSelectionSettled(_Selection):
    """One leg of a settled sport bet (sent after the bet's settlement)."""

    event_type: ClassVar = frozenset({EventType.SPORT_BET_SELECTION_SETTLED})
    type: Literal["sport_bet_selection_settled"] = "sport_bet_selection_settled"
    result: SportBetResult


EVENT_MODELS: tuple[type[CanonicalEvent], ...] = (
    UserProfile,
    Payment,
    CasinoBet,
    CasinoWin,
    SportBetOpen,
    SportBetSelectionOpen,
    SportBetSettled,
    SportBetSelectionSettled,
)

MODEL_BY_TYPE: dict[EventType, type[CanonicalEvent]] = {
    event_type: model for model in EVENT_MODELS for event_type in model.event_type
}
