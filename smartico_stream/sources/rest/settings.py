"""The ``rest:`` settings section: the HTTP API, its limits and the inbox behind it (docs/rest.md).
Every problem is reported naming its setting (``rest.max_batch_events: ...``)."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RestSettings(BaseModel):
    """REST source (``source: rest``): an HTTP API whose accepted events are written to an inbox in
    the store before the answer, then read into batches like a Kafka partition."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    host: str = Field(default="0.0.0.0", description="address the API listens on")  # noqa: S104 - server-to-server
    port: int = Field(default=8080, ge=0, le=65535, description="port of the API (0 picks a free port)")
    tls_cert_file: Path | None = Field(
        default=None, description="PEM certificate: serve HTTPS directly (deployments without a terminating ingress)"
    )
    tls_key_file: Path | None = Field(default=None, description="PEM private key of tls_cert_file")
    partitions: int = Field(
        default=8, ge=1, le=1024,
        description="inbox partitions (by user): the unit of order, leases and parallelism across instances",
    )
    max_batch_events: int = Field(default=1000, ge=1, le=100_000, description="events per POST /v1/batch (413 above)")
    max_body_bytes: int = Field(
        default=4_000_000, ge=1024, le=256_000_000, description="largest request body (413 above)"
    )
    max_backlog: int = Field(
        default=200_000, ge=1,
        description="accepted events not yet processed at which requests get 429 with Retry-After",
    )
    retry_after_s: int = Field(default=1, ge=1, le=3600, description="Retry-After of a 429 or 503 answer")
    group_commit_ms: float = Field(
        default=2.0, ge=0, le=1000,
        description="accepted events of concurrent requests are written in one store transaction per this window",
    )
    batch_size: int = Field(default=2000, ge=1, le=100_000, description="inbox rows read per batch")
    poll_interval_s: float = Field(
        default=0.05, gt=0, le=30, description="longest wait for new inbox rows another instance accepted"
    )
    lease_timeout_s: float = Field(
        default=15.0, gt=0, le=3600,
        description="an instance that has not renewed its inbox partitions' leases for this long loses them",
    )
    backlog_check_interval_s: float = Field(
        default=0.5, gt=0, le=60, description="how often the inbox backlog (429, metrics) is read from the store"
    )
    store_timeout_s: float = Field(
        default=5.0, gt=0, le=300, description="a request whose store read or write takes longer gets 503"
    )
    key_cache_s: float = Field(
        default=5.0, ge=0, le=3600, description="API keys are re-read from the store after this long (revocation delay)"
    )
    idempotency_retention_s: float = Field(
        default=86_400.0, gt=0, description="answers stored under an Idempotency-Key are kept this long"
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            missing = "tls_key_file" if self.tls_key_file is None else "tls_cert_file"
            raise ValueError(f"{missing} is required with the other TLS file (give both or neither)")
        return self
