"""Actions: what a rule firing asks the outside world to do.

A rule *fires* at most once per event; accumulation can make one firing stand for several
*executions* ("1 point per 10 EUR" on a 190 EUR deposit is 19). Each of the rule's actions is
emitted once per firing, carrying ``executions`` and parameters totalled over them (see
:mod:`smartico_stream.engine.firing`).

Every action carries a deterministic id built from the source event, the rule and the action's
index within the rule, so a replay produces the same ids and any sink can deduplicate (delivery to
sinks is at-least-once; the id makes it effectively once).

Outbox rows written before one action per firing hold one action per *execution*: JSON with an
``execution`` key (the 1-based index) instead of ``executions``, and an id with the execution in it
(``brand/event/rule/execution/index``). They still decode (as ``executions=1``: each stands for one
execution) and are delivered with their stored bytes unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
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


def action_id(brand_id: str, event_id: str, rule_id: str, action_index: int) -> str:
    """Deterministic id: the same event, rule and action index always give the same id. A rule fires
    at most once per event, so no execution number is needed."""
    return f"{brand_id}/{event_id}/{rule_id}/{action_index}"


@dataclass(slots=True)
class Action:
    """One action emitted by one firing of one rule, as written to the outbox and to sinks.
    Treat it as immutable.

    A plain dataclass, not a pydantic model: the engine builds one per action of every firing from
    values it already validated, so validating them again would only cost time. Not
    ``frozen`` either: a frozen dataclass sets every field through ``object.__setattr__``, which
    makes building one three times slower on the hottest path of the engine and the relay."""

    action_id: str
    rule_id: str
    action: ActionKind
    params: dict[str, Any]
    brand: str
    user: str
    event_id: str
    event_type: str
    event_time: datetime
    executions: int  # how many executions of the rule this firing stands for, >= 1
    # The canonical JSON this action was read from (outbox rows): sinks send these bytes as they are
    # instead of encoding the action again. Never part of equality or of the JSON itself.
    encoded: bytes | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Accept the JSON forms too (hand-written test data): the fields are typed as
        # what they hold afterwards, so what the caller passed is checked in its wider type.
        action: ActionKind | str = self.action
        if not isinstance(action, ActionKind):
            self.action = ActionKind(action)
        event_time: datetime | str = self.event_time
        if isinstance(event_time, str):
            self.event_time = datetime.fromisoformat(event_time)

    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys, Decimal as string, UTC ISO time with ms): byte-stable."""
        if self.encoded is not None:
            return self.encoded
        # orjson walks params itself and calls _decimal_text only for the Decimals inside.
        return orjson.dumps(self._fields(self.params), default=_decimal_text, option=orjson.OPT_SORT_KEYS)

    def as_dict(self) -> dict[str, Any]:
        """The JSON document as Python values (Decimals as strings)."""
        return {**self._fields(_jsonable(self.params)), "action": self.action.value}

    def _fields(self, params: Any) -> dict[str, Any]:
        return {
            "action_id": self.action_id,
            "rule_id": self.rule_id,
            "action": self.action,  # orjson writes an enum as its value
            "params": params,
            "brand": self.brand,
            "user": self.user,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "event_time": _time_text(self.event_time),
            "executions": self.executions,
        }

    @classmethod
    def from_json(cls, raw: bytes | str) -> Action:
        """The action :meth:`to_json` encoded. It keeps ``raw`` (as bytes) to send on unchanged and
        decodes it only when a field is first read: the relay reads back every outbox row it
        delivers, and a sink that sends the stored bytes (JSONL, webhook) never reads a field."""
        action = object.__new__(cls)
        action.encoded = raw.encode() if isinstance(raw, str) else bytes(raw)
        return action

    def __getattr__(self, name: str) -> Any:
        # Reached only for a field not set yet, that is of an action from from_json: decode it once.
        if name not in _DECODED_FIELDS:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        encoded = self.encoded
        if encoded is None:  # a constructed action has every field set and never gets here
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        data = orjson.loads(encoded)
        # A dict lookup instead of the enum call in __post_init__: half the cost.
        self.action_id, self.rule_id, self.action = data["action_id"], data["rule_id"], _KINDS[data["action"]]
        self.params, self.brand, self.user = data["params"], data["brand"], data["user"]
        self.event_id, self.event_type = data["event_id"], data["event_type"]
        self.event_time = datetime.fromisoformat(data["event_time"])
        # A row from before one action per firing has "execution" (its index) instead: it stands
        # for one execution.
        self.executions = data.get("executions", 1)
        return getattr(self, name)


def _time_text(moment: datetime) -> str:
    # The offset is part of the key: equal instants in other zones are equal datetimes.
    return _time_text_of(moment, moment.utcoffset())


@lru_cache(maxsize=1024)
def _time_text_of(moment: datetime, _offset: object) -> str:
    # Memoised: the actions of one event (every rule it fires) share its time, and formatting it
    # is the largest single cost of encoding an action.
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _decimal_text(value: Any) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


_KINDS = {kind.value: kind for kind in ActionKind}
_DECODED_FIELDS = frozenset(f.name for f in fields(Action)) - {"encoded"}
