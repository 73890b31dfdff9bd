"""Real-time automation rules: the YAML model, its validation, and compilation.

A rule file holds ``rules: [...]`` (or a bare list); a folder holds any number of ``*.yaml``/``*.yml``
files. Loading validates everything and compiles every condition once; an error names the file,
the rule and the field. docs/rules.md documents every option.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from smartico_stream.engine.accumulation import MAX_EXECUTIONS_PER_EVENT
from smartico_stream.engine.actions import ActionKind
from smartico_stream.engine.conditions import (
    ALWAYS,
    Condition,
    ConditionError,
    FieldType,
    compile_condition,
    event_schema,
)
from smartico_stream.engine.schedule import ActivityWindow, parse_duration
from smartico_stream.engine.state import USER_SCHEMA
from smartico_stream.events.models import MODEL_BY_TYPE, EventType


class RuleLoadError(ValueError):
    """Rules cannot be loaded; every problem is listed as ``file: rule id: field: message``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid rules:\n" + "\n".join(f"  {p}" for p in problems))


class RuleFieldError(ValueError):
    """A validated rule that does not compile; ``field`` names the rule field at fault
    (``segment``, ``trigger.condition``, ``accumulation.field``, ...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TriggerSpec(_Spec):
    event: EventType
    condition: str | None = None


class AccumulationSpec(_Spec):
    """Count accumulation (``step`` without ``field``: every N trigger events) or amount accumulation
    (``field`` with per-currency ``steps``, or one ``step`` for every currency)."""

    field: str | None = Field(default=None, description="event field to accumulate, e.g. event.amount")
    step: Annotated[Decimal, Field(gt=0)] | None = None
    steps: dict[str, Annotated[Decimal, Field(gt=0)]] | None = Field(
        default=None, description="per wallet currency, e.g. {EUR: 10, GBP: 8, USD: 12}"
    )
    max_executions_per_event: Annotated[int, Field(ge=1, le=MAX_EXECUTIONS_PER_EVENT)] = MAX_EXECUTIONS_PER_EVENT

    @model_validator(mode="after")
    def _one_kind(self) -> AccumulationSpec:
        if (self.step is None) == (self.steps is None):
            raise ValueError("give exactly one of step (one step for all) or steps (per currency)")
        if self.field is None and self.steps is not None:
            raise ValueError("count accumulation (no field) takes step, not per-currency steps")
        if self.steps is not None:
            normalised: dict[str, Decimal] = {}
            for currency, step in self.steps.items():
                code = currency.strip().upper()
                if code in normalised:
                    raise ValueError(f"steps lists currency {code} twice")
                normalised[code] = step
            self.steps = normalised
        return self


class ActiveHoursSpec(_Spec):
    start: str
    end: str


class ActivitySpec(_Spec):
    start: datetime | None = Field(default=None, description="local time in the rule's time zone")
    end: datetime | None = None
    weekdays: list[str | int] = Field(default_factory=list)
    active_hours: ActiveHoursSpec | None = None


class QualificationSpec(_Spec):
    event: EventType
    condition: str | None = None
    period: str | None = Field(default=None, description="e.g. 24h, 7d: how long a qualification lasts")
    iterations: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="completions allowed per qualification"
    )

    @field_validator("period")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


_ACTION_PARAMS: dict[ActionKind, dict[str, tuple[type, bool]]] = {
    # kind -> param -> (type, required)
    ActionKind.GIVE_POINTS: {"amount": (Decimal, True)},
    ActionKind.DEDUCT_POINTS: {"amount": (Decimal, True)},
    ActionKind.RESET_POINTS: {},
    ActionKind.GIVE_BONUS: {"template_id": (str, True), "amount": (Decimal, False)},
    ActionKind.GIVE_MISSION: {"mission_id": (str, True)},
    ActionKind.START_CAMPAIGN: {"campaign_id": (str, True)},
    ActionKind.STOP_CAMPAIGN: {"campaign_id": (str, True)},
    ActionKind.MARK_USER: {"tag": (str, True)},
    ActionKind.UNMARK_USER: {"tag": (str, True)},
    ActionKind.CHANGE_LEVEL: {"level": (int, True)},
    ActionKind.WEBHOOK: {"url": (str, True), "payload": (dict, False)},
}


class ActionSpec(_Spec):
    model_config = ConfigDict(extra="allow")

    action: ActionKind

    @model_validator(mode="after")
    def _params(self) -> ActionSpec:
        allowed = _ACTION_PARAMS[self.action]
        given = dict(self.model_extra or {})
        unknown = sorted(set(given) - set(allowed))
        if unknown:
            raise ValueError(
                f"{self.action} does not take {', '.join(unknown)}; it takes {', '.join(allowed) or 'no parameters'}"
            )
        for name, (kind, required) in allowed.items():
            if name not in given:
                if required:
                    raise ValueError(f"{self.action} needs {name}")
                continue
            given[name] = _coerce_param(self.action, name, given[name], kind)
        self.__pydantic_extra__ = given
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _coerce_param(action: ActionKind, name: str, value: Any, kind: type) -> Any:
    if kind is Decimal:
        if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
            raise ValueError(f"{action}.{name} must be a number")
        try:
            number = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
        except ArithmeticError:
            raise ValueError(f"{action}.{name} must be a number") from None
        if not number.is_finite() or number <= 0:
            raise ValueError(f"{action}.{name} must be a positive number")
        return number
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{action}.{name} must be a whole number")
        return value
    if kind is str:
        if isinstance(value, bool) or not isinstance(value, str | int) or str(value).strip() == "":
            raise ValueError(f"{action}.{name} must be a non-empty string or number")
        return str(value).strip()
    if not isinstance(value, kind):
        raise ValueError(f"{action}.{name} must be a {kind.__name__}")
    return value


class RuleSpec(_Spec):
    """One real-time automation rule as written in YAML."""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Europe/Malta or UTC") from None
        return value

    id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
    name: str
    enabled: bool = True
    priority: int = Field(default=100, description="lower runs first; ties by id")
    timezone: str = "UTC"
    segment: str | None = Field(default=None, description="condition on user.*; absent: every user")
    trigger: TriggerSpec
    accumulation: AccumulationSpec | None = None
    once_in_lifetime: bool = False
    activity: ActivitySpec | None = None
    qualification: QualificationSpec | None = None
    actions: Annotated[list[ActionSpec], Field(min_length=1)]


@dataclass(frozen=True, slots=True)
class Rule:
    """A validated rule with its conditions compiled."""

    spec: RuleSpec
    segment: Condition
    trigger_condition: Condition
    window: ActivityWindow | None
    qualification_condition: Condition | None
    qualification_period: timedelta | None

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass(frozen=True)
class RuleSet:
    """Enabled rules indexed by the event types that can fire them (trigger or qualification), so an
    event only touches the rules it can affect."""

    rules: tuple[Rule, ...]
    by_event_type: dict[str, tuple[Rule, ...]]
    disabled: tuple[str, ...] = ()

    @classmethod
    def of(cls, rules: Iterable[Rule], disabled: Iterable[str] = ()) -> RuleSet:
        ordered = tuple(sorted(rules, key=lambda r: (r.spec.priority, r.spec.id)))
        index: dict[str, list[Rule]] = {}
        for rule in ordered:
            types = {rule.spec.trigger.event.value}
            if rule.spec.qualification is not None:
                types.add(rule.spec.qualification.event.value)
            for event_type in types:
                index.setdefault(event_type, []).append(rule)
        return cls(ordered, {k: tuple(v) for k, v in index.items()}, tuple(disabled))

    def for_event(self, event_type: str) -> tuple[Rule, ...]:
        return self.by_event_type.get(event_type, ())

    def without(self, stopped: Iterable[str]) -> RuleSet:
        """This rule set less the rules stopped by an operator (``rules stop``): a stopped rule
        ignores events until started again. Built once per status change, not per event."""
        gone = frozenset(stopped) & {rule.id for rule in self.rules}
        if not gone:
            return self
        return RuleSet.of((rule for rule in self.rules if rule.id not in gone), (*self.disabled, *sorted(gone)))


# Loading ---------------------------------------------------------------------------------------


def load_rules(path: Path) -> RuleSet:
    """Load a rule file or a folder of them. Raises RuleLoadError listing every problem."""
    # Hidden entries are skipped: a Kubernetes ConfigMap volume holds a "..<timestamp>/" copy.
    files = (
        sorted(
            p for p in path.rglob("*")
            if p.suffix in (".yaml", ".yml") and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if path.is_dir()
        else [path]
    )
    if path.is_dir() and not files:
        raise RuleLoadError([f"{path}: no *.yaml or *.yml rule files"])
    problems: list[str] = []
    compiled: list[Rule] = []
    disabled: list[str] = []
    seen: dict[str, Path] = {}
    for file in files:
        for index, raw in enumerate(_read_rule_list(file, problems)):
            if isinstance(raw, dict) and "schedule" in raw and "trigger" not in raw:
                continue  # a scheduled rule: engine.scheduled.spec loads those
            rule_label = f"{file}: rule {raw.get('id', f'#{index + 1}') if isinstance(raw, dict) else f'#{index + 1}'}"
            try:
                spec = RuleSpec.model_validate(raw)
            except RecursionError:
                problems.append(f"{rule_label}: nested too deeply")
                continue
            except ValidationError as exc:
                problems += [f"{rule_label}: {_loc(err['loc'])}: {err['msg']}" for err in
                             exc.errors(include_url=False, include_input=False)]
                continue
            if spec.id in seen:
                problems.append(f"{rule_label}: id: duplicate rule id, first defined in {seen[spec.id]}")
                continue
            seen[spec.id] = file
            try:
                rule = compile_rule(spec)
            except (ConditionError, ValueError) as exc:
                field = exc.field if isinstance(exc, RuleFieldError) else "?"
                problems.append(f"{rule_label}: {field}: {exc}")
                continue
            except RecursionError:  # a condition nested thousands deep
                problems.append(f"{rule_label}: nested too deeply")
                continue
            if spec.enabled:
                compiled.append(rule)
            else:
                disabled.append(spec.id)
    if problems:
        raise RuleLoadError(problems)
    return RuleSet.of(compiled, disabled)


def _read_rule_list(file: Path, problems: list[str]) -> list[Any]:
    try:
        document = yaml.safe_load(file.read_text())
    except OSError as exc:
        problems.append(f"{file}: cannot read: {exc.strerror}")
        return []
    except UnicodeDecodeError:
        problems.append(f"{file}: not a UTF-8 text file")
        return []
    except RecursionError:  # PyYAML composes nested nodes recursively
        problems.append(f"{file}: nested too deeply to be a rule file")
        return []
    except yaml.YAMLError as exc:
        problems.append(f"{file}: not valid YAML: {exc}")
        return []
    if isinstance(document, dict) and set(document) == {"rules"}:
        document = document["rules"]
    if document is None:
        return []
    if not isinstance(document, list):
        problems.append(f"{file}: expected a list of rules (or `rules: [...]`), not {type(document).__name__}")
        return []
    return document


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(rule)"


def _compile(text: str | None, schema: dict[str, Any], field: str) -> Condition:
    if text is None or not text.strip():
        return ALWAYS
    try:
        return compile_condition(text, schema)
    except ConditionError as exc:
        raise RuleFieldError(field, str(exc)) from exc


def compile_rule(spec: RuleSpec) -> Rule:
    """Compile a validated rule's conditions against the fields its events and users really have."""
    user_only = dict(USER_SCHEMA)
    trigger_schema = {**USER_SCHEMA, **event_schema(MODEL_BY_TYPE[spec.trigger.event])}
    segment = _compile(spec.segment, user_only, "segment")
    trigger_condition = _compile(spec.trigger.condition, trigger_schema, "trigger.condition")
    accumulation = spec.accumulation
    if accumulation is not None and accumulation.field is not None:
        kind = trigger_schema.get(accumulation.field) if accumulation.field.startswith("event.") else None
        if kind != FieldType.NUMBER:
            what = "is not a field of" if kind is None else f"is a {kind} field of"
            raise RuleFieldError(
                "accumulation.field",
                f"{accumulation.field} {what} {spec.trigger.event} events, not a number; "
                f"numeric fields: {', '.join(_numeric_fields(trigger_schema))}",
            )
    qualification_condition = None
    period = None
    if spec.qualification is not None:
        qualification_schema = {**USER_SCHEMA, **event_schema(MODEL_BY_TYPE[spec.qualification.event])}
        qualification_condition = _compile(
            spec.qualification.condition, qualification_schema, "qualification.condition"
        )
        period = parse_duration(spec.qualification.period) if spec.qualification.period else None
    window = None
    activity = spec.activity
    try:
        if activity is not None or spec.timezone != "UTC":
            activity = activity or ActivitySpec()
            window = ActivityWindow.build(
                tz=spec.timezone,
                start=activity.start,
                end=activity.end,
                weekdays=activity.weekdays,
                active_hours=(activity.active_hours.start, activity.active_hours.end)
                if activity.active_hours
                else None,
            )
    except ValueError as exc:
        raise RuleFieldError("activity", str(exc)) from exc
    return Rule(spec, segment, trigger_condition, window, qualification_condition, period)


def _numeric_fields(schema: dict[str, Any]) -> list[str]:
    return sorted(name for name, kind in schema.items() if name.startswith("event.") and kind == "number")


