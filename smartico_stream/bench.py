"""``smartico-stream bench``: the service's throughput, latency and memory, measured in one run.

What runs (docs/performance.md explains every figure and the settings that move it):

``raw``
    a bare confluent-kafka consumer, ``consume(10000)`` plus ``orjson.loads`` of every value and
    nothing else: the ceiling on this machine.
``pipeline``
    the service itself (reference adapter, validation, PII guard, dedup, the 50 rules of
    :func:`bench_rules`, the SQLite store with its one-transaction-per-batch commit, Kafka commits,
    the outbox relay delivering to a JSONL sink), in-process exactly as ``smartico-stream run``
    builds it.
``pipeline_postgres``
    the same with the PostgreSQL store (and PII vault), when PostgreSQL answers.
``rabbitmq_raw`` / ``rabbitmq_pipeline``
    the same two against the local RabbitMQ (consistent-hash exchanges, quorum queues), when it
    answers.

plus the latency (record timestamp to store commit, at half the pipeline's measured rate), the
memory of a dedup window holding two minutes of keys at 100k events/s, and (full run only) the
cost of 1M distinct users against 100k and of two processes in one consumer group against one.

How it keeps the measurement honest:

* Every consumer under test runs in a process of its own (spawned), pinned to one core when the
  machine has more than one; the embedded Kafka cluster and the producer live in another process,
  pinned to the other cores. A scenario's CPU time and peak RSS are the service process's own.
* The producer replays a stream pre-generated once (``synthetic_stream``: profiles, payments,
  casino, sport, 2 % duplicates, 1 % malformed) and never runs more than ``max_ahead`` records /
  ``max_ahead_bytes`` ahead of what the consumer fetched, because the embedded cluster keeps only
  ~4-5 MB per partition. It starts before the consumer, so a backlog is waiting when the clock
  starts; ``min_lead_records`` reports the smallest backlog seen while measuring (0 would mean the
  producer, not the service, was the bottleneck).
* ``raw`` is measured in rounds: a backlog is produced and flushed first, then only draining it is
  timed, so the producer's speed never enters the ceiling.
* ``events_per_s`` of a pipeline is records handled / seconds from the first fetched batch to the
  moment the last batch is committed *and* the outbox relay has delivered every action.
* Every scenario reports ``records`` (handled) and ``expected_records`` (produced); a run in which
  they differ is marked incomplete and the command exits 1.

The service exposes no per-record commit hook, so the bench wraps two of the built service's
attributes (``service.transport.poll`` and ``service.store.commit``) to see each batch's records and
the instant its store transaction returned; nothing else is changed.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import math
import multiprocessing as mp
import os
import platform
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
import yaml

from smartico_stream.events.raw import Stream

Progress = Callable[[str], None]

SCENARIOS = ("raw", "pipeline", "pipeline_postgres", "rabbitmq_raw", "rabbitmq_pipeline")
PARTS = (*SCENARIOS, "latency", "dedup", "scaling")  # what --only can name
OVERALL_KEYS = ("ratio_pipeline_to_raw", "p50_latency_ms", "p99_latency_ms", "peak_rss_mb", "dedup_bytes_per_key")

# The embedded cluster keeps ~4-5 MB per partition (measured: 10.5k records of 400 bytes), so the
# stream's oversized records stay small and the size limit sits just below them, as in the demo.
MAX_MESSAGE_BYTES = 64 * 1024
OVERSIZED_BYTES = MAX_MESSAGE_BYTES + 4096
TOPICS = {Stream.PROFILE: "user_profile", Stream.PAYMENTS: "payments", Stream.CASINO: "casino", Stream.SPORT: "sport"}
STREAM_ORDER = (Stream.PROFILE, Stream.PAYMENTS, Stream.CASINO, Stream.SPORT)
KINDS = ("ok", "duplicate", "malformed")
# Consumer settings the embedded cluster needs, and only it (docs/performance.md):
# - its coordinator holds a join phase open for session.timeout.ms - 1 s whenever a member joins, so
#   with the 45 s default every start would stall (the tests use the same values);
# - it parks an empty fetch for the whole fetch.wait.max.ms and does not answer when data arrives
#   meanwhile (measured: a record produced to an idle consumer arrives after ~360 ms with the 500 ms
#   default, ~8 ms with 10 ms); a real broker answers as soon as fetch.min.bytes (1) is there.
#   10 ms restores the real broker's behaviour; with a backlog, fetches never wait either way.
MOCK_CLUSTER_CONSUMER = {"session.timeout.ms": 3000, "heartbeat.interval.ms": 250, "fetch.wait.max.ms": 10}
DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass(frozen=True)
class Profile:
    """How much a run measures."""

    mode: str
    users: int  # StreamSpec.users of the generated stream
    events: int  # records in the generated stream: the cap of every Kafka scenario
    pipeline_seconds: float  # a pipeline scenario stops producing after the consumer ran this long
    rabbit_events: int  # records published (all before consuming) per RabbitMQ scenario
    latency_seconds: float  # paced production for the latency measurement...
    latency_warmup_s: float  # ...of which the first seconds are not counted
    dedup_keys: int  # keys in the dedup window (120 s x 100k/s = 12M)
    dedup_traced_keys: int  # keys for the tracemalloc cross-check
    scaling: bool  # 1M users vs 100k users, two processes vs one
    scaling_seconds: float
    max_ahead: int = 20_000
    max_ahead_bytes: int = 8 << 20  # all 16 partitions together: ~1.3 MB on the busiest one
    # raw rounds: as large as the cluster's retention safely allows, whatever the mode (each round
    # costs an idle fetch round trip, which is not timed but is waited for)
    raw_round: int = 20_000
    raw_round_bytes: int = 8 << 20


QUICK = Profile("quick", users=20_000, events=40_000, pipeline_seconds=2.0, rabbit_events=4_000,
                latency_seconds=3.0, latency_warmup_s=1.0, dedup_keys=1_000_000, dedup_traced_keys=100_000,
                scaling=False, scaling_seconds=0.0, max_ahead=5_000, max_ahead_bytes=2 << 20)
FULL = Profile("full", users=100_000, events=600_000, pipeline_seconds=90.0, rabbit_events=60_000,
               latency_seconds=30.0, latency_warmup_s=3.0, dedup_keys=12_000_000, dedup_traced_keys=1_000_000,
               scaling=True, scaling_seconds=60.0)


# -- the 50 rules ----------------------------------------------------------------------------------


def bench_rules() -> list[dict[str, Any]]:
    """Fifty realistic real-time rules: segments, amount (per currency) and count accumulation,
    qualification with period and iterations, activity periods, weekdays, active hours in several
    time zones (one past midnight), once-in-a-lifetime, and every action kind."""
    steps = {"EUR": 10, "GBP": 8, "USD": 12}
    latam = '["MX", "AR", "CL", "PE", "CO", "BR"]'
    rules: list[dict[str, Any]] = [
        # payments
        {"id": "deposit-points", "name": "1 point per 10 EUR / 8 GBP / 12 USD deposited", "priority": 10,
         "trigger": {"event": "deposit"}, "accumulation": {"field": "event.amount", "steps": steps},
         "actions": [{"action": "give_points", "amount": 1}]},
        {"id": "welcome-bonus", "name": "Welcome bonus on the first deposit of 20 or more", "once_in_lifetime": True,
         "trigger": {"event": "deposit", "condition": "event.amount >= 20"},
         "actions": [{"action": "give_bonus", "template_id": "welcome-100", "amount": 20},
                     {"action": "mark_user", "tag": "depositor"}]},
        {"id": "second-deposit", "name": "Second deposit bonus", "once_in_lifetime": True,
         "segment": "user.deposit_count >= 1", "trigger": {"event": "deposit"},
         "actions": [{"action": "give_bonus", "template_id": "second-50"}]},
        {"id": "level-two", "name": "Level 2 after the fifth deposit", "once_in_lifetime": True, "priority": 20,
         "segment": "user.deposit_count >= 5", "trigger": {"event": "deposit"},
         "actions": [{"action": "change_level", "level": 2}]},
        {"id": "level-three", "name": "Level 3 after 15 deposits and 1000 EUR", "once_in_lifetime": True,
         "priority": 21, "segment": 'user.deposit_count >= 15 and user.deposit_total["EUR"] >= 1000',
         "trigger": {"event": "deposit"}, "actions": [{"action": "change_level", "level": 3}]},
        {"id": "gbp-depositors", "name": "3 points per 25 GBP for GBP wallets",
         "segment": 'user.wallet_currency == "GBP"', "trigger": {"event": "deposit"},
         "accumulation": {"field": "event.amount", "step": 25}, "actions": [{"action": "give_points", "amount": 3}]},
        {"id": "usd-whale", "name": "Mark USD deposits of 500 or more",
         "trigger": {"event": "deposit", "condition": 'event.currency == "USD" and event.amount >= 500'},
         "actions": [{"action": "mark_user", "tag": "usd-whale"}]},
        {"id": "paypal-points", "name": "2 points per PayPal deposit",
         "trigger": {"event": "deposit", "condition": 'event.method == "PayPal"'},
         "actions": [{"action": "give_points", "amount": 2}]},
        {"id": "verified-high-deposit", "name": "20 points for verified players depositing 200+",
         "segment": 'user.kyc_status == "VERIFIED"', "trigger": {"event": "deposit", "condition": "event.amount >= 200"},
         "actions": [{"action": "give_points", "amount": 20}]},
        {"id": "welcome-back", "name": "Welcome back after 3 days without a deposit",
         "trigger": {"event": "deposit", "condition": "hours_since(user.last_deposit_time) >= 72"},
         "actions": [{"action": "give_bonus", "template_id": "welcome-back"}]},
        {"id": "failed-deposit-help", "name": "Payment help campaign after a failed deposit",
         "trigger": {"event": "deposit_failed"}, "actions": [{"action": "start_campaign", "campaign_id": "payment-help"}]},
        {"id": "failed-deposit-recovered", "name": "Stop payment help once a deposit goes through",
         "segment": "user.failed_deposit_count >= 1", "trigger": {"event": "deposit"},
         "actions": [{"action": "stop_campaign", "campaign_id": "payment-help"}]},
        {"id": "withdrawal-retention", "name": "Retention campaign on a withdrawal request",
         "trigger": {"event": "withdrawal_requested"},
         "actions": [{"action": "start_campaign", "campaign_id": "keep-playing"}]},
        {"id": "withdrawal-cancelled", "name": "Stop retention when a withdrawal is cancelled",
         "trigger": {"event": "withdrawal_cancelled"},
         "actions": [{"action": "stop_campaign", "campaign_id": "keep-playing"},
                     {"action": "give_points", "amount": 5}]},
        {"id": "points-redemption", "name": "Redeem 10 points with each completed withdrawal",
         "segment": "user.points >= 10", "trigger": {"event": "withdrawal_completed"},
         "actions": [{"action": "deduct_points", "amount": 10}, {"action": "unmark_user", "tag": "active-bettor"}]},
        {"id": "friday-reload", "name": "Friday reload bonus, Berlin time", "timezone": "Europe/Berlin",
         "activity": {"weekdays": ["fri"]}, "trigger": {"event": "deposit", "condition": "event.amount >= 50"},
         "actions": [{"action": "give_bonus", "template_id": "reload-friday", "amount": 10}]},
        {"id": "weekend-happy-hours", "name": "Weekend deposits 10:00-18:00 Malta time for DE/MT/GB",
         "timezone": "Europe/Malta", "segment": 'user.country in ["DE", "MT", "GB"]',
         "activity": {"weekdays": ["sat", "sun"], "active_hours": {"start": "10:00", "end": "18:00"}},
         "trigger": {"event": "deposit"}, "actions": [{"action": "give_bonus", "template_id": "weekend-10"}]},
        {"id": "winter-promo", "name": "Winter promotion: 5 points per deposit, Q1 London time",
         "timezone": "Europe/London",
         "activity": {"start": "2026-01-01T00:00:00", "end": "2026-03-31T23:59:59"},
         "trigger": {"event": "deposit"}, "actions": [{"action": "give_points", "amount": 5}]},
        {"id": "email-newsletter", "name": "Newsletter for reachable first depositors", "once_in_lifetime": True,
         "segment": "user.has_email and not user.is_email_disabled_by_platform", "trigger": {"event": "deposit"},
         "actions": [{"action": "start_campaign", "campaign_id": "newsletter"}]},
        # casino
        {"id": "casino-bet-points", "name": "1 point for every 100 casino bets", "trigger": {"event": "casino_bet"},
         "accumulation": {"step": 100}, "actions": [{"action": "give_points", "amount": 1}]},
        {"id": "deposit-then-bets", "name": "Deposit, then 20 casino bets within 24 h, 3 times per deposit",
         "qualification": {"event": "deposit", "period": "24h", "iterations": 3}, "trigger": {"event": "casino_bet"},
         "accumulation": {"step": 20}, "actions": [{"action": "give_mission", "mission_id": "loyal-spinner"}]},
        {"id": "high-roller", "name": "Mark bets of 50 or more", "once_in_lifetime": True,
         "trigger": {"event": "casino_bet", "condition": "event.bet_amount >= 50"},
         "actions": [{"action": "mark_user", "tag": "high-roller"}]},
        {"id": "active-bettor", "name": "Mark active bettors", "once_in_lifetime": True,
         "segment": "user.bet_count >= 10", "trigger": {"event": "casino_bet"},
         "actions": [{"action": "mark_user", "tag": "active-bettor"}]},
        {"id": "big-win-webhook", "name": "Tell the CRM about wins of 500 or more",
         "trigger": {"event": "casino_win", "condition": "event.win_amount >= 500"},
         "actions": [{"action": "webhook", "url": "http://127.0.0.1:9/crm/big-win",
                      "payload": {"kind": "big-win", "team": "vip"}}]},
        {"id": "big-multiplier", "name": "Bonus for a win of 10x the bet or more",
         "trigger": {"event": "casino_win", "condition": "event.win_amount >= event.bet_amount * 10"},
         "actions": [{"action": "give_bonus", "template_id": "big-multiplier"}]},
        {"id": "slots-points", "name": "1 point per 200 slot bets",
         "trigger": {"event": "casino_bet", "condition": 'event.game_category == "Slots"'},
         "accumulation": {"step": 200}, "actions": [{"action": "give_points", "amount": 1}]},
        {"id": "live-casino-tag", "name": "Mark live casino players", "once_in_lifetime": True,
         "trigger": {"event": "casino_bet", "condition": 'event.game_category == "Live Casino"'},
         "actions": [{"action": "mark_user", "tag": "live-casino"}]},
        {"id": "crash-turnover", "name": "1 point per 100 EUR / 80 GBP / 120 USD wagered on crash games",
         "trigger": {"event": "casino_bet", "condition": 'event.game_category == "Crash"'},
         "accumulation": {"field": "event.bet_amount", "steps": {"EUR": 100, "GBP": 80, "USD": 120}},
         "actions": [{"action": "give_points", "amount": 1}]},
        {"id": "pragmatic-spins", "name": "Pragmatic bets after a deposit within 7 days, 10 times",
         "qualification": {"event": "deposit", "condition": "event.amount >= 20", "period": "7d", "iterations": 10},
         "trigger": {"event": "casino_bet", "condition": 'event.game_provider == "Pragmatic Play"'},
         "actions": [{"action": "give_bonus", "template_id": "pragmatic-spins"}]},
        {"id": "new-player-week", "name": "2 points per 50 bets in the first week",
         "segment": "days_since(user.registration_date) <= 7", "trigger": {"event": "casino_bet"},
         "accumulation": {"step": 50}, "actions": [{"action": "give_points", "amount": 2}]},
        {"id": "latam-night-owls", "name": "LatAm night owls, 22:00-02:00 Mexico City time",
         "timezone": "America/Mexico_City", "segment": f"user.country in {latam}",
         "activity": {"active_hours": {"start": "22:00", "end": "02:00"}}, "trigger": {"event": "casino_bet"},
         "accumulation": {"step": 50}, "actions": [{"action": "give_points", "amount": 1}]},
        {"id": "helsinki-lunch", "name": "Weekday lunch spins 12:00-14:00 Helsinki time",
         "timezone": "Europe/Helsinki",
         "activity": {"weekdays": ["mon", "tue", "wed", "thu", "fri"], "active_hours": {"start": "12:00", "end": "14:00"}},
         "trigger": {"event": "casino_bet"}, "accumulation": {"step": 10}, "actions": [{"action": "give_points", "amount": 1}]},
        {"id": "monday-mission", "name": "Monday mission, New York time", "timezone": "America/New_York",
         "activity": {"weekdays": ["mon"]}, "trigger": {"event": "casino_bet", "condition": "event.bet_amount >= 5"},
         "actions": [{"action": "give_mission", "mission_id": "monday-spins"}]},
        {"id": "level-cashback", "name": "Cashback bonus per 500 bets from level 2",
         "segment": "user.level >= 2", "trigger": {"event": "casino_bet"}, "accumulation": {"step": 500},
         "actions": [{"action": "give_bonus", "template_id": "level-two-cashback"}]},
        {"id": "points-cashout", "name": "Cash out 5000 points as a bonus", "priority": 200,
         "segment": "user.points >= 5000", "trigger": {"event": "casino_win"},
         "actions": [{"action": "reset_points"}, {"action": "give_bonus", "template_id": "points-cashout"}]},
        {"id": "sms-big-win", "name": "SMS campaign after a win of 100+ for reachable players",
         "segment": "user.has_phone and not user.is_sms_disabled_by_platform",
         "trigger": {"event": "casino_win", "condition": "event.win_amount >= 100"},
         "actions": [{"action": "start_campaign", "campaign_id": "sms-big-win"}]},
        {"id": "bonus-wagering", "name": "Points for bonus money wagered",
         "trigger": {"event": "casino_bet", "condition": "event.bet_amount_bonus > 0"},
         "accumulation": {"field": "event.bet_amount_bonus", "step": 20},
         "actions": [{"action": "give_points", "amount": 1}]},
        # sport
        {"id": "sport-first-bet", "name": "First sport bet bonus", "once_in_lifetime": True,
         "trigger": {"event": "sport_bet_open"}, "actions": [{"action": "give_bonus", "template_id": "sport-welcome"}]},
        {"id": "sport-combo-points", "name": "5 points per combo of 3 or more",
         "trigger": {"event": "sport_bet_open", "condition": "event.selections_count >= 3"},
         "actions": [{"action": "give_points", "amount": 5}]},
        {"id": "sport-stake-points", "name": "2 points per 50 EUR / 40 GBP / 60 USD staked",
         "trigger": {"event": "sport_bet_open"},
         "accumulation": {"field": "event.stake", "steps": {"EUR": 50, "GBP": 40, "USD": 60}},
         "actions": [{"action": "give_points", "amount": 2}]},
        {"id": "sport-winner", "name": "3 points per won sport bet",
         "trigger": {"event": "sport_bet_settled", "condition": 'event.result == "WON"'},
         "actions": [{"action": "give_points", "amount": 3}]},
        {"id": "sport-insurance", "name": "Insurance bonus on a lost stake of 20+",
         "trigger": {"event": "sport_bet_settled", "condition": 'event.result == "LOST" and event.stake >= 20'},
         "actions": [{"action": "give_bonus", "template_id": "sport-insurance"}]},
        {"id": "live-evening", "name": "Live bets 18:00-23:30 Sao Paulo time", "timezone": "America/Sao_Paulo",
         "activity": {"active_hours": {"start": "18:00", "end": "23:30"}},
         "trigger": {"event": "sport_bet_open", "condition": "event.is_live"},
         "actions": [{"action": "give_bonus", "template_id": "live-evening"}]},
        {"id": "football-selections", "name": "1 point per 10 football selections",
         "trigger": {"event": "sport_bet_selection_open", "condition": 'event.sport == "Football"'},
         "accumulation": {"step": 10}, "actions": [{"action": "give_points", "amount": 1}]},
        {"id": "long-shot", "name": "Mark a won selection at odds 4 or more",
         "trigger": {"event": "sport_bet_selection_settled", "condition": 'event.result == "WON" and event.odds >= 4'},
         "actions": [{"action": "mark_user", "tag": "long-shot"}]},
        {"id": "americas-weekend-sport", "name": "Weekend sport bonus for US/CA, Toronto time",
         "timezone": "America/Toronto", "segment": 'user.country in ["US", "CA"]',
         "activity": {"weekdays": ["sat", "sun"]}, "trigger": {"event": "sport_bet_open"},
         "actions": [{"action": "give_bonus", "template_id": "weekend-sport"}]},
        {"id": "depositor-sport-mission", "name": "Sport mission for depositors", "once_in_lifetime": True,
         "segment": '"depositor" in user.tags', "trigger": {"event": "sport_bet_open"},
         "actions": [{"action": "give_mission", "mission_id": "sport-depositor"}]},
        {"id": "high-stakes-sport", "name": "Deposit 100+, then a sport bet: one mission per deposit",
         "qualification": {"event": "deposit", "condition": "event.amount >= 100", "iterations": 1},
         "trigger": {"event": "sport_bet_open"},
         "actions": [{"action": "give_mission", "mission_id": "high-stakes-sport"}]},
        # profile
        {"id": "onboarding", "name": "Onboarding mission on registration", "once_in_lifetime": True,
         "trigger": {"event": "user_profile"}, "actions": [{"action": "give_mission", "mission_id": "onboarding"}]},
        {"id": "kyc-verified", "name": "Bonus when KYC is verified", "once_in_lifetime": True,
         "trigger": {"event": "user_profile", "condition": 'event.kyc_status == "VERIFIED"'},
         "actions": [{"action": "give_bonus", "template_id": "kyc-verified"},
                     {"action": "webhook", "url": "http://127.0.0.1:9/crm/kyc"}]},
    ]
    assert len(rules) == 50, len(rules)
    return rules


def write_rules(path: Path) -> Path:
    path.write_text(yaml.safe_dump({"rules": bench_rules()}, sort_keys=False, allow_unicode=True))
    return path


# -- the stream, generated once --------------------------------------------------------------------

_HEADER = struct.Struct("<BBiI")  # stream index, kind index, key length (-1: no key), value length
_USER_FIELD = re.compile(rb'"user_ext_id":("(?:[^"\\]|\\.)*"|-?[0-9]+)')


def write_stream(path: Path, users: int, events: int, population: int | None = None) -> dict[str, int]:
    """Write ``synthetic_stream(StreamSpec(users, events))`` to ``path`` in a compact binary form.

    With ``population``, each OK or duplicate record is moved to user ``p<crc32(value) % population>``
    (its key and ``user_ext_id`` rewritten; byte-identical duplicates stay identical): the synthetic
    generator registers at most ~0.09 new users per record, so this is how a run of a few hundred
    thousand records reaches 1M distinct users. Malformed records are left alone."""
    from smartico_stream.demo.synthetic import StreamSpec, synthetic_stream

    spec = StreamSpec(users=users, events=events, oversized_bytes=OVERSIZED_BYTES)
    stream_index = {stream: i for i, stream in enumerate(STREAM_ORDER)}
    kind_index = {kind: i for i, kind in enumerate(KINDS)}
    count = size = 0
    with path.open("wb", buffering=1 << 20) as out:
        for record in synthetic_stream(spec):
            key, value = record.key, record.value
            if population is not None and record.kind.value != "malformed":
                user = f"p{zlib.crc32(value) % population}".encode()
                value = _USER_FIELD.sub(b'"user_ext_id":"' + user + b'"', value, count=1)
                key = user
            out.write(_HEADER.pack(stream_index[record.stream], kind_index[record.kind.value],
                                   -1 if key is None else len(key), len(value)))
            if key:
                out.write(key)
            out.write(value)
            count += 1
            size += len(value)
    return {"records": count, "bytes": size}


def read_stream(path: Path) -> Iterator[tuple[int, int, bytes | None, bytes]]:
    """(stream index, kind index, key, value) per record, in stream order."""
    unpack, header = _HEADER.unpack, _HEADER.size
    with path.open("rb", buffering=1 << 20) as source:
        read = source.read
        while True:
            head = read(header)
            if len(head) < header:
                return
            stream, kind, key_length, value_length = unpack(head)
            key = read(key_length) if key_length > 0 else (b"" if key_length == 0 else None)
            yield stream, kind, key, read(value_length)


# -- processes ---------------------------------------------------------------------------------------

# Slots of the array shared by the orchestrator, the cluster process and the consumer under test.
PRODUCED, FLUSHED, FETCHED, READY, STARTED_AT, STOP, DONE, PACE_START = range(8)
# The latency run is also reported per slice of this many seconds: the embedded cluster's cost grows
# over a paced run (docs/performance.md, Latency), and the tail with it.
LATENCY_SLICE_S = 10
_SLOTS = 8


def _pin(cpus: list[int] | None) -> None:
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))


def _quiet_librdkafka() -> logging.Logger:
    logger = logging.getLogger("smartico_stream.bench.rdkafka")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


def core_plan() -> dict[str, list[int] | None]:
    """The core of the process under test (and of a second one), and the cores of the cluster."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        return {"service": None, "second": None, "cluster": None, "available": cpus or None}
    return {
        "service": [cpus[0]],
        "second": [cpus[1]],
        "cluster": cpus[1:] if len(cpus) == 2 else cpus[2:],
        "available": cpus,
    }


def _cluster_main(conn: Any, shared: Any, cpus: list[int] | None) -> None:
    """The embedded Kafka cluster and the producer, in a process of their own."""
    _pin(cpus)
    from confluent_kafka import Producer

    from smartico_stream.demo.embedded_kafka import EmbeddedKafka

    kafka = EmbeddedKafka()
    conn.send({"bootstrap": kafka.bootstrap_servers})
    logger = _quiet_librdkafka()
    try:
        while True:
            command, args = conn.recv()
            if command == "exit":
                break
            try:
                if command == "topics":
                    admin = Producer({"bootstrap.servers": kafka.bootstrap_servers, "logger": logger})
                    partitions = {}
                    for topic in args:
                        metadata = admin.list_topics(topic, timeout=10)  # auto-creates the topic
                        deadline = time.monotonic() + 10
                        while not metadata.topics[topic].partitions and time.monotonic() < deadline:
                            time.sleep(0.05)
                            metadata = admin.list_topics(topic, timeout=10)
                        partitions[topic] = len(metadata.topics[topic].partitions)
                    admin.flush(5)
                    del admin
                    conn.send({"ok": True, "partitions": partitions})
                elif command == "produce":
                    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": args.pop("linger_ms", 5),
                                         "queue.buffering.max.messages": 1_000_000, "logger": logger})
                    try:
                        conn.send({"ok": True, **_produce(producer, shared, **args)})
                    finally:
                        producer.flush(30)
                        del producer
                else:
                    conn.send({"ok": False, "error": f"unknown command {command}"})
            except Exception as exc:  # noqa: BLE001 - reported to the orchestrator
                conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
    finally:
        kafka.close()


def _produce(producer: Any, shared: Any, path: str, topics: list[str], mode: str, limit: int, max_ahead: int,
             max_ahead_bytes: int, seconds: float = 0.0, rate: float = 0.0) -> dict[str, Any]:
    """Replay the stream file into ``topics`` (one per stream index).

    ``lead``: as fast as possible but at most ``max_ahead`` records / ``max_ahead_bytes`` ahead of
    ``shared[FETCHED]``; stops ``seconds`` after the consumer's first batch (``shared[STARTED_AT]``).
    ``rounds``: a backlog of up to ``max_ahead`` records, flushed (``shared[FLUSHED]``), then waits
    until the consumer has fetched all of it, and again. ``paced``: ``rate`` records per second for
    ``seconds``, once the consumer is ready (``shared[READY]``)."""
    produce, poll = producer.produce, producer.poll
    kinds = [0, 0, 0]
    keys: set[bytes] = set()
    cumulative = array.array("q", [0])  # bytes produced before record i
    produced = 0
    blocked = 0.0
    min_lead: float | None = None
    started = time.time()
    pace_start = 0.0

    def send(stream: int, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                produce(topics[stream], value, key)
                return
            except BufferError:
                poll(0.01)

    def ahead_ok() -> bool:
        fetched = int(shared[FETCHED])
        return produced - fetched <= max_ahead and cumulative[produced] - cumulative[min(fetched, produced)] <= max_ahead_bytes

    records = read_stream(Path(path))
    if mode == "paced":
        while not shared[READY] and not shared[STOP]:
            time.sleep(0.005)
        pace_start = time.time()
        shared[PACE_START] = pace_start
    for stream, kind, key, value in records:
        if produced >= limit or shared[STOP]:
            break
        if mode == "lead":
            if produced & 0xFF == 0:
                first = shared[STARTED_AT]
                if first and time.time() - first > seconds:
                    break
                if first and not shared[DONE]:
                    lead = produced - shared[FETCHED]
                    min_lead = lead if min_lead is None else min(min_lead, lead)
            if not ahead_ok():
                waited = time.perf_counter()
                producer.flush(0)
                while not ahead_ok() and not shared[STOP]:
                    poll(0.001)
                blocked += time.perf_counter() - waited
        elif mode == "rounds":
            if produced - int(shared[FLUSHED]) >= max_ahead or (
                cumulative[produced] - cumulative[int(shared[FLUSHED])] >= max_ahead_bytes
            ):
                producer.flush(30)
                shared[FLUSHED] = produced
                while shared[FETCHED] < produced and not shared[STOP]:
                    time.sleep(0.0005)
        else:  # paced
            now = time.time() - pace_start
            if now > seconds:
                break
            if produced >= rate * now:
                producer.flush(0)
                while produced >= rate * (time.time() - pace_start) and not shared[STOP]:
                    time.sleep(0.0005)
                    poll(0)
            elif not ahead_ok():
                while not ahead_ok() and not shared[STOP]:
                    poll(0.001)
        send(stream, key, value)
        produced += 1
        cumulative.append(cumulative[-1] + len(value))
        kinds[kind] += 1
        if kind == 0 and key:
            keys.add(key)
        shared[PRODUCED] = produced
        if produced & 0x3FF == 0:
            poll(0)
    remaining = producer.flush(60)
    if remaining:
        raise RuntimeError(f"the embedded Kafka did not acknowledge {remaining} records")
    shared[FLUSHED] = produced
    shared[PRODUCED] = produced
    shared[DONE] = 1
    return {
        "produced": produced,
        "kinds": dict(zip(KINDS, kinds, strict=True)),
        "distinct_users": len(keys),
        "bytes": cumulative[-1],
        "producer_seconds": round(time.time() - started, 3),
        "producer_blocked_s": round(blocked, 3),
        "min_lead_records": None if min_lead is None else int(min_lead),
        "paced_s": round(time.time() - pace_start, 3) if pace_start else None,
    }


def _worker_main(kind: str, params: dict[str, Any], conn: Any, shared: Any, cpus: list[int] | None) -> None:
    """A consumer under test, in a (pinned) process of its own; sends one result dict."""
    _pin(cpus)
    try:
        if kind == "kafka_raw":
            result = _kafka_raw(params, shared)
        elif kind == "pipeline":
            import uvloop

            result = uvloop.run(_pipeline(params, shared))
        elif kind == "rabbit_raw":
            import uvloop

            result = uvloop.run(_rabbit_raw(params, shared))
        elif kind == "dedup":
            result = _dedup_memory(params)
        else:
            raise ValueError(f"unknown worker {kind}")
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        result["pinned_to_cores"] = sorted(os.sched_getaffinity(0)) if cpus and hasattr(os, "sched_getaffinity") else None
        conn.send({"ok": True, "result": result})
    except BaseException as exc:  # noqa: BLE001 - reported to the orchestrator
        conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})


# -- raw consumers -----------------------------------------------------------------------------------


def _kafka_raw(params: dict[str, Any], shared: Any) -> dict[str, Any]:
    """confluent-kafka batch consume + orjson.loads, timed only while a flushed backlog is drained."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": params["bootstrap"], "group.id": f"bench-raw-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest", "logger": _quiet_librdkafka(),
        "fetch.wait.max.ms": MOCK_CLUSTER_CONSUMER["fetch.wait.max.ms"],
    })
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                     for topic, count in params["partitions"].items() for p in range(count)])
    loads, decode_error = orjson.loads, orjson.JSONDecodeError

    def tally(messages: list[Any], consumed: int, decoded: int, bad: int, errors: int) -> tuple[int, int, int, int]:
        """Decode one fetch: the counts (consumed, decoded, not JSON, consume errors) plus its own."""
        for message in messages:
            if message.error() is not None:
                errors += 1
                continue
            consumed += 1
            try:
                loads(message.value())
                decoded += 1
            except decode_error:
                bad += 1
        return consumed, decoded, bad, errors

    consumed = decoded = bad = errors = 0
    busy = cpu = 0.0
    rounds = 0
    try:
        while True:
            target = int(shared[FLUSHED])
            if consumed >= target:
                if shared[DONE] and consumed >= int(shared[PRODUCED]):
                    break
                time.sleep(0.0005)
                continue
            rounds += 1
            # Untimed: wait for the round's first record to reach this process (the fetch of a fresh
            # backlog after an idle spell is the broker's round trip, not the consumer's cost).
            waited = time.perf_counter()
            while True:
                first = consumer.consume(1, 0.05)
                if first:
                    break
                if time.perf_counter() - waited > 60:
                    raise TimeoutError(f"raw consumer saw nothing of round {rounds} ({consumed} of {target} records)")
            consumed, decoded, bad, errors = tally(first, consumed, decoded, bad, errors)
            started, cpu_started = time.perf_counter(), time.process_time()
            while consumed < target:
                messages = consumer.consume(min(10_000, target - consumed), 1.0)
                consumed, decoded, bad, errors = tally(messages, consumed, decoded, bad, errors)
                if not messages and time.perf_counter() - started > 60:
                    raise TimeoutError(f"raw consumer stalled at {consumed} of {target} records")
            busy += time.perf_counter() - started
            cpu += time.process_time() - cpu_started
            shared[FETCHED] = consumed
    finally:
        consumer.close()
    return {"records": consumed, "decoded": decoded, "not_json": bad, "consume_errors": errors,
            "measured_s": round(busy, 4), "rounds": rounds, "cpu_s": round(cpu, 3),
            "cpu_cores_used": round(cpu / busy, 2) if busy > 0 else None,
            "events_per_s": round(consumed / busy, 1) if busy > 0 else None}


async def _rabbit_raw(params: dict[str, Any], shared: Any) -> dict[str, Any]:
    """aio-pika consume of every queue (prefetch 2000) + orjson.loads, one ack(multiple) per 500."""
    import aio_pika

    expected = params["expected"]
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    state = {"count": 0, "bad": 0, "unacked": 0, "first": 0.0, "cpu": 0.0}
    done = asyncio.Event()
    connection = await aio_pika.connect(params["url"])
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=params.get("prefetch", 2000))

        async def on_message(message: Any) -> None:
            if not state["first"]:
                state["first"], state["cpu"] = time.time(), time.process_time()
            try:
                loads(message.body)
            except decode_error:
                state["bad"] += 1
            state["count"] += 1
            state["unacked"] += 1
            if state["unacked"] >= 500 or state["count"] >= expected:
                state["unacked"] = 0
                await message.ack(multiple=True)
            if state["count"] >= expected:
                done.set()

        for name in params["queues"]:
            queue = await channel.get_queue(name, ensure=False)
            await queue.consume(on_message, no_ack=False)
        shared[READY] = 1
        await asyncio.wait_for(done.wait(), params.get("timeout_s", 300))
        ended = time.time()
        cpu = time.process_time() - state["cpu"]
    finally:
        await connection.close()
    measured = ended - state["first"]
    return {"records": state["count"], "not_json": state["bad"], "measured_s": round(measured, 4),
            "cpu_s": round(cpu, 3), "cpu_cores_used": round(cpu / measured, 2) if measured > 0 else None,
            "events_per_s": round(state["count"] / measured, 1) if measured > 0 else None}


# -- the service ----------------------------------------------------------------------------------


class _Probe:
    """Sees each batch the service fetches and the instant its store transaction returned, by
    wrapping ``service.transport.poll`` and ``service.store.commit`` of one built service."""

    def __init__(self, service: Any, shared: Any, latency: bool) -> None:
        self.shared = shared
        self.first_at = 0.0
        self.cpu_at_first = 0.0
        self.fetched = 0
        self.last_commit_at = 0.0
        self.commits = 0
        self.latency = latency
        self._pending: list[int] = []
        self._polled_at = 0.0
        # (record timestamp ms, ms to commit, ms of that before the service fetched it)
        self.samples: list[tuple[int, float, float]] = []
        self.batches: list[tuple[int, float]] = []  # (records, ms from fetch to commit), latency runs
        self.commit_times: list[tuple[float, int]] = []  # (commit returned, records fetched so far)
        poll, commit = service.transport.poll, service.store.commit

        async def probed_poll() -> Any:
            records = await poll()
            if records:
                if not self.first_at:
                    self.first_at, self.cpu_at_first = time.time(), time.process_time()
                    shared[STARTED_AT] = self.first_at
                self.fetched += len(records)
                shared[FETCHED] = self.fetched
                if latency:
                    self._pending.extend(r.timestamp_ms for r in records)
                    self._polled_at = time.time()
            return records

        async def probed_commit(write: Any) -> None:
            await commit(write)
            now = time.time()
            self.last_commit_at = now
            self.commits += 1
            self.commit_times.append((now, self.fetched))
            if latency and self._pending:
                now_ms, polled_ms = now * 1000.0, self._polled_at * 1000.0
                self.samples.extend((ts, now_ms - ts, polled_ms - ts) for ts in self._pending if ts > 0)
                self.batches.append((len(self._pending), (now - self._polled_at) * 1000.0))
                self._pending.clear()

        service.transport.poll = probed_poll
        service.store.commit = probed_commit


def _service_settings(params: dict[str, Any]) -> dict[str, Any]:
    """The service configuration of a scenario: defaults everywhere except what the embedded
    cluster, the scratch directory and the bench rules require (listed in docs/performance.md)."""
    prefix = params["prefix"]
    settings: dict[str, Any] = {
        "kafka": {
            "config": {"bootstrap.servers": params.get("bootstrap", "127.0.0.1:9"), "group.id": f"{prefix}-group",
                       **MOCK_CLUSTER_CONSUMER},
            "topics": {stream.value: [f"{prefix}.{topic}"] for stream, topic in TOPICS.items()},
            "dead_letter_topic": f"{prefix}.dead-letters",
        },
        "metrics": {"port": params.get("metrics_port", 0), "host": "127.0.0.1"},
        "limits": {"max_message_bytes": MAX_MESSAGE_BYTES},
        "store": {"url": params["store_url"], **({"db_schema": params["schema"]} if params.get("schema") else {})},
        "pii": {"keys_file": params["keys_file"], "store_url": params["pii_store_url"],
                **({"store_db_schema": params["pii_schema"]} if params.get("pii_schema") else {})},
        "engine": {"rules": params["rules"]},
        "sinks": [{"type": "jsonl", "path": params["sink_path"]}],
        "logging": {"level": "ERROR", "format": "console"},
        "instance_id": params.get("instance_id", f"{prefix}-member"),
    }
    if params.get("rabbitmq_url"):
        settings["source"] = "rabbitmq"
        settings["rabbitmq"] = {
            "url": params["rabbitmq_url"],
            "exchanges": {stream.value: f"{prefix}.{topic}" for stream, topic in TOPICS.items()},
            "dead_letter_exchange": f"{prefix}.dead-letters",
        }
    return _merged(settings, params.get("overrides") or {})


async def _pipeline(params: dict[str, Any], shared: Any) -> dict[str, Any]:
    """The service in-process, as ``smartico-stream run`` builds it; runs until every produced record
    is handled and every action delivered."""
    entered = time.time()
    from smartico_stream.config import load_settings
    from smartico_stream.observability.logging import configure_logging
    from smartico_stream.service import Service
    from smartico_stream.store import open_store_from_url

    configure_logging("ERROR", "console")
    settings = load_settings(environ={}, **_service_settings(params))
    store = open_store_from_url(settings.store.url, settings.store.db_schema, settings.store.sqlite_synchronous)
    service = Service(settings, store=store)
    probe = _Probe(service, shared, params.get("latency", False))
    profiler = None
    if params.get("profile"):
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001, async_mode="disabled")
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    deadline = time.monotonic() + params.get("timeout_s", 900)
    source = getattr(service.transport, "source", None)
    paused_s = 0.0  # consumption paused by outbox backpressure (outbox.max_backlog)
    pauses = 0
    was_paused = False
    tick = time.monotonic()
    try:
        while not task.done():
            await asyncio.sleep(0.005)
            now_tick = time.monotonic()
            if service.paused:
                paused_s += now_tick - tick
                pauses += 0 if was_paused else 1
            was_paused = service.paused
            tick = now_tick
            if not shared[READY] and _ready(service.transport, source):
                shared[READY] = 1
            if profiler is not None and probe.first_at and not profiler.is_running:
                profiler.start()
            if shared[DONE] and service.stats.consumed >= shared[PRODUCED]:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"handled {service.stats.consumed} of {int(shared[PRODUCED])} records before the timeout"
                )
        if task.done():
            task.result()
            raise RuntimeError("the service stopped before handling every record")
        # The relay shares the core: the pipeline is done once every action is delivered.
        backlog = await service.relay.backlog()
        while backlog > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            backlog = await service.relay.backlog()
        delivered_at = time.time()
        cpu = time.process_time() - probe.cpu_at_first
    finally:
        if profiler is not None and profiler.is_running:
            profiler.stop()
        stop.set()
        stopping = time.time()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 60)
        stopped = time.time()
    if profiler is not None:
        Path(params["profile"]).parent.mkdir(parents=True, exist_ok=True)
        Path(params["profile"]).write_text(profiler.output_text(unicode=True, color=False, show_all=False))
        Path(params["profile"]).with_suffix(".html").write_text(profiler.output_html())
    stats = service.stats
    records = stats.consumed
    applied = _applied(settings, params.get("overrides") or {})
    end = max(delivered_at, probe.last_commit_at)
    measured = end - probe.first_at
    to_commit = probe.last_commit_at - probe.first_at
    result: dict[str, Any] = {
        "records": records,
        "processed": stats.processed,
        "deduplicated": stats.deduplicated,
        "dead_lettered": stats.dead_lettered,
        "events_applied": stats.events_applied,
        "actions": stats.actions,
        "actions_delivered": _count_lines(Path(params["sink_path"])),
        "actions_per_record": round(stats.actions / records, 2) if records else None,
        "actions_delivered_per_s": round(stats.actions / measured, 1) if measured > 0 else None,
        "consumption_paused_s": round(paused_s, 2),
        "consumption_pauses": pauses,
        "outbox_backlog_at_end": backlog,
        "batches": stats.batches,
        "store_commits": probe.commits,
        "measured_s": round(measured, 3),
        "events_per_s": round(records / measured, 1) if measured > 0 else None,
        "events_per_s_to_last_commit": round(records / to_commit, 1) if to_commit > 0 else None,
        "delivery_tail_s": round(max(0.0, end - probe.last_commit_at), 3),
        "cpu_s": round(cpu, 3),
        "cpu_cores_used": round(cpu / measured, 2) if measured > 0 else None,
        "timeline": _timeline(probe.first_at, probe.commit_times),
        "startup_s": round(probe.first_at - entered, 2),
        "shutdown_s": round(stopped - stopping, 2),
    }
    if applied:
        result["settings_applied"] = applied
    if probe.latency:
        paced_ms = shared[PACE_START] * 1000.0
        start_ms = paced_ms + params.get("warmup_s", 0.0) * 1000.0
        counted: list[tuple[float, float]] = []
        by_slice: dict[int, list[float]] = {}
        for ts, total, before in probe.samples:
            if ts >= start_ms:
                counted.append((total, before))
                by_slice.setdefault(int((ts - paced_ms) // (LATENCY_SLICE_S * 1000)), []).append(total)
        kept = sorted(total for total, _ in counted)
        before_fetch = sorted(before for _, before in counted)
        in_service = sorted(total - before for total, before in counted)
        result["latency"] = {
            "samples": len(kept),
            "warmup_excluded": len(probe.samples) - len(kept),
            "p50_ms": _percentile(kept, 0.50),
            "p90_ms": _percentile(kept, 0.90),
            "p99_ms": _percentile(kept, 0.99),
            "p999_ms": _percentile(kept, 0.999),
            "max_ms": round(kept[-1], 2) if kept else None,
            # the same records split in two: producer, broker and consumer client until the service
            # had the record in hand, then the service's handling (fetch to commit)
            "before_fetch_ms_p50": _percentile(before_fetch, 0.50),
            "before_fetch_ms_p99": _percentile(before_fetch, 0.99),
            "fetch_to_commit_ms_p50": _percentile(in_service, 0.50),
            "fetch_to_commit_ms_p99": _percentile(in_service, 0.99),
            # where the time goes: waiting in the consumer for a batch to fill (up to batch_size
            # records or poll_timeout_s) happens before the fetch; handling is fetch -> commit
            "batches": len(probe.batches),
            "batch_records_mean": round(sum(n for n, _ in probe.batches) / len(probe.batches), 1)
            if probe.batches else None,
            "batch_fetch_to_commit_ms_p50": _percentile(sorted(ms for _, ms in probe.batches), 0.50),
            "batch_fetch_to_commit_ms_max": round(max(ms for _, ms in probe.batches), 2) if probe.batches else None,
            # the tail over the run, to set beside the embedded cluster's CPU (see _scenario_pipeline)
            f"p99_ms_per_{LATENCY_SLICE_S}s": [_percentile(sorted(by_slice[k]), 0.99) for k in sorted(by_slice)],
        }
    return result


def _flat(overrides: dict[str, Any]) -> dict[str, Any]:
    """``{section: {key: value}}`` (``kafka.config`` one level deeper) as ``{"section.key": value}``."""
    flat: dict[str, Any] = {}
    for section, values in overrides.items():
        for key, value in values.items():
            if key == "config" and isinstance(value, dict):
                flat.update({f"{section}.config.{name}": item for name, item in value.items()})
            else:
                flat[f"{section}.{key}"] = value
    return flat


def _applied(settings: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """The service's effective value of every overridden setting, read back from its Settings."""
    return {path: _setting(settings, path) for path in _flat(overrides)}


def _setting(settings: Any, path: str) -> Any:
    """``section.key`` (or ``section.config.<property>``) of a Settings."""
    section, key = path.split(".", 1)
    if key.startswith("config."):
        return getattr(settings, section).config.get(key.removeprefix("config."))
    return getattr(getattr(settings, section), key)


# The service settings every scenario leaves at their defaults (reported, read from the defaults).
_DEFAULTS_KEPT = (
    "kafka.batch_size", "kafka.poll_timeout_s", "kafka.statistics_interval_ms", "engine.state_cache_size",
    "engine.full_gc_interval_s", "dedup.window_seconds", "dedup.max_entries", "outbox.batch_size",
    "outbox.max_backlog", "store.sqlite_synchronous",
)


def _defaults_kept() -> dict[str, Any]:
    from smartico_stream.config import load_settings

    defaults = load_settings(environ={})
    return {path: _setting(defaults, path) for path in _DEFAULTS_KEPT}


def _timeline(first_at: float, commits: list[tuple[float, int]], slices: int = 10) -> list[dict[str, float]]:
    """Records committed per second in ``slices`` equal parts of the run (does the rate hold up as
    the store, the outbox and the caches fill?)."""
    if not commits or commits[-1][0] <= first_at:
        return []
    span = (commits[-1][0] - first_at) / slices
    timeline = []
    done = 0
    for index in range(slices):
        end = first_at + span * (index + 1)
        upto = max((count for at, count in commits if at <= end + 1e-9), default=done)
        timeline.append({"until_s": round(span * (index + 1), 1), "events_per_s": round((upto - done) / span, 1)})
        done = upto
    return timeline


def _ready(transport: Any, source: Any) -> bool:
    """Kafka: partitions assigned (read from the source's own bookkeeping: calling into the consumer
    from the event loop while its thread runs a rebalance callback that waits for the loop would
    deadlock). RabbitMQ: connected and consuming."""
    if source is not None and hasattr(source, "assigned"):
        return bool(source.assigned)
    return bool(transport.joined)


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered))) - 1))], 2)


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    lines = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
    return lines


# -- dedup memory ------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _dedup_memory(params: dict[str, Any]) -> dict[str, Any]:
    """Fill one DedupWindow with ``keys`` realistic keys (brand + event type + transaction id, as the
    pipeline digests them), arriving at 100k/s in batches of 2000 that share one first-seen time
    (as the service adds them after each commit); measure the memory it holds."""
    import gc
    import tracemalloc

    from smartico_stream.pipeline.dedup import DedupWindow, dedup_digest

    keys, traced = params["keys"], params["traced"]
    types = ("casino_bet", "casino_win", "casino_bet", "casino_win", "deposit", "sport_bet_open",
             "sport_bet_selection_open", "user_profile")
    prefixes = ("cb", "cw", "cb", "cw", "dep", "sbo", "sso", "")
    brands = ("brand-eu", "brand-latam")
    clock = [1_767_600_000.0]
    window = DedupWindow(120.0, keys + 1, lambda: clock[0])
    gc.collect()
    if traced:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = _rss_bytes()
    started = time.perf_counter()
    batch = 2000
    for start in range(0, keys, batch):
        first_seen = 1_767_600_000.0 + start / 100_000
        clock[0] = first_seen
        for i in range(start, min(keys, start + batch)):
            slot = i & 7
            event_id = f"{prefixes[slot]}-{i}" if prefixes[slot] else f"{brands[i & 1]}:{i}:{i * 7919 % 1_000_003}"
            window.add(dedup_digest(brands[(i >> 3) & 1], types[slot], event_id), first_seen)
    seconds = time.perf_counter() - started
    after = tracemalloc.get_traced_memory()[0] if traced else _rss_bytes()
    if traced:
        tracemalloc.stop()
    assert len(window) == keys
    return {"keys": keys, "method": "tracemalloc" if traced else "rss", "bytes": after - before,
            "bytes_per_key": round((after - before) / keys, 1), "fill_s": round(seconds, 2)}


# -- the orchestrator ----------------------------------------------------------------------------------


class BenchError(RuntimeError):
    pass


def _module_function(name: str) -> Callable[..., Any]:
    # Spawned children import this module by name, also when it runs as ``python -m``.
    import importlib

    return getattr(importlib.import_module("smartico_stream.bench"), name)


async def _receive(conn: Any, process: Any, timeout_s: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        if await asyncio.to_thread(conn.poll, 0.2):
            try:
                message: dict[str, Any] = conn.recv()
            except EOFError:
                raise BenchError(f"{what}: the process died (exit code {process.exitcode})") from None
            return message
        if not process.is_alive():
            if conn.poll(0):
                continue
            raise BenchError(f"{what}: the process died (exit code {process.exitcode})")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: no answer within {timeout_s:.0f} s")


def _stop_process(process: Any) -> None:
    process.join(10)
    if process.is_alive():
        process.terminate()
        process.join(5)
    if process.is_alive():
        process.kill()
        process.join(5)


class _Cluster:
    """The embedded Kafka and its producer, in their own process."""

    def __init__(self, ctx: Any, shared: Any, cpus: list[int] | None) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_module_function("_cluster_main"), args=(child, shared, cpus),
                                   name="bench-cluster", daemon=True)
        self.bootstrap = ""

    async def start(self) -> None:
        self.process.start()
        self.bootstrap = (await _receive(self.conn, self.process, 60, "embedded Kafka"))["bootstrap"]

    async def call(self, command: str, args: Any, timeout_s: float) -> dict[str, Any]:
        self.conn.send((command, args))
        answer = await _receive(self.conn, self.process, timeout_s, f"cluster {command}")
        if not answer.get("ok"):
            raise BenchError(f"cluster {command}: {answer.get('error')}\n{answer.get('traceback', '')}")
        return answer

    def start_call(self, command: str, args: Any) -> None:
        self.conn.send((command, args))

    async def call_result(self, command: str, timeout_s: float) -> dict[str, Any]:
        answer = await _receive(self.conn, self.process, timeout_s, f"cluster {command}")
        if not answer.get("ok"):
            raise BenchError(f"cluster {command}: {answer.get('error')}\n{answer.get('traceback', '')}")
        return answer

    async def close(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(Exception):
                self.conn.send(("exit", None))
        await asyncio.to_thread(_stop_process, self.process)


@dataclass
class _Env:
    """What every scenario of one run shares."""

    profile: Profile
    ctx: Any
    shared: Any
    cluster: _Cluster
    cores: dict[str, list[int] | None]
    workdir: Path
    stream: Path
    rules: Path
    keys_file: Path
    say: Progress
    pg_dsn: str
    rabbitmq_url: str
    overrides: dict[str, dict[str, Any]]  # bench --set: service settings for every scenario

    def reset(self) -> None:
        for slot in range(_SLOTS):
            self.shared[slot] = 0.0

    async def run_worker(self, kind: str, params: dict[str, Any], timeout_s: float,
                         cpus: list[int] | None = None) -> dict[str, Any]:
        conn, child = self.ctx.Pipe()
        process = self.ctx.Process(target=_module_function("_worker_main"),
                                   args=(kind, params, child, self.shared, cpus if cpus is not None else self.cores["service"]),
                                   name=f"bench-{kind}", daemon=True)
        process.start()
        try:
            answer = await _receive(conn, process, timeout_s, kind)
        finally:
            self.shared[STOP] = 1  # whatever happened, the producer stops
            await asyncio.to_thread(_stop_process, process)
        if not answer.get("ok"):
            raise BenchError(f"{kind}: {answer.get('error')}\n{answer.get('traceback', '')}")
        result: dict[str, Any] = answer["result"]
        return result


def _merged(base: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """Settings ``more`` over ``base``: section by section, and key by key in ``kafka.config``."""
    merged = dict(base)
    for section, values in more.items():
        current = merged.get(section)
        if not isinstance(current, dict) or not isinstance(values, dict):
            merged[section] = values
            continue
        merged[section] = {**current, **values}
        if isinstance(current.get("config"), dict) and isinstance(values.get("config"), dict):
            merged[section]["config"] = {**current["config"], **values["config"]}
    return merged


def parse_setting(text: str) -> dict[str, dict[str, Any]]:
    """``section.key=value`` (``--set``) as ``{section: {key: value}}``; the value is read as YAML
    (``500``, ``true``, ``NORMAL``). ``kafka.config.<librdkafka property>=value`` sets a
    librdkafka property."""
    path, sep, raw = text.partition("=")
    section, dot, key = path.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ValueError(f"{text!r}: expected section.key=value, e.g. store.sqlite_synchronous=NORMAL")
    value = yaml.safe_load(raw) if raw.strip() else ""
    if section == "kafka" and key.startswith("config."):
        return {"kafka": {"config": {key.removeprefix("config."): value}}}
    return {section: {key: value}}


def _scenario_topics(prefix: str) -> list[str]:
    return [f"{prefix}.{TOPICS[stream]}" for stream in STREAM_ORDER]


def _completeness(result: dict[str, Any], production: dict[str, Any], outcomes: bool = True) -> None:
    """``records`` handled against ``expected_records`` produced; with ``outcomes``, also the
    service's verdicts against the generator's ground truth (ok / duplicate / malformed)."""
    kinds = production["kinds"]
    result["expected_records"] = production["produced"]
    result["expected"] = kinds
    result["complete"] = result.get("records") == production["produced"]
    if outcomes and "processed" in result:
        result["outcomes_match"] = (result["processed"], result["deduplicated"], result["dead_lettered"]) == (
            kinds["ok"], kinds["duplicate"], kinds["malformed"]
        )
    result["distinct_users"] = production.get("distinct_users")
    result["min_lead_records"] = production.get("min_lead_records")


async def _scenario_raw(env: _Env) -> dict[str, Any]:
    env.reset()
    prefix = f"bench-raw-{uuid.uuid4().hex[:6]}"
    topics = _scenario_topics(prefix)
    partitions = (await env.cluster.call("topics", topics, 60))["partitions"]
    env.cluster.start_call("produce", {
        "path": str(env.stream), "topics": topics, "mode": "rounds", "limit": env.profile.events,
        "max_ahead": env.profile.raw_round, "max_ahead_bytes": env.profile.raw_round_bytes,
    })
    try:
        result = await env.run_worker("kafka_raw", {"bootstrap": env.cluster.bootstrap, "partitions": partitions}, 600)
    finally:
        production = await env.cluster.call_result("produce", 120)  # the worker's end set STOP
    _completeness(result, production)
    result["method"] = ("rounds: a backlog of up to max_ahead records is produced and flushed, then only "
                        "draining it is timed")
    return result


async def _scenario_pipeline(env: _Env, name: str, store: str, stream: Path | None = None,
                             latency_rate: float | None = None, profile_path: Path | None = None,
                             overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    env.reset()
    prefix = f"bench-{name.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    topics = _scenario_topics(prefix)
    await env.cluster.call("topics", topics, 60)
    scratch = env.workdir / prefix
    scratch.mkdir()
    params: dict[str, Any] = {
        "prefix": prefix, "bootstrap": env.cluster.bootstrap, "rules": str(env.rules), "keys_file": str(env.keys_file),
        "sink_path": str(scratch / "actions.jsonl"), "timeout_s": 1800,
    }
    schema = None
    if store == "postgres":
        schema = prefix.replace("-", "_")
        params.update(store_url=env.pg_dsn, schema=schema, pii_store_url=env.pg_dsn, pii_schema=f"{schema}_pii")
    else:
        params.update(store_url=f"sqlite:///{scratch / 'state.db'}", pii_store_url=f"sqlite:///{scratch / 'pii.db'}")
    production_args: dict[str, Any] = {
        "path": str(stream or env.stream), "topics": topics, "limit": env.profile.events,
        "max_ahead": env.profile.max_ahead, "max_ahead_bytes": env.profile.max_ahead_bytes,
    }
    if latency_rate is not None:
        params.update(latency=True, warmup_s=env.profile.latency_warmup_s)
        production_args.update(mode="paced", rate=latency_rate, seconds=env.profile.latency_seconds, linger_ms=1)
    else:
        production_args.update(mode="lead", seconds=env.profile.pipeline_seconds)
    if profile_path is not None:
        params["profile"] = str(profile_path)
    params["overrides"] = _merged(env.overrides, overrides or {})
    env.cluster.start_call("produce", production_args)
    cluster_cpu: list[tuple[float, float]] = []
    sampler = None
    if latency_rate is not None:
        sampler = asyncio.create_task(_sample_cpu(env.cluster.process.pid, cluster_cpu))
    try:
        try:
            result = await env.run_worker("pipeline", params, 2400)
        finally:
            production = await env.cluster.call_result("produce", 120)  # the worker's end set STOP
            if sampler is not None:
                sampler.cancel()
    finally:
        if schema is not None:
            await _drop_pg_schemas(env.pg_dsn, [schema, f"{schema}_pii"])
        shutil.rmtree(scratch, ignore_errors=True)
    _completeness(result, production)
    result["store"] = store
    if latency_rate is not None:
        result["latency"].update(
            target_rate_per_s=round(latency_rate, 1),
            achieved_rate_per_s=round(production["produced"] / production["paced_s"], 1) if production["paced_s"] else None,
            produced_for_s=production["paced_s"],
            warmup_s=env.profile.latency_warmup_s,
        )
        result["latency"][f"cluster_cpu_cores_per_{LATENCY_SLICE_S}s"] = _cores_per_slice(
            cluster_cpu, env.shared[PACE_START], production["paced_s"] or 0.0)
    return result


async def _sample_cpu(pid: int, samples: list[tuple[float, float]]) -> None:
    """Append (wall time, CPU seconds) of a process to ``samples`` twice a second, until cancelled."""
    while True:
        samples.append((time.time(), _proc_stat(pid)[0]))
        await asyncio.sleep(0.5)


def _cores_per_slice(samples: list[tuple[float, float]], start: float, seconds: float) -> list[float | None]:
    """Cores used in each LATENCY_SLICE_S slice of ``seconds`` from ``start``, from CPU samples."""
    slices: list[float | None] = []
    for first in range(max(1, math.ceil(seconds / LATENCY_SLICE_S))):
        lo, hi = start + first * LATENCY_SLICE_S, start + (first + 1) * LATENCY_SLICE_S
        inside = [s for s in samples if lo <= s[0] <= hi]
        if len(inside) < 2:
            slices.append(None)
            continue
        (t0, c0), (t1, c1) = inside[0], inside[-1]
        slices.append(round((c1 - c0) / (t1 - t0), 2) if t1 > t0 else None)
    return slices


# -- PostgreSQL and RabbitMQ availability ------------------------------------------------------------


async def postgres_problem(dsn: str) -> str | None:
    try:
        import asyncpg

        connection = await asyncio.wait_for(asyncpg.connect(dsn), 5)
        await connection.close()
    except Exception as exc:  # noqa: BLE001 - any failure is reported the same way
        return f"PostgreSQL is not reachable at {_redact(dsn)} ({type(exc).__name__}: {exc})"
    return None


async def _drop_pg_schemas(dsn: str, schemas: list[str]) -> None:
    import asyncpg

    with contextlib.suppress(Exception):
        connection = await asyncio.wait_for(asyncpg.connect(dsn), 10)
        try:
            for schema in schemas:
                await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await connection.close()


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


async def rabbitmq_problem(url: str) -> str | None:
    import aio_pika

    try:
        connection = await asyncio.wait_for(aio_pika.connect(url), 5)
    except Exception as exc:  # noqa: BLE001
        return f"RabbitMQ is not reachable at {_redact(url)} ({type(exc).__name__})"
    try:
        channel = await connection.channel()
        name = f"bench-probe-{uuid.uuid4().hex[:6]}"
        try:
            await channel.declare_exchange(name, "x-consistent-hash", auto_delete=True)
            await channel.exchange_delete(name)
        except Exception as exc:  # noqa: BLE001
            return ("RabbitMQ has no x-consistent-hash exchange type: "
                    f"`rabbitmq-plugins enable rabbitmq_consistent_hash_exchange` ({type(exc).__name__})")
    finally:
        await connection.close()
    return None


async def _rabbitmq_back(url: str, timeout_s: float = 90.0) -> bool:
    """True once RabbitMQ answers again (within ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await rabbitmq_problem(url) is None:
            await asyncio.sleep(2)  # let its queues come back too
            return True
        await asyncio.sleep(2)
    return False


async def _rabbit_topology(url: str, prefix: str, declare: bool, queues_per_stream: int = 4) -> list[str]:
    """Declare (or delete) the service's topology for ``prefix``: what the service itself declares
    (consistent-hash exchange per stream over quorum queues with single-active-consumer)."""
    import aio_pika

    queues = [f"{prefix}.{TOPICS[stream]}.{n}" for stream in STREAM_ORDER for n in range(queues_per_stream)]
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        if declare:
            arguments = {"x-single-active-consumer": True, "x-queue-type": "quorum"}
            for stream in STREAM_ORDER:
                exchange = await channel.declare_exchange(f"{prefix}.{TOPICS[stream]}", "x-consistent-hash", durable=True)
                for n in range(queues_per_stream):
                    queue = await channel.declare_queue(f"{prefix}.{TOPICS[stream]}.{n}", durable=True, arguments=arguments)
                    await queue.bind(exchange, routing_key="1")
        else:
            for queue in [*queues, f"{prefix}.dead-letters"]:
                with contextlib.suppress(Exception):
                    await channel.queue_delete(queue)
            for exchange in [*(f"{prefix}.{TOPICS[s]}" for s in STREAM_ORDER), f"{prefix}.dead-letters"]:
                with contextlib.suppress(Exception):
                    await channel.exchange_delete(exchange)
    return queues


async def _rabbit_publish(url: str, prefix: str, stream_file: Path, limit: int) -> dict[str, Any]:
    """Publish the first ``limit`` records with publisher confirms (all before any consumer runs:
    RabbitMQ has no retention limit, so the producer is never the bottleneck)."""
    import aio_pika

    kinds = [0, 0, 0]
    keys: set[bytes] = set()
    produced = 0
    started = time.time()
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchanges = [await channel.get_exchange(f"{prefix}.{TOPICS[stream]}") for stream in STREAM_ORDER]
        pending: list[Any] = []
        for stream, kind, key, value in read_stream(stream_file):
            if produced >= limit:
                break
            routing_key = (key or b"").decode() or "none"  # AMQP has no null routing key
            message = aio_pika.Message(value, message_id=f"{prefix}-{produced}")
            pending.append(exchanges[stream].publish(message, routing_key=routing_key))
            kinds[kind] += 1
            if kind == 0 and key:
                keys.add(key)
            produced += 1
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    return {"produced": produced, "kinds": dict(zip(KINDS, kinds, strict=True)), "distinct_users": len(keys),
            "producer_seconds": round(time.time() - started, 2)}


async def _scenario_rabbit(env: _Env, pipeline: bool) -> dict[str, Any]:
    env.reset()
    prefix = f"bench-rmq-{'pipe' if pipeline else 'raw'}-{uuid.uuid4().hex[:6]}"
    url = env.rabbitmq_url
    scratch = env.workdir / prefix
    scratch.mkdir()
    try:
        queues = await _rabbit_topology(url, prefix, declare=True)
        env.say(f"  publishing {env.profile.rabbit_events} records to RabbitMQ before consuming")
        production = await _rabbit_publish(url, prefix, env.stream, env.profile.rabbit_events)
        env.shared[PRODUCED] = production["produced"]
        env.shared[DONE] = 1
        if pipeline:
            params = {
                "prefix": prefix, "rabbitmq_url": url, "rules": str(env.rules), "keys_file": str(env.keys_file),
                "sink_path": str(scratch / "actions.jsonl"), "store_url": f"sqlite:///{scratch / 'state.db'}",
                "pii_store_url": f"sqlite:///{scratch / 'pii.db'}", "timeout_s": 1200, "overrides": env.overrides,
            }
            result = await env.run_worker("pipeline", params, 1500)
            result["store"] = "sqlite"
        else:
            result = await env.run_worker("rabbit_raw", {"url": url, "queues": queues,
                                                         "expected": production["produced"]}, 900)
    finally:
        await _rabbit_topology(url, prefix, declare=False)
        shutil.rmtree(scratch, ignore_errors=True)
    # RabbitMQ has no null routing key: the null_key defect gets one, so it is not malformed there.
    _completeness(result, production, outcomes=False)
    result["min_lead_records"] = None
    result["method"] = "every record published (with confirms) before the consumer starts; consumer time only"
    return result


# -- scaling -----------------------------------------------------------------------------------------


async def _scenario_users(env: _Env) -> dict[str, Any]:
    """The same pipeline over a population of 100k and of 1M users (records respread, see
    :func:`write_stream`)."""
    arms: dict[str, Any] = {}
    for label, population in (("users_100k", 100_000), ("users_1m", 1_000_000)):
        path = env.workdir / f"stream-{label}.bin"
        env.say(f"  generating the stream respread over {population:,} users")
        await asyncio.to_thread(write_stream, path, env.profile.users, env.profile.events, population)
        env.say(f"  {label}: pipeline on SQLite")
        try:
            arms[label] = await _guard(_scenario_pipeline(env, label, "sqlite", stream=path))
            arms[label]["population"] = population
        finally:
            path.unlink(missing_ok=True)
        env.say(_line(label, arms[label]))
    small, large = arms["users_100k"].get("events_per_s"), arms["users_1m"].get("events_per_s")
    arms["events_per_s_ratio_1m_to_100k"] = round(large / small, 3) if small and large else None
    rss_small, rss_large = arms["users_100k"].get("peak_rss_mb"), arms["users_1m"].get("peak_rss_mb")
    arms["peak_rss_ratio_1m_to_100k"] = round(rss_large / rss_small, 3) if rss_small and rss_large else None
    arms["state_cache_size"] = 100_000
    return arms


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _http_get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - 127.0.0.1 only
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return 0, b""


def _gauge(metrics_text: bytes, name: str) -> float | None:
    for line in metrics_text.decode(errors="replace").splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def _assigned_partitions(metrics_text: bytes) -> int:
    total = 0
    for line in metrics_text.decode(errors="replace").splitlines():
        if line.startswith("smartico_stream_assigned_partitions{"):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def _proc_stat(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS MB) of a live process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        hwm = 0.0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
        return cpu, hwm
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "smartico-stream"
    return [str(script)] if script.exists() else [sys.executable, "-m", "smartico_stream.cli"]


async def _scenario_processes(env: _Env, members: int, store: str) -> dict[str, Any]:
    """``members`` × ``smartico-stream run --config`` in one consumer group, each pinned to a core."""
    from confluent_kafka import Consumer, TopicPartition

    env.reset()
    prefix = f"bench-proc{members}-{uuid.uuid4().hex[:6]}"
    topics = _scenario_topics(prefix)
    partitions = (await env.cluster.call("topics", topics, 60))["partitions"]
    scratch = env.workdir / prefix
    scratch.mkdir()
    schema = prefix.replace("-", "_") if store == "postgres" else None
    cores = [env.cores["service"], env.cores["second"]]
    processes: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    watcher = Consumer({"bootstrap.servers": env.cluster.bootstrap, "group.id": f"{prefix}-group",
                        "enable.auto.commit": False, "logger": _quiet_librdkafka()})
    watched = [TopicPartition(t, p) for t, count in partitions.items() for p in range(count)]
    result: dict[str, Any] = {"members": members, "store": store}
    producing = False
    try:
        for index in range(members):
            port = _free_port()
            ports.append(port)
            params = {
                "prefix": prefix, "bootstrap": env.cluster.bootstrap, "rules": str(env.rules),
                "keys_file": str(env.keys_file), "sink_path": str(scratch / f"actions-{index}.jsonl"),
                "metrics_port": port, "instance_id": f"{prefix}-member-{index}", "overrides": env.overrides,
            }
            if schema:
                params.update(store_url=env.pg_dsn, schema=schema, pii_store_url=env.pg_dsn, pii_schema=f"{schema}_pii")
            else:
                params.update(store_url=f"sqlite:///{scratch / 'state.db'}", pii_store_url=f"sqlite:///{scratch / 'pii.db'}")
            config = scratch / f"config-{index}.yaml"
            config.write_text(yaml.safe_dump(_service_settings(params), sort_keys=False))
            pin = cores[index] if index < len(cores) else None
            log = (scratch / f"member-{index}.log").open("wb")
            processes.append(subprocess.Popen(
                [*_cli(), "run", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=(lambda cpus=pin: _pin(cpus)) if pin else None,
            ))
        # Every member joined and the partitions are spread before producing starts.
        deadline = time.monotonic() + 90
        stable_since = 0.0
        while True:
            for index, process in enumerate(processes):
                if process.poll() is not None:
                    raise BenchError(f"member {index} exited with {process.returncode}: "
                                     f"{(scratch / f'member-{index}.log').read_text()[-2000:]}")
            owned = [_assigned_partitions(_http_get(f"http://127.0.0.1:{p}/metrics")[1]) for p in ports]
            if all(owned) and sum(owned) == len(watched):
                stable_since = stable_since or time.monotonic()
                if time.monotonic() - stable_since > 1.5:
                    break
            else:
                stable_since = 0.0
            if time.monotonic() > deadline:
                raise BenchError(f"the group did not settle: partitions owned per member {owned}")
            await asyncio.sleep(0.2)
        result["partitions_per_member"] = owned
        env.cluster.start_call("produce", {
            "path": str(env.stream), "topics": topics, "mode": "lead", "limit": env.profile.events,
            "max_ahead": env.profile.max_ahead, "max_ahead_bytes": env.profile.max_ahead_bytes,
            "seconds": env.profile.scaling_seconds,
        })
        producing = True
        cpu_before = [_proc_stat(p.pid)[0] for p in processes]
        first_at = first_count = 0.0
        samples: list[tuple[float, int]] = []
        deadline = time.monotonic() + env.profile.scaling_seconds + 600
        while True:
            committed = await asyncio.to_thread(watcher.committed, watched, 10)
            total = sum(max(tp.offset, 0) for tp in committed)
            now = time.time()
            env.shared[FETCHED] = total  # committed <= fetched: a conservative lead for the producer
            if total and not first_at:
                first_at, first_count = now, total
                env.shared[STARTED_AT] = now
            samples.append((now, total))
            if env.shared[DONE] and total >= env.shared[PRODUCED]:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"committed {total} of {int(env.shared[PRODUCED])} records before the timeout")
            await asyncio.sleep(0.1)
        producing = False
        committed_at = now
        production = await env.cluster.call_result("produce", 120)
        # Done once every member's relay delivered its actions (the gauge is refreshed every second).
        backlogs: list[float | None] = []
        while time.monotonic() < deadline:
            backlogs = [_gauge((await asyncio.to_thread(_http_get, f"http://127.0.0.1:{port}/metrics"))[1],
                               "smartico_stream_outbox_backlog") for port in ports]
            if all(b == 0 for b in backlogs):
                break
            await asyncio.sleep(0.2)
        drained_at = time.time()
        stats = [_proc_stat(p.pid) for p in processes]
        measured = drained_at - first_at
        result.update({
            "records": total,
            "measured_s": round(measured, 3),
            "events_per_s": round((total - first_count) / measured, 1) if measured > 0 else None,
            "events_per_s_to_last_commit": round((total - first_count) / (committed_at - first_at), 1)
            if committed_at > first_at else None,
            "outbox_backlog_at_end": backlogs,
            "method": "committed offsets of the group, read from the broker every 100 ms, from the first committed "
                      "batch (its records not counted) to the last, then until every member's "
                      "smartico_stream_outbox_backlog gauge (refreshed each second) reads 0",
            "cpu_s_per_member": [round(s[0] - c, 2) for s, c in zip(stats, cpu_before, strict=True)],
            "peak_rss_mb_per_member": [round(s[1], 1) for s in stats],
            "pinned_to_cores": [cores[i] if i < len(cores) else None for i in range(members)],
        })
        _completeness(result, production)
    finally:
        env.shared[STOP] = 1
        if producing:
            with contextlib.suppress(Exception):
                await env.cluster.call_result("produce", 120)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait, 10)
        watcher.close()
        if schema:
            await _drop_pg_schemas(env.pg_dsn, [schema, f"{schema}_pii"])
        shutil.rmtree(scratch, ignore_errors=True)
    return result


# -- the run -----------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    import confluent_kafka

    return {
        "cpus": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "ram_gb": ram_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "confluent_kafka": confluent_kafka.version()[0],
        "librdkafka": confluent_kafka.libversion()[0],
    }


def _skeleton(profile: Profile) -> dict[str, Any]:
    return {
        "mode": profile.mode,
        "command": "smartico-stream bench" + (" --quick" if profile.mode == "quick" else "") + " --json",
        "duration_s": None,
        "complete": False,
        "machine": {},
        "scenarios": {name: {"skipped": "not run"} for name in SCENARIOS},
        "ratio_pipeline_to_raw": None,
        "p50_latency_ms": None,
        "p99_latency_ms": None,
        "latency": {"skipped": "not run"},
        "peak_rss_mb": None,
        "dedup_bytes_per_key": None,
        "dedup": {"skipped": "not run"},
        "scaling": {"users": {"skipped": "full run only"}, "processes": {"skipped": "full run only"}},
        "targets": {},
        "settings": {},
        "notes": [],
    }


async def run_bench(quick: bool, progress: Progress | None = None, *, pg_dsn: str | None = None,
                    rabbitmq_url: str | None = None, profile_path: Path | None = None,
                    only: Collection[str] | None = None,
                    overrides: dict[str, dict[str, Any]] | None = None,
                    latency_rate: float | None = None) -> dict[str, Any]:
    """Run every scenario once; return the report (the JSON of ``smartico-stream bench --json``).

    Every key is present: a scenario that could not run holds ``{"skipped": reason}``, one that
    failed ``{"error": message}``; ``complete`` is True when every scenario that ran handled every
    record it was given. ``only`` runs just the named parts (:data:`PARTS`); ``overrides``
    (``{section: {key: value}}``) change the service's settings in every scenario that runs it;
    ``latency_rate`` paces the latency part (records/s) instead of half the pipeline's rate."""
    profile = QUICK if quick else FULL
    selected = frozenset(only) if only else None
    unknown = sorted((selected or frozenset()) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown bench part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    say = progress or (lambda line: None)
    started = time.monotonic()
    report = _skeleton(profile)
    report["machine"] = machine()
    report["machine"]["load_avg_1m_at_start"] = _load()
    cores = core_plan()
    report["machine"]["pinning"] = cores
    pg_dsn = pg_dsn or os.environ.get("SMARTICO_STREAM_BENCH_PG_DSN") or DEFAULT_PG_DSN
    rabbitmq_url = rabbitmq_url or os.environ.get("SMARTICO_STREAM_BENCH_RABBITMQ_URL") or DEFAULT_RABBITMQ_URL
    report["settings"] = {
        "stream": {"users": profile.users, "records": profile.events, "duplicate_share": 0.02, "malformed_share": 0.01,
                   "oversized_bytes": OVERSIZED_BYTES},
        "pipeline_seconds_cap": profile.pipeline_seconds,
        "max_ahead_records": profile.max_ahead,
        "max_ahead_bytes": profile.max_ahead_bytes,
        "rabbitmq_records": profile.rabbit_events,
        "rules": 50,
        "service_overrides": {
            "kafka.config": {"bootstrap.servers": "<embedded>", "group.id": "<per scenario>", **MOCK_CLUSTER_CONSUMER},
            "limits.max_message_bytes": MAX_MESSAGE_BYTES,
            "sinks": [{"type": "jsonl"}],
            "engine.rules": "50 bench rules",
            "pii.keys_file": "ephemeral key ring",
            "logging.level": "ERROR",
        },
        "service_defaults_kept": {**_defaults_kept(), "jsonl fsync": True},
    }
    if overrides:
        report["settings"]["service_overrides"]["--set"] = overrides
        report["command"] += "".join(f" --set {path}={value}" for path, value in _flat(overrides).items())
    if selected is not None:
        report["settings"]["only"] = sorted(selected)
        report["command"] += "".join(f" --only {part}" for part in sorted(selected))
    if latency_rate is not None:
        report["settings"]["latency_rate"] = latency_rate
        report["command"] += f" --latency-rate {latency_rate:g}"
    if profile_path is not None:
        report["notes"].append("--profile: pyinstrument sampled the service process of the pipeline scenario (of "
                               "pipeline_postgres when it ran alone), which slows it; do not quote that run's "
                               "figures for it")
    ctx = mp.get_context("spawn")
    shared = ctx.RawArray("d", _SLOTS)
    with tempfile.TemporaryDirectory(prefix="smartico-bench-") as tmp:
        workdir = Path(tmp)
        rules = write_rules(workdir / "bench-rules.yaml")
        from smartico_stream.engine.rules import load_rules
        from smartico_stream.pii.keys import generate_key_ring, key_ring_to_json

        load_rules(rules)  # fail early and clearly if a rule does not load
        keys_file = workdir / "pii-keys.json"
        fd = os.open(keys_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_ring_to_json(generate_key_ring("bench-1")))
        stream = workdir / "stream.bin"
        say(f"generating the stream: {profile.events:,} records, {profile.users:,} users (StreamSpec)")
        report["settings"]["stream"].update(await asyncio.to_thread(write_stream, stream, profile.users, profile.events))
        cluster = _Cluster(ctx, shared, cores["cluster"])
        env = _Env(profile, ctx, shared, cluster, cores, workdir, stream, rules, keys_file, say, pg_dsn, rabbitmq_url,
                   overrides or {})
        try:
            await cluster.start()
            await _run_scenarios(env, report, selected, profile_path, latency_rate)
        finally:
            await cluster.close()
    _overall(report, profile)
    report["machine"]["load_avg_1m_at_end"] = _load()
    report["duration_s"] = round(time.monotonic() - started, 1)
    report["peak_rss_process_tree_mb"] = {
        "orchestrator": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "largest_child": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }
    return report


async def _run_scenarios(env: _Env, report: dict[str, Any], selected: frozenset[str] | None,
                         profile_path: Path | None, latency_rate: float | None = None) -> None:
    """Every scenario in order (only those in ``selected``, when given); results go into ``report``."""
    profile, say, scenarios = env.profile, env.say, report["scenarios"]

    def chosen(name: str) -> bool:
        return selected is None or name in selected

    def wanted(name: str) -> bool:  # a scenario of report["scenarios"]
        if not chosen(name):
            scenarios[name] = {"skipped": "not selected (--only)"}
        return chosen(name)

    if wanted("raw"):
        say("raw: confluent-kafka consume(10000) + orjson.loads")
        scenarios["raw"] = await _guard(_scenario_raw(env))
        say(_line("raw", scenarios["raw"]))
    if wanted("pipeline"):
        say("pipeline: the service on SQLite")
        scenarios["pipeline"] = await _guard(_scenario_pipeline(env, "pipeline", "sqlite", profile_path=profile_path))
        say(_line("pipeline", scenarios["pipeline"]))
    if wanted("pipeline_postgres"):
        problem = await postgres_problem(env.pg_dsn)
        if problem:
            scenarios["pipeline_postgres"] = {"skipped": problem}
        else:
            say("pipeline_postgres: the service on PostgreSQL")
            # Profiled when it is the only pipeline scenario of the run (--only pipeline_postgres).
            scenarios["pipeline_postgres"] = await _guard(_scenario_pipeline(
                env, "pipeline_postgres", "postgres", profile_path=None if chosen("pipeline") else profile_path))
        say(_line("pipeline_postgres", scenarios["pipeline_postgres"]))
    if chosen("latency"):
        rate = scenarios["pipeline"].get("events_per_s")
        paced = latency_rate or (rate / 2 if rate else None)
        if paced:
            pace = "at --latency-rate" if latency_rate else "at half the pipeline's rate"
            say(f"latency: paced {pace}, {paced:,.0f} records/s for {profile.latency_seconds:g} s")
            measured = await _guard(_scenario_pipeline(env, "latency", "sqlite", latency_rate=paced))
            report["latency"] = _latency_report(measured)
            report["p50_latency_ms"] = report["latency"].get("p50_ms")
            report["p99_latency_ms"] = report["latency"].get("p99_ms")
            say(f"  p50 {report['p50_latency_ms']} ms  p99 {report['p99_latency_ms']} ms")
        else:
            report["latency"] = {"skipped": "the pipeline scenario measured no rate (latency runs at half of it, "
                                            "or at --latency-rate)"}
    else:
        report["latency"] = {"skipped": "not selected (--only)"}
    rabbit = [(name, pipeline) for name, pipeline in (("rabbitmq_raw", False), ("rabbitmq_pipeline", True)) if wanted(name)]
    problem = await rabbitmq_problem(env.rabbitmq_url) if rabbit else None
    for name, pipeline in rabbit:
        if problem:
            scenarios[name] = {"skipped": problem}
            continue
        say(f"{name}: {'the service' if pipeline else 'aio-pika consume + orjson.loads'} on RabbitMQ")
        scenarios[name] = await _guard(_scenario_rabbit(env, pipeline))
        if "error" in scenarios[name] and await _rabbitmq_back(env.rabbitmq_url):
            # A broker restart (another client's doing) is not the service's figure: once more.
            say(f"  {name}: {scenarios[name]['error'].splitlines()[0]}; RabbitMQ is back, running it again")
            failed = scenarios[name]
            scenarios[name] = await _guard(_scenario_rabbit(env, pipeline))
            scenarios[name]["retried_after"] = failed["error"].splitlines()[0]
        say(_line(name, scenarios[name]))
    if chosen("dedup"):
        say(f"dedup: a window of {profile.dedup_keys:,} keys (120 s at 100k/s"
            f"{'' if profile.dedup_keys == 12_000_000 else ', scaled down for --quick'})")
        report["dedup"] = await _guard(_dedup(env))
        report["dedup_bytes_per_key"] = report["dedup"].get("bytes_per_key")
        say(f"  {report['dedup_bytes_per_key']} bytes per key")
    else:
        report["dedup"] = {"skipped": "not selected (--only)"}
    if profile.scaling and chosen("scaling"):
        say("scaling: 100k vs 1M distinct users")
        report["scaling"]["users"] = await _guard(_scenario_users(env))
        store = "postgres" if not await postgres_problem(env.pg_dsn) else "sqlite"
        say(f"scaling: one vs two processes in one group (smartico-stream run, {store} store)")
        report["scaling"]["processes"] = await _guard(_scaling_processes(env, store))


async def _guard(work: Any) -> dict[str, Any]:
    """The scenario's result with its wall time (set-up included) and the machine's load average
    around it (other work on the machine shows there), or ``{"error": ...}``."""
    started = time.monotonic()
    load_before = _load()
    try:
        result: dict[str, Any] = await work
    except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the others
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result["wall_s"] = round(time.monotonic() - started, 1)
    result["load_avg_1m"] = {"before": load_before, "after": _load()}
    return result


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _latency_report(measured: dict[str, Any]) -> dict[str, Any]:
    if "latency" not in measured:
        return measured
    latency = dict(measured["latency"])
    latency.update(
        wall_s=measured.get("wall_s"),
        load_avg_1m=measured.get("load_avg_1m"),
        peak_rss_mb=measured.get("peak_rss_mb"),
        cpu_cores_used=measured.get("cpu_cores_used"),  # the service's, at this rate
        records=measured.get("records"), expected_records=measured.get("expected_records"),
        complete=measured.get("complete"),
        method="per record: Kafka CreateTime (ms, stamped by the producer) to the wall clock when the store "
               "transaction holding the record returned (service.store.commit wrapped); producer linger.ms=1; "
               "records produced during the warm-up are not counted",
    )
    return latency


async def _dedup(env: _Env) -> dict[str, Any]:
    profile = env.profile
    rss = await env.run_worker("dedup", {"keys": profile.dedup_keys, "traced": False}, 1200)
    traced = await env.run_worker("dedup", {"keys": profile.dedup_traced_keys, "traced": True}, 1200)
    return {
        "keys": profile.dedup_keys,
        "bytes_per_key": rss["bytes_per_key"],
        "method": "RSS growth of a fresh process while one DedupWindow is filled (realistic dedup_digest keys, "
                  "first-seen times shared per 2000-key batch as after a commit)",
        "fill_s": rss["fill_s"],
        "tracemalloc": {"keys": profile.dedup_traced_keys, "bytes_per_key": traced["bytes_per_key"]},
    }


async def _scaling_processes(env: _Env, store: str) -> dict[str, Any]:
    one = await _guard(_scenario_processes(env, 1, store))
    two = await _guard(_scenario_processes(env, 2, store))
    speedup = None
    if one.get("events_per_s") and two.get("events_per_s"):
        speedup = round(two["events_per_s"] / one["events_per_s"], 3)
    result = {"one_process": one, "two_processes": two, "speedup": speedup, "store": store}
    if len(env.cores["available"] or []) < 3:
        result["note"] = ("fewer than 3 cores: the embedded cluster, the producer (and the database) share the "
                          "cores with the members, so this speedup is indicative only")
    return result


def _overall(report: dict[str, Any], profile: Profile) -> None:
    scenarios = report["scenarios"]
    raw, pipeline = scenarios["raw"].get("events_per_s"), scenarios["pipeline"].get("events_per_s")
    report["ratio_pipeline_to_raw"] = round(pipeline / raw, 4) if raw and pipeline else None
    report["peak_rss_mb"] = scenarios["pipeline"].get("peak_rss_mb")
    ran = [s for s in scenarios.values() if "skipped" not in s]
    scaling = report["scaling"]
    for group in scaling.values():
        for key in ("users_100k", "users_1m", "one_process", "two_processes"):
            if isinstance(group, dict) and isinstance(group.get(key), dict):
                ran.append(group[key])
    if isinstance(report["latency"], dict) and "skipped" not in report["latency"]:
        ran.append(report["latency"])
    report["complete"] = bool(ran) and all(s.get("complete") for s in ran) and "error" not in report["dedup"]
    users = scaling["users"] if isinstance(scaling["users"], dict) else {}
    processes = scaling["processes"] if isinstance(scaling["processes"], dict) else {}
    targets = {
        "pipeline_events_per_s >= 100000": pipeline,
        "p99_latency_ms <= 250": report["p99_latency_ms"],
        "dedup_bytes_per_key <= 64": report["dedup_bytes_per_key"],
        "users_1m_events_per_s >= 0.8 x users_100k": users.get("events_per_s_ratio_1m_to_100k"),
        "users_1m_peak_rss <= 1.2 x users_100k": users.get("peak_rss_ratio_1m_to_100k"),
        "two_processes >= 1.7 x one": processes.get("speedup"),
    }
    checks = {
        "pipeline_events_per_s >= 100000": lambda v: v >= 100_000,
        "p99_latency_ms <= 250": lambda v: v <= 250,
        "dedup_bytes_per_key <= 64": lambda v: v <= 64,
        "users_1m_events_per_s >= 0.8 x users_100k": lambda v: v >= 0.8,
        "users_1m_peak_rss <= 1.2 x users_100k": lambda v: v <= 1.2,
        "two_processes >= 1.7 x one": lambda v: v >= 1.7,
    }
    report["targets"] = {
        name: {"measured": value, "met": None if value is None else bool(checks[name](value))}
        for name, value in targets.items()
    }
    notes: list[str] = report["notes"]
    main = scenarios["pipeline"]
    if main.get("distinct_users") is not None and main["distinct_users"] < profile.users:
        notes.append(
            f"the pipeline scenario's {main['records']:,} records touched {main['distinct_users']:,} distinct users of "
            f"the {profile.users:,} in StreamSpec (the generator registers at most ~0.09 new users per record and "
            "the run is capped in time); scaling.users respreads the records over 100k and 1M users"
        )
    if main.get("actions") and main.get("records"):
        notes.append(f"the 50 rules emitted {main['actions'] / main['records']:.2f} actions per record, each written "
                     "to the outbox, read back by the relay and appended to the JSONL sink")
    cpus = report["machine"].get("cpus_available") or 1
    for name, scenario in [*scenarios.items(), ("latency", report["latency"])]:
        load = scenario.get("load_avg_1m") if isinstance(scenario, dict) else None
        if load and max(v or 0 for v in load.values()) > cpus:
            notes.append(f"{name}: the machine was busy (1-minute load average up to "
                         f"{max(v or 0 for v in load.values())} on {cpus} cores): other work shared the cores")


# -- output ------------------------------------------------------------------------------------------


def _series(values: list[float | None] | None, digits: int) -> str:
    return " / ".join(_fmt(v, digits) for v in values or []) or "-"


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _line(name: str, scenario: dict[str, Any]) -> str:
    if "skipped" in scenario:
        return f"  {name}: skipped ({scenario['skipped']})"
    if "error" in scenario:
        return f"  {name}: ERROR {scenario['error'].splitlines()[0]}"
    return (f"  {name}: {_fmt(scenario.get('records'))}/{_fmt(scenario.get('expected_records'))} records, "
            f"{_fmt(scenario.get('events_per_s'))} events/s, cpu {_fmt(scenario.get('cpu_cores_used'), 2)} cores, "
            f"peak RSS {_fmt(scenario.get('peak_rss_mb'), 0)} MB")


def render_table(report: dict[str, Any]) -> str:
    rows = [("scenario", "records", "expected", "users", "events/s", "cores", "RSS MB", "")]
    entries: list[tuple[str, dict[str, Any]]] = list(report["scenarios"].items())
    users, processes = report["scaling"]["users"], report["scaling"]["processes"]
    for key in ("users_100k", "users_1m"):
        if isinstance(users.get(key), dict):
            entries.append((f"scaling {key}", users[key]))
    for key in ("one_process", "two_processes"):
        if isinstance(processes.get(key), dict):
            entries.append((f"scaling {key}", processes[key]))
    for name, scenario in entries:
        if "skipped" in scenario or "error" in scenario:
            reason = scenario.get("skipped") or scenario.get("error", "")
            rows.append((name, "", "", "", "", "", "", ("skipped: " if "skipped" in scenario else "ERROR: ") + reason.splitlines()[0][:70]))
            continue
        rows.append((name, _fmt(scenario.get("records")), _fmt(scenario.get("expected_records")),
                     _fmt(scenario.get("distinct_users")), _fmt(scenario.get("events_per_s")), _fmt(scenario.get("cpu_cores_used"), 2),
                     _fmt(scenario.get("peak_rss_mb") or max(scenario.get("peak_rss_mb_per_member") or [0]) or None, 0),
                     "" if scenario.get("complete") else "INCOMPLETE"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(width) if 0 < i < 7 else cell.ljust(width) for i, (cell, width) in
                       enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]
    latency = report["latency"]
    lines += [
        "",
        f"ratio pipeline/raw        {_fmt(report['ratio_pipeline_to_raw'], 4)}",
        f"latency p50 / p99         {_fmt(report['p50_latency_ms'], 1)} / {_fmt(report['p99_latency_ms'], 1)} ms"
        + (f"  (at {_fmt(latency.get('target_rate_per_s'))} records/s, {_fmt(latency.get('samples'))} records)"
           if "samples" in latency else f"  ({latency.get('skipped') or latency.get('error', '')})"),
        *([(f"  batches of {_fmt(latency.get('batch_records_mean'), 0)} records on average, "
             f"{_fmt(latency.get('batch_fetch_to_commit_ms_p50'), 1)} ms from fetch to commit (median)"),
           (f"  p99 split: {_fmt(latency.get('before_fetch_ms_p99'), 1)} ms before the fetch, "
            f"{_fmt(latency.get('fetch_to_commit_ms_p99'), 1)} ms fetch to commit"),
           (f"  per {LATENCY_SLICE_S} s: p99 {_series(latency.get(f'p99_ms_per_{LATENCY_SLICE_S}s'), 0)} ms; "
            f"embedded cluster + producer {_series(latency.get(f'cluster_cpu_cores_per_{LATENCY_SLICE_S}s'), 2)} cores")]
          if latency.get("batches") else []),
        f"peak RSS (pipeline)       {_fmt(report['peak_rss_mb'], 0)} MB",
        f"dedup bytes per key       {_fmt(report['dedup_bytes_per_key'], 1)}"
        + (f"  ({_fmt(report['dedup'].get('keys'))} keys; tracemalloc: "
           f"{_fmt(report['dedup']['tracemalloc']['bytes_per_key'], 1)})" if "tracemalloc" in report["dedup"] else ""),
    ]
    if "events_per_s_ratio_1m_to_100k" in users:
        lines.append(f"1M / 100k users           events/s x{_fmt(users['events_per_s_ratio_1m_to_100k'], 3)}, "
                     f"peak RSS x{_fmt(users.get('peak_rss_ratio_1m_to_100k'), 3)}")
    if "speedup" in processes:
        lines.append(f"two processes / one       x{_fmt(processes['speedup'], 3)} ({processes.get('store')} store)")
    lines += ["", "targets:"]
    for name, target in report["targets"].items():
        verdict = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
        lines.append(f"  {name:<44} {_fmt(target['measured'], 3):>14}  {verdict}")
    if report["notes"]:
        lines += ["", "notes:", *(f"  - {note}" for note in report["notes"])]
    machine_info = report["machine"]
    lines += ["", f"{report['mode']} run in {_fmt(report['duration_s'], 1)} s on {machine_info.get('cpus')} x "
                  f"{machine_info.get('cpu_model')}, {machine_info.get('ram_gb')} GB RAM; "
                  f"complete: {report['complete']}"]
    return "\n".join(lines)


def bench_command(
    quick: Annotated[bool, typer.Option("--quick", help="small run for CI smoke tests (under a minute)")] = False,
    json: Annotated[bool, typer.Option("--json", help="print one JSON object instead of the table")] = False,
    profile: Annotated[Path | None, typer.Option(
        help="write a pyinstrument profile of the pipeline scenario's service process to this file (.txt and "
             ".html); with --only pipeline_postgres alone, of that scenario's"
    )] = None,
    postgres_dsn: Annotated[str | None, typer.Option(
        help=f"PostgreSQL for pipeline_postgres (env SMARTICO_STREAM_BENCH_PG_DSN; default {DEFAULT_PG_DSN})"
    )] = None,
    rabbitmq_url: Annotated[str | None, typer.Option(
        help=f"RabbitMQ for the rabbitmq_* scenarios (env SMARTICO_STREAM_BENCH_RABBITMQ_URL; default {DEFAULT_RABBITMQ_URL})"
    )] = None,
    only: Annotated[list[str] | None, typer.Option(
        "--only", help=f"run only these parts (repeatable): {', '.join(PARTS)}"
    )] = None,
    latency_rate: Annotated[float | None, typer.Option(
        min=1.0, help="pace the latency part at this many records/s instead of half the pipeline's measured rate "
                      "(then --only latency runs without the pipeline part)"
    )] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="a service setting for every scenario that runs the service (repeatable), "
        "e.g. --set store.sqlite_synchronous=NORMAL --set kafka.batch_size=5000"
    )] = None,
) -> None:
    """Measure throughput (raw ceiling, the service on SQLite and PostgreSQL, RabbitMQ), latency,
    memory and scaling against the embedded Kafka, in one run (docs/performance.md)."""
    import uvloop

    from smartico_stream.config import ConfigError, load_settings

    def progress(line: str) -> None:
        typer.echo(line, err=True)

    unknown = sorted(set(only or ()) - set(PARTS))
    if unknown:
        raise typer.BadParameter(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}",
                                 param_hint="--only")
    overrides: dict[str, Any] = {}
    for text in set_ or ():
        try:
            overrides = _merged(overrides, parse_setting(text))
        except (ValueError, yaml.YAMLError) as exc:
            raise typer.BadParameter(str(exc), param_hint="--set") from None
    try:
        # A typo fails here, not in every scenario's process (the base is what every scenario sets).
        load_settings(environ={}, **_merged({"kafka": {"config": {"group.id": "bench"}}}, overrides))
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--set") from None
    report = uvloop.run(run_bench(quick, progress, pg_dsn=postgres_dsn, rabbitmq_url=rabbitmq_url,
                                  profile_path=profile, only=only, overrides=overrides, latency_rate=latency_rate))
    if json:
        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())
    else:
        typer.echo(render_table(report))
    if not report["complete"]:
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(bench_command)
