"""What the store refuses and how it says so, on SQLite and PostgreSQL: ``probe`` (a dry-run commit)
raises what ``commit`` would and leaves the store as it was; ``refusal`` tells a refused content
(a NUL or a lone surrogate in text, a state JSON cannot hold) from everything else, and its
description never quotes the value. The service uses both to isolate one record's content
(tests/service/test_store_refusals.py)."""

from __future__ import annotations

from typing import Any

import pytest

from smartico_stream.engine.state import UserState
from smartico_stream.store import BatchWrite, FencedError
from smartico_stream.store.postgres import PostgresStore
from smartico_stream.store.sqlite import SqliteStore

pytestmark = pytest.mark.asyncio

P0 = ("payments", 0)
BIG = 2**70


@pytest.fixture
def store(sql_store: Any) -> Any:
    return sql_store


async def leased(store: Any) -> int:
    return (await store.acquire([P0], "me", 0.0))[P0].epoch


def write(epoch: int, *users: UserState, offset: int = 10) -> BatchWrite:
    return BatchWrite(epochs={P0: epoch}, offsets={P0: offset}, users=list(users))


def with_custom(name: str, value: object) -> UserState:
    state = UserState(brand="b1", user=name)
    state.custom = {"lucky_number": value}
    return state


async def test_a_probe_writes_nothing_and_a_clean_probe_raises_nothing(store: Any) -> None:
    epoch = await leased(store)
    await store.probe(write(epoch, UserState(brand="b1", user="u1")))
    assert await store.all_users() == []
    assert (await store.acquire([P0], "me", 0.0))[P0].next_offset is None
    await store.commit(write(epoch + 1, UserState(brand="b1", user="u1")))
    assert [u.user for u in await store.all_users()] == ["u1"]


async def test_a_probe_raises_what_commit_would_a_fence_included(store: Any) -> None:
    epoch = await leased(store)
    await leased(store)  # taken over: the first epoch is stale
    with pytest.raises(FencedError):
        await store.probe(write(epoch, UserState(brand="b1", user="u1")))
    assert store.refusal(FencedError([P0])) is None


async def test_a_state_json_cannot_hold_is_refused_on_both_stores_without_the_value(store: Any) -> None:
    epoch = await leased(store)
    poisoned = write(epoch, UserState(brand="b1", user="u1"), with_custom("u2", BIG))
    for attempt in (store.probe, store.commit):
        with pytest.raises(Exception) as caught:
            await attempt(poisoned)
        reason = store.refusal(caught.value)
        assert reason is not None and "users.state" in reason and "64-bit" in reason
        assert str(BIG) not in reason
    assert await store.all_users() == []  # the commit wrote nothing either
    await store.commit(write(epoch, UserState(brand="b1", user="u1"), with_custom("u2", 7)))
    assert {u.user: u.custom for u in await store.all_users()} == {"u1": {}, "u2": {"lucky_number": 7}}


@pytest.mark.parametrize("bad_id", ["a\x00secret", "a\ud800secret"], ids=["nul", "lone_surrogate"])
async def test_text_postgresql_refuses_is_a_refusal_that_quotes_nothing(store: Any, bad_id: str) -> None:
    epoch = await leased(store)
    batch = write(epoch, UserState(brand="b1", user=bad_id))
    if isinstance(store, SqliteStore) and "\x00" in bad_id:
        # SQLite stores any text, NUL included: nothing to refuse (the pipeline's boundary checks
        # reject such ids for both stores before they get here).
        await store.probe(batch)
        return
    with pytest.raises(Exception) as caught:
        await store.probe(batch)
    reason = store.refusal(caught.value)
    assert reason is not None, type(caught.value)
    assert "secret" not in reason and reason.isprintable()
    if isinstance(store, PostgresStore):
        assert reason.startswith("PostgreSQL refused a value of this record (")
        if "\x00" in bad_id:
            assert "SQLSTATE 22021" in reason
    else:
        assert reason == "SQLite refused a value of this record (UnicodeEncodeError)"
    assert await store.all_users() == []


async def test_errors_that_are_not_about_the_content_are_not_refusals(store: Any) -> None:
    assert store.refusal(RuntimeError("database is not open")) is None
    assert store.refusal(ConnectionResetError()) is None
    assert store.refusal(TimeoutError()) is None
    await store.close()
    with pytest.raises(RuntimeError) as caught:
        await store.probe(write(1, UserState(brand="b1", user="u1")))
    assert store.refusal(caught.value) is None
    await store.open()  # for the fixture's close
