"""The ``replica:`` settings section: the operator's database, its views and how they are polled
(docs/replica.md). Every problem is reported naming its setting (``replica.views.1.cursor: ...``)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any, Literal, Self
from urllib.parse import quote, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from smartico_stream.events.raw import Stream
from smartico_stream.sources.replica.dialect import (
    ViewKind,
    ViewQuery,
    available_dialects,
    dialect_of_dsn,
    valid_identifier,
)

# The spec's cycle: profiles first (so users exist before their transactions), then payments
# (deposits before withdrawals, as configured), casino, sport.
STREAM_ORDER = (Stream.PROFILE, Stream.PAYMENTS, Stream.CASINO, Stream.SPORT)

Start = Literal["beginning", "now"] | datetime | int


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _identifier(value: str, what: str) -> str:
    if not valid_identifier(value):
        raise ValueError(f"{value!r} is not a plain {what} name (letters, digits, _ and $; schema.name allowed)")
    return value


class ViewSettings(_Model):
    """One view (or table) of the replica, read in the order of its cursor column and ids."""

    name: str = Field(description="the view, optionally schema-qualified; also the topic its rows carry")
    stream: Stream = Field(description="the stream its rows are: profile, payments, casino or sport")
    cursor: str = Field(description="the indexed column that grows: a time (kind timestamp) or an id (kind id)")
    id: list[str] = Field(
        default_factory=list,
        description="kind timestamp: the column(s) that, with the cursor, are unique (ties are resumed by them)",
    )
    kind: ViewKind = "timestamp"
    start: Start = Field(
        default="beginning",
        description="where a view with no stored cursor starts: beginning, now, or a time (an id for kind id)",
    )
    scan_hours: list[int] | None = Field(
        default=None, description="hours of the day (UTC, 0-23) in which the view is read; none: always"
    )
    defaults: dict[str, str | int | bool] = Field(
        default_factory=dict,
        description="values for columns the view lacks or leaves null, e.g. {type: deposit} for a deposits view",
    )
    user_column: str = Field(default="user_ext_id", description="the user id column (the record's key)")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _identifier(value, "view")

    @field_validator("cursor", "user_column")
    @classmethod
    def _column(cls, value: str) -> str:
        return _identifier(value, "column")

    @field_validator("id", mode="before")
    @classmethod
    def _one_id_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("id")
    @classmethod
    def _ids(cls, value: list[str]) -> list[str]:
        return [_identifier(column, "column") for column in value]

    @field_validator("scan_hours")
    @classmethod
    def _hours(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            if not value:
                raise ValueError("names no hour; leave it out to read the view at every hour")
            bad = [hour for hour in value if not 0 <= hour <= 23]
            if bad:
                raise ValueError(f"hours are 0 to 23, not {bad[0]}")
        return value

    @field_validator("start")
    @classmethod
    def _aware_start(cls, value: Start) -> Start:
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # a configured time without a zone is UTC
        return value

    @model_validator(mode="after")
    def _kind_fits(self) -> Self:
        if self.kind == "timestamp" and not self.id:
            raise ValueError(f"view {self.name}: id is required with kind timestamp (the column(s) that make "
                             "the order unique, e.g. transaction_id): rows with the same time would be lost")
        if self.kind == "id" and self.id:
            raise ValueError(f"view {self.name}: id must be empty with kind id (the cursor column is the id)")
        if self.kind == "id" and isinstance(self.start, datetime):
            raise ValueError(f"view {self.name}: start is a time, but kind id views start at beginning, now or an id")
        if self.kind == "timestamp" and isinstance(self.start, int) and not isinstance(self.start, bool):
            raise ValueError(f"view {self.name}: start is a number, but kind timestamp views start at beginning, "
                             "now or a time")
        if self.cursor in self.id:
            raise ValueError(f"view {self.name}: the cursor column {self.cursor} is also an id column")
        return self

    def query(self) -> ViewQuery:
        return ViewQuery(self.name, (self.cursor, *self.id), self.kind)

    def scanned_at(self, moment: datetime) -> bool:
        """Whether the view is read at ``moment`` (its scan hours, in UTC)."""
        return self.scan_hours is None or moment.astimezone(UTC).hour in self.scan_hours


def _spec_views() -> list[ViewSettings]:
    """The views the data-integration spec asks an operator for ("Replica DB")."""
    return [
        ViewSettings(name="users", stream=Stream.PROFILE, cursor="dt_update", id=["ext_brand_id", "user_ext_id"]),
        ViewSettings(name="deposits", stream=Stream.PAYMENTS, cursor="dt_finalized", id=["transaction_id"],
                     defaults={"type": "deposit"}),
        ViewSettings(name="withdrawals", stream=Stream.PAYMENTS, cursor="dt_finalized", id=["transaction_id"],
                     defaults={"type": "withdrawal_completed"}),
        ViewSettings(name="casino", stream=Stream.CASINO, cursor="dt", id=["bet_id"], start="now"),
        ViewSettings(name="sport", stream=Stream.SPORT, cursor="dt", id=["transaction_id"], start="now"),
    ]


class ReplicaSettings(_Model):
    """Replica-database source (``source: replica``): views polled in cycles, each view's cursor
    stored with the batch it covers (docs/replica.md)."""

    dialect: str | None = Field(default=None, description="replica dialect (entry point); default: from the DSN")
    dsn: str = Field(
        default="",
        description="postgresql://USER@HOST:PORT/DB or mysql://USER@HOST:PORT/DB (mariadb:// too); the password "
        "is better given in the variable named by password_env",
    )
    password_env: str = Field(
        default="SMARTICO_STREAM_REPLICA_PASSWORD",
        description="environment variable holding the password, if set (overrides the DSN's)",
    )
    views: list[ViewSettings] = Field(default_factory=_spec_views, description="the views, see docs/replica.md")
    visibility_delay_s: float = Field(
        default=5.0, ge=0, le=3600,
        description="rows are read only once their cursor time is this far behind the database's now(), so a "
        "transaction committing late with an earlier time is not skipped; longer than the longest write transaction",
    )
    page_size: int = Field(default=5000, ge=1, le=100_000, description="rows per query (LIMIT): one batch")
    statement_timeout_s: float = Field(default=30.0, gt=0, le=3600, description="a page query is cancelled after this")
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
    cycle_wait_s: float = Field(default=0.0, ge=0, le=86_400, description="pause after each cycle over the views")
    idle_wait_s: float = Field(
        default=1.0, gt=0, le=60, description="pause after a cycle that found no new row (at least cycle_wait_s)"
    )
    db_timezone: str = Field(
        default="UTC", description="the zone of timestamps stored without one (IANA name, e.g. Europe/Malta)"
    )
    lease_timeout_s: float = Field(
        default=30.0, gt=0, le=3600,
        description="another instance takes over the views when this instance has not renewed its lease for this long",
    )
    retry_backoff_s: float = Field(default=1.0, gt=0, le=60, description="first pause after a failed read")
    max_backoff_s: float = Field(default=30.0, gt=0, le=600, description="longest pause between failed reads")

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, value: str, info: ValidationInfo) -> str:
        if value and "://" not in value:
            raise ValueError("must be a URL such as postgresql://USER@HOST:PORT/DB or mysql://USER@HOST:PORT/DB")
        if value and info.data.get("dialect") is None and dialect_of_dsn(value) is None:
            scheme = value.partition("://")[0]
            raise ValueError(f"no dialect for scheme {scheme}://; use postgresql:// or mysql://, or name one in "
                             "replica.dialect")
        return value

    @field_validator("db_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a known time zone (an IANA name such as UTC or Europe/Malta)") from None
        return value

    @field_validator("dialect")
    @classmethod
    def _installed(cls, value: str | None) -> str | None:
        if value is not None:
            installed = available_dialects()
            if value not in installed:
                raise ValueError(f"no replica dialect named {value!r}; installed: {', '.join(installed) or 'none'}")
        return value

    @field_validator("views")
    @classmethod
    def _unique_views(cls, value: list[ViewSettings]) -> list[ViewSettings]:
        names = [view.name for view in value]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"view {repeated[0]} is configured twice")
        return value

    @model_validator(mode="after")
    def _backoff(self) -> Self:
        if self.max_backoff_s < self.retry_backoff_s:
            raise ValueError("replica.max_backoff_s must be at least replica.retry_backoff_s")
        return self

    def dialect_name(self) -> str:
        return self.dialect or dialect_of_dsn(self.dsn) or "postgresql"

    def zone(self) -> tzinfo:
        return ZoneInfo(self.db_timezone)

    def cycle(self) -> list[ViewSettings]:
        """The views in the order one cycle reads them (see STREAM_ORDER; configured order within a stream)."""
        return sorted(self.views, key=lambda view: STREAM_ORDER.index(view.stream))

    def dsn_with_password(self, environ: Mapping[str, str]) -> str:
        """The DSN, with the password from ``password_env`` when that variable is set."""
        password = environ.get(self.password_env)
        if not password:
            return self.dsn
        parts = urlsplit(self.dsn)
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}{port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def server_of(dsn: str) -> str:
    """``scheme://HOST:PORT/DB`` of a DSN, without user or password (for messages)."""
    parts = urlsplit(dsn)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or 'localhost'}{port}{parts.path}"
