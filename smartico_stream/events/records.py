"""Event records: the slotted structures the hot path carries instead of pydantic model instances.

The pydantic models of :mod:`smartico_stream.events.models` stay the contract: adapter authors read
them, the JSON Schemas are generated from them, and tests may build them. What an adapter returns
is a *draft* (a plain mapping of canonical field names, ``type`` included), and the pipeline
validates every draft of a batch in one call into pydantic-core, producing one record per event:

- a record class is derived from each model at import time (same name, fields, defaults,
  validators and ``extra="forbid"``), so the two cannot drift;
- a record is a slotted dataclass: attribute access as on the model, no ``__dict__``, no
  ``model_fields_set``, and assignment (the PII guard removes fields) is a plain slot write;
- ``aggregates`` is a record too; ``source`` carries the batch's :class:`RawRecord` itself (it has
  the same ``transport``/``topic``/``partition``/``offset`` attributes), so an event costs no
  coordinates object of its own;
- "in the past" is checked against one clock reading per batch (the validation context), not a
  clock read per timestamp.

For the type checker a record *is* its model (the aliases below): both expose the same attributes,
and the engine's code reads attributes only, so it runs on records in the service and on models in
tests alike. Nothing may ``isinstance``-check a record against a model class; dispatch on ``type``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, ValidatorFunctionWrapHandler, WrapValidator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from smartico_stream.events.models import EVENT_MODELS, CanonicalEvent, PlatformAggregates
from smartico_stream.tracebacks import detached

__all__ = [
    "SENT_ONLY",
    "EventRecord",
    "UnknownDraftType",
    "ValidatedBatch",
    "dump_event",
    "validate_drafts",
    "validate_event",
]

_STRICT = ConfigDict(extra="forbid")
# Fields whose model default stands for "not sent": the record keeps None so the engine can tell
# (a profile update without a status must not re-activate a blocked user); a dump shows the default.
SENT_ONLY: frozenset[str] = frozenset({"account_status"})


def _annotation(name: str, info: FieldInfo, overrides: Mapping[str, Any]) -> Any:
    if name in overrides:
        return overrides[name]
    annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    return Union[annotation, None] if name in SENT_ONLY else annotation  # noqa: UP007 - a runtime type


def _field(name: str, info: FieldInfo) -> Any:
    if name in SENT_ONLY:
        return dataclasses.field(default=None)
    if info.default_factory is not None:
        return dataclasses.field(default_factory=info.default_factory)  # type: ignore[arg-type]
    if info.default is not PydanticUndefined:
        return dataclasses.field(default=info.default)
    return dataclasses.field()


def _user_key(self: Any) -> tuple[str, str]:
    """(brand, user): the identity per-user ordering and state are keyed by."""
    return (self.brand_id, self.user_id)


def _record_class(model: type[Any], overrides: Mapping[str, Any], namespace: Mapping[str, Any]) -> type[Any]:
    fields = [
        (name, _annotation(name, info, overrides), _field(name, info)) for name, info in model.model_fields.items()
    ]
    cls = dataclasses.make_dataclass(
        model.__name__,  # the name pydantic puts in an error's title, as the model's
        fields,
        namespace={"__pydantic_config__": _STRICT, "__doc__": model.__doc__, **namespace},
        slots=True,
        kw_only=True,
    )
    cls.__module__ = __name__
    return cls


_AggregatesRecord = _record_class(PlatformAggregates, {}, {})
_OVERRIDES: dict[str, Any] = {
    "aggregates": _AggregatesRecord | None,
    # set by the pipeline, never validated: the RawRecord the event came from
    "source": Any,
}
_RECORDS: tuple[type[Any], ...] = tuple(
    _record_class(
        model,
        _OVERRIDES,
        {"event_type": model.event_type, "user_key": property(_user_key)},
    )
    for model in EVENT_MODELS
)
if TYPE_CHECKING:
    EventRecord = CanonicalEvent
else:
    EventRecord = Union[_RECORDS]  # type: ignore[valid-type]  # noqa: UP007 - a union of generated classes

_RECORD_BY_TYPE: dict[str, type[Any]] = {
    event_type.value: record for record in _RECORDS for event_type in record.event_type
}


class _Invalid:
    """Stands in the batch's result for a draft that failed: the list validates to the end."""

    __slots__ = ()


_INVALID = _Invalid()


def _keep_going(draft: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    # Without this one invalid draft fails the whole list, and every valid draft of the batch would
    # be validated a second time (a batch of the bench stream nearly always holds one): 3.4 µs per
    # event, against 0.3 µs for this call.
    try:
        return handler(draft)
    except ValidationError:
        return _INVALID


_BATCH: TypeAdapter[list[Any]] = TypeAdapter(
    list[Annotated[Union[_RECORDS], Field(discriminator="type"), WrapValidator(_keep_going)]]  # type: ignore[valid-type]  # noqa: UP007
)
_DUMP_DEFAULTS: dict[str, dict[str, Any]] = {
    event_type.value: {
        name: TypeAdapter(Any).dump_python(model.model_fields[name].default, mode="json")
        for name in SENT_ONLY & set(model.model_fields)
    }
    for model in EVENT_MODELS
    for event_type in model.event_type
}
_ONE: dict[type[Any], TypeAdapter[Any]] = {record: TypeAdapter(record) for record in _RECORDS}


class UnknownDraftType(ValueError):
    """An adapter produced a draft whose ``type`` is not a canonical event type."""


@dataclasses.dataclass(slots=True)
class ValidatedBatch:
    """The drafts of one batch, validated: ``events[i]`` is the record of ``drafts[i]``, or None
    where ``errors[i]`` says why that draft is invalid."""

    events: list[EventRecord | None]
    errors: dict[int, Exception]


def _as_draft(item: Any) -> Any:
    # An adapter written against the model contract returns model instances: accepted, revalidated
    # as drafts (the canonical models are not the hot path's shape).
    if isinstance(item, CanonicalEvent):
        draft = {name: getattr(item, name) for name in type(item).model_fields}
        if item.aggregates is not None:
            draft["aggregates"] = {name: getattr(item.aggregates, name) for name in PlatformAggregates.model_fields}
        return draft
    return item


def validate_drafts(drafts: Sequence[Any], now: datetime | None = None) -> ValidatedBatch:
    """Validate a batch of drafts in one pydantic-core call; each invalid draft is then validated
    alone, for the error its model gives. Records an adapter built with :func:`validate_event` are
    validated already and kept as they are. ``now`` is the instant "in the past" is checked against
    (default: the clock, read once)."""
    context = {"now": now or datetime.now(UTC)}
    events: list[EventRecord | None] = list(drafts)
    todo = [index for index, item in enumerate(drafts) if type(item) not in _ONE]
    items = [_as_draft(drafts[index]) for index in todo]
    errors: dict[int, Exception] = {}
    for index, item, event in zip(todo, items, _BATCH.validate_python(items, context=context), strict=True):
        if event is not _INVALID:
            events[index] = event
            continue
        events[index] = None
        try:
            validate_event(item, context["now"])
        except (ValidationError, UnknownDraftType, TypeError) as error:
            errors[index] = detached(error)
        else:  # pragma: no cover - pydantic-core validates one item alone as it does in a list
            raise RuntimeError("a draft that failed in its batch validated alone")
    return ValidatedBatch(events, errors)


def validate_event(draft: Any, now: datetime | None = None) -> EventRecord:
    """One draft as a record; raises the ``ValidationError`` a model would (titled by the model)."""
    draft = _as_draft(draft)
    if not isinstance(draft, Mapping):
        raise TypeError(f"an adapter must return drafts (mappings), not {type(draft).__name__}")
    record = _RECORD_BY_TYPE.get(draft.get("type"))  # type: ignore[arg-type]
    if record is None:
        raise UnknownDraftType("the adapter produced an event whose 'type' is not a canonical event type")
    event: EventRecord = _ONE[record].validate_python(draft, context={"now": now or datetime.now(UTC)})
    return event


def dump_event(event: EventRecord, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """The JSON form of a record, as ``model_dump(mode="json", exclude_none=True)`` gives for its model."""
    dumped: dict[str, Any] = _ONE[type(event)].dump_python(
        event, mode="json", exclude_none=True, exclude=set(exclude) | {"source"}
    )
    for name, default in _DUMP_DEFAULTS.get(event.type, {}).items():
        if name not in exclude:
            dumped.setdefault(name, default)
    return dumped
