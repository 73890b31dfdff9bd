"""Action sinks: where the outbox relay delivers the actions that rules emitted.

Delivery is at-least-once. The relay calls ``deliver`` with a batch read from the outbox and deletes
(marks) the rows only after ``deliver`` returned; a crash, a timeout or an error between "the
destination has it" and "the outbox row is gone" sends the same actions again. Every action carries
a deterministic ``action_id`` (same event + rule + execution + index -> same id), and every sink puts
that id where the receiver sees it, so receivers deduplicate and the effect is once:

==============  ===========================================================================
sink            where the action_id is
==============  ===========================================================================
JSONL           the ``action_id`` field of each line
webhook         the ``Idempotency-Key`` header, and the body's ``action_id`` field(s)
Kafka           the ``action_id`` header, and the value's ``action_id`` field
RabbitMQ        the AMQP ``message_id`` property, an ``action_id`` header and the body
==============  ===========================================================================

A sink is all-or-error: ``deliver`` returns only when the destination acknowledged every action of
the batch, and raises :class:`SinkError` otherwise (some actions may have been delivered anyway; the
relay resends the whole batch and the receivers drop the repeats). See ``docs/sinks.md``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import http.client
import logging
import math
import os
import random
import re
import ssl
import string
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

import aio_pika
import aiormq.exceptions
from confluent_kafka import KafkaError, KafkaException, Producer

from smartico_stream.engine.actions import Action
from smartico_stream.observability.logging import RateLimiter, get_logger

log = get_logger(__name__)

__all__ = [
    "ActionSink",
    "JsonlSink",
    "KafkaActionSink",
    "RabbitMqActionSink",
    "SinkError",
    "WebhookSink",
    "build_sink",
    "kafka_key",
]


class SinkError(RuntimeError):
    """A batch was not (entirely) acknowledged by the destination.

    ``retryable`` says whether resending can succeed without anybody changing anything: True for
    outages, timeouts, throttling and server errors; False for errors only a person can fix (the
    receiver rejects the request as malformed or unauthorised, a message is too large, a RabbitMQ
    message is unroutable, the exchange does not exist). The relay retries both kinds, because an
    action is never dropped, but it backs off and logs a non-retryable error loudly (error level,
    every time) so somebody fixes the configuration or the receiver."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable

    def __repr__(self) -> str:
        return f"SinkError({str(self)!r}, retryable={self.retryable})"


@runtime_checkable
class ActionSink(Protocol):
    """A destination for actions. One ``deliver`` call at a time per sink (the relay is sequential;
    the implementations here also serialise concurrent calls themselves)."""

    name: str

    async def deliver(self, actions: Sequence[Action]) -> None:
        """Return once the destination acknowledged every action, in order; raise :class:`SinkError`
        otherwise. Some actions may have been delivered before the error: the relay resends the
        batch and the receiver deduplicates by ``action_id``."""
        ...

    async def close(self) -> None:
        """Release connections and files. Idempotent; the sink cannot deliver afterwards."""
        ...


def kafka_key(action: Action) -> bytes:
    """The Kafka key of an action: ``brand:user``, so one user's actions share a partition (and so
    keep their order) and two brands' users with the same id do not collide."""
    return f"{action.brand}:{action.user}".encode()


def _closed_error(name: str) -> SinkError:
    return SinkError(f"{name}: the sink is closed", retryable=False)


# -- JSONL ----------------------------------------------------------------------------------------


class JsonlSink:
    """Appends one ``Action.to_json()`` line per action to a file (the demo's and the tests' sink,
    and a simple hand-off to log shippers).

    Lines are byte-stable: the same actions always give the same bytes, so a replayed batch shows up
    as exactly repeated lines. With ``fsync`` (the default) a batch is on disk before ``deliver``
    returns. One sink per file: the sink repairs a torn last line left by a crash (it drops the
    incomplete line, which the relay resends because its batch was never acknowledged), which is
    only safe when nothing else writes the file."""

    def __init__(self, path: Path | str, fsync: bool = True, name: str | None = None) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.name = name or f"jsonl:{self.path}"
        self._file: IO[bytes] | None = None
        self._closed = False
        self._lock = asyncio.Lock()

    async def deliver(self, actions: Sequence[Action]) -> None:
        if self._closed:
            raise _closed_error(self.name)
        if not actions:
            return
        data = b"".join(action.to_json() + b"\n" for action in actions)
        async with self._lock:
            try:
                await asyncio.to_thread(self._append, data)
            except OSError as exc:
                # Disk full, permissions, a vanished mount: all may be fixed without a restart.
                raise SinkError(f"{self.name}: write failed: {exc}", retryable=True) from exc

    def _append(self, data: bytes) -> None:
        if self._file is not None and self._rotated(self._file):
            self._drop_file()
        file = self._file if self._file is not None else self._open()
        start = file.seek(0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:  # a raw file may take a write in pieces
                written = file.write(view)
                view = view[written or 0 :]
            if self.fsync:
                os.fsync(file.fileno())
        except OSError:
            # Leave no partial line behind: the next batch would be glued onto it.
            try:
                file.truncate(start)
            except OSError:
                self._drop_file()  # reopening repairs the torn tail
            raise

    def _open(self) -> IO[bytes]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        # Unbuffered: a failed write leaves nothing in a buffer, so truncating undoes it exactly.
        file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open across batches
        try:
            if not created:
                _drop_torn_tail(file, self.path, self.name)
            elif self.fsync:
                _fsync_directory(self.path.parent)  # make the new directory entry durable too
        except OSError:
            file.close()
            raise
        self._file = file
        return file

    def _rotated(self, file: IO[bytes]) -> bool:
        """The path no longer names the open file (moved or deleted by a log rotator): writing on
        would append to a file nobody reads."""
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return True
        opened = os.fstat(file.fileno())
        return (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino)

    def _drop_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    async def close(self) -> None:
        self._closed = True
        async with self._lock:
            self._drop_file()


def _drop_torn_tail(file: IO[bytes], path: Path, name: str, chunk: int = 64 * 1024) -> None:
    """Truncate an unterminated last line (a write interrupted by a crash)."""
    size = file.seek(0, os.SEEK_END)
    if size == 0:
        return
    with open(path, "rb") as reader:
        reader.seek(size - 1)
        if reader.read(1) == b"\n":
            return
        end = size
        keep = 0
        while end > 0:
            begin = max(0, end - chunk)
            reader.seek(begin)
            block = reader.read(end - begin)
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = begin + newline + 1
                break
            end = begin
    file.truncate(keep)
    log.warning("dropped a torn last line (its batch was never acknowledged)", sink=name, bytes=size - keep)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some platforms/filesystems cannot open directories; the file itself is synced
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- webhook ----------------------------------------------------------------------------------------

_MAX_ERROR_BODY = 200  # bytes of a response body quoted in an error message
_MAX_RESPONSE_READ = 64 * 1024  # beyond this the connection is dropped instead of drained
_RESERVED_HEADERS = ("idempotency-key", "content-type", "content-length", "host")
# Visible ASCII except '%': header-safe characters that percent-encoding leaves alone.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token


def _latin1(value: str) -> bool:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def idempotency_key(actions: Sequence[Action]) -> str:
    """The ``Idempotency-Key`` of a request: the action_id for one action; for a batch the first
    action's id, ``+`` and the number of actions (``brand/event/rule/1/0+25``). Characters that
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
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"url: scheme must be http or https, got {parts.scheme!r}")
        if not parts.hostname:
            raise ValueError("url: no host")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("url: invalid port") from None
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if backoff_s < 0 or max_backoff_s < 0:
            raise ValueError("backoff_s and max_backoff_s must be >= 0")
        if max_batch_actions < 1:
            raise ValueError("max_batch_actions must be >= 1")
        extra = dict(headers or {})
        for header, value in extra.items():
            if header.lower() in _RESERVED_HEADERS:
                raise ValueError(f"headers: {header!r} is set by the sink and cannot be overridden")
            # Checked now: http.client would refuse them at the first request, outside SinkError.
            if not _HEADER_NAME.fullmatch(header):
                raise ValueError(f"headers: {header!r} is not a valid header name")
            if "\r" in value or "\n" in value or not value.isprintable() or not _latin1(value):
                raise ValueError(f"headers.{header}: the value must be printable Latin-1 without line breaks")
        if parts.username is not None:
            if any(h.lower() == "authorization" for h in extra):
                raise ValueError("url: credentials in the URL and an Authorization header are exclusive")
            credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            extra["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = port or (443 if self._https else 80)
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"User-Agent": "smartico-stream", **extra, "Content-Type": "application/json"}
        # One context for all connections: building one loads the CA store, which is slow.
        self._ssl_context = (ssl_context or ssl.create_default_context()) if self._https else None
        self.timeout_s = float(timeout_s)
        self.max_attempts = max_attempts
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.batch = batch
        self.max_batch_actions = max_batch_actions
        self._rng = rng or random.Random()
        self._sleep = sleep
        # The name shows up in logs and errors: no credentials and no query string (tokens live there).
        self.name = name or f"webhook:{parts.scheme}://{self._host}:{self._port}{parts.path or '/'}"
        self._connection: http.client.HTTPConnection | None = None
        self._connection_lock = threading.Lock()
        self._closed = False
        self._lock = asyncio.Lock()

    async def deliver(self, actions: Sequence[Action]) -> None:
        if self._closed:
            raise _closed_error(self.name)
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


# -- Kafka ----------------------------------------------------------------------------------------

# Errors that resending cannot fix; everything else (broker down, leader moves, timeouts) can be.
_KAFKA_PERMANENT = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
        KafkaError._INVALID_ARG,
        KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
    }
)
_FLUSH_MARGIN_S = 5.0  # beyond message.timeout.ms: every delivery report has arrived by then


class KafkaActionSink:
    """Produces each action to a Kafka topic with an idempotent producer (``enable.idempotence``,
    ``acks=all``; both enforced: the at-least-once guarantee rests on them).

    Key ``brand:user`` (one user's actions stay in one partition, in order), value
    ``Action.to_json()``, headers ``action_id``, ``rule_id`` and ``action`` (UTF-8). ``deliver``
    produces and flushes in a worker thread and returns when every delivery report is a success.
    ``producer_config`` passes to librdkafka untouched (bootstrap servers, SASL/SSL, linger, ...);
    ``delivery_timeout_s`` bounds one ``deliver`` and defaults to ``message.timeout.ms`` plus a
    margin, so the sink never gives up on a message librdkafka is still trying to deliver."""

    def __init__(
        self,
        producer_config: Mapping[str, Any],
        topic: str,
        delivery_timeout_s: float | None = None,
        *,
        name: str | None = None,
    ) -> None:
        if not topic:
            raise ValueError("topic: must not be empty")
        idempotence = producer_config.get("enable.idempotence", True)
        if str(idempotence).lower() not in ("true", "1"):
            raise ValueError("config: enable.idempotence cannot be disabled for an action sink")
        if str(producer_config.get("acks", "all")).lower() not in ("all", "-1"):
            raise ValueError("config: acks must be 'all' for an action sink")
        self.topic = topic
        self.name = name or f"kafka:{topic}"
        self._config: dict[str, Any] = {
            "linger.ms": 5,
            "logger": logging.getLogger("smartico_stream.rdkafka.action_sink"),
            **producer_config,
            "enable.idempotence": True,
            "acks": "all",
            "error_cb": self._on_error,
        }
        if delivery_timeout_s is None:
            message_timeout_ms = producer_config.get(
                "message.timeout.ms", producer_config.get("delivery.timeout.ms", 300_000)
            )
            delivery_timeout_s = float(message_timeout_ms) / 1000 + _FLUSH_MARGIN_S
        self.delivery_timeout_s = float(delivery_timeout_s)
        self._fatal: str | None = None
        self._closed = False
        self._lock = asyncio.Lock()
        self._log_limiter = RateLimiter(burst=5, period_s=60)
        try:
            # Created now so a bad setting fails at start-up, not at the first action.
            self._producer: Producer | None = Producer(self._config)
        except KafkaException as exc:
            raise ValueError(f"config: {exc.args[0].str() if exc.args else exc}") from exc

    @property
    def producer_config(self) -> dict[str, Any]:
        """The librdkafka settings in effect (without the callbacks the sink installs)."""
        return {k: v for k, v in self._config.items() if k not in ("logger", "error_cb")}

    async def deliver(self, actions: Sequence[Action]) -> None:
        if self._closed:
            raise _closed_error(self.name)
        if not actions:
            return
        async with self._lock:
            await asyncio.to_thread(self._deliver_blocking, list(actions))

    def _producer_ready(self) -> Producer:
        if self._producer is not None and self._fatal is not None:
            # An idempotent producer that hit a fatal error (e.g. a sequence gap) refuses every
            # further message; a new instance gets a new producer id and starts clean.
            log.warning("recreating the producer after a fatal error", sink=self.name, error=self._fatal)
            self._producer = None
        if self._producer is None:
            self._fatal = None
            self._producer = Producer(self._config)
        return self._producer

    def _deliver_blocking(self, actions: list[Action]) -> None:
        producer = self._producer_ready()
        deadline = time.monotonic() + self.delivery_timeout_s
        # Per call, so a late report from an earlier, abandoned batch is never counted here.
        failures: list[KafkaError] = []

        def report(error: KafkaError | None, _message: Any) -> None:
            if error is not None:
                failures.append(error)
                if error.fatal():
                    self._fatal = error.str()

        for action in actions:
            headers: list[tuple[str, str | bytes | None]] = [
                ("action_id", action.action_id.encode()),
                ("rule_id", action.rule_id.encode()),
                ("action", action.action.value.encode()),
            ]
            while True:
                try:
                    producer.produce(
                        self.topic, key=kafka_key(action), value=action.to_json(), headers=headers, on_delivery=report
                    )
                    break
                except BufferError:
                    # Local queue full (the cluster is slow or away): let reports drain it.
                    if time.monotonic() >= deadline:
                        raise SinkError(
                            f"{self.name}: local producer queue still full after {self.delivery_timeout_s}s",
                            retryable=True,
                        ) from None
                    producer.poll(0.1)
                except KafkaException as exc:
                    error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                    if error is not None and error.fatal():
                        self._fatal = error.str()
                    raise SinkError(
                        f"{self.name}: produce refused for action {action.action_id}: {error.str() if error else exc}",
                        retryable=error is None or error.code() not in _KAFKA_PERMANENT,
                    ) from exc
        remaining = producer.flush(max(0.0, deadline - time.monotonic()))
        if failures:
            permanent = any(f.code() in _KAFKA_PERMANENT for f in failures)
            reasons = "; ".join(sorted({f"{f.name()}: {f.str()}" for f in failures})[:3])
            raise SinkError(
                f"{self.name}: {len(failures)} of {len(actions)} action(s) refused: {reasons}",
                retryable=not permanent,
            )
        if remaining:
            raise SinkError(
                f"{self.name}: {remaining} message(s) unacknowledged after {self.delivery_timeout_s}s",
                retryable=True,
            )

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = error.str()
            log.error("fatal producer error", sink=self.name, error=error.str())
            return
        allowed, suppressed = self._log_limiter.allow(error.name())
        if allowed:
            log.warning("producer error", sink=self.name, error=error.str(), suppressed=suppressed)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is still queued (bounded by ``timeout_s``) and destroy the producer."""
        self._closed = True
        async with self._lock:
            producer, self._producer = self._producer, None
            if producer is not None:
                await asyncio.to_thread(producer.flush, timeout_s)


# -- RabbitMQ -------------------------------------------------------------------------------------

ROUTING_KEY_FIELDS = frozenset({"action", "brand", "user", "rule_id", "event_type", "event_id"})
_MAX_ROUTING_KEY_BYTES = 255  # AMQP 0-9-1 shortstr


def _check_routing_key_template(template: str) -> None:
    for _literal, field, _spec, _conversion in string.Formatter().parse(template):
        if field is None:
            continue
        if field not in ROUTING_KEY_FIELDS:
            # Also rejects "{}" and attribute/index access: the template is configuration, not code.
            raise ValueError(
                f"routing_key_template: unknown field {field!r}; use {', '.join(sorted(ROUTING_KEY_FIELDS))}"
            )


class RabbitMqActionSink:
    """Publishes each action to a RabbitMQ exchange with publisher confirms.

    Body ``Action.to_json()``, ``content_type`` application/json, persistent delivery mode,
    ``message_id`` = action_id, headers ``action_id``, ``rule_id`` and ``action``. The routing key
    comes from ``routing_key_template`` (fields: ``action``, ``brand``, ``user``, ``rule_id``,
    ``event_type``, ``event_id``). Messages are published ``mandatory``: one that no queue is bound
    to receive comes back from the broker and fails the batch with a non-retryable
    :class:`SinkError`, instead of vanishing.

    The connection is aio-pika's robust connection (it reconnects and re-declares in the
    background), opened on the first ``deliver``. ``declare`` declares the exchange (durable, of
    ``exchange_type``) when the channel opens; without it the exchange must exist. ``timeout_s``
    bounds connecting and each ``deliver`` (including waiting for a reconnection). ``url`` is any
    AMQP URL aio-pika accepts (``amqps://`` and URL query options included)."""

    def __init__(
        self,
        url: str,
        exchange: str,
        routing_key_template: str = "{action}",
        exchange_type: str = "topic",
        declare: bool = True,
        *,
        timeout_s: float = 30.0,
        name: str | None = None,
    ) -> None:
        _check_routing_key_template(routing_key_template)
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.exchange = exchange
        self.routing_key_template = routing_key_template
        self.exchange_type = exchange_type
        self.declare = declare
        self.timeout_s = float(timeout_s)
        self._url = url
        parts = urllib.parse.urlsplit(url)
        # No credentials in a name that ends up in logs.
        self.name = name or f"rabbitmq:{parts.hostname or ''}:{parts.port or 5672}/{exchange}"
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._reset_channel = False  # set by _error, acted on (awaited) at the end of deliver
        self._reset_connection = False
        self._closed = False
        self._lock = asyncio.Lock()

    def routing_key(self, action: Action) -> str:
        return self.routing_key_template.format(
            action=action.action.value,
            brand=action.brand,
            user=action.user,
            rule_id=action.rule_id,
            event_type=action.event_type,
            event_id=action.event_id,
        )

    async def deliver(self, actions: Sequence[Action]) -> None:
        if self._closed:
            raise _closed_error(self.name)
        if not actions:
            return
        routed: list[tuple[Action, str]] = []
        for action in actions:
            key = self.routing_key(action)
            if len(key.encode()) > _MAX_ROUTING_KEY_BYTES:
                raise SinkError(
                    f"{self.name}: routing key for action {action.action_id} is longer than "
                    f"{_MAX_ROUTING_KEY_BYTES} bytes; change routing_key_template",
                    retryable=False,
                )
            routed.append((action, key))
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout_s):
                    exchange = await self._ready_exchange()
                    await self._publish_all(exchange, routed)
            except SinkError:
                raise
            except TimeoutError as exc:
                raise SinkError(
                    f"{self.name}: not confirmed within {self.timeout_s}s (broker slow or unreachable)",
                    retryable=True,
                ) from exc
            except Exception as exc:
                raise self._error(exc) from exc
            finally:
                await self._apply_resets()

    async def _ready_exchange(self) -> aio_pika.abc.AbstractExchange:
        if self._connection is None:
            self._connection = await aio_pika.connect_robust(self._url, timeout=self.timeout_s)
        if self._channel is None or self._exchange is None:
            # on_return_raises: an unroutable mandatory message fails its publish() with PublishError.
            channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
            try:
                if self.exchange == "":
                    exchange = channel.default_exchange
                elif self.declare:
                    exchange = await channel.declare_exchange(self.exchange, self.exchange_type, durable=True)
                else:
                    exchange = await channel.get_exchange(self.exchange, ensure=False)
            except BaseException:
                await _close_quietly(channel)
                raise
            self._channel, self._exchange = channel, exchange
        return self._exchange

    async def _publish_all(self, exchange: aio_pika.abc.AbstractExchange, routed: list[tuple[Action, str]]) -> None:
        # aiormq matches a returned (unroutable) message to its publish by message_id, so one id
        # must not be in flight twice; a repeated action in one batch needs only one copy anyway.
        seen: set[str] = set()
        unique: list[tuple[Action, str]] = []
        for action, key in routed:
            if action.action_id not in seen:
                seen.add(action.action_id)
                unique.append((action, key))
        # Published concurrently so confirms overlap; the frames go out in list order on one
        # channel (aiormq serialises writes FIFO), so the broker receives them in batch order.
        results = await asyncio.gather(
            *(exchange.publish(_message(action), routing_key=key, mandatory=True) for action, key in unique),
            return_exceptions=True,
        )
        errors = [
            (action, key, result)
            for (action, key), result in zip(unique, results, strict=True)
            if isinstance(result, BaseException)
        ]
        if not errors:
            return
        for _a, _k, error in errors:
            if isinstance(error, asyncio.CancelledError):
                raise error
        failed = [self._error(error, action, key) for action, key, error in errors]
        permanent = [e for e in failed if not e.retryable]
        first = (permanent or failed)[0]
        delivered = len(unique) - len(errors)
        raise SinkError(
            f"{first} ({len(errors)} of {len(unique)} failed, {delivered} confirmed)", retryable=not permanent
        )

    def _error(self, exc: BaseException, action: Action | None = None, key: str | None = None) -> SinkError:
        about = f" for action {action.action_id}" if action is not None else ""
        if isinstance(exc, aiormq.exceptions.PublishError):
            routing_key = key if key is not None else "?"
            return SinkError(
                f"{self.name}: unroutable{about}: exchange {self.exchange!r} has no binding for routing key "
                f"{routing_key!r} (bind a queue or change routing_key_template)",
                retryable=False,
            )
        if isinstance(exc, aiormq.exceptions.DeliveryError):  # nack: e.g. a full queue rejecting publishes
            return SinkError(f"{self.name}: broker refused the message{about}: {exc}", retryable=True)
        if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
            self._forget_channel()
            return SinkError(f"{self.name}: exchange {self.exchange!r} does not exist: {exc}", retryable=False)
        if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed | aiormq.exceptions.ChannelAccessRefused):
            self._forget_channel()
            return SinkError(f"{self.name}: exchange {self.exchange!r}: {exc}", retryable=False)
        if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError | aiormq.exceptions.AuthenticationError):
            self._forget_connection()
            return SinkError(f"{self.name}: login refused: {exc}", retryable=False)
        if isinstance(exc, aiormq.exceptions.AMQPChannelError):
            self._forget_channel()
        elif isinstance(exc, ConnectionError | OSError) and self._channel is None:
            return SinkError(f"{self.name}: cannot reach the broker: {type(exc).__name__}: {exc}", retryable=True)
        return SinkError(f"{self.name}: publish failed{about}: {type(exc).__name__}: {exc}", retryable=True)

    def _forget_channel(self) -> None:
        # The robust channel reopens itself after most channel errors, but a fresh channel (and a
        # fresh declare) on the next deliver is the sure way out of a broken one.
        self._reset_channel = True

    def _forget_connection(self) -> None:
        self._reset_connection = True

    async def _apply_resets(self) -> None:
        if self._reset_connection:
            connection, self._connection = self._connection, None
            self._channel = self._exchange = None
            if connection is not None:
                await _close_quietly(connection)
        elif self._reset_channel:
            channel, self._channel, self._exchange = self._channel, None, None
            if channel is not None:
                await _close_quietly(channel)
        self._reset_channel = self._reset_connection = False

    async def close(self) -> None:
        self._closed = True
        async with self._lock:
            connection, self._connection = self._connection, None
            self._channel = self._exchange = None
            if connection is not None:
                await _close_quietly(connection)


def _message(action: Action) -> aio_pika.Message:
    return aio_pika.Message(
        body=action.to_json(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=action.action_id,
        headers={"action_id": action.action_id, "rule_id": action.rule_id, "action": action.action.value},
    )


async def _close_quietly(closable: Any) -> None:
    # Closing a broken channel/connection may fail or hang; there is nothing left to do about it.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(closable.close(), 5)


# -- configuration ----------------------------------------------------------------------------------

_SINK_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # type: (required keys, optional keys) besides "type" and "name"
    "jsonl": (frozenset({"path"}), frozenset({"fsync"})),
    "webhook": (
        frozenset({"url"}),
        frozenset({"timeout_s", "headers", "max_attempts", "backoff_s", "max_backoff_s", "batch", "max_batch_actions"}),
    ),
    "kafka": (frozenset({"topic"}), frozenset({"config", "delivery_timeout_s"})),
    "rabbitmq": (
        frozenset({"url", "exchange"}),
        frozenset({"routing_key_template", "exchange_type", "declare", "timeout_s"}),
    ),
}


def build_sink(spec: Mapping[str, Any], kafka_connection: Mapping[str, Any] | None = None) -> ActionSink:
    """Build a sink from one configuration entry.

    ``spec["type"]`` is ``jsonl``, ``webhook``, ``kafka`` or ``rabbitmq``; the other keys are the
    constructor arguments of that sink (see ``docs/sinks.md``); ``name`` optionally names the sink
    in logs and metrics. For ``kafka``, ``config`` is the librdkafka producer configuration, passed
    through untouched; without it the sink uses ``kafka_connection`` (the source cluster's
    connection settings, see ``smartico_stream.sources.kafka.connection_config``). A given
    ``config`` replaces ``kafka_connection`` entirely rather than merging, so the source's
    credentials never leak to another cluster.

    Raises ValueError naming the offending field for an unknown type, a missing or unknown key or a
    value of the wrong type."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"sink: expected a mapping, got {type(spec).__name__}")
    kind = spec.get("type")
    if kind is None:
        raise ValueError("sink.type: missing (one of jsonl, webhook, kafka, rabbitmq)")
    if kind not in _SINK_KEYS:
        raise ValueError(f"sink.type: unknown sink type {kind!r} (one of jsonl, webhook, kafka, rabbitmq)")
    required, optional = _SINK_KEYS[kind]
    for key in sorted(required):
        value = spec.get(key)
        # "" is RabbitMQ's default exchange (publish straight to the queue named by the routing key).
        if value is None or (value == "" and (kind, key) != ("rabbitmq", "exchange")):
            raise ValueError(f"sink.{key}: required for a {kind} sink")
    for key in sorted(spec):
        if key not in required | optional | {"type", "name"}:
            raise ValueError(f"sink.{key}: unknown key for a {kind} sink")
    name = _opt(spec, "name", str)

    if kind == "jsonl":
        return JsonlSink(
            Path(_req(spec, "path", (str, os.PathLike))),
            fsync=_opt(spec, "fsync", bool, True),
            name=name,
        )
    if kind == "webhook":
        headers = _opt(spec, "headers", Mapping, {})
        for header, value in headers.items():
            if not isinstance(header, str) or not isinstance(value, str):
                raise ValueError(f"sink.headers.{header}: header names and values must be strings")
        return _wrap_value_error(
            lambda: WebhookSink(
                _req(spec, "url", str),
                timeout_s=_opt(spec, "timeout_s", (int, float), 10),
                headers=headers,
                max_attempts=_opt(spec, "max_attempts", int, 5),
                backoff_s=_opt(spec, "backoff_s", (int, float), 0.5),
                max_backoff_s=_opt(spec, "max_backoff_s", (int, float), 30),
                batch=_opt(spec, "batch", bool, False),
                max_batch_actions=_opt(spec, "max_batch_actions", int, 500),
                name=name,
            )
        )
    if kind == "kafka":
        config = spec.get("config")
        if config is None:
            config = kafka_connection
        if config is None:
            raise ValueError("sink.config: required for a kafka sink when no Kafka source connection is configured")
        if not isinstance(config, Mapping):
            raise ValueError("sink.config: expected a mapping of librdkafka settings")
        if "bootstrap.servers" not in config and not any(str(k).startswith("test.mock.") for k in config):
            raise ValueError("sink.config.bootstrap.servers: required for a kafka sink")
        delivery_timeout_s = _opt(spec, "delivery_timeout_s", (int, float), None)
        return _wrap_value_error(
            lambda: KafkaActionSink(
                dict(config), _req(spec, "topic", str), delivery_timeout_s=delivery_timeout_s, name=name
            )
        )
    return _wrap_value_error(
        lambda: RabbitMqActionSink(
            _req(spec, "url", str),
            _req(spec, "exchange", str),
            routing_key_template=_opt(spec, "routing_key_template", str, "{action}"),
            exchange_type=_opt(spec, "exchange_type", str, "topic"),
            declare=_opt(spec, "declare", bool, True),
            timeout_s=_opt(spec, "timeout_s", (int, float), 30.0),
            name=name,
        )
    )


def _req(spec: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = spec[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise ValueError(f"sink.{key}: expected {_type_names(kind)}, got {type(value).__name__}")
    return value


def _opt(spec: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    if spec.get(key) is None:
        return default
    return _req(spec, key, kind)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _type_names(kind: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in _as_tuple(kind))


def _wrap_value_error(build: Callable[[], ActionSink]) -> ActionSink:
    try:
        return build()
    except ValueError as exc:
        message = str(exc)
        raise ValueError(message if message.startswith("sink.") else f"sink.{message}") from exc
