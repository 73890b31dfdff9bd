"""Actions: what a rule execution asks the outside world to do.

Every action carries a deterministic id built from the source event, the rule, the execution index
and the action's index within the rule, so a replay produces the same ids and any sink can
deduplicate (delivery to sinks is at-least-once; the id makes it effectively once).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import orjson


class ActionKind(StrEnum):
    GIVE_POINTS = "give_points"
    DEDUCT_POINTS = "deduct_points"
    RESET_POINTS = "reset_points"
    GIVE_BONUS = "give_bonus"
    GIVE_MISSION = "give_mission"
    START_CAMPAIGN = "start_campaign"
    STOP_CAMPAIGN = "stop_campaign"
    MARK_USER = "mark_user"
    UNMARK_USER = "unmark_user"
    CHANGE_LEVEL = "change_level"
    WEBHOOK = "webhook"


def action_id(brand_id: str, event_id: str, rule_id: str, execution: int, action_index: int) -> str:
    """Deterministic id: the same event, rule, execution and action always give the same id."""
    return f"{brand_id}/{event_id}/{rule_id}/{execution}/{action_index}"


@dataclass(frozen=True, slots=True)
class Action:
    """One action emitted by one execution of one rule, as written to the outbox and to sinks.

    A plain dataclass, not a pydantic model: the engine builds one per execution (up to 1000 per
    event) from values it already validated, so validating them again would only cost time."""

    action_id: str
    rule_id: str
    action: ActionKind
    params: dict[str, Any]
    brand: str
    user: str
    event_id: str
    event_type: str
    event_time: datetime
    execution: int  # 1-based index of the execution within the triggering event

    def __post_init__(self) -> None:
        # Accept the JSON forms too (from_json, hand-written test data).
        if not isinstance(self.action, ActionKind):
            object.__setattr__(self, "action", ActionKind(self.action))
        if isinstance(self.event_time, str):
            object.__setattr__(self, "event_time", datetime.fromisoformat(self.event_time.replace("Z", "+00:00")))

    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys, Decimal as string, UTC ISO time with ms): byte-stable."""
        return orjson.dumps(self.as_dict(), option=orjson.OPT_SORT_KEYS)

    def as_dict(self) -> dict[str, Any]:
        return {
            "action_id": self.action_id,
            "rule_id": self.rule_id,
            "action": self.action.value,
            "params": _jsonable(self.params),
            "brand": self.brand,
            "user": self.user,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "event_time": self.event_time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "execution": self.execution,
        }

    @classmethod
    def from_json(cls, raw: bytes | str) -> Action:
        data = orjson.loads(raw)
        return cls(**{name: data[name] for name in _FIELDS})


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


_FIELDS = tuple(f.name for f in fields(Action))
