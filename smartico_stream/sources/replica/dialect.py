"""The dialect interface: how one kind of database is asked for the next page of a view.

A dialect builds the paged keyset query (pure: :meth:`SqlDialect.page_query`) and opens the one
connection reads go through (:class:`ReplicaConnection`: a read-only transaction per page, a
statement timeout, the session's time zone set to ``replica.db_timezone``). Dialects register under
the entry-point group ``smartico_stream.replica_dialects``, as adapters do under theirs, so a package
adding MSSQL or Oracle plugs in without touching this service (docs/replica.md).

The query, for a view ordered by its cursor column ``c`` and id columns ``i1, i2`` (a unique key):

    SELECT * FROM view
    WHERE c >= :c                                                           -- the index range's start
      AND (c > :c OR (c = :c AND (i1 > :i1 OR (i1 = :i1 AND i2 > :i2))))   -- after the last row
      AND c < now() - :visibility_delay                                     -- timestamp views only
    ORDER BY c, i1, i2 LIMIT :page_size

An id view (``c`` an increasing id, no ``i``) is read ``WHERE c > :c AND c <= :horizon``: the id
horizon (the view's highest id of at least the visibility delay ago, kept by the transport) stands
in for the time bound, so an id that commits after a higher one is not skipped.

Ties on ``c`` across a page boundary are resumed by id, never skipped (``c > last`` alone loses them),
and a row whose transaction commits late with an earlier ``c`` is not skipped as long as it commits
within the visibility delay. The OR form (not a row-value comparison) is used because MariaDB does
not turn ``(c, i) > (?, ?)`` into an index range; both databases do for this form.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal, Protocol, runtime_checkable

from smartico_stream.sources.replica.cursor import Position

DIALECT_GROUP = "smartico_stream.replica_dialects"

ViewKind = Literal["timestamp", "id"]

# A column or a view name: letters, digits, _ and $, optionally schema-qualified (schema.view).
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")


def valid_identifier(name: str) -> bool:
    """Whether ``name`` is a plain (optionally schema-qualified) SQL identifier. Names are quoted in
    the query as well; this keeps configuration from carrying SQL."""
    return bool(_IDENTIFIER.match(name))


@dataclass(frozen=True, slots=True)
class ViewQuery:
    """What a page query needs of a view: its name, the order columns (cursor column first, then
    the id columns that make the order unique) and whether the cursor is a time."""

    view: str
    order: tuple[str, ...]
    kind: ViewKind


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """How the reading connection is set up."""

    statement_timeout_s: float
    db_timezone: str
    connect_timeout_s: float


class ReplicaError(RuntimeError):
    """The database could not be read (connection lost, query failed or timed out). The read is
    retried with backoff; the cursor does not move."""


@runtime_checkable
class ReplicaConnection(Protocol):
    """The one connection production reads go through."""

    async def now(self) -> datetime:
        """The database's own current time (the visibility bound is measured on its clock)."""
        ...

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
        """Rows of ``sql`` (built by the dialect) as column -> native value, in one read-only
        transaction. Raises ReplicaError."""
        ...

    async def close(self) -> None: ...


class Dialect(Protocol):
    """A kind of database; what the ``smartico_stream.replica_dialects`` entry points produce."""

    name: str

    def page_query(self, query: ViewQuery, after: Position | None, limit: int,
                   visibility_delay_s: float, up_to: Any = None) -> tuple[str, list[Any]]:
        """The next page's statement and its arguments; ``up_to`` (id views): the highest id the
        page may hold (the id horizon, see the transport)."""
        ...

    def max_query(self, query: ViewQuery) -> str:
        """A statement giving the view's highest cursor value (``start: now`` on an id view, and
        the id horizon)."""
        ...

    def behind_query(self, query: ViewQuery, after: Position | None, visibility_delay_s: float,
                     cap: int) -> tuple[str, list[Any]]:
        """A statement counting (as ``behind``, at most ``cap``) the rows readable after ``after``
        (``smartico-stream lag``)."""
        ...

    async def connect(self, dsn: str, options: ConnectOptions) -> ReplicaConnection:
        """Open the reading connection. Raises ReplicaError."""
        ...


class SqlDialect:
    """The query building every SQL dialect shares; a dialect says how it quotes a name, writes the
    n-th placeholder and writes "the database's now minus a delay"."""

    name = "sql"

    def quote(self, identifier: str) -> str:
        return ".".join(f'"{part}"' for part in identifier.split("."))

    def placeholder(self, index: int) -> str:
        """The placeholder of the ``index``-th argument (1-based)."""
        return "?"

    def visible_before(self, placeholder: str) -> str:
        """The database's now minus ``placeholder`` seconds."""
        raise NotImplementedError

    def limit(self, count: int) -> str:
        return f"LIMIT {int(count)}"

    def page_query(self, query: ViewQuery, after: Position | None, limit: int,
                   visibility_delay_s: float, up_to: Any = None) -> tuple[str, list[Any]]:
        sql, args = self.select_after(query, after, visibility_delay_s, up_to, "*")
        return f"{sql} ORDER BY {', '.join(self.quote(c) for c in query.order)} {self.limit(limit)}", args

    def behind_query(self, query: ViewQuery, after: Position | None, visibility_delay_s: float,
                     cap: int) -> tuple[str, list[Any]]:
        """How many rows the poller would still read after ``after`` (``behind``), counted up to
        ``cap`` so that a huge backlog costs no more than reading ``cap`` index entries."""
        sql, args = self.select_after(query, after, visibility_delay_s, None, "1 AS one")
        return f"SELECT COUNT(*) AS behind FROM ({sql} {self.limit(cap)}) AS ahead", args  # noqa: S608

    def select_after(self, query: ViewQuery, after: Position | None, visibility_delay_s: float, up_to: Any,
                     select: str) -> tuple[str, list[Any]]:
        """``SELECT select FROM view WHERE <after the position, visible>``: the part every query of
        a view shares (no order, no limit)."""
        args: list[Any] = []

        def bind(value: Any) -> str:
            args.append(value)
            return self.placeholder(len(args))

        conditions: list[str] = []
        columns = [self.quote(column) for column in query.order]
        if after is not None:
            if after.inclusive:
                conditions.append(f"{columns[0]} >= {bind(after.cursor)}")
            else:
                if len(after.values) > 1:
                    # Redundant, and what makes it fast: PostgreSQL turns only this bound, not the OR
                    # below, into the start of an index range (else it scans from the first row: 260
                    # ms instead of 2 ms per page at a million rows).
                    conditions.append(f"{columns[0]} >= {bind(after.cursor)}")
                conditions.append(self._after(columns, list(after.values), bind))
        if query.kind == "timestamp":
            conditions.append(f"{columns[0]} < {self.visible_before(bind(visibility_delay_s))}")
        elif up_to is not None:
            conditions.append(f"{columns[0]} <= {bind(up_to)}")
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        # Names are validated identifiers (settings), quoted; every value is a bound argument.
        return f"SELECT {select} FROM {self.quote(query.view)}{where}", args  # noqa: S608

    def _after(self, columns: list[str], values: list[Any], bind: Any) -> str:
        """Lexicographically after ``values``: ``c > v OR (c = v AND (<after the rest>))``."""
        column, value = columns[0], values[0]
        if len(columns) == 1 or len(values) == 1:
            return f"{column} > {bind(value)}"
        # Bound in the order the placeholders appear: positional (%s) dialects depend on it.
        greater, equal = bind(value), bind(value)
        rest = self._after(columns[1:], values[1:], bind)
        return f"({column} > {greater} OR ({column} = {equal} AND ({rest})))"

    def max_query(self, query: ViewQuery) -> str:
        return f"SELECT MAX({self.quote(query.order[0])}) AS high FROM {self.quote(query.view)}"  # noqa: S608


class UnknownDialect(LookupError):
    """No installed package registers a replica dialect under the requested name."""


def available_dialects() -> dict[str, EntryPoint]:
    """Installed replica dialects, name -> entry point, sorted by name. Nothing is imported."""
    return {point.name: point for point in sorted(entry_points(group=DIALECT_GROUP), key=lambda p: p.name)}


def load_dialect(name: str) -> Dialect:
    """The dialect registered as ``name`` (its entry point called with no arguments)."""
    points: Mapping[str, EntryPoint] = available_dialects()
    point = points.get(name)
    if point is None:
        raise UnknownDialect(f"no replica dialect named {name!r}; installed: {', '.join(points) or 'none'}")
    dialect: Dialect = point.load()()
    return dialect


# The dialect a DSN's scheme implies when ``replica.dialect`` is not given.
SCHEME_DIALECTS = {"postgresql": "postgresql", "postgres": "postgresql", "mysql": "mysql", "mariadb": "mysql"}


def dialect_of_dsn(dsn: str) -> str | None:
    scheme = dsn.partition("://")[0].lower()
    return SCHEME_DIALECTS.get(scheme)
