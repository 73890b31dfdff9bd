"""Scheduled automation rules: the YAML model, validation, compilation and loading.

A scheduled rule lives in the same rule files as real-time rules and is told apart by its
``schedule`` (a real-time rule has a ``trigger``). It targets a segment plus extra conditions over
the stored user state, runs at the instants of its schedule (:mod:`.calendar`) at ``speed`` users
per minute, and has the same actions as real-time rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator

from smartico_stream.engine.actions import ActionKind
from smartico_stream.engine.conditions import ALWAYS, Condition, ConditionError, compile_condition
from smartico_stream.engine.outcomes import FiringEffects
from smartico_stream.engine.rules import ActionSpec, RuleLoadError, _loc, _read_rule_list, _Spec
from smartico_stream.engine.schedule import _zone, parse_duration
from smartico_stream.engine.scheduled.calendar import ScheduleSpec, next_run_after
from smartico_stream.engine.state import USER_SCHEMA, UserState

__all__ = ["ScheduledRule", "ScheduledRuleSpec", "compile_scheduled", "load_scheduled_rules"]


class ScheduledRuleSpec(_Spec):
    """One scheduled automation rule as written in YAML."""

    id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
    name: str
    enabled: bool = True
    priority: int = Field(default=100, description="lower first when two rules run at the same instant")
    timezone: str = "UTC"
    segment: str | None = Field(default=None, description="condition on user.*; absent: every user")
    conditions: list[str] = Field(default_factory=list, description="extra conditions on user.*, all must hold")
    not_executed_within: str | None = Field(
        default=None, description="leave out users this rule executed for within this duration, e.g. 7d"
    )
    schedule: ScheduleSpec
    speed: Annotated[int, Field(ge=1, le=1_000_000)] = Field(default=1000, description="users per minute")
    actions: Annotated[list[ActionSpec], Field(min_length=1)]

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        _zone(value)
        return value

    @field_validator("not_executed_within")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


@dataclass(frozen=True, slots=True)
class ScheduledRule:
    """A validated scheduled rule with its conditions compiled."""

    spec: ScheduledRuleSpec
    segment: Condition
    conditions: tuple[Condition, ...]
    not_executed_within: timedelta | None
    actions: tuple[tuple[ActionKind, dict[str, Any]], ...]  # (kind, params) of each action, in order
    effects: FiringEffects  # what one execution does to the user's state, resolved once

    @property
    def id(self) -> str:
        return self.spec.id

    def selects(self, state: UserState, at: datetime) -> bool:
        """Whether the segment and every extra condition hold for ``state`` at ``at`` (the audience
        test, without ``not_executed_within``, which needs the rule's execution record)."""
        if not self.segment(state, None, at):
            return False
        return all(condition(state, None, at) for condition in self.conditions)

    def next_run_after(self, after: datetime, *, ran: bool = False) -> datetime | None:
        """The rule's next run instant strictly after ``after`` (see :func:`.calendar.next_run_after`)."""
        return next_run_after(self.spec.schedule, self.spec.timezone, after, ran=ran)

    def interval(self) -> timedelta:
        """Time between two users of a run: ``speed`` users per minute, spread evenly."""
        return timedelta(minutes=1) / self.spec.speed


class ScheduledFieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _compile(text: str | None, field: str) -> Condition:
    if text is None or not text.strip():
        return ALWAYS
    try:
        return compile_condition(text, dict(USER_SCHEMA))
    except ConditionError as exc:
        raise ScheduledFieldError(field, str(exc)) from exc


def compile_scheduled(spec: ScheduledRuleSpec) -> ScheduledRule:
    """Compile a validated scheduled rule's conditions against the user fields, and resolve its
    actions' effects."""
    actions = tuple((action.action, action.params) for action in spec.actions)
    return ScheduledRule(
        spec=spec,
        segment=_compile(spec.segment, "segment"),
        conditions=tuple(_compile(text, f"conditions.{i}") for i, text in enumerate(spec.conditions)),
        not_executed_within=parse_duration(spec.not_executed_within) if spec.not_executed_within else None,
        actions=actions,
        effects=FiringEffects.of(actions),
    )


def is_scheduled(raw: object) -> bool:
    """Whether a rule file entry is a scheduled rule (it has a ``schedule``)."""
    return isinstance(raw, dict) and "schedule" in raw


def load_scheduled_rules(path: Path) -> dict[str, ScheduledRule]:
    """The scheduled rules of a rule file or folder, enabled ones only, by id. Raises RuleLoadError
    listing every problem (real-time rules in the same files are left to ``load_rules``)."""
    files = (
        sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml")
               and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if path.is_dir() else [path]
    )
    problems: list[str] = []
    found: dict[str, ScheduledRule] = {}
    seen: set[str] = set()
    for file in files:
        for index, raw in enumerate(_read_rule_list(file, problems)):
            if not is_scheduled(raw):
                continue
            label = f"{file}: rule {raw.get('id', f'#{index + 1}')}"
            try:
                spec = ScheduledRuleSpec.model_validate(raw)
            except ValidationError as exc:
                problems += [f"{label}: {_loc(err['loc'])}: {err['msg']}"
                             for err in exc.errors(include_url=False, include_input=False)]
                continue
            if spec.id in seen:
                problems.append(f"{label}: id: duplicate scheduled rule id")
                continue
            seen.add(spec.id)
            try:
                rule = compile_scheduled(spec)
            except ScheduledFieldError as exc:
                problems.append(f"{label}: {exc.field}: {exc}")
                continue
            if spec.enabled:
                found[spec.id] = rule
    if problems:
        raise RuleLoadError(problems)
    return found
