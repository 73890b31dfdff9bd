"""The audience estimate over stored users: ``rules audience`` counting a segment with extra
conditions, by brand, on a store of ``users`` users (the issue's target: 1M counted in 10 s)."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

# The counted rule: a segment and two extra conditions over fields of different kinds (a string,
# a per-currency map, a set, a number), as a marketing segment is written.
RULE = {
    "id": "bench-audience", "name": "Maltese and German depositors of 100+ EUR, not VIP, under 500 points",
    "segment": 'user.country in ["MT", "DE"] and user.deposit_count > 0',
    "conditions": ['user.deposit_total["EUR"] >= 100', '"vip" not in user.tags', "user.points < 500"],
    "schedule": {"type": "now"},
    "actions": [{"action": "give_points", "amount": 1}],
}
_COUNTRIES = ("MT", "DE", "GB", "SE", "FR")
_BRANDS = ("brand-eu", "brand-latam")
_SEED_BATCH = 2000


def _selected(i: int) -> bool:
    """The rule's answer for synthetic user ``i``, in plain Python (the brute-force count)."""
    deposits = i % 4
    return (_COUNTRIES[i % 5] in ("MT", "DE") and deposits > 0 and deposits * 40 >= 100 and i % 10 != 3
            and (i * 37) % 1000 < 500)


def _user(i: int, now: datetime) -> Any:
    from smartico_stream.engine.state import UserState

    deposits = i % 4
    state = UserState(brand=_BRANDS[(i // 4) % 2], user=f"u{i:08d}", country=_COUNTRIES[i % 5], account_status="ACTIVE",
                      wallet_currency="EUR", language="en", registration_date=now - timedelta(days=i % 900))
    state.deposit_count = deposits
    if deposits:
        state.deposit_total = {"EUR": Decimal(deposits * 40)}
        state.last_deposit_time = now - timedelta(hours=i % 500)
    state.points = Decimal((i * 37) % 1000)
    state.tags = {"vip"} if i % 10 == 3 else ({"newsletter"} if i % 7 == 0 else set())
    return state


async def audience_count(params: dict[str, Any]) -> dict[str, Any]:
    """Seed a fresh SQLite store with ``users`` users, then count the rule's audience as
    ``rules audience`` does (timed), and compare with the brute-force count."""
    from smartico_stream.engine.scheduled.spec import ScheduledRuleSpec, compile_scheduled
    from smartico_stream.scheduler.audience import count_audience
    from smartico_stream.store.base import BatchWrite
    from smartico_stream.store.scheduled import ScheduleStore
    from smartico_stream.store.sqlite import SqliteStore

    users: int = params["users"]
    store = SqliteStore(Path(params["path"]), "NORMAL")
    await store.open()
    try:
        now = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
        started = time.perf_counter()
        expected: Counter[str] = Counter()
        for start in range(0, users, _SEED_BATCH):
            batch = [_user(i, now) for i in range(start, min(users, start + _SEED_BATCH))]
            for i in range(start, start + len(batch)):
                if _selected(i):
                    expected[_BRANDS[(i // 4) % 2]] += 1
            await store.commit(BatchWrite(users=batch))
        seeded_s = time.perf_counter() - started
        rule = compile_scheduled(ScheduledRuleSpec.model_validate(RULE))
        started = time.perf_counter()
        counted = await count_audience(ScheduleStore(store), rule, now)
        count_s = time.perf_counter() - started
    finally:
        await store.close()
    if counted.seen != users:
        raise RuntimeError(f"the count saw {counted.seen} stored users, not {users}")
    return {
        "users": users,
        "count_s": round(count_s, 3),
        "users_per_s": round(users / count_s) if count_s else None,
        "audience": counted.total,
        "by_brand": dict(sorted(counted.by_brand.items())),
        "matches_brute_force": dict(counted.by_brand) == dict(expected),
        "seed_s": round(seeded_s, 2),
        "store": "sqlite (synchronous NORMAL for the seeding; the count only reads)",
        "rule": {"segment": RULE["segment"], "conditions": RULE["conditions"]},
    }
