"""The replica source end to end, on the real PostgreSQL and MariaDB: the service polls the
operator's views into the pipeline and the store, exactly once.

Each test runs once per server (``operator_db``). Dedup is off in these settings, so a row handled
twice would show as a second event or a doubled deposit count."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from smartico_stream.service import Service
from smartico_stream.sources.replica.cursor import decode_position
from smartico_stream.store.sqlite import SqliteStore
from tests.replica.conftest import OperatorDb, ago, deposit
from tests.support.service import RecordingEngine, ServiceRun

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


def deposits_view(db: OperatorDb, name: str = "deposits", **extra: Any) -> dict[str, Any]:
    return {"name": db.qualified(name), "stream": "payments", "cursor": "dt_finalized", "id": "transaction_id",
            "defaults": {"type": "deposit"}, **extra}


async def stored_cursor(store_path: Path, view: str) -> Any:
    store = SqliteStore(store_path)
    await store.open()
    try:
        text = (await store.source_cursors([(view, 0)])).get((view, 0))
    finally:
        await store.close()
    return decode_position(text) if text is not None else None


async def run_until_applied(service: Service, engine: RecordingEngine, count: int, timeout_s: float = 30) -> None:
    running = ServiceRun(service)
    try:
        await running.wait_until(lambda: len(engine.applied) >= count, f"{count} events", timeout_s)
        # A little longer: what would come twice or too many has time to show.
        await asyncio.sleep(0.3)
    finally:
        await running.stop()


async def test_ties_on_one_timestamp_across_page_boundaries(operator_db, replica_settings, tmp_path):
    """Seven rows share one dt_finalized and pages hold three: every row once, in (time, id) order
    (the spec's ``dt_finalized > previous_max`` would lose the rest of the tie after each page)."""
    db = operator_db
    await db.deposits_table()
    now = await db.now_utc()
    same = ago(now, 60)
    rows = [deposit(ago(now, 120), "t0"), *[deposit(same, f"t{i}") for i in range(1, 8)], deposit(ago(now, 30), "t8")]
    await db.insert("deposits", rows)
    settings = replica_settings(db, [deposits_view(db)], page_size=3)
    engine = RecordingEngine()
    await run_until_applied(Service(settings, engine=engine), engine, 9)
    assert engine.event_ids() == [f"t{i}" for i in range(9)]
    position = await stored_cursor(tmp_path / "state.db", db.qualified("deposits"))
    assert position.values[1] == "t8"


async def test_a_late_commit_with_an_earlier_time_is_not_skipped(operator_db, replica_settings):
    """A transaction stamps its row, a later row commits first; the early row becomes visible only
    after. Reading only rows older than now() - visibility_delay_s still finds it."""
    db = operator_db
    await db.deposits_table()
    now = await db.now_utc()
    await db.insert("deposits", [deposit(ago(now, 60), "old")])
    late = await db.open_transaction()
    await db.insert("deposits", [deposit(now, "late")], conn=late)  # stamped now, not committed yet
    settings = replica_settings(db, [deposits_view(db)], visibility_delay_s=1.5)
    engine = RecordingEngine()
    running = ServiceRun(Service(settings, engine=engine))
    try:
        await running.wait_until(lambda: len(engine.applied) >= 1, "the old row")
        later = await db.now_utc()
        await db.insert("deposits", [deposit(later + timedelta(milliseconds=5), "later")])  # commits first
        await asyncio.sleep(0.3)
        await db.commit(late)
        await running.wait_until(lambda: len(engine.applied) >= 3, "the late and the later rows")
        await asyncio.sleep(0.3)
    finally:
        await running.stop()
    assert engine.event_ids() == ["old", "late", "later"]


async def test_a_view_by_increasing_id(operator_db, replica_settings):
    db = operator_db
    auto = "BIGSERIAL" if db.kind == "postgresql" else "BIGINT AUTO_INCREMENT"
    await db.execute(
        f'CREATE TABLE "{{schema}}"."casino" (id {auto} PRIMARY KEY, ext_brand_id varchar(8), user_ext_id varchar(8), '
        "type varchar(8), bet_id varchar(16), bet_date {ts}, bet_amount decimal(10,2), game_name varchar(32), "
        "game_id varchar(16))"
    )
    now = await db.now_utc()
    rows = [{"ext_brand_id": "b1", "user_ext_id": f"u{i % 3}", "type": "bet", "bet_id": f"bet{i}",
             "bet_date": ago(now, 100 - i), "bet_amount": Decimal("1.50"), "game_name": "Slots", "game_id": "g1"}
            for i in range(10)]
    await db.insert("casino", rows[:6])
    view = {"name": db.qualified("casino"), "stream": "casino", "cursor": "id", "kind": "id"}
    settings = replica_settings(db, [view], page_size=4)
    engine = RecordingEngine()
    running = ServiceRun(Service(settings, engine=engine))
    try:
        await running.wait_until(lambda: len(engine.applied) >= 6, "the first six bets")
        await db.insert("casino", rows[6:])
        await running.wait_until(lambda: len(engine.applied) >= 10, "all ten bets")
        await asyncio.sleep(0.3)
    finally:
        await running.stop()
    ids = engine.event_ids()
    assert sorted(ids, key=lambda i: int(i[3:])) == [f"bet{i}" for i in range(10)] and len(set(ids)) == 10
    for user in ("u0", "u1", "u2"):  # each user's bets in id order (the order across users is free)
        mine = [e.event_id for e in engine.events if e.user_id == user]
        assert mine == sorted(mine, key=lambda i: int(i[3:]))
    assert {event.bet_amount for event in engine.events} == {Decimal("1.50")}


async def test_an_id_view_does_not_skip_an_id_that_commits_after_a_higher_one(operator_db, replica_settings):
    """Id 4 is taken by a transaction that commits after id 5 became visible: read only up to the
    id horizon (the highest id of at least visibility_delay_s ago), so id 4 is read, before id 5;
    an id rolled back (a gap for ever) does not stop the ids after it."""
    db = operator_db
    auto = "BIGSERIAL" if db.kind == "postgresql" else "BIGINT AUTO_INCREMENT"
    await db.execute(
        f'CREATE TABLE "{{schema}}"."casino" (id {auto} PRIMARY KEY, ext_brand_id varchar(8), user_ext_id varchar(8), '
        "type varchar(8), bet_id varchar(16), bet_date {ts}, bet_amount decimal(10,2), game_name varchar(32), "
        "game_id varchar(16))"
    )
    now = await db.now_utc()

    def bet(i: int) -> dict[str, Any]:
        return {"ext_brand_id": "b1", "user_ext_id": "u1", "type": "bet", "bet_id": f"bet{i}",
                "bet_date": ago(now, 100 - i), "bet_amount": Decimal("1.50"), "game_name": "Slots", "game_id": "g1"}

    await db.insert("casino", [bet(1), bet(2), bet(3)])
    view = {"name": db.qualified("casino"), "stream": "casino", "cursor": "id", "kind": "id"}
    settings = replica_settings(db, [view], visibility_delay_s=1.5)
    engine = RecordingEngine()
    running = ServiceRun(Service(settings, engine=engine))
    try:
        await running.wait_until(lambda: len(engine.applied) >= 3, "the first three bets")
        late = await db.open_transaction()
        await db.insert("casino", [bet(4)], conn=late)  # takes id 4, not committed yet
        await db.insert("casino", [bet(5)])  # id 5, visible at once
        await asyncio.sleep(0.6)
        assert len(engine.applied) == 3, "id 5 was read while id 4 could still commit"
        await db.commit(late)
        await running.wait_until(lambda: len(engine.applied) >= 5, "bets 4 and 5")
        gone = await db.open_transaction()
        await db.insert("casino", [bet(6)], conn=gone)  # takes id 6 ...
        await db.rollback(gone)  # ... which never appears
        await db.insert("casino", [bet(7)])
        await running.wait_until(lambda: len(engine.applied) >= 6, "bet 7 past the gap")
        await asyncio.sleep(0.3)
    finally:
        await running.stop()
    assert engine.event_ids() == ["bet1", "bet2", "bet3", "bet4", "bet5", "bet7"]


async def test_a_bad_row_is_a_dead_letter_and_the_cursor_moves_past_it(operator_db, replica_settings, tmp_path):
    db = operator_db
    await db.deposits_table()
    now = await db.now_utc()
    rows = [deposit(ago(now, 50 - i), f"t{i}") for i in range(5)]
    rows[2]["deposit_amount"] = Decimal("-5.00")  # the canonical Payment refuses a negative amount
    await db.insert("deposits", rows)
    settings = replica_settings(db, [deposits_view(db)])
    engine = RecordingEngine()
    service = Service(settings, engine=engine)
    running = ServiceRun(service)
    try:
        await running.wait_until(lambda: len(engine.applied) >= 4 and service.stats.dead_lettered == 1,
                                 "four deposits and one dead letter")
    finally:
        await running.stop()
    assert engine.event_ids() == ["t0", "t1", "t3", "t4"]
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    try:
        letters = await store.dead_letters()
        cursor = decode_position((await store.source_cursors([(db.qualified("deposits"), 0)]))[
            (db.qualified("deposits"), 0)])
    finally:
        await store.close()
    assert len(letters) == 1
    letter = letters[0]
    assert letter.partition == (db.qualified("deposits"), 0)
    assert letter.stage == "adapt" and "amount" in letter.message
    assert decode_position(letter.coordinates).values[1] == "t2"  # the view's coordinates: time and id
    assert letter.protection == "redacted"  # no key ring configured: the payload is not kept
    assert cursor.values[1] == "t4"


async def test_restart_resumes_with_no_loss_and_no_double(operator_db, replica_settings, tmp_path):
    """Stopped and started over the same store, twice, with rows arriving in between: every
    deposit is in the users' state exactly once (the cursor was stored with the state)."""
    db = operator_db
    await db.deposits_table()
    now = await db.now_utc()
    rows = [deposit(ago(now, 300 - i), f"t{i:03}", user=f"u{i % 7}") for i in range(120)]
    await db.insert("deposits", rows[:80])
    settings = replica_settings(db, [deposits_view(db)], page_size=25)

    async def run_until_users_have(total: int) -> None:
        service = Service(settings)
        running = ServiceRun(service)
        try:
            await running.wait_until(lambda: service.stats.processed >= total, f"{total} deposits", 30)
        finally:
            await running.stop()

    await run_until_users_have(80)
    await db.insert("deposits", rows[80:])
    await run_until_users_have(40)
    # A third start finds nothing new.
    service = Service(settings)
    running = ServiceRun(service)
    await asyncio.sleep(1.0)
    await running.stop()
    assert service.stats.consumed == 0
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    try:
        users = {u.user: u for u in await store.all_users()}
    finally:
        await store.close()
    expected = Counter(f"u{i % 7}" for i in range(120))
    assert {user: state.deposit_count for user, state in users.items()} == dict(expected)
    assert users["u0"].deposit_total == {"": Decimal("10.00") * expected["u0"]} or \
        sum(users["u0"].deposit_total.values()) == Decimal("10.00") * expected["u0"]


async def test_naive_times_are_read_in_db_timezone(operator_db, replica_settings):
    """The operator's columns hold local Malta time without a zone; with ``db_timezone`` the events
    carry the true instants, and the visibility bound is measured in the same zone."""
    db = operator_db
    await db.deposits_table()
    now_utc = (await db.now_utc()).replace(tzinfo=UTC)
    instants = [now_utc - timedelta(seconds=40 - i) for i in range(3)]
    malta = [moment.astimezone(_zone("Europe/Malta")).replace(tzinfo=None) for moment in instants]
    await db.insert("deposits", [deposit(local, f"t{i}") for i, local in enumerate(malta)])
    settings = replica_settings(db, [deposits_view(db)], db_timezone="Europe/Malta", visibility_delay_s=5)
    engine = RecordingEngine()
    await run_until_applied(Service(settings, engine=engine), engine, 3)
    assert [event.event_time for event in engine.events] == [m.replace(microsecond=m.microsecond // 1000 * 1000)
                                                              for m in instants]


async def test_naive_times_default_to_utc(operator_db, replica_settings):
    db = operator_db
    await db.deposits_table()
    now = await db.now_utc()
    await db.insert("deposits", [deposit(ago(now, 10), "t0")])
    settings = replica_settings(db, [deposits_view(db)])
    engine = RecordingEngine()
    await run_until_applied(Service(settings, engine=engine), engine, 1)
    assert engine.events[0].event_time == ago(now, 10).replace(tzinfo=UTC)


async def test_two_instances_one_polls_and_the_other_takes_over(operator_db, replica_settings, tmp_path):
    db = operator_db
    await db.deposits_table()
    now = await db.now_utc()
    rows = [deposit(ago(now, 200 - i), f"t{i:03}") for i in range(60)]
    await db.insert("deposits", rows[:30])
    timeline: list[Any] = []
    first_engine, second_engine = RecordingEngine("a", timeline), RecordingEngine("b", timeline)
    first = Service(replica_settings(db, [deposits_view(db)], instance_id="a", lease_timeout_s=1.0, page_size=10),
                    engine=first_engine)
    second = Service(replica_settings(db, [deposits_view(db)], instance_id="b", lease_timeout_s=1.0, page_size=10),
                     engine=second_engine)
    running_first = ServiceRun(first)
    await running_first.wait_until(lambda: len(timeline) >= 30, "the first instance's rows")
    running_second = ServiceRun(second)
    try:
        await asyncio.sleep(0.5)
        assert not second_engine.applied  # standing by while the first renews its lease
        assert first.transport.leading and not second.transport.leading  # type: ignore[attr-defined]
        await running_first.stop()
        await db.insert("deposits", rows[30:])
        await running_second.wait_until(lambda: len(timeline) >= 60, "the second instance's rows")
        await asyncio.sleep(0.3)
    finally:
        await running_second.stop()
        if not running_first.task.done():
            await running_first.stop()
    assert [entry.event.event_id for entry in timeline] == [f"t{i:03}" for i in range(60)]
    assert {entry.instance for entry in timeline[:30]} == {"a"}
    assert {entry.instance for entry in timeline[30:]} == {"b"}


async def test_a_clean_shutdown_releases_the_lease_so_a_standby_takes_over_at_once(operator_db, replica_settings):
    """The lease timeout is 30 s, yet the standby polls within a few seconds of the first instance's
    clean stop: the stop released the views (a crash would leave them to time out)."""
    db = operator_db
    await db.deposits_table()
    now = await db.now_utc()
    rows = [deposit(ago(now, 100 - i), f"t{i:02}") for i in range(20)]
    await db.insert("deposits", rows[:10])
    timeline: list[Any] = []
    first = Service(replica_settings(db, [deposits_view(db)], instance_id="a", lease_timeout_s=30.0),
                    engine=RecordingEngine("a", timeline))
    second = Service(replica_settings(db, [deposits_view(db)], instance_id="b", lease_timeout_s=30.0),
                     engine=RecordingEngine("b", timeline))
    running_first = ServiceRun(first)
    await running_first.wait_until(lambda: len(timeline) >= 10, "the first instance's rows")
    running_second = ServiceRun(second)
    try:
        await asyncio.sleep(1.5)
        assert not second.transport.leading  # type: ignore[attr-defined]
        await running_first.stop()
        stopped = asyncio.get_running_loop().time()
        await db.insert("deposits", rows[10:])
        await running_second.wait_until(lambda: len(timeline) >= 20, "the standby's rows", timeout_s=10)
        took_over_in = asyncio.get_running_loop().time() - stopped
        await asyncio.sleep(0.3)
    finally:
        await running_second.stop()
        if not running_first.task.done():
            await running_first.stop()
    assert took_over_in < 5, f"the standby waited {took_over_in:.1f} s: the lease was not released"
    assert [entry.event.event_id for entry in timeline] == [f"t{i:02}" for i in range(20)]
    assert {entry.instance for entry in timeline[10:]} == {"b"}


def _zone(name: str) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


async def _kill_reader(db: OperatorDb, reader_database: str) -> int:
    """End the service's reading session from the server side (as a restart or a network cut does)."""
    if db.kind == "postgresql":
        import asyncpg

        conn = await asyncpg.connect(db.dsn)
        try:
            return len(await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'smartico-stream-replica' AND pid <> pg_backend_pid()"))
        finally:
            await conn.close()
    import asyncmy

    conn = await asyncmy.connect(host="127.0.0.1", port=3306, user="root", database="test", autocommit=True)
    try:
        async with conn.cursor() as cursor:
            await cursor.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s", (reader_database,))
            ids = [row[0] for row in await cursor.fetchall()]
            for session in ids:
                await cursor.execute(f"KILL {int(session)}")
        return len(ids)
    finally:
        await conn.ensure_closed()


async def test_a_lost_connection_is_retried_and_the_cursor_does_not_move(operator_db, replica_settings):
    db = operator_db
    await db.deposits_table()
    now = await db.now_utc()
    rows = [deposit(ago(now, 100 - i), f"t{i:02}") for i in range(40)]
    await db.insert("deposits", rows[:20])
    # On MariaDB the reader's session is found by its database: point the DSN at the scratch one.
    dsn = db.dsn if db.kind == "postgresql" else f"mysql://root@127.0.0.1:3306/{db.schema}"
    settings = replica_settings(db, [deposits_view(db)], page_size=10, dsn=dsn)
    engine = RecordingEngine()
    service = Service(settings, engine=engine)
    running = ServiceRun(service)
    try:
        await running.wait_until(lambda: len(engine.applied) >= 20, "the first rows")
        assert await _kill_reader(db, db.schema) == 1
        await db.insert("deposits", rows[20:])
        await running.wait_until(lambda: len(engine.applied) >= 40, "the rows after the connection loss")
        await asyncio.sleep(0.3)
    finally:
        await running.stop()
    assert engine.event_ids() == [f"t{i:02}" for i in range(40)]
    errors = service.metrics.replica_errors.collect()[0].samples
    assert sum(sample.value for sample in errors if sample.name.endswith("_total")) >= 1


async def test_reset_cursor_re_pushes_a_view_and_is_audited(operator_db, replica_settings, tmp_path):
    import subprocess

    import orjson
    import yaml

    from tests.support.common import CLI

    db = operator_db
    await db.deposits_table()
    now = await db.now_utc()
    rows = [deposit(ago(now, 100 - i), f"t{i}") for i in range(10)]
    await db.insert("deposits", rows)
    view = deposits_view(db)
    settings = replica_settings(db, [view], lease_timeout_s=1.0)
    engine = RecordingEngine()
    await run_until_applied(Service(settings, engine=engine), engine, 10)

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"source": "replica", "store": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
                                      "replica": {"dsn": db.dsn, "views": [view]}}))
    since = rows[6]["dt_finalized"].replace(tzinfo=UTC).isoformat()
    done = subprocess.run([*CLI, "replica", "reset-cursor", view["name"], "--config", str(config), "--to", since,
                           "--actor", "ops", "--reason", "re-push for a new field"],
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert "cursor reset" in done.stdout.decode()

    again = RecordingEngine()
    await run_until_applied(Service(settings, engine=again), again, 4)
    assert again.event_ids() == ["t6", "t7", "t8", "t9"]

    status = subprocess.run([*CLI, "replica", "status", "--config", str(config), "--json"],
                            capture_output=True, timeout=60, check=True)
    (shown,) = [orjson.loads(line) for line in status.stdout.splitlines()]
    assert shown["view"] == view["name"] and shown["cursor"][1] == "t9" and shown["holder"] == "replica-test"
    store = SqliteStore(tmp_path / "state.db")
    await store.open()
    try:
        async with store.connection() as conn:
            audit = await conn.fetch("SELECT topic, actor, reason FROM cursor_resets")
    finally:
        await store.close()
    assert audit == [(view["name"], "ops", "re-push for a new field")]


async def test_lag_shows_each_views_cursor_lag_rows_behind_and_holder(operator_db, replica_settings, tmp_path):
    """`smartico-stream lag` on a replica config, while the service is down: the view it read to
    its end is 0 s and 0 rows behind; then, with rows added, it is as many rows behind as were
    added and its cursor lag is the database's now minus the stored cursor; above
    --max-lag-seconds it exits 1; a view never read is counted from its start."""
    import subprocess

    import orjson
    import yaml

    from tests.support.common import CLI

    db = operator_db
    await db.deposits_table()
    await db.deposits_table("withdrawals")
    now = await db.now_utc()
    await db.insert("deposits", [deposit(ago(now, 100 - i), f"t{i}") for i in range(5)])
    await db.insert("withdrawals", [deposit(ago(now, 50 - i), f"w{i}") for i in range(3)])
    deposits = deposits_view(db)
    settings = replica_settings(db, [deposits])
    engine = RecordingEngine()
    await run_until_applied(Service(settings, engine=engine), engine, 5)

    withdrawals = deposits_view(db, "withdrawals", defaults={"type": "withdrawal_completed"})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"source": "replica", "store": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
                                      "replica": {"dsn": db.dsn, "views": [deposits, withdrawals],
                                                  "visibility_delay_s": 0.5}}))

    def lag(*extra: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*CLI, "lag", "--config", str(config), *extra], capture_output=True, timeout=60,
                              check=False)

    done = lag("--json")
    assert done.returncode == 0, done.stderr.decode()
    shown = orjson.loads(done.stdout)
    assert shown["source"] == "replica"
    views = {v["view"]: v for v in shown["views"]}
    caught_up = views[deposits["name"]]
    assert caught_up["cursor"][1] == "t4" and caught_up["lag_seconds"] == 0.0 and caught_up["rows_behind"] == 0
    assert caught_up["holder"] == "replica-test"
    never_read = views[withdrawals["name"]]
    assert never_read["cursor"] is None and never_read["rows_behind"] == 3 and never_read["holder"] is None

    await db.insert("deposits", [deposit(ago(now, 20 - i), f"t{5 + i}") for i in range(4)])
    done = lag("--json")
    views = {v["view"]: v for v in orjson.loads(done.stdout)["views"]}
    behind = views[deposits["name"]]
    db_now = await db.now_utc()
    assert behind["rows_behind"] == 4 and shown["total"] == 3
    expected = (db_now - ago(now, 96)).total_seconds()  # now minus the stored cursor (t4's time)
    assert abs(behind["lag_seconds"] - expected) < 5, (behind, expected)
    assert lag("--count-limit", "2", "--json").stdout and \
        {v["view"]: v for v in orjson.loads(lag("--count-limit", "2", "--json").stdout)["views"]}[
            deposits["name"]]["rows_behind_capped"]

    table = lag()
    assert table.returncode == 0, table.stderr.decode()
    assert "ROWS_BEHIND" in table.stdout.decode() and deposits["name"] in table.stdout.decode()
    over = lag("--max-lag-seconds", "30")
    assert over.returncode == 1 and "above --max-lag-seconds" in over.stderr.decode()
    assert lag("--max-lag", "6").returncode == 1  # 4 + 3 rows behind


async def test_lag_exits_3_when_the_replica_is_unreachable(tmp_path):
    import socket
    import subprocess

    import yaml

    from tests.support.common import CLI

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"source": "replica", "store": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
                                      "replica": {"dsn": f"postgresql://reader@127.0.0.1:{port}/platform"}}))
    done = subprocess.run([*CLI, "lag", "--config", str(config)], capture_output=True, timeout=60, check=False)
    assert done.returncode == 3, done.stderr.decode()
    assert f"replica.dsn: postgresql://127.0.0.1:{port}/platform" in done.stderr.decode()
