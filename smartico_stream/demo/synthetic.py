"""A deterministic synthetic operator stream in the *reference* wire format.

The records look like what an operator produces to its brokers following the data-integration
spec's "Kafka or RabbitMQ" examples: one JSON object per record, keyed by the user id, on one of the
four streams (profile, payments, casino, sport). The demo, the tests and the benchmark all read the
same stream, so it must be reproducible byte for byte: everything random comes from one
``random.Random(spec.seed)`` and nothing reads the clock.

Shape of a stream:

* every user's first record is a profile (the registration); afterwards a user's activities are
  drawn from a mix of roughly 5% profile updates, 20% payments, 55% casino and 20% sport records;
* multi-record activities (bet then win, a withdrawal's life cycle, a sport bet with its selections
  and settlements) are interleaved with other users' records, as they would be on a real topic;
* business timestamps come from one clock that starts at ``spec.start_ms`` and moves forward on
  every OK record, so each user's event times strictly increase and stay in the past;
* a share of exact byte duplicates (re-sent records) and a share of malformed records that cycle
  through :data:`DEFECTS`.
"""

from __future__ import annotations

import functools
import random
import unicodedata
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any

import orjson

from smartico_stream.events.raw import Stream

__all__ = [
    "DEFECTS",
    "DUPLICATE_WINDOW",
    "OVERSIZED_MIN_BYTES",
    "REFERENCE_START_MS",
    "RecordKind",
    "StreamSpec",
    "SyntheticRecord",
    "expected_counts",
    "synthetic_stream",
]

REFERENCE_START_MS = 1_767_600_000_000
"""2026-01-05T08:00:00Z: a fixed start so that runs on different days produce the same bytes."""

DUPLICATE_WINDOW = 50
"""A duplicate follows its original within this many records (the spec's dedup window is short)."""

OVERSIZED_MIN_BYTES = 1_100_000
"""Default size the ``oversized`` defect's value exceeds (above Kafka's default 1 MB message size)."""

DEFECTS: tuple[str, ...] = (
    "invalid_json",
    "invalid_utf8",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "negative_amount",
    "nan_amount",
    "future_date",
    "unknown_type",
    "oversized",
    "null_key",
)
"""Malformed-record defects, in the order the generator cycles through them."""

# The clock may span at most this much, whatever the event count: with the fixed start it keeps
# every business timestamp months in the past (the models reject future event times).
_MAX_SPAN_MS = 200 * 24 * 3600 * 1000
_MEAN_STEP_MS = 1000
# For the future_date defect.
_FAR_FUTURE_MS = 5_680_281_600_000  # 2150-01-01: far future, yet a valid epoch-ms value
_DAY_MS = 24 * 3600 * 1000
_YEAR_MS = 365 * _DAY_MS
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()

# Interleaving: how often an OK slot continues an open activity rather than starting a new one,
# and how many activities may be open at once (bounds how far a win drifts from its bet).
_FOLLOW_PROBABILITY = 0.5
_MAX_OPEN_ACTIVITIES = 32

# Activity weights after registration, chosen so that *records* (not activities) land near the
# target mix: weight = record share / mean records per activity (payments ~1.25 since users without
# funds cannot withdraw, casino 2, sport ~5.6).
_W_PROFILE = 5.0
_W_PAYMENT = 20.0 / 1.25
_W_CASINO = 55.0 / 2.0
_W_SPORT = 20.0 / 5.6
_W_TOTAL = _W_PROFILE + _W_PAYMENT + _W_CASINO + _W_SPORT


class RecordKind(StrEnum):
    """What a synthetic record is meant to be, so tests and the demo can check the pipeline's verdict."""

    OK = "ok"
    DUPLICATE = "duplicate"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class SyntheticRecord:
    """One record as produced to the broker, plus the generator's ground truth about it."""

    stream: Stream
    key: bytes | None
    """The user id as a string, UTF-8 (``None`` only for the ``null_key`` defect)."""
    value: bytes
    """The raw message bytes."""
    kind: RecordKind
    defect: str | None
    """For MALFORMED records: one of :data:`DEFECTS`."""
    user: str | None
    """``"brand:user"`` for OK and DUPLICATE records; ``None`` for malformed ones (not user events)."""


@dataclass(frozen=True)
class StreamSpec:
    """Parameters of a synthetic stream. The same spec always yields the same bytes."""

    users: int = 5000
    events: int = 20000
    seed: int = 7
    duplicate_share: float = 0.02
    malformed_share: float = 0.01
    brands: tuple[str, ...] = ("brand-eu", "brand-latam")
    start_ms: int = REFERENCE_START_MS
    # The embedded Kafka keeps only ~5 MB per partition, so the demo asks for smaller oversized
    # records (and sets a matching, lower limits.max_message_bytes).
    oversized_bytes: int = OVERSIZED_MIN_BYTES

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError("users must be at least 1")
        if self.events < 0:
            raise ValueError("events must not be negative")
        if not self.brands or any(not b for b in self.brands):
            raise ValueError("brands must be a non-empty tuple of non-empty names")
        for name in ("duplicate_share", "malformed_share"):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        # Duplicates need an OK original nearby and malformed records need a registered user:
        # beyond half the stream that can no longer be guaranteed.
        if self.duplicate_share + self.malformed_share > 0.5:
            raise ValueError("duplicate_share + malformed_share must not exceed 0.5")

    def counts(self) -> tuple[int, int, int]:
        """(ok, duplicate, malformed) record counts; they add up to ``events``."""
        duplicates = round(self.events * self.duplicate_share)
        malformed = round(self.events * self.malformed_share)
        return self.events - duplicates - malformed, duplicates, malformed


def synthetic_stream(spec: StreamSpec) -> Iterator[SyntheticRecord]:
    """Yield exactly ``spec.events`` records: OK, DUPLICATE and MALFORMED, interleaved."""
    return _Generator(spec).run()


def expected_counts(records: Iterable[SyntheticRecord]) -> dict[str, int]:
    """Count records by kind and by defect.

    Keys: ``"total"``, every :class:`RecordKind` value (``"ok"``, ``"duplicate"``, ``"malformed"``)
    and every name in :data:`DEFECTS`; all are present, zero when absent.
    """
    counts = dict.fromkeys(["total", *(k.value for k in RecordKind), *DEFECTS], 0)
    for record in records:
        counts["total"] += 1
        counts[record.kind.value] += 1
        if record.defect is not None:
            counts[record.defect] += 1
    return counts


# Reference data --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Country:
    code: str
    language: str
    currency: str
    dial: str
    trunk: str  # national trunk prefix ("" where numbers are dialled without one)
    digits: int  # length of the national significant number


_EUROPE = (
    _Country("DE", "DE", "EUR", "49", "0", 10),
    _Country("FR", "FR", "EUR", "33", "0", 9),
    _Country("IT", "IT", "EUR", "39", "", 10),
    _Country("ES", "ES", "EUR", "34", "", 9),
    _Country("FI", "FI", "EUR", "358", "0", 9),
    _Country("IE", "EN", "EUR", "353", "0", 9),
    _Country("GB", "EN", "GBP", "44", "0", 10),
    _Country("SE", "SV", "EUR", "46", "0", 9),
)
_AMERICAS = (
    _Country("BR", "PT", "USD", "55", "0", 11),
    _Country("MX", "ES", "USD", "52", "", 10),
    _Country("AR", "ES", "USD", "54", "0", 10),
    _Country("CL", "ES", "USD", "56", "", 9),
    _Country("PE", "ES", "USD", "51", "0", 9),
    _Country("CO", "ES", "USD", "57", "", 10),
    _Country("US", "EN", "USD", "1", "", 10),
    _Country("CA", "EN", "USD", "1", "", 10),
)
_REGIONS = (_EUROPE, _AMERICAS)
_CURRENCIES = ("EUR", "GBP", "USD")

# Names include non-ASCII letters on purpose: the PII path must carry UTF-8 intact.
_FIRST_NAMES = (
    "Anna", "Ben", "Carla", "Dmitri", "Elena", "Felipe", "Greta", "Hugo", "Inés", "Jonas",
    "Käthe", "Luis", "Marta", "Nils", "Olga", "Pedro", "Rosa", "Søren", "Tomás", "Zoë",
)
_LAST_NAMES = (
    "Almeida", "Brown", "Costa", "Dubois", "Eriksson", "Fernández", "García", "Hansen", "Ivanova",
    "Jones", "Koskinen", "López", "Müller", "Novak", "O'Brien", "Rossi", "Silva", "Virtanen",
)
_GENDERS = ("MALE", "FEMALE", "M", "F", "UNKNOWN", None)
_KYC_FLOW = ("NOT_STARTED", "PENDING", "VERIFIED")
_VIP_TIERS = ("bronze", "silver", "gold", "platinum")
_DEPOSIT_METHODS = ("CreditCard", "PayPal", "BankTransfer", "Skrill", "Neteller", "PaySafe", "Pix")
_WITHDRAWAL_METHODS = ("BankTransfer", "PayPal", "Skrill", "Pix")
_PROVIDERS = ("ABO-GW24", "PayHub", "Nuvei", "Worldpay", "Adyen")
_DEPOSIT_CODES = ("WELCOME100", "RELOAD50", "FRIDAY25", "VIPCASH")
_DEPOSIT_CENTS = (1000, 2000, 2500, 5000, 10000, 20000, 50000, 100000)
_BET_CENTS = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
_STAKE_CENTS = (200, 500, 1000, 2000, 5000, 10000)
_WIN_MULTIPLIERS = (0.5, 1.0, 1.5, 2.0, 2.0, 3.0, 5.0, 10.0, 50.0)

_GAME_WORDS = (
    ("Golden", "Book of", "Super", "Wild", "Mega", "Sweet", "Fire", "Lucky", "Crazy", "Starlight"),
    ("Slot", "Ra", "Hot", "Joker", "Fortune", "Bonanza", "Dragons", "Sevens", "Time", "Princess"),
)
_GAME_CATEGORIES = ("Slots", "Slots", "Slots", "Live Casino", "Table Games", "Crash")
_GAME_PROVIDERS = (
    ("Pragmatic Play", "Pragmatic"), ("EGT", "Amusnet"), ("NetEnt", "Evolution"),
    ("Play'n GO", "Play'n GO"), ("Evolution", "Evolution"), ("Spribe", "Spribe"),
)

_TEAMS = {
    ("Football", "Premier League"): ("Arsenal", "Chelsea", "Liverpool", "Everton", "Fulham", "Brentford"),
    ("Football", "LaLiga"): ("Sevilla", "Valencia", "Getafe", "Osasuna", "Girona", "Betis"),
    ("Football", "Brasileirão"): ("Flamengo", "Palmeiras", "Santos", "Grêmio", "Bahia", "Vasco"),
    ("Football", "Liga MX"): ("América", "Cruz Azul", "Pumas", "Tigres", "Monterrey", "Toluca"),
    ("Tennis", "ATP Finals"): ("Player A", "Player B", "Player C", "Player D", "Player E", "Player F"),
    ("Basketball", "EuroLeague"): ("Real Madrid", "Olympiacos", "Fenerbahçe", "Monaco", "Partizan", "Baskonia"),
}
_TOURNAMENTS = tuple(_TEAMS)
_MARKETS = {
    "Football": (("1X2", ("Home", "Draw", "Away")), ("Over/Under 2.5", ("Over", "Under")),
                 ("Both Teams To Score", ("Yes", "No"))),
    "Tennis": (("Match Winner", ("Home", "Away")), ("Total Sets 2.5", ("Over", "Under"))),
    "Basketball": (("Moneyline", ("Home", "Away")), ("Handicap -4.5", ("Home", "Away"))),
}


@dataclass(frozen=True, slots=True)
class _Game:
    name: str
    game_id: str
    category: str
    provider: str
    vendor: str
    catalog_id: str


@dataclass(slots=True)
class _User:
    index: int
    ext_id: int | str
    key: bytes
    ident: str
    brand: str
    country: _Country
    currency: str
    username: str
    first_name: str
    last_name: str
    email: str
    phone: str
    birthdate_ms: int
    gender: str | None
    registration_ms: int | None  # None: registers at its first profile record
    status: str = "ACTIVE"
    kyc: int = 0
    email_disabled: bool = False
    sms_disabled: bool = False
    vip_tier: str | None = None
    real_cents: int = 0
    bonus_cents: int = 0


# A step of an activity: a renderer and its arguments; it is rendered when emitted so balances
# and timestamps reflect the moment the record enters the stream.
_Step = tuple[Callable[..., tuple[Stream, dict[str, Any]]], tuple[Any, ...]]


@dataclass(slots=True)
class _Open:
    steps: list[_Step]
    cursor: int = 1


def _ascii(text: str) -> str:
    # Usernames are typically ASCII even when the real name is not.
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode() or "player"


def _cents_text(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}{cents // 100}.{cents % 100:02d}"


def _cents_number(cents: int) -> orjson.Fragment:
    # A raw JSON number keeps both decimals ("12.50"); a float would be written as 12.5.
    return orjson.Fragment(_cents_text(cents))


class _Generator:
    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)  # noqa: S311 - a seeded, reproducible stream, not cryptography
        self.clock = spec.start_ms
        # Steps are 1 .. 2*mean-1 ms, so the whole stream spans at most _MAX_SPAN_MS.
        mean = max(1, min(_MEAN_STEP_MS, _MAX_SPAN_MS // max(1, spec.events)))
        self.step_span = 2 * mean - 1
        self.users: list[_User] = []  # registered, in registration order
        self.open: list[_Open] = []
        self.pending = 0  # records still to come from open activities
        self.tx = 0  # OK transaction counter: ids are unique per OK record
        self.bad = 0  # malformed counter: its own id space, never an OK record's
        self.bets = 0
        ok, _, _ = spec.counts()
        # New users join at a rate that spreads the user pool over the stream (an activity is
        # ~2.2 records on average), bounded so registrations never swamp the mix.
        activities = max(1.0, ok / 2.2)
        self.new_user_probability = min(0.2, max(0.01, spec.users / activities))
        self.games = self._make_games()

    # -- main loop -------------------------------------------------------------------------------

    def run(self) -> Iterator[SyntheticRecord]:
        rng = self.rng
        ok_left, dup_left, mal_left = self.spec.counts()
        recent: deque[tuple[int, SyntheticRecord]] = deque(maxlen=DUPLICATE_WINDOW)
        last_ok: SyntheticRecord | None = None
        for position in range(self.spec.events):
            # Drawing the kind in proportion to what is left is a uniform shuffle of the slots.
            draw = rng.random() * (ok_left + dup_left + mal_left)
            record: SyntheticRecord
            if draw < mal_left and self.users:
                record = self._malformed()
                mal_left -= 1
            elif draw < mal_left + dup_left and (original := self._pick_recent(recent, position)):
                record = self._duplicate(original)
                dup_left -= 1
            elif ok_left:
                record = self._ok(ok_left)
                ok_left -= 1
                recent.append((position, record))
                last_ok = record
            elif dup_left and last_ok is not None:
                # Only possible at the very end of the stream: the window is a guideline, exact
                # totals are the contract.
                record = self._duplicate(last_ok)
                dup_left -= 1
            else:
                record = self._malformed()
                mal_left -= 1
            yield record

    def _pick_recent(
        self, recent: deque[tuple[int, SyntheticRecord]], position: int
    ) -> SyntheticRecord | None:
        candidates = [rec for pos, rec in recent if position - pos <= DUPLICATE_WINDOW]
        return candidates[self.rng.randrange(len(candidates))] if candidates else None

    @staticmethod
    def _duplicate(original: SyntheticRecord) -> SyntheticRecord:
        return SyntheticRecord(
            original.stream, original.key, original.value, RecordKind.DUPLICATE, None, original.user
        )

    def _ok(self, ok_left: int) -> SyntheticRecord:
        rng = self.rng
        budget = ok_left - self.pending
        if self.open and (budget <= 0 or len(self.open) >= _MAX_OPEN_ACTIVITIES
                          or rng.random() < _FOLLOW_PROBABILITY):
            i = rng.randrange(len(self.open))
            activity = self.open[i]
            renderer, args = activity.steps[activity.cursor]
            activity.cursor += 1
            self.pending -= 1
            if activity.cursor == len(activity.steps):
                self.open[i] = self.open[-1]
                self.open.pop()
        else:
            steps = self._new_activity(budget)
            renderer, args = steps[0]
            if len(steps) > 1:
                self.open.append(_Open(steps))
                self.pending += len(steps) - 1
        self.clock += 1 + int(rng.random() * self.step_span)
        self.tx += 1
        stream, message = renderer(*args)
        user: _User = args[0]
        return SyntheticRecord(stream, user.key, orjson.dumps(message), RecordKind.OK, None, user.ident)

    # -- activities ------------------------------------------------------------------------------

    def _new_activity(self, budget: int) -> list[_Step]:
        """Steps of a new activity that fits in ``budget`` OK records (budget >= 1)."""
        rng = self.rng
        if not self.users or (
            len(self.users) < self.spec.users and rng.random() < self.new_user_probability
        ):
            return [(self._profile, (self._register(),))]
        # Skewed towards early registrants: a few users are much more active than most.
        user = self.users[int(len(self.users) * rng.random() ** 2)]
        draw = rng.random() * _W_TOTAL
        if draw < _W_PROFILE:
            self._change_profile(user)
            return [(self._profile, (user,))]
        draw -= _W_PROFILE
        if draw < _W_PAYMENT:
            steps = self._payment_activity(user)
        elif draw < _W_PAYMENT + _W_CASINO:
            steps = self._casino_activity(user)
        else:
            steps = self._sport_activity(user, budget)
        if len(steps) > budget:
            steps = [(self._payment, (user, "deposit", self._deposit_cents()))]
        return steps

    def _payment_activity(self, user: _User) -> list[_Step]:
        rng = self.rng
        draw = rng.random()
        if draw >= 0.75 and user.real_cents < 2000:
            draw = rng.random() * 0.75  # nothing worth withdrawing: some kind of deposit instead
        if draw < 0.75:
            kind = "deposit" if draw < 0.65 else "deposit_failed" if draw < 0.72 else "deposit_cancelled"
            return [(self._payment, (user, kind, self._deposit_cents()))]
        amount = max(1000, int(user.real_cents * rng.uniform(0.2, 0.9)) // 100 * 100)
        first: _Step = (self._payment, (user, "withdrawal_requested", amount))
        ending = rng.random()
        if ending < 0.7:
            return [first, (self._payment, (user, "withdrawal_approved", amount)),
                    (self._payment, (user, "withdrawal_completed", amount))]
        if ending < 0.85:
            return [first, (self._payment, (user, "withdrawal_rejected", amount))]
        return [first, (self._payment, (user, "withdrawal_cancelled", amount))]

    def _casino_activity(self, user: _User) -> list[_Step]:
        rng = self.rng
        game = self.games[int(len(self.games) * rng.random() ** 2)]
        bet = rng.choice(_BET_CENTS)
        bonus = bet // 2 if rng.random() < 0.2 else 0
        # Most rounds lose; the rest pay a multiple of the bet, rarely a big one.
        win = 0 if rng.random() < 0.55 else int(bet * rng.choice(_WIN_MULTIPLIERS))
        return [(self._casino_bet, (user, game, bet, bonus)),
                (self._casino_win, (user, game, bet, bonus, win))]

    def _sport_activity(self, user: _User, budget: int) -> list[_Step]:
        rng = self.rng
        draw = rng.random()
        legs = 1 if draw < 0.55 else 2 if draw < 0.75 else 3 if draw < 0.9 else 4
        legs = min(legs, (budget - 2) // 2)
        if legs < 1:
            return [(self._payment, (user, "deposit", self._deposit_cents()))]
        self.bets += 1
        bet_id = f"sb-{self.bets}"
        is_live = rng.random() < 0.3
        selections = []
        for leg in range(1, legs + 1):
            sport, tournament = rng.choice(_TOURNAMENTS)
            home, away = rng.sample(_TEAMS[(sport, tournament)], 2)
            market, outcomes = rng.choice(_MARKETS[sport])
            odds = rng.randint(110, 600)  # hundredths
            roll = rng.random()
            result = "VOID" if roll < 0.03 else "WON" if roll < 0.03 + 95 / odds else "LOST"
            selections.append((f"{bet_id}-{leg}", odds, sport, tournament, f"{home} vs {away}",
                               market, rng.choice(outcomes), result))
        total_odds = 100
        for selection in selections:
            total_odds = (total_odds * selection[1] + 50) // 100
        stake = rng.choice(_STAKE_CENTS)
        results = [s[7] for s in selections]
        if "LOST" in results:
            result, payout = "LOST", 0
        elif all(r == "VOID" for r in results):
            result, payout = "VOID", stake
        else:
            won_odds = 100
            for selection in selections:
                if selection[7] == "WON":
                    won_odds = (won_odds * selection[1] + 50) // 100
            result, payout = "WON", stake * won_odds // 100
        bet = (bet_id, is_live, stake, total_odds, legs)
        steps: list[_Step] = [(self._sport_open, (user, bet))]
        steps += [(self._sport_selection_open, (user, bet, s)) for s in selections]
        steps.append((self._sport_settled, (user, bet, result, payout)))
        steps += [(self._sport_selection_settled, (user, bet, s)) for s in selections]
        return steps

    # -- users -----------------------------------------------------------------------------------

    def _register(self) -> _User:
        rng = self.rng
        index = len(self.users)
        kind = rng.random()
        ext_id: int | str
        if kind < 0.5:
            ext_id = 100_000 + index
        elif kind < 0.8:
            ext_id = f"u-{index}"
        else:
            ext_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        brand_index = rng.randrange(len(self.spec.brands))
        brand = self.spec.brands[brand_index]
        country = rng.choice(_REGIONS[brand_index % len(_REGIONS)])
        currency = country.currency if rng.random() < 0.85 else rng.choice(_CURRENCIES)
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        # Midnight UTC of a day in 1955-2004: adults, and dates before 1970 give negative epochs.
        birth_day = date(rng.randint(1955, 2004), 1, 1).toordinal() + rng.randrange(365) - _EPOCH_ORDINAL
        birthdate_ms = birth_day * _DAY_MS
        # Some users are new sign-ups (registered at their first profile record), the others
        # migrated with their history (registered up to three years before the stream starts).
        registration_ms = None if rng.random() < 0.4 else self.spec.start_ms - rng.randint(_DAY_MS, 3 * _YEAR_MS)
        user = _User(
            index=index,
            ext_id=ext_id,
            key=str(ext_id).encode(),
            ident=f"{brand}:{ext_id}",
            brand=brand,
            country=country,
            currency=currency,
            username=f"{_ascii(first).lower()}{rng.randint(1, 999)}",
            first_name=first,
            last_name=last,
            email=f"user{index}@example.test",
            phone=self._phone(country),
            birthdate_ms=birthdate_ms,
            gender=rng.choice(_GENDERS),
            registration_ms=registration_ms,
            kyc=rng.randrange(2),
            email_disabled=rng.random() < 0.1,
            sms_disabled=rng.random() < 0.2,
            vip_tier=rng.choice(_VIP_TIERS) if rng.random() < 0.3 else None,
        )
        self.users.append(user)
        return user

    def _phone(self, country: _Country) -> str:
        rng = self.rng
        if country.code == "GB":
            number = f"7700900{rng.randrange(1000):03d}"  # Ofcom's range reserved for fiction
        elif country.dial == "1":
            number = f"{rng.randint(201, 989)}55501{rng.randrange(100):02d}"  # 555-01xx is fictional
        else:
            number = str(rng.randint(1, 9)) + "".join(str(rng.randrange(10)) for _ in range(country.digits - 1))
        style = rng.random()
        if style < 0.4:
            return f"+{country.dial}{number}"
        if style < 0.6:
            return f"+{country.dial} {number[:3]} {number[3:6]} {number[6:]}"
        if country.dial == "1":
            return f"({number[:3]}) {number[3:6]}-{number[6:]}"
        return f"{country.trunk}{number[:3]} {number[3:]}"

    def _change_profile(self, user: _User) -> None:
        rng = self.rng
        change = rng.random()
        if change < 0.35 and user.kyc < len(_KYC_FLOW) - 1:
            user.kyc += 1
        elif change < 0.55:
            user.email_disabled = not user.email_disabled
        elif change < 0.7:
            user.sms_disabled = not user.sms_disabled
        elif change < 0.85:
            user.vip_tier = rng.choice(_VIP_TIERS)
        else:
            user.status = "ACTIVE" if user.status != "ACTIVE" else rng.choice(
                ("SUSPENDED", "BLOCKED", "SELF_EXCLUDED", "ACTIVE")
            )

    def _make_games(self) -> list[_Game]:
        rng = self.rng
        games = []
        for index in range(40):
            provider, vendor = rng.choice(_GAME_PROVIDERS)
            games.append(_Game(
                name=f"{rng.choice(_GAME_WORDS[0])} {rng.choice(_GAME_WORDS[1])} {index % 5 + 1}",
                game_id=f"game-{1000 + index}",
                category=rng.choice(_GAME_CATEGORIES),
                provider=provider,
                vendor=vendor,
                catalog_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            ))
        return games

    def _deposit_cents(self) -> int:
        cents = self.rng.choice(_DEPOSIT_CENTS)
        return cents + self.rng.randrange(100) if self.rng.random() < 0.2 else cents

    def _money(self) -> Callable[[int], Any]:
        """Per record, amounts are either JSON strings or JSON numbers, always with two decimals."""
        return _cents_text if self.rng.random() < 0.5 else _cents_number

    # -- renderers: message dicts in the reference format -----------------------------------------

    def _profile(self, user: _User) -> tuple[Stream, dict[str, Any]]:
        if user.registration_ms is None:
            user.registration_ms = self.clock
        return Stream.PROFILE, self._profile_message(user, self.clock)

    @staticmethod
    def _profile_message(user: _User, now: int) -> dict[str, Any]:
        message: dict[str, Any] = {
            "dt_update": now,
            "ext_brand_id": user.brand,
            "user_ext_id": user.ext_id,
            "core_account_status": user.status,
            "core_registration_date": user.registration_ms,
            "core_user_language": user.country.language,
            "core_wallet_currency": user.currency,
            "core_username": user.username,
            "user_birthdate": user.birthdate_ms,
            "user_country": user.country.code,
            "user_email": user.email,
            "user_first_name": user.first_name,
            "user_last_name": user.last_name,
            "user_phone": user.phone,
            "core_is_email_disabled_by_platform": user.email_disabled,
            "core_is_sms_disabled_by_platform": user.sms_disabled,
        }
        if user.gender is not None:
            message["core_user_gender"] = user.gender
        message["core_kyc_status"] = _KYC_FLOW[user.kyc]
        if user.vip_tier is not None:
            message["vip_tier"] = user.vip_tier  # a custom property: lands in `extra`
        return message

    def _payment(self, user: _User, kind: str, cents: int) -> tuple[Stream, dict[str, Any]]:
        # Balances move when the record is emitted, so they are consistent in stream order.
        if kind == "deposit":
            user.real_cents += cents
        elif kind == "withdrawal_requested":
            user.real_cents = max(0, user.real_cents - cents)
        elif kind in ("withdrawal_rejected", "withdrawal_cancelled"):
            user.real_cents += cents
        prefix = _TX_PREFIX[kind]
        return Stream.PAYMENTS, self._payment_message(user, f"{prefix}-{self.tx}", kind, cents, self.clock)

    def _payment_message(self, user: _User, tx: str, kind: str, cents: int, now: int) -> dict[str, Any]:
        rng = self.rng
        money = self._money()
        deposit = kind.startswith("deposit")
        message: dict[str, Any] = {
            "dt_finalized": now,
            "ext_brand_id": user.brand,
            "user_ext_id": user.ext_id,
            "transaction_id": tx,
            "type": kind,
            "amount": money(cents),
            "core_wallet_currency": user.currency,
            "payment_method": rng.choice(_DEPOSIT_METHODS if deposit else _WITHDRAWAL_METHODS),
        }
        if deposit:
            message["deposit_status"] = _DEPOSIT_STATUS[kind]
            if rng.random() < 0.15:
                message["deposit_code"] = rng.choice(_DEPOSIT_CODES)
        message["provider_name"] = rng.choice(_PROVIDERS)
        message["real_balance"] = money(user.real_cents)
        message["bonus_balance"] = money(user.bonus_cents)
        message["total_balance"] = money(user.real_cents + user.bonus_cents)
        return message

    def _casino_bet(self, user: _User, game: _Game, bet: int, bonus: int) -> tuple[Stream, dict[str, Any]]:
        user.real_cents = max(0, user.real_cents - (bet - bonus))
        user.bonus_cents = max(0, user.bonus_cents - bonus)
        return Stream.CASINO, self._casino_message(user, f"cb-{self.tx}", "bet", game, bet, bonus, None, self.clock)

    def _casino_win(
        self, user: _User, game: _Game, bet: int, bonus: int, win: int
    ) -> tuple[Stream, dict[str, Any]]:
        user.real_cents += win
        return Stream.CASINO, self._casino_message(user, f"cw-{self.tx}", "win", game, bet, bonus, win, self.clock)

    def _casino_message(
        self, user: _User, tx: str, kind: str, game: _Game, bet: int, bonus: int, win: int | None, now: int
    ) -> dict[str, Any]:
        money = self._money()
        # bet_date is the moment of this transaction: for a win, when the round resolved.
        message: dict[str, Any] = {
            "ext_brand_id": user.brand,
            "user_ext_id": user.ext_id,
            "transaction_id": tx,
            "type": kind,
            "bet_date": now,
            "bet_amount": money(bet),
        }
        if win is not None:
            message["win_amount"] = money(win)
        message["game_name"] = game.name
        message["game_id"] = game.game_id
        message["game_category"] = game.category
        message["game_provider"] = game.provider
        message["bet_amount_real"] = money(bet - bonus)
        message["bet_amount_bonus"] = money(bonus)
        if win is not None:
            message["win_amount_real"] = money(win)
            message["win_amount_bonus"] = money(0)
        message["game_vendor"] = game.vendor
        message["casino_game_ext_id"] = game.catalog_id
        message["core_wallet_currency"] = user.currency
        return message

    def _sport_base(self, user: _User, tx: str, kind: str, bet: tuple[Any, ...]) -> dict[str, Any]:
        return {
            "ext_brand_id": user.brand,
            "user_ext_id": user.ext_id,
            "transaction_id": tx,
            "type": kind,
            "event_date": self.clock,
            "bet_id": bet[0],
            "core_wallet_currency": user.currency,
            "is_live": bet[1],
        }

    def _sport_open(self, user: _User, bet: tuple[Any, ...]) -> tuple[Stream, dict[str, Any]]:
        money = self._money()
        _, _, stake, total_odds, legs = bet
        message = self._sport_base(user, f"sbo-{self.tx}", "sport_bet_open", bet)
        message["stake"] = money(stake)
        message["total_odds"] = money(total_odds)
        message["bet_type"] = "single" if legs == 1 else "combo"
        message["selections_count"] = legs
        return Stream.SPORT, message

    def _sport_selection_open(
        self, user: _User, bet: tuple[Any, ...], selection: tuple[Any, ...]
    ) -> tuple[Stream, dict[str, Any]]:
        selection_id, odds, sport, tournament, match_name, market, outcome, _ = selection
        message = self._sport_base(user, f"sso-{self.tx}", "sport_bet_selection_open", bet)
        message["selection_id"] = selection_id
        message["odds"] = self._money()(odds)
        message["sport"] = sport
        message["tournament"] = tournament
        message["match_name"] = match_name
        message["market"] = market
        message["outcome"] = outcome
        return Stream.SPORT, message

    def _sport_settled(
        self, user: _User, bet: tuple[Any, ...], result: str, payout: int
    ) -> tuple[Stream, dict[str, Any]]:
        money = self._money()
        user.real_cents += payout
        message = self._sport_base(user, f"sbs-{self.tx}", "sport_bet_settled", bet)
        message["result"] = result
        message["stake"] = money(bet[2])
        message["payout"] = money(payout)
        message["total_odds"] = money(bet[3])
        return Stream.SPORT, message

    def _sport_selection_settled(
        self, user: _User, bet: tuple[Any, ...], selection: tuple[Any, ...]
    ) -> tuple[Stream, dict[str, Any]]:
        message = self._sport_base(user, f"sss-{self.tx}", "sport_bet_selection_settled", bet)
        message["selection_id"] = selection[0]
        message["result"] = selection[7]
        return Stream.SPORT, message

    # -- malformed records -----------------------------------------------------------------------

    def _malformed(self) -> SyntheticRecord:
        rng = self.rng
        defect = DEFECTS[self.bad % len(DEFECTS)]
        self.bad += 1
        tx = f"bad-{self.bad}"
        user = self.users[rng.randrange(len(self.users))]
        now = self.clock
        key: bytes | None = user.key
        stream = Stream.PAYMENTS
        deposit = self._payment_message(user, tx, "deposit", self._deposit_cents(), now)
        if defect == "invalid_json":
            value = orjson.dumps(deposit)
            value = value[: len(value) // 2]
        elif defect == "invalid_utf8":
            stream = Stream.PROFILE
            profile = self._profile_message(user, now)
            profile["user_first_name"] = "Jo\u2400\u2400hn"
            value = orjson.dumps(profile).replace("\u2400\u2400".encode(), b"\xff\xfe")
        elif defect == "not_an_object":
            stream = Stream.CASINO
            game = self.games[rng.randrange(len(self.games))]
            value = orjson.dumps([self._casino_message(user, tx, "bet", game, 100, 0, None, now)])
        elif defect == "missing_field":
            del deposit["amount"]
            value = orjson.dumps(deposit)
        elif defect == "wrong_type":
            stream = Stream.CASINO
            game = self.games[rng.randrange(len(self.games))]
            bet = self._casino_message(user, tx, "bet", game, 100, 0, None, now)
            bet["bet_amount"] = {"value": "1.00", "currency": user.currency}
            value = orjson.dumps(bet)
        elif defect == "negative_amount":
            deposit["amount"] = rng.choice(("-25.00", orjson.Fragment("-25.00")))
            value = orjson.dumps(deposit)
        elif defect == "nan_amount":
            deposit["amount"] = "NaN"
            value = orjson.dumps(deposit)
        elif defect == "future_date":
            stream = Stream.PROFILE
            profile = self._profile_message(user, now)
            profile["core_registration_date"] = _FAR_FUTURE_MS
            value = orjson.dumps(profile)
        elif defect == "unknown_type":
            deposit["type"] = "chargeback_reversal"
            del deposit["deposit_status"]
            value = orjson.dumps(deposit)
        elif defect == "oversized":
            # Spliced around one cached padding instead of building and serialising a fresh megabyte
            # string per record; the result is still one valid JSON object.
            value = b"".join(
                (orjson.dumps(deposit)[:-1], b',"debug_trace":"', _padding(self.spec.oversized_bytes), b'"}')
            )
        else:  # null_key: a perfectly valid deposit that cannot be partitioned by user
            key = None
            value = orjson.dumps(deposit)
        return SyntheticRecord(stream, key, value, RecordKind.MALFORMED, defect, None)


@functools.cache
def _padding(size: int) -> bytes:
    return b"x" * size


_TX_PREFIX = {
    "deposit": "dep",
    "deposit_failed": "depf",
    "deposit_cancelled": "depc",
    "withdrawal_requested": "wdr-req",
    "withdrawal_approved": "wdr-apr",
    "withdrawal_completed": "wdr-cmp",
    "withdrawal_rejected": "wdr-rej",
    "withdrawal_cancelled": "wdr-cnl",
}
_DEPOSIT_STATUS = {"deposit": "COMPLETED", "deposit_failed": "FAILED", "deposit_cancelled": "CANCELLED"}
