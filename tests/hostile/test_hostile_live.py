"""The hostile-input corpus (tests/support/hostile.py) through the LIVE service, on SQLite and PostgreSQL.

For each store and each built-in adapter, one embedded Kafka cluster and two runs of the real
``smartico-stream run`` subprocess:

- *mixed*: ~500 valid records (golden inputs re-addressed to test users) with ~300 hostile ones of
  every class interleaved, for the same users;
- *control*: the valid records alone, in the same order, to fresh topics and a fresh store.

Then, per class where it applies (the test ids name the class, so a failing class is visible):

- zero crashes: the service never exits on its own, and stops cleanly (exit 0) on SIGTERM;
- zero stalls: every partition's offset stored in the state store reaches the partition's end;
- zero wrong acceptances: every record of a DEAD_LETTER class is a dead letter (its source
  coordinates are in the dead-letter topic); a record of an ACCEPT class (contact data in custom
  profile fields) is applied, not dead-lettered. Classes whose old reason was misleading must carry a
  reason that says what is wrong;
- zero PII outside the vault: no planted email or phone, in any plaintext form, in any byte of the
  state store (the SQLite files, -wal and -shm included, or every PostgreSQL table of the schema
  dumped through the store), the service's log output, the /metrics text, the dead-letter headers
  (and the dead-letter values, which must be encrypted) or the JSONL sink output;
- valid neighbours untouched: the actions (byte for byte) and the user states of the valid records'
  users equal the control run's.

Sizes keep each store's runs well under a minute; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from smartico_stream.pii import generate_key_ring, key_ring_to_json
from smartico_stream.store.postgres import PostgresStore
from smartico_stream.store.sqlite import SqliteStore
from tests.support import crash, hostile
from tests.support.common import DEMO_RULES, REPO, free_port
from tests.support.hostile import CLASS_NAMES, Corpus, Expect, Record
from tests.support.kafka import BROKERS_ENV, Broker, EmbeddedCluster, TestProducer
from tests.support.postgres import PG_DSN, drop_schema, require_postgres, unique_schema
from tests.support.service import http_get

pytestmark = pytest.mark.kafka

# Another corpus: SMARTICO_TEST_HOSTILE_SEED=N (the default is the one CI runs).
SEED = int(os.environ.get("SMARTICO_TEST_HOSTILE_SEED", "15"))
SCENARIOS = [("sqlite", "reference"), ("sqlite", "betwave"), ("postgresql", "reference"), ("postgresql", "betwave")]
HANDLED_TIMEOUT_S = 45.0
SINK = "jsonl"
Coordinates = tuple[str, int, int]


# -- reading the store ------------------------------------------------------------------------------------


class StoreReader:
    """The run's store opened in the test process, on an event loop of its own."""

    def __init__(self, store: SqliteStore | PostgresStore) -> None:
        self.store = store
        self._loop = asyncio.new_event_loop()
        self.run(store.open())

    def run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(asyncio.wait_for(coro, 30))

    def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async def go() -> list[tuple[Any, ...]]:
            async with self.store.connection() as conn:
                return list(await conn.fetch(sql, *args))

        return self.run(go())

    def offsets(self) -> dict[tuple[str, int], int]:
        return {(t, int(p)): int(o) for t, p, o in self.fetch("SELECT topic, part, next_offset FROM source_offsets")}

    def undelivered(self) -> int:
        return int(self.fetch(
            "SELECT COALESCE(SUM(CASE WHEN c.last_seq IS NULL OR o.seq > c.last_seq THEN o.actions "
            "WHEN o.seq = c.last_seq THEN o.actions - c.next_index ELSE 0 END), 0) FROM outbox o "
            "LEFT JOIN sink_cursors c ON c.sink = ? AND c.topic = o.topic AND c.part = o.part",
            SINK,
        )[0][0])

    def dump_tables(self, schema: str) -> dict[str, bytes]:
        """Every row of every table of the PostgreSQL ``schema``, as text (what a leak would show)."""
        tables = [row[0] for row in self.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ?", schema)]
        assert tables, f"no tables in schema {schema}"
        return {f"pg:{schema}.{t}": repr(self.fetch(f'SELECT * FROM "{schema}"."{t}"')).encode() for t in tables}

    def close(self) -> None:
        try:
            self.run(self.store.close())
        finally:
            self._loop.close()


# -- one live run ---------------------------------------------------------------------------------------------


@dataclass
class DeadLetter:
    coordinates: Coordinates
    headers: dict[str, bytes]
    value: bytes

    @property
    def reason(self) -> str:
        return self.headers.get("x-smartico-error-message", b"").decode(errors="replace")

    @property
    def error_class(self) -> str:
        return self.headers.get("x-smartico-error-class", b"").decode(errors="replace")


@dataclass
class Run:
    """What one service run left behind."""

    name: str
    records: tuple[Record, ...]
    coordinates: list[Coordinates]  # of records[i]
    ends: dict[tuple[str, int], int]
    stored: dict[tuple[str, int], int] = field(default_factory=dict)
    exits: list[str] = field(default_factory=list)  # every exit that was not our SIGTERM's clean one
    dead_letters: dict[Coordinates, DeadLetter] = field(default_factory=dict)
    surplus_dead_letters: int = 0
    actions: list[Any] = field(default_factory=list)
    users: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)  # everything outside the vault, by where

    def where(self, record: Record) -> Coordinates:
        return self.coordinates[self.records.index(record)]

    def stalled(self) -> dict[tuple[str, int], tuple[int, int]]:
        return {tp: (self.stored.get(tp, 0), end) for tp, end in self.ends.items() if self.stored.get(tp, 0) < end}


def _keygen(path: Path) -> Path:
    """A fresh PII key ring, private to the owner (the service refuses a readable one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_ring_to_json(generate_key_ring("hostile")))
    return path


def _config(path: Path, *, adapter: str, bootstrap: str, topics: dict[str, str], dead_letter_topic: str,
            store: dict[str, Any], keys: Path, pii_db: Path, sink: Path, metrics_port: int) -> Path:
    config: dict[str, Any] = {
        "adapter": adapter,
        "kafka": {
            "config": {"bootstrap.servers": bootstrap, "group.id": f"hostile-{uuid.uuid4().hex[:8]}",
                       **crash.FAST_GROUP_CONFIG},
            "topics": {stream: [topic] for stream, topic in topics.items()},
            "dead_letter_topic": dead_letter_topic,
            "batch_size": 100,
            "poll_timeout_s": 0.1,
            "dead_letter_flush_timeout_s": 10.0,
        },
        "store": store,
        "engine": {"rules": str(DEMO_RULES)},
        "sinks": [{"type": "jsonl", "path": str(sink), "name": SINK}],
        "outbox": {"poll_interval_s": 0.05, "retry_backoff_s": 0.1, "max_backoff_s": 0.5},
        "metrics": {"port": metrics_port, "host": "127.0.0.1"},
        "logging": {"level": "INFO", "format": "json"},
        "pii": {"keys_file": str(keys), "store_url": f"sqlite:///{pii_db}",
                "custom_fields": [hostile.LISTED_CUSTOM_FIELD]},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Live:
    """One embedded cluster, the key ring, and the service runs of one (store, adapter) scenario."""

    def __init__(self, root: Path, store_kind: str, adapter: str) -> None:
        self.root = root
        self.store_kind = store_kind
        self.adapter = adapter
        self.cluster = EmbeddedCluster()
        self.producer = TestProducer(self.cluster)
        self.processes = crash.Processes()
        self.keys = _keygen(root / "pii-keys.json")
        self.schemas: list[str] = []

    def close(self) -> None:
        self.processes.kill_all()
        self.producer.close()
        self.cluster.close()
        for schema in self.schemas:
            drop_schema(schema, PG_DSN)

    def run(self, name: str, records: tuple[Record, ...]) -> Run:
        directory = self.root / name
        directory.mkdir()
        topics = {stream: f"{name}-{stream}" for stream in sorted({r.stream for r in records})}
        dead_letter_topic = f"{name}-dead-letters"
        self.producer.ensure_topics(*topics.values(), dead_letter_topic)
        first = len(self.producer.sent)
        for record in records:
            self.producer.send(topics[record.stream], record.key, record.value)
        self.producer.flush(60)
        sent = self.producer.sent[first:]
        coordinates = [(p.topic, p.partition, p.offset) for p in sent]
        ends: dict[tuple[str, int], int] = {}
        for topic, part, offset in coordinates:
            ends[(topic, part)] = max(ends.get((topic, part), 0), offset + 1)
        run = Run(name, records, coordinates, ends)

        if self.store_kind == "sqlite":
            db = directory / "state.db"
            store: dict[str, Any] = {"url": f"sqlite:///{db}"}
            reader = StoreReader(SqliteStore(db))
        else:
            schema = unique_schema("hostile")
            self.schemas.append(schema)
            store = {"url": PG_DSN, "db_schema": schema}
            reader = StoreReader(PostgresStore(PG_DSN, schema=schema))
        port = free_port()
        sink = directory / "actions.jsonl"
        config = _config(directory / "config.yaml", adapter=self.adapter, bootstrap=self.cluster.bootstrap_servers,
                         topics=topics, dead_letter_topic=dead_letter_topic, store=store, keys=self.keys,
                         pii_db=directory / "pii.db", sink=sink, metrics_port=port)
        log = directory / "service.log"
        proc = self.processes.start(config, log, name=f"{self.store_kind}-{self.adapter}-{name}")
        metrics = b""
        try:
            deadline = time.monotonic() + HANDLED_TIMEOUT_S
            while time.monotonic() < deadline and proc.alive():
                run.stored = reader.offsets()
                if not run.stalled():
                    break
                time.sleep(0.1)
            run.stored = reader.offsets()
            if proc.alive() and not run.stalled():
                deadline = time.monotonic() + 15
                while proc.alive() and reader.undelivered() and time.monotonic() < deadline:
                    time.sleep(0.05)
            if proc.alive():
                status, text = http_get(port, "/metrics")
                metrics = text.encode() if status == 200 else b""
                code = proc.terminate(30)
                if code != 0:
                    run.exits.append(f"exit {code} after SIGTERM")
            else:
                run.exits.append(f"exited on its own with {proc.returncode}")
            run.actions = reader.run(reader.store.all_actions())
            run.users = {(u.brand, u.user): crash.comparable_state(u) for u in reader.run(reader.store.all_users())}
            run.stored = reader.offsets()
            if self.store_kind == "postgresql":
                run.blobs.update(reader.dump_tables(store["db_schema"]))
        finally:
            proc.kill()
            reader.close()
        if self.store_kind == "sqlite":
            for path in sorted(directory.glob("state.db*")):
                run.blobs[path.name] = path.read_bytes()
        run.blobs["service log"] = log.read_bytes()
        run.blobs["/metrics"] = metrics
        run.blobs["JSONL sink"] = sink.read_bytes() if sink.exists() else b""

        expected = sum(1 for r in records if r.expect is Expect.DEAD_LETTER)
        by_coordinates = set(coordinates)
        headers_blob = []
        for message in Broker(self.cluster).read_all(dead_letter_topic, expected, timeout_s=10):
            headers = {k: (v or b"") for k, v in (message.headers() or [])}
            headers_blob.append(repr(sorted(headers.items())).encode())
            try:
                where = (headers["x-smartico-source-topic"].decode(), int(headers["x-smartico-source-partition"]),
                         int(headers["x-smartico-source-offset"]))
            except (KeyError, ValueError):
                run.surplus_dead_letters += 1
                continue
            if where in by_coordinates:
                run.dead_letters[where] = DeadLetter(where, headers, message.value() or b"")
            else:
                run.surplus_dead_letters += 1
        run.blobs["dead-letter headers"] = b"\n".join(headers_blob)
        run.blobs["dead-letter values"] = b"\n".join(d.value for d in run.dead_letters.values())
        return run


@dataclass
class Scenario:
    store: str
    adapter: str
    corpus: Corpus
    mixed: Run
    control: Run


@pytest.fixture(scope="module", params=SCENARIOS, ids=[f"{s}-{a}" for s, a in SCENARIOS])
def scenario(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    store_kind, adapter = request.param
    if os.environ.get(BROKERS_ENV, "").strip():
        pytest.skip(f"{BROKERS_ENV} is set: this test needs the embedded cluster (fixed topic names)")
    if store_kind == "postgresql":
        require_postgres()
    corpus = hostile.make_corpus(adapter, seed=SEED)
    live = Live(tmp_path_factory.mktemp(f"hostile-{store_kind}-{adapter}"), store_kind, adapter)
    try:
        started = time.monotonic()
        mixed = live.run("mixed", corpus.records)
        control = live.run("control", corpus.valid)
        print(_summary(corpus, mixed))  # noqa: T201 - shown with -s: what happened to each class
        took = time.monotonic() - started
        print(f"hostile {store_kind}/{adapter}: {len(corpus.records)} records, both runs took {took:.1f}s")  # noqa: T201
        yield Scenario(store_kind, adapter, corpus, mixed, control)
    finally:
        live.close()


def _summary(corpus: Corpus, run: Run) -> str:
    """One line per class: how many were dead-lettered, and under which error classes."""
    lines = [f"{corpus.adapter}: exits {run.exits or 'none'}, stalled {run.stalled() or 'none'}"]
    for name in ("valid", *CLASS_NAMES):
        records = [r for r in corpus.records if r.label == name]
        dead = [run.dead_letters[run.where(r)] for r in records if run.where(r) in run.dead_letters]
        kinds = Counter(d.error_class for d in dead)
        lines.append(f"  {name:<32} {len(dead):>3}/{len(records):<3} dead-lettered {dict(kinds)}")
    return "\n".join(lines)


def _show(record: Record) -> str:
    return f"{record.detail} (from {record.template}, user {record.user[:40]})"


# -- the checks ---------------------------------------------------------------------------------------------------


def test_the_service_never_exits(scenario: Scenario) -> None:
    s = scenario
    assert not s.control.exits, f"control run: {s.control.exits}"
    assert not s.mixed.exits, f"with hostile records: {s.mixed.exits}"


def test_no_partition_stalls(scenario: Scenario) -> None:
    s = scenario
    assert not s.control.stalled(), f"control run: (stored, end) {s.control.stalled()}"
    stalled = s.mixed.stalled()
    assert not stalled, f"with hostile records, partitions short of their end (stored, end): {stalled}"


def _applied_exactly(run: Run, record: Record) -> bool:
    """An EXACT_OR_DEAD_LETTER record that was applied: its user id, as written, is a user of the store."""
    return any(user == record.literal for _, user in run.users)


@pytest.mark.parametrize("label", CLASS_NAMES)
def test_no_wrong_acceptance(scenario: Scenario, label: str) -> None:
    s, run = scenario, scenario.mixed
    records = s.corpus.of_class(label)
    assert records
    dead = {r for r in records if run.where(r) in run.dead_letters}
    missed = [r for r in records if r.expect is Expect.DEAD_LETTER and r not in dead]
    refused = [r for r in records if r.expect is Expect.ACCEPT and r in dead]
    absent = [r for r in records if r.expect is Expect.ACCEPT and r not in dead
              and not any(user == r.user for _, user in run.users)]
    inexact = [r for r in records if r.expect is Expect.EXACT_OR_DEAD_LETTER and r not in dead
               and not _applied_exactly(run, r)]
    problems = []
    if missed:
        problems.append(f"{len(missed)} of {len(records)} not dead-lettered (applied, or never handled), e.g. "
                        f"{[_show(r) for r in missed[:3]]}")
    if refused:
        problems.append(f"{len(refused)} of {len(records)} dead-lettered but must be accepted, e.g. "
                        + "; ".join(f"{_show(r)}: {run.dead_letters[run.where(r)].reason[:200]}" for r in refused[:3]))
    if absent:
        problems.append(f"{len(absent)} of {len(records)} neither dead-lettered nor applied (its user is not stored)")
    if inexact:
        problems.append(f"{len(inexact)} of {len(records)} neither dead-lettered nor applied with the id as written, "
                        f"e.g. {[_show(r) for r in inexact[:3]]}")
    assert not problems, f"{label}: " + "\n".join(problems)


REASONED = [cls.name for cls in hostile.CLASSES if cls.reason]


@pytest.mark.parametrize("label", REASONED)
def test_dead_letter_reasons_say_what_is_wrong(scenario: Scenario, label: str) -> None:
    s = scenario
    pattern = re.compile(hostile.BY_NAME[label].reason or "")
    letters = [(r, s.mixed.dead_letters[s.mixed.where(r)]) for r in s.corpus.of_class(label)
               if s.mixed.where(r) in s.mixed.dead_letters]
    if not letters and hostile.BY_NAME[label].expect is Expect.EXACT_OR_DEAD_LETTER:
        # Every one was applied instead, which is right only with the id as written.
        assert all(_applied_exactly(s.mixed, r) for r in s.corpus.of_class(label))
        return
    assert letters, f"{label}: no dead letters to read (see test_no_wrong_acceptance)"
    wrong = [(r, d) for r, d in letters if not pattern.search(f"{d.error_class}: {d.reason}")]
    assert not wrong, (f"{label}: {len(wrong)} of {len(letters)} reasons do not match {pattern.pattern!r}, e.g.\n"
                       + "\n".join(f"  {_show(r)}: {d.error_class}: {d.reason[:200]}" for r, d in wrong[:4]))


# Integer ids beyond 2^64 carry no PII: such a record may rightly be applied.
PLANTED = [cls.name for cls in hostile.CLASSES if cls.expect is not Expect.EXACT_OR_DEAD_LETTER]


@pytest.mark.parametrize("label", PLANTED)
def test_no_planted_pii_outside_the_vault(scenario: Scenario, label: str) -> None:
    s = scenario
    planted = [value for r in s.corpus.of_class(label) for value in r.planted]
    assert planted, f"{label}: the generator planted nothing"
    hits = hostile.find_needles(s.mixed.blobs, planted)
    assert not hits, f"{label}: planted PII in plaintext outside the vault:\n" + "\n".join(hits)


def test_the_pii_scan_sees_what_it_looks_for(scenario: Scenario) -> None:
    # The scans pass by finding nothing: show that they find a value known to be in these very blobs.
    s = scenario
    assert {"service log", "/metrics", "JSONL sink", "dead-letter headers"} <= set(s.mixed.blobs)
    assert s.mixed.blobs["service log"], "the service logged nothing"
    if not s.mixed.exits:
        assert s.mixed.blobs["/metrics"].startswith(b"# HELP")
        assert s.mixed.blobs["JSONL sink"], "no action was delivered"
    store_blobs = [name for name in s.mixed.blobs if name.startswith(("state.db", "pg:"))]
    assert store_blobs, "the store was not read"
    store = {"store": b"".join(s.mixed.blobs[n] for n in store_blobs)}
    assert s.mixed.users, "no user was stored"
    user = next(iter(s.mixed.users))[1]
    assert hostile.find_needles(store, [user]), f"the scan does not find the stored user {user}"
    assert hostile.find_needles(store, [user + "@nowhere.example"]) == []


def test_dead_letter_values_are_encrypted(scenario: Scenario) -> None:
    s = scenario
    letters = list(s.mixed.dead_letters.values())
    assert letters
    plain = [d for d in letters if not d.headers.get("x-smartico-payload-protection", b"").startswith(b"aes-256-gcm")]
    assert not plain, f"{len(plain)} dead letter(s) without payload protection, e.g. {plain[0].headers}"


def test_valid_records_are_never_dead_lettered(scenario: Scenario) -> None:
    s = scenario
    for run in (s.control, s.mixed):
        rejected = [r for r in run.records if not r.hostile and run.where(r) in run.dead_letters]
        assert not rejected, (f"{run.name}: {len(rejected)} valid record(s) dead-lettered, e.g. "
                              + "; ".join(f"{r.template}: {run.dead_letters[run.where(r)].reason[:200]}"
                                          for r in rejected[:3]))
    assert s.control.surplus_dead_letters == 0 and s.mixed.surplus_dead_letters == 0


def test_valid_neighbours_actions_and_states_equal_the_run_without_hostile_records(scenario: Scenario) -> None:
    s = scenario
    users = {user for _, user in s.control.users}
    assert len(users) > 20 and len(s.control.actions) > 50, (len(users), len(s.control.actions))
    control = Counter(a.to_json() for a in s.control.actions)
    mixed = Counter(a.to_json() for a in s.mixed.actions if a.user in users)
    missing, extra = control - mixed, mixed - control
    touched = {orjson.loads(line)["user"] for line in [*missing, *extra]}
    suspects = Counter(r.label for r in s.corpus.hostile
                       if r.user in touched and s.mixed.where(r) not in s.mixed.dead_letters)
    assert not missing and not extra, (
        f"valid neighbours' actions differ: {sum(missing.values())} missing (e.g. {list(missing)[:2]}), "
        f"{sum(extra.values())} extra (e.g. {list(extra)[:2]}); hostile records of those users not "
        f"dead-lettered, by class: {dict(suspects)}"
    )
    differing = [key for key, state in s.control.users.items() if s.mixed.users.get(key) != state]
    # The hostile records addressed to those users that were not dead-lettered: the likely cause.
    suspects = Counter(r.label for r in s.corpus.hostile
                       if any(r.user == user for _, user in differing) and s.mixed.where(r) not in s.mixed.dead_letters)
    assert not differing, (
        f"{len(differing)} valid neighbour(s) end in another state; hostile records of theirs not dead-lettered, "
        f"by class: {dict(suspects)}; first {differing[0]}:\n"
        f"with hostile records: {s.mixed.users.get(differing[0])}\n"
        f"without:              {s.control.users[differing[0]]}"
    )


def test_the_corpus_is_seeded_and_labelled() -> None:
    first, second = hostile.make_corpus("reference"), hostile.make_corpus("reference")
    assert first == second, "the same seed gives the same corpus"
    assert hostile.make_corpus("reference", seed=16) != first
    for adapter in ("reference", "betwave"):
        corpus = hostile.make_corpus(adapter)
        assert len(corpus.valid) == 500 and 250 <= len(corpus.hostile) <= 350, len(corpus.hostile)
        assert {r.label for r in corpus.hostile} == set(CLASS_NAMES)
        planted = [value for r in corpus.hostile for value in r.planted]
        assert len(planted) == len(set(planted)), "every planted value is unique"
        # Every record that has room for it (not "", "{}", "42", ...) carries PII of its own.
        carriers = [r for r in corpus.hostile if r.expect is not Expect.EXACT_OR_DEAD_LETTER and len(r.value) > 5]
        assert all(r.planted for r in carriers), [r.detail for r in carriers if not r.planted][:5]
        assert all(r.planted for r in corpus.of_class("pii_in_custom_profile_field"))
    assert REPO.joinpath("adapters", "betwave", "golden").is_dir()
