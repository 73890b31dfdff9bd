"""Betwave: a worked example of an operator whose wire format differs from the reference in every
way that matters.

Wire format
===========

Every message is one JSON object with an envelope and nested camelCase objects:

- ``meta.eventId`` (string or int): unique per message; the event id of profile events.
- ``meta.kind`` (int): what happened, see KINDS. The kind alone decides the mapping (the stream the
  topic is configured as is only quoted in errors).
- ``meta.occurredAt``: ISO-8601 with an offset, e.g. ``2026-03-03T10:15:00.123+02:00`` -> event_time.
- ``player.id`` (int) -> user_id; ``player.brand.code`` -> brand_id.
- Money is an object ``{"amountMinor": "1050", "currency": "EUR"}``: an integer string of minor units
  (1050 EUR cents = 10.50), converted exactly with the currency's exponent (MINOR_UNIT_EXPONENTS,
  2 for every currency not listed). Bet/win/stake money may carry ``bonusMinor``, the bonus part of
  ``amountMinor``; the real part is the difference.
- ``totals`` (optional): platform aggregates, money in ``totals.currency`` -> ``aggregates``.
- ``attributes`` (optional object): custom properties, copied into ``extra`` key by key.
- Every other field the mapping does not read lands in ``extra`` under its dotted path, e.g.
  ``player.vipTier`` or ``slip.legs[1].boosted`` (leg fields only on that leg's event).

KINDS (``meta.kind``)::

    100 PLAYER_REGISTERED     -> user_profile
    101 PLAYER_UPDATED        -> user_profile
    200 DEPOSIT               -> by payment.status (DEPOSIT_STATUS)
    210 WITHDRAWAL            -> by payment.status (WITHDRAWAL_STATUS)
    300 CASINO_BET            -> casino_bet                              id <round.id>:bet
    301 CASINO_ROUND_SETTLED  -> casino_bet, casino_win (bet and win in one message)
    302 CASINO_ROUND_RESULT   -> casino_win (the result of a round already sent as 300)
    400 SPORT_SLIP_PLACED     -> sport_bet_open, then sport_bet_selection_open per leg
    401 SPORT_SLIP_SETTLED    -> sport_bet_settled, then sport_bet_selection_settled per leg

Casino ids are ``<round.id>:bet`` and ``<round.id>:win`` whichever kind carries them, so a 300 then
302 pair and a single 301 dedupe the same way. Payment ids are ``<payment.id>:<canonical type>``
(one payment moves through several statuses). Sport ids are ``<slip.id>:open``,
``<slip.id>:<leg.id>:open``, ``<slip.id>:settled`` and ``<slip.id>:<leg.id>:settled``.

Code tables::

    DEPOSIT_STATUS     0 PENDING (no event: not final)  1 APPROVED -> deposit
                       2 DECLINED -> deposit_failed     3 CANCELLED -> deposit_cancelled
    WITHDRAWAL_STATUS  1 REQUESTED -> withdrawal_requested  2 APPROVED -> withdrawal_approved
                       3 PAID -> withdrawal_completed       4 REJECTED -> withdrawal_rejected
                       5 CANCELLED -> withdrawal_cancelled
    ACCOUNT_STATUS     0 PENDING  1 ACTIVE  2 SUSPENDED  3 BLOCKED  4 SELF_EXCLUDED
                       5 DEACTIVATED (closed)  6 BANNED  7 LOCKED
    GENDER (ISO/IEC 5218)  0 UNKNOWN (not known)  1 MALE  2 FEMALE  9 UNKNOWN (not applicable)
    KYC_LEVEL          0 NOT_STARTED  1 PENDING  2 VERIFIED  3 REJECTED
    SLIP_TYPE          1 single  2 combo  3 system
    RESULT             1 WON  2 LOST  3 VOID  4 CASHED_OUT  5 HALF_WON  6 HALF_LOST

Unknown kinds and unknown payment status codes raise ``UnknownEventType``; an unknown code in any
other table raises ``InvalidField``.

Examples
========

Profile (100/101). ``locale`` gives the language; ``consents`` are opt-ins, so the canonical
``is_*_disabled_by_platform`` flags are their negation::

    {"meta": {"eventId": "evt-1001", "kind": 100, "occurredAt": "2026-03-03T10:15:00.123+02:00"},
     "player": {"id": 123456, "brand": {"code": "BW-EU"}, "nick": "lucky_jo", "status": 1,
                "registeredAt": "2025-11-02T18:04:11+01:00", "locale": "de-AT", "walletCurrency": "EUR",
                "birthDate": "1990-04-12", "gender": 2, "kycLevel": 2,
                "affiliate": {"id": 4322, "tag": "spring-promo"},
                "contact": {"email": "jo@example.com", "phone": "+436641234567", "firstName": "Jo",
                            "lastName": "Doe", "country": "AT"},
                "consents": {"email": true, "sms": false}},
     "attributes": {"vipTier": "gold"}}

Payment (200/210). Balances are in ``money.currency``; total_balance = real + bonus::

    {"meta": {"eventId": "evt-2001", "kind": 200, "occurredAt": "2026-03-03T10:16:00+02:00"},
     "player": {"id": 123456, "brand": {"code": "BW-EU"}},
     "payment": {"id": "D-99812", "status": 1, "method": {"type": "CARD", "provider": "Adyen"},
                 "promoCode": "WELCOME100"},
     "money": {"amountMinor": "5000", "currency": "EUR"},
     "balances": {"realMinor": "7550", "bonusMinor": "5000"},
     "totals": {"currency": "EUR", "depositMinor": "125000", "depositCount": 7,
                "lastDepositAt": "2026-03-03T10:16:00+02:00"}}

Casino round settled (301) -> CasinoBet ``R-5501:bet`` then CasinoWin ``R-5501:win``::

    {"meta": {"eventId": "evt-3001", "kind": 301, "occurredAt": "2026-03-03T10:17:30.5+02:00"},
     "player": {"id": 123456, "brand": {"code": "BW-EU"}},
     "round": {"id": "R-5501"},
     "game": {"id": 8812, "title": "20 Super Hot", "category": {"id": 1, "name": "Slots"},
              "studio": {"id": 14, "name": "EGT"}, "aggregator": "Amusnet",
              "catalog": {"gameRef": "g-8812", "typeRef": "t-1", "providerRef": "p-14"}},
     "bet": {"amountMinor": "100", "bonusMinor": "20", "currency": "EUR"},
     "win": {"amountMinor": "250", "bonusMinor": "0", "currency": "EUR"}}

Sport slip placed (400; 401 adds ``slip.result``, ``slip.payout`` and each leg's ``result``)::

    {"meta": {"eventId": "evt-4001", "kind": 400, "occurredAt": "2026-03-03T10:20:00+02:00"},
     "player": {"id": 123456, "brand": {"code": "BW-EU"}},
     "slip": {"id": "S-7781", "type": 2, "live": false, "totalOdds": "3.70",
              "stake": {"amountMinor": "1000", "currency": "EUR"},
              "legs": [{"id": "L1", "odds": "1.85", "sport": "Football", "competition": "Premier League",
                        "fixture": {"id": 991, "name": "Arsenal - Chelsea", "startsAt": "2026-03-03T20:00:00Z"},
                        "market": "1X2", "pick": "1"},
                       {"id": "L2", "odds": "2.00", "sport": "Tennis", "competition": "ATP Dubai",
                        "fixture": {"id": 992, "name": "Sinner - Alcaraz", "startsAt": "2026-03-03T21:00:00Z"},
                        "market": "Match winner", "pick": "Sinner"}]}}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import IntEnum
from typing import Any, ClassVar, TypeVar

from smartico_stream.adapters.base import (
    AdapterError,
    EventDraft,
    InvalidField,
    MissingField,
    RecordContext,
    UnknownEventType,
)
from smartico_stream.events.models import (
    CanonicalEvent,
    CasinoBet,
    CasinoWin,
    EventType,
    Payment,
    SportBetOpen,
    SportBetSelectionOpen,
    SportBetSelectionSettled,
    SportBetSettled,
    UserProfile,
)

__all__ = ["MINOR_UNIT_EXPONENTS", "BetwaveAdapter", "Kind", "minor_units_to_decimal"]


class Kind(IntEnum):
    """``meta.kind`` codes."""

    PLAYER_REGISTERED = 100
    PLAYER_UPDATED = 101
    DEPOSIT = 200
    WITHDRAWAL = 210
    CASINO_BET = 300
    CASINO_ROUND_SETTLED = 301
    CASINO_ROUND_RESULT = 302
    SPORT_SLIP_PLACED = 400
    SPORT_SLIP_SETTLED = 401


# Code -> (Betwave's name, canonical type or None for "no event").
DEPOSIT_STATUS: dict[int, tuple[str, str | None]] = {
    0: ("PENDING", None),
    1: ("APPROVED", EventType.DEPOSIT.value),
    2: ("DECLINED", EventType.DEPOSIT_FAILED.value),
    3: ("CANCELLED", EventType.DEPOSIT_CANCELLED.value),
}
WITHDRAWAL_STATUS: dict[int, tuple[str, str | None]] = {
    1: ("REQUESTED", EventType.WITHDRAWAL_REQUESTED.value),
    2: ("APPROVED", EventType.WITHDRAWAL_APPROVED.value),
    3: ("PAID", EventType.WITHDRAWAL_COMPLETED.value),
    4: ("REJECTED", EventType.WITHDRAWAL_REJECTED.value),
    5: ("CANCELLED", EventType.WITHDRAWAL_CANCELLED.value),
}
ACCOUNT_STATUS: dict[int, str] = {
    0: "PENDING",
    1: "ACTIVE",
    2: "SUSPENDED",
    3: "BLOCKED",
    4: "SELF_EXCLUDED",
    5: "DEACTIVATED",
    6: "BANNED",
    7: "LOCKED",
}
GENDER: dict[int, str] = {0: "UNKNOWN", 1: "MALE", 2: "FEMALE", 9: "UNKNOWN"}  # ISO/IEC 5218
KYC_LEVEL: dict[int, str] = {0: "NOT_STARTED", 1: "PENDING", 2: "VERIFIED", 3: "REJECTED"}
SLIP_TYPE: dict[int, str] = {1: "single", 2: "combo", 3: "system"}
RESULT: dict[int, str] = {1: "WON", 2: "LOST", 3: "VOID", 4: "CASHED_OUT", 5: "HALF_WON", 6: "HALF_LOST"}

# ISO 4217 minor-unit exponents that are not 2. Explicit on purpose: a wrong exponent is a
# silent factor-100 error, so every entry here is a reviewed decision.
MINOR_UNIT_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(
        ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF",
         "XPF"),
        0,
    ),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
}
DEFAULT_EXPONENT = 2

# Far beyond any real amount; stops junk from turning into huge integers.
_MAX_MINOR_DIGITS = 30


# Reading nested objects ---------------------------------------------------------------------------


class _Node:
    """A JSON object being read. It remembers the keys the mapping used so that everything else
    can be handed to ``extra`` under its dotted path."""

    __slots__ = ("_children", "_data", "_used", "path")

    def __init__(self, data: Mapping[str, Any], path: str = "") -> None:
        self._data = data
        self.path = path
        self._used: set[str] = set()
        self._children: dict[str, _Node] = {}

    def where(self, key: str) -> str:
        """The dotted path of ``key`` for messages and ``extra``."""
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str) -> Any:
        """The value of ``key`` (None when absent or null), marked as used."""
        self._used.add(key)
        return self._data.get(key)

    def require(self, key: str) -> Any:
        """The value of ``key``; ``MissingField`` naming its path when absent or null."""
        value = self.get(key)
        if value is None:
            raise MissingField(f"missing required field {self.where(key)!r}")
        return value

    def node(self, key: str, *, required: bool = False) -> _Node:
        """The nested object at ``key``; an empty node when it is absent and not required."""
        if key in self._children:
            return self._children[key]
        value = self.require(key) if required else self.get(key)
        if value is None:
            return _Node({}, self.where(key))
        if not isinstance(value, Mapping):
            raise InvalidField(f"{self.where(key)!r} must be an object")
        child = self._children[key] = _Node(value, self.where(key))
        return child

    def leftovers(self, into: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every unused key of this object and of the nested objects read through it."""
        into = {} if into is None else into
        for key, value in self._data.items():
            if key not in self._used:
                into[self.where(key)] = value
        for child in self._children.values():
            child.leftovers(into)
        return into


# Value conversions ---------------------------------------------------------------------------------

_T = TypeVar("_T")


def _unknown(value: Any) -> str:
    # Never the value itself: a hostile or broken record can carry personal data in any field.
    return "not an integer code" if isinstance(value, bool) or not isinstance(value, int) else "unknown code"


def _code(value: Any, table: Mapping[int, _T], where: str) -> _T:
    if isinstance(value, bool) or not isinstance(value, int) or value not in table:
        known = ", ".join(str(code) for code in sorted(table))
        raise InvalidField(f"{where}: {_unknown(value)}; known codes: {known}")
    return table[value]


def _optional_code(value: Any, table: Mapping[int, _T], where: str) -> _T | None:
    return None if value is None else _code(value, table, where)


def _id_part(value: Any, where: str) -> str:
    # Derived event ids embed this text, so it must be a plain id, not any JSON value.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise InvalidField(f"{where} must be a non-empty string or an integer")


def minor_unit_exponent(currency: Any) -> int:
    """Decimal places of ``currency``'s minor unit (2 unless MINOR_UNIT_EXPONENTS says otherwise)."""
    if isinstance(currency, str):
        return MINOR_UNIT_EXPONENTS.get(currency.strip().upper(), DEFAULT_EXPONENT)
    return DEFAULT_EXPONENT


def _minor_units(value: Any, where: str) -> int:
    if isinstance(value, str):
        digits = value[1:] if value.startswith("-") else value
        if digits.isascii() and digits.isdigit() and len(digits) <= _MAX_MINOR_DIGITS:
            return int(value)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**_MAX_MINOR_DIGITS:
        return value
    raise InvalidField(f'{where} must be a whole number of minor units as a string of digits, e.g. "1050"')


def minor_units_to_decimal(minor: int, exponent: int) -> Decimal:
    """Exact conversion: 1050 with exponent 2 is Decimal('10.50'). Built from the digits rather
    than by division or ``scaleb``, which round to the context precision (28 digits)."""
    sign, digits, _ = Decimal(minor).as_tuple()
    return Decimal((sign, digits, -exponent))


@dataclass(frozen=True, slots=True)
class _Money:
    amount: Decimal
    currency: Any
    real: Decimal | None = None
    bonus: Decimal | None = None


def _money(node: _Node, *, split: bool = True) -> _Money:
    """Read a money object. ``split=False`` leaves ``bonusMinor`` unread (so it lands in extra) for
    events whose canonical model has no real/bonus split."""
    currency = node.require("currency")
    exponent = minor_unit_exponent(currency)
    total = _minor_units(node.require("amountMinor"), node.where("amountMinor"))
    raw_bonus = node.get("bonusMinor") if split else None
    if raw_bonus is None:
        return _Money(minor_units_to_decimal(total, exponent), currency)
    bonus = _minor_units(raw_bonus, node.where("bonusMinor"))
    return _Money(
        minor_units_to_decimal(total, exponent),
        currency,
        real=minor_units_to_decimal(total - bonus, exponent),
        bonus=minor_units_to_decimal(bonus, exponent),
    )


def _same_currency(first: Any, second: Any) -> bool:
    def norm(code: Any) -> Any:
        return code.strip().upper() if isinstance(code, str) else code

    return norm(first) == norm(second)


def _optional_amount(node: _Node, key: str, exponent: int) -> Decimal | None:
    value = node.get(key)
    return None if value is None else minor_units_to_decimal(_minor_units(value, node.where(key)), exponent)


def _language(locale: Any) -> Any:
    # "de-AT" / "de_AT" -> "DE"; non-strings are left for the canonical model to reject.
    if isinstance(locale, str):
        return locale.replace("_", "-").split("-", 1)[0]
    return locale


def _opted_out(consent: Any, where: str) -> bool | None:
    if consent is None:
        return None
    if not isinstance(consent, bool):
        raise InvalidField(f"{where} must be true or false")
    return not consent


def _present(fields: Mapping[str, Any]) -> dict[str, Any]:
    # Absent optional fields fall back to the model's defaults.
    return {key: value for key, value in fields.items() if value is not None}


# Mapping ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Draft:
    """An event waiting for the message-wide extra, which is known only after every read."""

    model: type[CanonicalEvent]
    fields: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def type(self) -> Any:
        """The canonical type: the model's own where it has one type (a payment's is in ``fields``)."""
        default = self.model.model_fields["type"].default
        return default if isinstance(default, str) else self.fields.get("type")


_Handler = Callable[[_Node, dict[str, Any]], list[_Draft]]


def _profile(root: _Node, common: dict[str, Any]) -> list[_Draft]:
    player = root.node("player")
    contact = player.node("contact")
    consents = player.node("consents")
    affiliate = player.node("affiliate")
    fields = {
        **common,
        "event_id": root.node("meta").require("eventId"),
        "registration_date": player.require("registeredAt"),
        "language": _language(player.require("locale")),
        "wallet_currency": player.require("walletCurrency"),
        "account_status": _optional_code(player.get("status"), ACCOUNT_STATUS, player.where("status")),
        "username": player.get("nick"),
        "birthdate": player.get("birthDate"),
        "gender": _optional_code(player.get("gender"), GENDER, player.where("gender")),
        "kyc_status": _optional_code(player.get("kycLevel"), KYC_LEVEL, player.where("kycLevel")),
        "affiliate_id": affiliate.get("id"),
        "affiliate_str": affiliate.get("tag"),
        "email": contact.get("email"),
        "phone": contact.get("phone"),
        "first_name": contact.get("firstName"),
        "last_name": contact.get("lastName"),
        "country": contact.get("country"),
        "is_email_disabled_by_platform": _opted_out(consents.get("email"), consents.where("email")),
        "is_sms_disabled_by_platform": _opted_out(consents.get("sms"), consents.where("sms")),
    }
    return [_Draft(UserProfile, _present(fields))]


def _payment(kind: Kind, statuses: Mapping[int, tuple[str, str | None]]) -> _Handler:
    def handler(root: _Node, common: dict[str, Any]) -> list[_Draft]:
        payment = root.node("payment", required=True)
        raw_status = payment.require("status")
        if isinstance(raw_status, bool) or not isinstance(raw_status, int) or raw_status not in statuses:
            known = ", ".join(f"{code} {name}" for code, (name, _) in sorted(statuses.items()))
            raise UnknownEventType(f"betwave {kind.name}: payment.status: {_unknown(raw_status)}; known: {known}")
        status_name, event_type = statuses[raw_status]
        if event_type is None:
            return []  # not final yet; Betwave sends the outcome as a later message
        payment_id = _id_part(payment.require("id"), payment.where("id"))
        money = _money(root.node("money", required=True))
        exponent = minor_unit_exponent(money.currency)
        balances = root.node("balances")
        real = _optional_amount(balances, "realMinor", exponent)
        bonus = _optional_amount(balances, "bonusMinor", exponent)
        method = payment.node("method")
        fields = {
            **common,
            "type": event_type,
            "event_id": f"{payment_id}:{event_type}",
            "amount": money.amount,
            "currency": money.currency,
            "status": status_name,
            "method": method.get("type"),
            "provider": method.get("provider"),
            "code": payment.get("promoCode"),
            "real_balance": real,
            "bonus_balance": bonus,
            "total_balance": real + bonus if real is not None and bonus is not None else None,
        }
        return [_Draft(Payment, _present(fields))]

    return handler


def _casino(*, emit_bet: bool, emit_win: bool) -> _Handler:
    def handler(root: _Node, common: dict[str, Any]) -> list[_Draft]:
        round_id = _id_part(root.node("round", required=True).require("id"), "round.id")
        game = root.node("game", required=True)
        category = game.node("category")
        studio = game.node("studio")
        catalog = game.node("catalog")
        bet = _money(root.node("bet", required=True))
        base = {
            **common,
            "game_id": game.require("id"),
            "game_name": game.require("title"),
            "game_category": category.get("name"),
            "game_category_id": category.get("id"),
            "game_provider": studio.get("name"),
            "game_provider_id": studio.get("id"),
            "game_vendor": game.get("aggregator"),
            "catalog_game_id": catalog.get("gameRef"),
            "catalog_game_type_id": catalog.get("typeRef"),
            "catalog_provider_id": catalog.get("providerRef"),
            "currency": bet.currency,
            "bet_amount": bet.amount,
            "bet_amount_real": bet.real,
            "bet_amount_bonus": bet.bonus,
        }
        drafts = []
        if emit_bet:
            drafts.append(_Draft(CasinoBet, _present({**base, "event_id": f"{round_id}:bet"})))
        if emit_win:
            win = _money(root.node("win", required=True))
            if not _same_currency(win.currency, bet.currency):
                raise InvalidField("win.currency must equal bet.currency")
            fields = {
                **base,
                "event_id": f"{round_id}:win",
                "win_amount": win.amount,
                "win_amount_real": win.real,
                "win_amount_bonus": win.bonus,
            }
            drafts.append(_Draft(CasinoWin, _present(fields)))
        return drafts

    return handler


def _legs(slip: _Node) -> list[_Node]:
    raw = slip.require("legs")
    if not isinstance(raw, list) or not raw:
        raise InvalidField(f"{slip.where('legs')!r} must be a non-empty array of objects")
    legs = []
    for index, leg in enumerate(raw):
        if not isinstance(leg, Mapping):
            raise InvalidField(f"{slip.where('legs')}[{index}] must be an object")
        # Not children of the slip: a leg's unused fields belong to that leg's event only.
        legs.append(_Node(leg, f"{slip.where('legs')}[{index}]"))
    return legs


def _selection_fields(leg: _Node) -> dict[str, Any]:
    fixture = leg.node("fixture")
    return {
        "selection_id": _id_part(leg.require("id"), leg.where("id")),
        "odds": leg.get("odds"),
        "sport": leg.get("sport"),
        "tournament": leg.get("competition"),
        "match_id": fixture.get("id"),
        "match_name": fixture.get("name"),
        "match_start_time": fixture.get("startsAt"),
        "market": leg.get("market"),
        "outcome": leg.get("pick"),
    }


def _sport(*, settled: bool) -> _Handler:
    stage = "settled" if settled else "open"
    bet_model = SportBetSettled if settled else SportBetOpen
    leg_model = SportBetSelectionSettled if settled else SportBetSelectionOpen

    def handler(root: _Node, common: dict[str, Any]) -> list[_Draft]:
        slip = root.node("slip", required=True)
        slip_id = _id_part(slip.require("id"), "slip.id")
        stake = _money(slip.node("stake", required=True), split=not settled)
        legs = _legs(slip)
        shared = {**common, "bet_id": slip_id, "currency": stake.currency, "is_live": slip.get("live")}
        bet = {**shared, "event_id": f"{slip_id}:{stage}", "stake": stake.amount, "total_odds": slip.get("totalOdds")}
        if settled:
            payout = _money(slip.node("payout", required=True), split=False)
            if not _same_currency(payout.currency, stake.currency):
                raise InvalidField("slip.payout.currency must equal slip.stake.currency")
            bet["result"] = _code(slip.require("result"), RESULT, "slip.result")
            bet["payout"] = payout.amount
        else:
            bet["stake_real"] = stake.real
            bet["stake_bonus"] = stake.bonus
            bet["bet_type"] = _optional_code(slip.get("type"), SLIP_TYPE, "slip.type")
            bet["selections_count"] = len(legs)
        drafts = [_Draft(bet_model, _present(bet))]
        for leg in legs:
            selection = {**shared, **_selection_fields(leg)}
            selection["event_id"] = f"{slip_id}:{selection['selection_id']}:{stage}"
            if settled:
                selection["result"] = _code(leg.require("result"), RESULT, leg.where("result"))
            drafts.append(_Draft(leg_model, _present(selection), extra=leg.leftovers()))
        return drafts

    return handler


_HANDLERS: dict[Kind, _Handler] = {
    Kind.PLAYER_REGISTERED: _profile,
    Kind.PLAYER_UPDATED: _profile,
    Kind.DEPOSIT: _payment(Kind.DEPOSIT, DEPOSIT_STATUS),
    Kind.WITHDRAWAL: _payment(Kind.WITHDRAWAL, WITHDRAWAL_STATUS),
    Kind.CASINO_BET: _casino(emit_bet=True, emit_win=False),
    Kind.CASINO_ROUND_SETTLED: _casino(emit_bet=True, emit_win=True),
    Kind.CASINO_ROUND_RESULT: _casino(emit_bet=False, emit_win=True),
    Kind.SPORT_SLIP_PLACED: _sport(settled=False),
    Kind.SPORT_SLIP_SETTLED: _sport(settled=True),
}

_TOTAL_AMOUNTS = {
    "depositMinor": "total_deposit_amount",
    "withdrawalMinor": "total_withdrawal_amount",
    "betMinor": "total_bet_amount",
    "winMinor": "total_win_amount",
}
_TOTAL_VALUES = {
    "depositCount": "total_deposit_count",
    "withdrawalCount": "total_withdrawal_count",
    "betCount": "total_bet_count",
    "winCount": "total_win_count",
    "firstDepositAt": "first_deposit_time",
    "lastDepositAt": "last_deposit_time",
}


def _aggregates(totals: _Node) -> dict[str, Any] | None:
    found = {target: totals.get(key) for key, target in _TOTAL_VALUES.items()}
    if any(totals.get(key) is not None for key in _TOTAL_AMOUNTS):
        exponent = minor_unit_exponent(totals.require("currency"))
        for key, target in _TOTAL_AMOUNTS.items():
            found[target] = _optional_amount(totals, key, exponent)
    return _present(found) or None


def _kind(meta: _Node, context: RecordContext) -> Kind:
    raw = meta.get("kind")
    if isinstance(raw, int) and not isinstance(raw, bool) and raw in Kind._value2member_map_:
        return Kind(raw)
    found = "no meta.kind" if raw is None else f"meta.kind: {_unknown(raw)}"
    known = ", ".join(f"{kind.value} {kind.name}" for kind in Kind)
    raise UnknownEventType(f"betwave on the {context.stream.value} stream: {found}; known kinds: {known}")


def _attributes(root: _Node) -> dict[str, Any]:
    value = root.get("attributes")
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidField("'attributes' must be an object")
    return dict(value)


class BetwaveAdapter:
    """Maps Betwave's nested, minor-unit, coded wire format (see the module docstring)."""

    name: ClassVar[str] = "betwave"

    def adapt(self, message: Mapping[str, Any], context: RecordContext) -> list[EventDraft]:
        """One Betwave message -> zero (pending deposit), one, or several canonical event drafts."""
        try:
            return self._adapt(message, context)
        except OverflowError as exc:
            # events.types lets OverflowError escape for far-out-of-range epoch numbers; the
            # contract promises AdapterError or ValidationError for bad input.
            raise AdapterError(f"betwave on the {context.stream.value} stream: a timestamp is out of range") from exc

    @staticmethod
    def _adapt(message: Mapping[str, Any], context: RecordContext) -> list[EventDraft]:
        root = _Node(message)
        meta = root.node("meta", required=True)
        kind = _kind(meta, context)
        player = root.node("player", required=True)
        common = {
            "event_time": meta.require("occurredAt"),
            "user_id": player.require("id"),
            "brand_id": player.node("brand", required=True).require("code"),
        }
        drafts = _HANDLERS[kind](root, common)
        if not drafts:
            return []
        aggregates = _aggregates(root.node("totals"))
        extra = {**_attributes(root), **root.leftovers()}
        return [
            {"type": draft.type, **draft.fields, "aggregates": aggregates, "extra": {**extra, **draft.extra}}
            for draft in drafts
        ]
