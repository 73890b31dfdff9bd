"""``audience``: the exact audience count of ``rules audience`` over stored users (target: 1M users
counted in 10 s or less; ``--quick`` counts fewer and the target is then not judged)."""

from __future__ import annotations

from typing import Any

from smartico_stream.bench.scenarios.env import Env

# The target is for this many stored users.
TARGET_USERS = 1_000_000


async def scenario_audience(env: Env) -> dict[str, Any]:
    """The report's ``audience``: a fresh process seeds a SQLite store, then counts one rule's
    audience (segment and three extra conditions) by brand, checked against a brute-force count."""
    users = env.profile.audience_users
    result = await env.run_worker("audience", {"users": users, "path": str(env.workdir / "audience.db")}, 1800)
    result["complete"] = bool(result.get("matches_brute_force"))
    if users != TARGET_USERS:
        result["note"] = f"{users:,} users (--quick): the 1M-user target is judged by the full run only"
    return result
