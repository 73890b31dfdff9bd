"""The webhook sink: actions POSTed to an HTTP(S) endpoint with an ``Idempotency-Key``."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import http.client
import math
import random
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from smartico_stream.engine.actions import Action
from smartico_stream.observability.logging import get_logger
from smartico_stream.sinks.base import (
    SinkError,
    SinkSettingsBase,
    closed_error,
    setting_error,
    setting_errors,
    setting_problem,
)

log = get_logger(__name__)

__all__ = ["WebhookSink", "WebhookSinkSettings", "idempotency_key"]

_MAX_ERROR_BODY = 200  # bytes of a response body quoted in an error message
_MAX_RESPONSE_READ = 64 * 1024  # beyond this the connection is dropped instead of drained
_RESERVED_HEADERS = ("idempotency-key", "content-type", "content-length", "host")
# Visible ASCII except '%': header-safe characters that percent-encoding leaves alone.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """Where a webhook URL points, and the Basic credentials it carries (if any)."""

    https: bool
    host: str
    port: int
    path: str
    target: str  # path and query, as sent in the request line
    credentials: str | None  # "user:password", unquoted

    @property
    def public(self) -> str:
        """The endpoint without credentials or query string (tokens live there): safe for logs."""
        return f"{'https' if self.https else 'http'}://{self.host}:{self.port}{self.path}"


def _endpoint(url: str) -> _Endpoint:
    """Parse a webhook URL; ValueError (without the setting's name) when it cannot be used."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"scheme must be http or https, got {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("invalid port") from None
    https = parts.scheme == "https"
    credentials = None
    if parts.username is not None:
        credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    return _Endpoint(
        https=https,
        host=parts.hostname,
        port=port or (443 if https else 80),
        path=parts.path or "/",
        target=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
        credentials=credentials,
    )


def _header_problems(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """(header, what is wrong) for every extra header that cannot be sent as given. Checked when the
    sink is configured: http.client would refuse them only at the first request, outside SinkError."""
    problems = []
    for header, value in headers.items():
        if header.lower() in _RESERVED_HEADERS:
            problems.append((header, "set by the sink, cannot be overridden"))
        elif not _HEADER_NAME.fullmatch(header):
            problems.append((header, "not a valid header name (an RFC 9110 token: no spaces or separators)"))
        elif "\r" in value or "\n" in value or not value.isprintable() or not _latin1(value):
            problems.append((header, "the value must be printable Latin-1 without line breaks"))
    return problems


def _has_authorization(headers: Mapping[str, str]) -> bool:
    return any(h.lower() == "authorization" for h in headers)


def _latin1(value: str) -> bool:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


class WebhookSinkSettings(SinkSettingsBase):
    """``type: webhook``: POST actions to an HTTP(S) endpoint."""

    type: Literal["webhook"] = Field(default="webhook", description="selects this sink")
    url: str = Field(
        description="the http:// or https:// endpoint; `user:password@` in it becomes a Basic Authorization header",
    )
    timeout_s: float = Field(default=10.0, gt=0, description="bounds connecting and each wait for the server")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="added to every request (`Authorization` and the like); `Idempotency-Key`, `Content-Type`, "
        "`Content-Length` and `Host` are the sink's",
    )
    max_attempts: int = Field(default=5, ge=1, description="attempts per request, the first included")
    backoff_s: float = Field(default=0.5, ge=0, description="base of the exponential backoff (full jitter)")
    max_backoff_s: float = Field(default=30.0, ge=0, description="cap of any single wait, `Retry-After` included")
    batch: bool = Field(default=False, description="one request per batch with a JSON array (false: one per action)")
    max_batch_actions: int = Field(default=500, ge=1, description="with `batch`, the most actions per request")

    @field_validator("url")
    @classmethod
    def _usable_url(cls, url: str) -> str:
        try:
            _endpoint(url)
        except ValueError as exc:
            raise setting_problem(str(exc)) from None
        return url

    @field_validator("headers")
    @classmethod
    def _sendable_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        problems = _header_problems(headers)
        if problems:
            raise setting_errors([((header,), reason, headers[header]) for header, reason in problems])
        return headers

    @model_validator(mode="after")
    def _one_authorization(self) -> WebhookSinkSettings:
        if _endpoint(self.url).credentials is not None and _has_authorization(self.headers):
            raise setting_error(("url",), "credentials in the URL and an Authorization header are exclusive", None)
        return self

    def default_name(self) -> str:
        return WebhookSink.default_name(self.url)

    def create(self, kafka_connection: Mapping[str, Any] | None = None) -> WebhookSink:
        return WebhookSink(
            self.url,
            timeout_s=self.timeout_s,
            headers=self.headers,
            max_attempts=self.max_attempts,
            backoff_s=self.backoff_s,
            max_backoff_s=self.max_backoff_s,
            batch=self.batch,
            max_batch_actions=self.max_batch_actions,
            name=self.name,
        )


def idempotency_key(actions: Sequence[Action]) -> str:
    """The ``Idempotency-Key`` of a request: the action_id for one action; for a batch the first
    action's id, ``+`` and the number of actions (``brand/event/rule/0+25``). Characters that
    cannot travel in a header (non-ASCII, spaces, control characters, ``%``) are percent-encoded."""
    key = actions[0].action_id if len(actions) == 1 else f"{actions[0].action_id}+{len(actions)}"
    return urllib.parse.quote(key, safe=_HEADER_SAFE)


class _Response:
    __slots__ = ("body", "reason", "retry_after", "status")

    def __init__(self, status: int, reason: str, retry_after: str | None, body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.retry_after = retry_after
        self.body = body

    def describe(self) -> str:
        snippet = self.body[:_MAX_ERROR_BODY].decode("utf-8", "replace").strip()
        return f"HTTP {self.status} {self.reason}" + (f": {snippet}" if snippet else "")


class WebhookSink:
    """POSTs actions to an HTTP(S) endpoint: one JSON action per request, or, with ``batch``, the
    batch as JSON arrays of at most ``max_batch_actions`` actions per request (the relay hands over
    up to ``outbox.batch_size`` at a time; receivers often cap request bodies near 1 MB).

    Every request carries ``Content-Type: application/json`` and ``Idempotency-Key`` (see
    :func:`idempotency_key`). A 2xx answer is an acknowledgement; so is 409 Conflict (the receiver
    says it already has this key). Connection errors, timeouts, 408, 429 and 5xx are retried up to
    ``max_attempts`` times per request, waiting ``Retry-After`` (seconds or an HTTP date) when the
    answer has one, else an exponential backoff with full jitter (uniform in
    ``[0, min(max_backoff_s, backoff_s * 2**(attempt-1))]``), never more than ``max_backoff_s``. Any
    other answer (4xx, a redirect) fails the batch at once with a non-retryable :class:`SinkError`.
    Requests are sent one after the other, in batch order, on one kept-alive connection.

    ``timeout_s`` bounds connecting and each wait for the server (not the whole request).
    ``headers`` are added to every request (``Authorization`` and the like); credentials in the URL
    (``https://user:pass@host/``) become a Basic ``Authorization`` header. ``rng`` draws the jitter
    (inject a seeded ``random.Random`` in tests); ``sleep`` waits between attempts."""

    def __init__(
        self,
        url: str,
        timeout_s: float = 10,
        headers: Mapping[str, str] | None = None,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30,
        batch: bool = False,
        max_batch_actions: int = 500,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        ssl_context: ssl.SSLContext | None = None,
        name: str | None = None,
    ) -> None:
        try:
            endpoint = _endpoint(url)
        except ValueError as exc:
            raise ValueError(f"url: {exc}") from None
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if backoff_s < 0 or max_backoff_s < 0:
            raise ValueError("backoff_s and max_backoff_s must be >= 0")
        if max_batch_actions < 1:
            raise ValueError("max_batch_actions must be >= 1")
        extra = dict(headers or {})
        problems = _header_problems(extra)
        if problems:
            raise ValueError("; ".join(f"headers.{header}: {reason}" for header, reason in problems))
        if endpoint.credentials is not None:
            if _has_authorization(extra):
                raise ValueError("url: credentials in the URL and an Authorization header are exclusive")
            extra["Authorization"] = "Basic " + base64.b64encode(endpoint.credentials.encode()).decode()
        self._https = endpoint.https
        self._host = endpoint.host
        self._port = endpoint.port
        self._target = endpoint.target
        self._headers = {"User-Agent": "smartico-stream", **extra, "Content-Type": "application/json"}
        # One context for all connections: building one loads the CA store, which is slow.
        self._ssl_context = (ssl_context or ssl.create_default_context()) if self._https else None
        self.timeout_s = float(timeout_s)
        self.max_attempts = max_attempts
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.batch = batch
        self.max_batch_actions = max_batch_actions
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter, not cryptography
        self._sleep = sleep
        # The name shows up in logs and errors: no credentials and no query string (tokens live there).
        self.name = name or f"webhook:{endpoint.public}"
        self._connection: http.client.HTTPConnection | None = None
        self._connection_lock = threading.Lock()
        self._closed = False
        self._lock = asyncio.Lock()

    @staticmethod
    def default_name(url: str) -> str:
        """The sink's name without ``name``: ``webhook:<scheme>://<host>:<port><path>``, without
        credentials or query string. Raises ValueError for a URL the sink cannot use."""
        return f"webhook:{_endpoint(url).public}"

    async def deliver(self, actions: Sequence[Action]) -> None:
        if self._closed:
            raise closed_error(self.name)
        if not actions:
            return
        async with self._lock:
            if self.batch:
                for start in range(0, len(actions), self.max_batch_actions):
                    chunk = actions[start : start + self.max_batch_actions]
                    body = b"[" + b",".join(action.to_json() for action in chunk) + b"]"
                    await self._post(body, chunk, delivered_before=start, total=len(actions))
                return
            for index, action in enumerate(actions):
                await self._post(action.to_json(), (action,), delivered_before=index, total=len(actions))

    async def _post(self, body: bytes, actions: Sequence[Action], delivered_before: int, total: int) -> None:
        headers = {**self._headers, "Idempotency-Key": idempotency_key(actions)}
        what = f"action {actions[0].action_id}" if len(actions) == 1 else f"batch of {len(actions)}"
        progress = f" ({delivered_before} of {total} delivered before it)" if delivered_before else ""
        last = ""
        for attempt in range(1, self.max_attempts + 1):
            wait: float | None = None
            try:
                response = await asyncio.to_thread(self._request, body, headers)
            except (OSError, http.client.HTTPException) as exc:
                # Refused, reset, closed without an answer, timed out: the receiver may or may not
                # have it; sending again is safe because of the Idempotency-Key.
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                status = response.status
                if 200 <= status < 300 or status == 409:
                    if status == 409:
                        key = headers["Idempotency-Key"]
                        log.debug("webhook answered 409: already delivered", sink=self.name, key=key)
                    return
                last = response.describe()
                if not (status in (408, 429) or 500 <= status < 600):
                    raise SinkError(
                        f"{self.name}: {what} refused with {last}{progress}; not retried by the sink",
                        retryable=False,
                    )
                wait = _retry_after_s(response.retry_after)
            if attempt == self.max_attempts:
                break
            delay = min(wait, self.max_backoff_s) if wait is not None else self._backoff(attempt)
            log.info(
                "webhook attempt failed; retrying", sink=self.name, attempt=attempt, error=last, delay_s=round(delay, 3)
            )
            await self._sleep(delay)
        raise SinkError(
            f"{self.name}: {what} not acknowledged after {self.max_attempts} attempt(s), last: {last}{progress}",
            retryable=True,
        )

    def _backoff(self, attempt: int) -> float:
        # Full jitter: spreads the retries of many relays hitting one receiver after an outage.
        ceiling = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return self._rng.uniform(0, ceiling)

    def _new_connection(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout_s, context=self._ssl_context
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)

    def _request(self, body: bytes, headers: Mapping[str, str]) -> _Response:
        """One request/response on the kept-alive connection (runs in a worker thread)."""
        with self._connection_lock:
            # Taken out while in use and handed back only after a clean, complete exchange, so a
            # thread left running by a cancelled deliver never shares it with the next one.
            connection, self._connection = self._connection, None
        reused = connection is not None
        if connection is None:
            connection = self._new_connection()
        try:
            try:
                connection.request("POST", self._target, body=body, headers=dict(headers))
                response = connection.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if not reused:
                    raise
                # The server closed the idle kept-alive connection: not a failed attempt, reconnect.
                connection.close()
                connection = self._new_connection()
                connection.request("POST", self._target, body=body, headers=dict(headers))
                response = connection.getresponse()
            data = response.read(_MAX_RESPONSE_READ)
            result = _Response(response.status, response.reason, response.getheader("Retry-After"), data)
            if response.isclosed() and not response.will_close:
                with self._connection_lock:
                    if self._connection is None:
                        self._connection, connection = connection, None
            if connection is not None:
                connection.close()
            return result
        except BaseException:
            if connection is not None:
                connection.close()
            raise

    async def close(self) -> None:
        self._closed = True
        async with self._lock:
            with self._connection_lock:
                connection, self._connection = self._connection, None
            if connection is not None:
                connection.close()


def _retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), None if absent or
    unreadable (the caller then uses its own backoff)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - time.time())
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds
