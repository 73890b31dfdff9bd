"""Find operator adapters by name.

Adapters register under the entry-point group ``smartico_stream.adapters`` (the built-in ones
included), so a separately installed package plugs in without touching this service. An entry point
names a zero-argument callable (usually the adapter class) that returns an ``Adapter``.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from smartico_stream.adapters.base import Adapter

ADAPTER_GROUP = "smartico_stream.adapters"


class UnknownAdapter(LookupError):
    """No installed package registers an adapter under the requested name."""


class AdapterLoadError(RuntimeError):
    """An adapter entry point exists but could not be imported or instantiated."""


class InvalidAdapter(AdapterLoadError, TypeError):
    """The entry point produced something that does not satisfy the ``Adapter`` protocol."""


def _entry_points_by_name() -> dict[str, list[EntryPoint]]:
    grouped: dict[str, list[EntryPoint]] = {}
    for entry_point in entry_points(group=ADAPTER_GROUP):
        grouped.setdefault(entry_point.name, []).append(entry_point)
    return grouped


def _origin(entry_point: EntryPoint) -> str:
    dist = entry_point.dist
    return f"{entry_point.value} (from {dist.name} {dist.version})" if dist is not None else entry_point.value


def available_adapters() -> dict[str, EntryPoint]:
    """Installed adapters, name -> entry point, sorted by name. Nothing is imported."""
    return {name: points[0] for name, points in sorted(_entry_points_by_name().items())}


def load_adapter(name: str) -> Adapter:
    """Import the adapter registered as ``name``, call it with no arguments and check the result.

    Raises ``UnknownAdapter`` (listing what is installed) when nothing has that name,
    ``AdapterLoadError`` when two packages claim the name or the import/instantiation fails, and
    ``InvalidAdapter`` when the object lacks a string ``name`` or a callable ``adapt``.
    """
    grouped = _entry_points_by_name()
    points = grouped.get(name)
    if not points:
        installed = ", ".join(sorted(grouped)) or "none"
        raise UnknownAdapter(
            f"no adapter named {name!r}; installed adapters: {installed}. An adapter package must "
            f"declare it under [project.entry-points.\"{ADAPTER_GROUP}\"] and be pip-installed."
        )
    if len({point.value for point in points}) > 1:
        # Picking one silently would run an operator's traffic through whichever package
        # the import system happened to list first.
        claims = "; ".join(_origin(point) for point in points)
        raise AdapterLoadError(f"adapter name {name!r} is registered more than once: {claims}")
    entry_point = points[0]
    try:
        factory = entry_point.load()
    except Exception as exc:
        raise AdapterLoadError(f"adapter {name!r}: cannot import {_origin(entry_point)}: {exc}") from exc
    if not callable(factory):
        raise InvalidAdapter(f"adapter {name!r}: {entry_point.value} is not callable")
    try:
        adapter = factory()
    except Exception as exc:
        raise AdapterLoadError(f"adapter {name!r}: calling {entry_point.value}() failed: {exc}") from exc
    return check_adapter(adapter, origin=entry_point.value)


def check_adapter(adapter: object, *, origin: str = "adapter") -> Adapter:
    """``adapter``, once it is known to have a non-empty string ``name`` and a callable ``adapt``;
    raise ``InvalidAdapter`` otherwise."""
    problems = []
    name = getattr(adapter, "name", None)
    if not isinstance(name, str) or not name:
        problems.append("a non-empty string attribute 'name'")
    if not callable(getattr(adapter, "adapt", None)):
        problems.append("a callable 'adapt(message, context)'")
    if problems or not isinstance(adapter, Adapter):
        wanted = " and ".join(problems) or "the Adapter protocol"
        raise InvalidAdapter(f"{origin} returned {type(adapter).__name__}, which lacks {wanted}")
    return adapter
