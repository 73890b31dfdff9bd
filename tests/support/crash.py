"""Helpers for the store, crash-recovery and outbox-relay tests.

- Deterministic reference-format input (profiles, deposits, casino bets, exact duplicates right
  after their original, a few malformed records), written both to Kafka and as a JSONL of envelopes
  for ``smartico-stream simulate``.
- The real service as a subprocess: ``smartico-stream run --config``, or, when the test sets
  failpoints, the test-only entry point ``python -m tests.support.failpoint_run`` (the same Service
  with crash points; nothing else can set them). Bounded waits and a guaranteed kill in teardown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson
import yaml

from tests.support.common import BASE_MS, CLI, DEMO_RULES, REPO
from tests.support.postgres import pg_dsn_with_schema

# librdkafka's mock coordinator keeps a rebalance's join phase open for session.timeout.ms - 1 s
# whenever a member joins or leaves, so the default 45 s session would stall every rebalance.
FAST_GROUP_CONFIG = {"session.timeout.ms": 3000, "heartbeat.interval.ms": 250}


# -- deterministic input ----------------------------------------------------------------------------

BRAND = "crash-brand"
PAY_TOPIC = "crash-pay"  # configured as the payments stream: profiles (type user_profile) + deposits
CASINO_TOPIC = "crash-casino"  # configured as the casino stream: casino bets

COUNTRIES = ("DE", "MT", "GB", "FR", "SE")
CURRENCIES = ("EUR", "GBP", "USD")


@dataclass(frozen=True, slots=True)
class Rec:
    """One input record: where it goes (topic and the stream simulate sees) and its bytes."""

    topic: str
    stream: str
    key: str
    value: bytes  # raw bytes as produced (may be malformed on purpose)

    def envelope(self) -> bytes:
        """The simulate input line: the same bytes under the same stream and key."""
        return orjson.dumps({"stream": self.stream, "key": self.key, "value": self.value.decode()})


def _profile(user: str, i: int) -> dict[str, Any]:
    return {
        "type": "user_profile",
        "dt_update": BASE_MS + i,
        "ext_brand_id": BRAND,
        "user_ext_id": user,
        "core_registration_date": BASE_MS - 86_400_000,
        "core_user_language": "EN",
        "core_wallet_currency": CURRENCIES[i % len(CURRENCIES)],
        "user_country": COUNTRIES[i % len(COUNTRIES)],
        "core_account_status": "ACTIVE",
        "vip_tier": f"tier-{i % 4}",
    }


def _deposit(user: str, tx: str, amount: str, at_ms: int) -> dict[str, Any]:
    return {
        "type": "deposit",
        "dt_finalized": at_ms,
        "ext_brand_id": BRAND,
        "user_ext_id": user,
        "transaction_id": tx,
        "amount": amount,
    }


def _bet(user: str, tx: str, amount: str, at_ms: int) -> dict[str, Any]:
    return {
        "type": "bet",
        "bet_date": at_ms,
        "ext_brand_id": BRAND,
        "user_ext_id": user,
        "transaction_id": tx,
        "bet_amount": amount,
        "game_name": "Gates of Olympus",
        "game_id": "g-1",
    }


@dataclass
class Workload:
    """The input in rounds. Round r holds cohort r-1's casino bets (CASINO_TOPIC), then cohort r's
    profiles and deposits (PAY_TOPIC). A round is produced only once everything before it is in the
    store, so each user's deposits precede its bets whatever order the consumer reads the two
    topics in: per-user order is the file order, and simulate sees the same order. (Splitting a
    round into consecutive parts keeps all of this true.)"""

    rounds: list[list[Rec]] = field(default_factory=list)

    @property
    def records(self) -> list[Rec]:
        return [r for round_ in self.rounds for r in round_]

    def split_by_topic(self, index: int) -> None:
        """Round ``index`` becomes two rounds: its casino bets, then its profiles and deposits."""
        round_ = self.rounds[index]
        bets = [r for r in round_ if r.topic == CASINO_TOPIC]
        payments = [r for r in round_ if r.topic == PAY_TOPIC]
        assert round_ == bets + payments
        self.rounds[index : index + 1] = [bets, payments]

    def write_envelopes(self, path: Path) -> Path:
        path.write_bytes(b"".join(r.envelope() + b"\n" for r in self.records))
        return path


def make_workload(cohort_sizes: Sequence[int] = (75, 75, 75, 75), prefix: str = "c") -> Workload:
    """About 18 records per user: a profile, 4-7 deposits, 0-24 casino bets, ~5% exact duplicates
    right after their original, a handful of malformed records. Deterministic."""
    pay: list[list[Rec]] = []
    casino: list[list[Rec]] = []
    n = 0
    for size in cohort_sizes:
        pay_recs: list[Rec] = []
        bet_recs: list[Rec] = []
        for _ in range(size):
            user = f"{prefix}-u{n:04d}"
            pay_recs.append(Rec(PAY_TOPIC, "payments", user, orjson.dumps(_profile(user, n))))
            for d in range(4 + n % 4):
                # Some deposits on Saturday 2023-11-18 ~10:13 Malta time (weekend-happy-hours, and
                # deposit-then-bets qualifies for the bets an hour later); the others days earlier.
                at = BASE_MS + 3 * 86_400_000 + 11 * 3_600_000 + d * 60_000 if n % 3 == 0 else BASE_MS + d * 60_000
                value = orjson.dumps(_deposit(user, f"dep-{user}-{d}", f"{10 + (n * 7 + d * 13) % 45}.50", at))
                rec = Rec(PAY_TOPIC, "payments", user, value)
                pay_recs.append(rec)
                if (n + d) % 19 == 0:
                    pay_recs.append(rec)  # an exact duplicate right after its original
            for b in range(n % 25):
                at = BASE_MS + 3 * 86_400_000 + 12 * 3_600_000 + b * 1000
                rec = Rec(CASINO_TOPIC, "casino", user, orjson.dumps(_bet(user, f"bet-{user}-{b}", "1.00", at)))
                bet_recs.append(rec)
                if (n + b) % 23 == 0:
                    bet_recs.append(rec)
            if n % 37 == 5:
                pay_recs.append(Rec(PAY_TOPIC, "payments", user, b"{not json"))
            if n % 41 == 7:
                broken = _deposit(user, f"broken-{user}", "12.00", BASE_MS)
                del broken["amount"]  # a required field is missing
                pay_recs.append(Rec(PAY_TOPIC, "payments", user, orjson.dumps(broken)))
            if n % 43 == 3:
                bet_recs.append(Rec(CASINO_TOPIC, "casino", user, orjson.dumps({"type": "spin", "user_ext_id": user})))
            n += 1
        pay.append(pay_recs)
        casino.append(bet_recs)
    workload = Workload()
    cohorts = len(cohort_sizes)
    for r in range(cohorts + 1):
        round_: list[Rec] = []
        if r > 0:
            round_ += casino[r - 1]
        if r < cohorts:
            round_ += pay[r]
        workload.rounds.append(round_)
    return workload


# -- comparing outcomes -----------------------------------------------------------------------------


def simulate(rules: Path, envelopes: Path, state: Path, timeout_s: float = 60.0) -> list[bytes]:
    """``smartico-stream simulate``: the action lines, in order (state kept at ``state``)."""
    done = subprocess.run(
        [*CLI, "simulate", "--rules", str(rules), "--events", str(envelopes), "--state", str(state)],
        capture_output=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, f"simulate failed ({done.returncode}): {done.stderr.decode()[-2000:]}"
    return [line for line in done.stdout.splitlines() if line.strip()]


def comparable_state(state: Any) -> dict[str, Any]:
    """A user's state without the store version (it counts commits, which differ by batching)."""
    return {f.name: getattr(state, f.name) for f in fields(state) if f.name != "version"}


def action_ids(lines: Iterable[bytes]) -> list[str]:
    return [orjson.loads(line)["action_id"] for line in lines]


def parse_partition(name: str) -> tuple[str, int]:
    """``"topic[3]"`` (as the service logs partitions) -> ``("topic", 3)``."""
    topic, _, rest = name.rpartition("[")
    return topic, int(rest.rstrip("]"))


# -- the service as a subprocess --------------------------------------------------------------------


def write_config(
    path: Path,
    *,
    bootstrap: str,
    group: str,
    store_url: str,
    sink_path: Path,
    rules: Path = DEMO_RULES,
    store_schema: str | None = None,
    batch_size: int = 50,
    instance_id: str | None = None,
    extra_kafka: dict[str, Any] | None = None,
    outbox: dict[str, Any] | None = None,
) -> Path:
    config: dict[str, Any] = {
        "adapter": "reference",
        "kafka": {
            "config": {"bootstrap.servers": bootstrap, "group.id": group, **FAST_GROUP_CONFIG, **(extra_kafka or {})},
            "topics": {"payments": [PAY_TOPIC], "casino": [CASINO_TOPIC]},
            "batch_size": batch_size,
            "poll_timeout_s": 0.1,
            "statistics_interval_ms": 1000,
            "dead_letter_flush_timeout_s": 10.0,
        },
        "store": store_config(store_url, store_schema),
        "engine": {"rules": str(rules)},
        "sinks": [{"type": "jsonl", "path": str(sink_path), "name": "jsonl"}],
        "outbox": {"poll_interval_s": 0.05, "retry_backoff_s": 0.1, "max_backoff_s": 0.5, **(outbox or {})},
        "metrics": {"port": 0, "host": "127.0.0.1"},
        "logging": {"level": "INFO", "format": "json"},
    }
    if instance_id:
        config["instance_id"] = instance_id
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def store_config(url: str, schema: str | None) -> dict[str, Any]:
    """The ``store`` section. The PostgreSQL schema goes in the store's schema setting (whatever the
    settings model currently calls it), else in the DSN as ``options=-csearch_path=...``."""
    if not schema:
        return {"url": url}
    from smartico_stream.config import StoreSettings

    for key in ("schema", "db_schema"):
        if key in StoreSettings.model_fields:
            return {"url": url, key: schema}
    return {"url": pg_dsn_with_schema(schema, url)}


def service_command(config: Path, failpoints: str | None = None) -> list[str]:
    """The command line of a service process: the real ``smartico-stream run``, or with failpoints
    the test-only entry point (run from the repository root, where ``tests`` is importable)."""
    if not failpoints:
        return [*CLI, "run", "--config", str(config)]
    return [sys.executable, "-m", "tests.support.failpoint_run", "--config", str(config), "--failpoints", failpoints]


class ServiceProcess:
    """``smartico-stream run --config`` in a subprocess; logs go to a file (never a pipe that fills).

    The test's own SMARTICO_STREAM_* variables are not passed on (the config file says it all);
    ``env`` adds variables for the process."""

    def __init__(self, config: Path, log_path: Path, failpoints: str | None = None, name: str = "svc",
                 env: Mapping[str, str] | None = None) -> None:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("SMARTICO_STREAM_")}
        self.name = name
        self.failpoints = failpoints
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()/kill()
        self.proc = subprocess.Popen(
            service_command(config, failpoints), stdout=self._log, stderr=subprocess.STDOUT,
            env={**inherited, **(env or {})}, cwd=REPO,
        )

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} did not exit within {timeout_s}s; log tail:\n{self.log_tail()}"
            ) from None
        finally:
            if self.proc.poll() is not None:
                self._log.close()

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait for the clean exit; returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def freeze(self) -> None:
        """SIGSTOP: the process stops dead (a long GC pause, a stalled VM) without leaving the group."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        self._log.close()


class Processes:
    """Every service process a test started; all killed at teardown (by their own pid)."""

    def __init__(self) -> None:
        self.started: list[ServiceProcess] = []

    def start(self, config: Path, log_path: Path, failpoints: str | None = None, name: str = "svc",
              env: Mapping[str, str] | None = None) -> ServiceProcess:
        """Start a :class:`ServiceProcess` that :meth:`kill_all` will kill."""
        proc = ServiceProcess(config, log_path, failpoints, name, env)
        self.started.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.started:
            proc.kill()


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float, interval_s: float = 0.05,
               alive: Sequence[ServiceProcess] = (), diagnose: Callable[[], str] | None = None) -> None:
    """Bounded wait; fails fast (with the log tail) when a process that must stay alive died."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        for proc in alive:
            if not proc.alive():
                raise AssertionError(
                    f"{proc.name} exited with {proc.returncode} while waiting for {what}; log tail:\n{proc.log_tail()}"
                )
        if time.monotonic() > deadline:
            extra = f"\n{diagnose()}" if diagnose else ""
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}{extra}")
        time.sleep(interval_s)
