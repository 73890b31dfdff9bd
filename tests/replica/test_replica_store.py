"""What the replica source keeps in the store, on SQLite and PostgreSQL (``sql_store``): view
cursors written with the batch and fenced like offsets, leases held by renewal, dead letters kept
once."""

from __future__ import annotations

import pytest

from smartico_stream.store.base import BatchWrite, FencedError, StoredDeadLetter

pytestmark = pytest.mark.asyncio

VIEW = ("ops.deposits", 0)
OTHER = ("ops.users", 0)


async def test_a_cursor_is_written_with_its_batch_and_fenced_like_an_offset(sql_store):
    first = await sql_store.acquire([VIEW, OTHER], "a", float("-inf"))
    await sql_store.commit(BatchWrite(epochs={VIEW: first[VIEW].epoch}, cursors={VIEW: '{"v":[1]}'}))
    assert await sql_store.source_cursors([VIEW, OTHER]) == {VIEW: '{"v":[1]}'}
    await sql_store.commit(BatchWrite(epochs={VIEW: first[VIEW].epoch}, cursors={VIEW: '{"v":[2]}'}))
    assert await sql_store.source_cursors([VIEW]) == {VIEW: '{"v":[2]}'}
    await sql_store.acquire([VIEW], "b", float("-inf"))  # taken over
    with pytest.raises(FencedError):
        await sql_store.commit(BatchWrite(epochs={VIEW: first[VIEW].epoch}, cursors={VIEW: '{"v":[3]}'}))
    assert await sql_store.source_cursors([VIEW]) == {VIEW: '{"v":[2]}'}


async def test_leases_are_renewed_by_their_holder_only(sql_store):
    leases = await sql_store.acquire([VIEW, OTHER], "a", float("-inf"))
    epochs = {tp: lease.epoch for tp, lease in leases.items()}
    before = await sql_store.lease_holders([VIEW, OTHER])
    assert {tp: (h.owner, h.epoch) for tp, h in before.items()} == {VIEW: ("a", 1), OTHER: ("a", 1)}
    assert await sql_store.renew_leases("a", epochs) == []
    after = await sql_store.lease_holders([VIEW])
    assert after[VIEW].renewed_at >= before[VIEW].renewed_at
    await sql_store.acquire([OTHER], "b", float("-inf"))
    assert await sql_store.renew_leases("a", epochs) == [OTHER]
    assert (await sql_store.lease_holders([OTHER]))[OTHER].owner == "b"


async def test_a_dead_letter_written_again_is_kept_once(sql_store):
    letter = StoredDeadLetter(VIEW, '{"v":["2026-01-01","t2"]}', 7, "adapt", "ValidationError", "amount: bad",
                              None, "redacted")
    await sql_store.write_dead_letters([letter])
    await sql_store.write_dead_letters([letter])  # a redone batch
    assert await sql_store.dead_letters() == [letter]
    assert await sql_store.dead_letters(OTHER) == []
