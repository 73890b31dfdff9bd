"""The HTTP API (FastAPI on uvicorn): ``POST /v1/events``, ``POST /v1/batch``, ``GET /v1/health``
and the OpenAPI document at ``/openapi.json`` (docs/rest.md).

A request is checked in this order, so that each answer says the first thing wrong and costs no more
than it must: the API key (401, without saying whether the key or a brand exists), the ``stream``
parameter and the ``Idempotency-Key`` header (400), the body's size (413), a stored answer for the
``Idempotency-Key`` (replayed as it was), the backlog (429), the body's JSON and shape (400) and
event count (413), every event through the pipeline's decode, adapter and validation (a rejected event
is an entry of the 200 answer, worded as a dead letter), the key's brands (403, nothing kept), and
then the inbox write (503 when the store does not take it). A 200 means every accepted event is
committed to the inbox.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask
from starlette.responses import Response

from smartico_stream import __version__
from smartico_stream.events.raw import Stream
from smartico_stream.observability.metrics import Metrics
from smartico_stream.pipeline.pipeline import Pipeline, load_json_keeping_literals
from smartico_stream.sources.rest.inbox import BacklogMonitor, InboxWriter, StoreUnavailable
from smartico_stream.sources.rest.keys import matches, parse_token
from smartico_stream.sources.rest.settings import RestSettings
from smartico_stream.sources.rest.validation import Checked, check_events, partition_of
from smartico_stream.store.rest import ApiKey, ApiKeyStore, IdempotentAnswer, InboxEvent, InboxStore, StoredAnswer

EVENTS_ROUTE = "/v1/events"
BATCH_ROUTE = "/v1/batch"
HEALTH_ROUTE = "/v1/health"
_IDEMPOTENCY_KEY = re.compile(r"[!-~]{1,200}")  # printable ASCII, no spaces
_STREAMS = [stream.value for stream in Stream]

# Seals an accepted event's body for the inbox (the PII key ring), bound to its brand and user.
Sealer = Callable[[bytes, str], bytes]


# -- the answers, as documented -----------------------------------------------------------------


class EventResult(BaseModel):
    """What became of one event of the request."""

    index: int = Field(description="the event's place in the request (0 for POST /v1/events)")
    status: Literal["accepted", "ignored", "rejected"] = Field(
        description="accepted: durable in the inbox; ignored: the adapter maps it to no event; rejected: not kept"
    )
    stage: str | None = Field(default=None, description="rejected: the pipeline stage that refused it (decode, adapt)")
    error_class: str | None = Field(default=None, description="rejected: the dead-letter error class")
    reason: str | None = Field(default=None, description="rejected: field by field, never quoting a value")


class IngestAnswer(BaseModel):
    accepted: int
    ignored: int
    rejected: int
    results: list[EventResult]


class ErrorAnswer(BaseModel):
    error: Literal["unauthorized", "forbidden", "bad_request", "too_large", "conflict", "backlog", "unavailable"]
    message: str


class HealthAnswer(BaseModel):
    status: Literal["ok", "unavailable"]
    backlog_events: int = Field(description="accepted events not yet processed (all instances)")
    oldest_age_s: float = Field(description="how long the oldest of them has waited (0: none waits)")


# -- authentication -----------------------------------------------------------------------------


class KeyCache:
    """API keys by id, re-read from the store after ``ttl_s`` (so a revocation takes that long at most)."""

    def __init__(self, keys: ApiKeyStore, ttl_s: float, timeout_s: float) -> None:
        self._keys = keys
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    async def authenticate(self, authorization: str | None) -> ApiKey | None:
        """The active key a ``Bearer`` header names, else None; StoreUnavailable if it cannot be read."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        parsed = parse_token(token.strip()) if scheme.lower() == "bearer" else None
        if parsed is None:
            return None
        key_id, secret = parsed
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is None or now - cached[0] >= self._ttl_s:
            try:
                key = await asyncio.wait_for(self._keys.get(key_id), self._timeout_s)
            except Exception as exc:  # noqa: BLE001 - a store that does not answer is a 503
                raise StoreUnavailable(type(exc).__name__) from None
            if len(self._cache) > 10_000:
                self._cache.clear()  # bounded: ids of made-up keys must not grow it without end
            self._cache[key_id] = cached = (now, key)
        key = cached[1]
        if key is None or not key.active or not matches(secret, key.key_hash):
            return None
        return key


# -- the application ----------------------------------------------------------------------------


@dataclass
class Api:
    """What the routes share: settings, the key cache, the pipeline that checks events, the inbox."""

    settings: RestSettings
    keys: KeyCache
    pipeline: Pipeline
    inbox: InboxStore
    writer: InboxWriter
    monitor: BacklogMonitor
    seal: Sealer
    metrics: Metrics
    # Called once an answer accepting events has been sent: wakes the batch loop. After the answer,
    # not after the inbox commit, so this instance's processing never races its own answer out.
    on_answered: Callable[[], None] = lambda: None
    # (key id, Idempotency-Key) -> its lock and how many requests hold or wait for it
    _idempotency_locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = field(default_factory=dict)


class _Refused(Exception):
    def __init__(self, status: int, error: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.headers = status, error, message, headers or {}


def _json(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _refusal(refused: _Refused) -> Response:
    return _json(refused.status, orjson.dumps({"error": refused.error, "message": refused.message}), refused.headers)


def _unavailable(retry_after: int) -> _Refused:
    return _Refused(503, "unavailable", "the store is unavailable; retry later (events are identified by their "
                    "transaction ids, a retry is not applied twice)", {"Retry-After": str(retry_after)})


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _Refused(413, "too_large", f"the body is over rest.max_body_bytes={limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Refused(413, "too_large", f"the body is over rest.max_body_bytes={limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes, single: bool, max_events: int) -> list[object]:
    if not body.strip():
        raise _Refused(400, "bad_request", "the body is empty; send JSON")
    try:
        value = load_json_keeping_literals(body)
    except (orjson.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, orjson.JSONDecodeError) else type(exc).__name__
        raise _Refused(400, "bad_request", f"the body is not valid JSON: {reason}") from None
    if single:
        if not isinstance(value, dict):
            raise _Refused(400, "bad_request", "the body of POST /v1/events must be one JSON object (an event)")
        return [value]
    if not isinstance(value, list):
        raise _Refused(400, "bad_request", "the body of POST /v1/batch must be a JSON array of events")
    if len(value) > max_events:
        raise _Refused(413, "too_large", f"{len(value)} events, over rest.max_batch_events={max_events}")
    return value


def _answer(checked: list[Checked]) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    counts = {"accepted": 0, "ignored": 0, "rejected": 0}
    for item in checked:
        if item.rejected is not None:
            stage, error_class, reason = item.rejected
            results.append({"index": item.index, "status": "rejected", "stage": stage, "error_class": error_class,
                            "reason": reason})
            counts["rejected"] += 1
        else:
            status = "ignored" if item.ignored else "accepted"
            results.append({"index": item.index, "status": status})
            counts[status] += 1
    return {**counts, "results": results}


async def _ingest(api: Api, request: Request, single: bool) -> Response:
    settings = api.settings
    if not api.monitor.store_ok:
        raise _unavailable(settings.retry_after_s)
    key = await api.keys.authenticate(request.headers.get("authorization"))
    if key is None:
        raise _Refused(401, "unauthorized", "a valid API key is required (Authorization: Bearer <key>)",
                       {"WWW-Authenticate": "Bearer"})
    stream_name = request.query_params.get("stream")
    if stream_name not in _STREAMS:
        raise _Refused(400, "bad_request", f"the query parameter stream must be one of {', '.join(_STREAMS)}")
    stream = Stream(stream_name)
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise _Refused(400, "bad_request", "Idempotency-Key must be 1 to 200 printable ASCII characters")
    body = await _read_body(request, settings.max_body_bytes)
    if idempotency_key is None:
        return await _accept(api, key, stream, body, single, None)
    # One request per key at a time in this process: a concurrent repeat waits, then replays.
    lock_key = (key.key_id, idempotency_key)
    lock, users = api._idempotency_locks.get(lock_key, (asyncio.Lock(), 0))
    api._idempotency_locks[lock_key] = (lock, users + 1)
    try:
        async with lock:
            request_hash = hashlib.sha256(f"{request.url.path}\x1f{stream.value}\x1f".encode() + body).hexdigest()
            try:
                stored = await asyncio.wait_for(api.inbox.answer(key.key_id, idempotency_key), settings.store_timeout_s)
            except Exception:  # noqa: BLE001 - a store that does not answer is a 503
                raise _unavailable(settings.retry_after_s) from None
            if stored is not None:
                if stored.request_hash != request_hash:
                    raise _Refused(409, "conflict", "this Idempotency-Key was used for another request")
                return _json(stored.status, stored.body, {"Idempotent-Replayed": "true"})
            return await _accept(api, key, stream, body, single, (idempotency_key, request_hash))
    finally:
        # Dropped by the last request holding or waiting for it, so the table stays small.
        lock, users = api._idempotency_locks[lock_key]
        if users == 1:
            del api._idempotency_locks[lock_key]
        else:
            api._idempotency_locks[lock_key] = (lock, users - 1)


async def _accept(api: Api, key: ApiKey, stream: Stream, body: bytes, single: bool,
                  idempotency: tuple[str, str] | None) -> Response:
    settings = api.settings
    if api.monitor.backlog.events > settings.max_backlog:
        raise _Refused(429, "backlog", f"over rest.max_backlog={settings.max_backlog} events wait to be processed; "
                       "retry later", {"Retry-After": str(settings.retry_after_s)})
    items = _parse(body, single, settings.max_batch_events)
    checked = check_events(api.pipeline, items, stream)
    allowed = set(key.brands)
    for item in checked:
        if item.brand is not None and item.brand not in allowed:
            raise _Refused(403, "forbidden", f"event {item.index}: this API key may not send events for its brand; "
                           "nothing of the request was kept")
    events = [
        InboxEvent(partition_of(item.brand, item.user, settings.partitions), stream.value,
                   f"{item.brand}\x1f{item.user}", api.seal(item.body, f"{item.brand}\x1f{item.user}"))
        for item in checked if item.rejected is None and item.brand is not None and item.user is not None
    ]
    answer = _answer(checked)
    encoded = orjson.dumps(answer)
    stored = None
    if idempotency is not None:
        stored = IdempotentAnswer(key.key_id, idempotency[0], StoredAnswer(idempotency[1], 200, encoded))
    if events or stored is not None:
        try:
            await api.writer.write(events, stored)
        except StoreUnavailable:
            raise _unavailable(settings.retry_after_s) from None
    counter = api.metrics.rest_events
    for result in ("accepted", "ignored", "rejected"):
        if answer[result]:
            counter.labels(result).inc(answer[result])
    response = _json(200, encoded)
    if events:
        response.background = BackgroundTask(api.on_answered)  # run once the answer is sent
    return response


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorAnswer, "description": "not JSON, not the expected shape, or a bad parameter or header"},
    401: {"model": ErrorAnswer, "description": "no API key, or not a valid one",
          "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}}},
    403: {"model": ErrorAnswer, "description": "an event of a brand this key is not bound to; nothing was kept"},
    409: {"model": ErrorAnswer, "description": "the Idempotency-Key was used for a different request"},
    413: {"model": ErrorAnswer, "description": "over rest.max_body_bytes or rest.max_batch_events"},
    429: {"model": ErrorAnswer, "description": "over rest.max_backlog events wait to be processed",
          "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}},
    503: {"model": ErrorAnswer, "description": "the store is unavailable",
          "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}},
}


def _operation(body_schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "parameters": [
            {"name": "stream", "in": "query", "required": True, "description": "the stream the events are of",
             "schema": {"type": "string", "enum": _STREAMS}},
            {"name": "Idempotency-Key", "in": "header", "required": False,
             "description": "makes the whole request idempotent: a repeat gets the stored answer",
             "schema": {"type": "string", "pattern": "^[!-~]{1,200}$"}},
        ],
        "requestBody": {"required": True, "description": description,
                        "content": {"application/json": {"schema": body_schema}}},
        "security": [{"bearerAuth": []}],
    }


def build_app(api: Api | None) -> FastAPI:
    """The ASGI application over ``api`` (None: only to render its OpenAPI document)."""
    app = FastAPI(title="smartico-stream REST ingestion", version=__version__, docs_url=None, redoc_url=None,
                  description="Server-to-server events into the smartico-stream pipeline (docs/rest.md).")

    def served() -> Api:
        if api is None:
            raise RuntimeError("this application only renders its OpenAPI document")
        return api

    async def handle(route: str, work: Callable[[], Any]) -> Response:
        metrics = served().metrics
        started = time.perf_counter()
        try:
            response: Response = await work()
        except _Refused as refused:
            response = _refusal(refused)
        metrics.rest_requests.labels(route, str(response.status_code)).inc()
        metrics.rest_request_seconds.labels(route).observe(time.perf_counter() - started)
        return response

    ok: dict[int | str, dict[str, Any]] = {
        200: {"model": IngestAnswer, "description": "per-event results; every accepted event is durable"}
    }

    @app.post(EVENTS_ROUTE, response_model=None, responses={**ok, **_ERRORS}, summary="Send one event",
              openapi_extra=_operation({"type": "object", "description": "one event in the operator's format"},
                                       "one event, mapped by the configured adapter"))
    async def post_event(request: Request) -> Response:
        return await handle(EVENTS_ROUTE, lambda: _ingest(served(), request, single=True))

    @app.post(BATCH_ROUTE, response_model=None, responses={**ok, **_ERRORS}, summary="Send a batch of events",
              openapi_extra=_operation({"type": "array", "items": {}, "description": "events in the operator's format"},
                                       f"up to rest.max_batch_events (default {RestSettings().max_batch_events}) "
                                       "events, in order"))
    async def post_batch(request: Request) -> Response:
        return await handle(BATCH_ROUTE, lambda: _ingest(served(), request, single=False))

    @app.get(HEALTH_ROUTE, response_model=None, summary="Health of the API and its store",
             responses={200: {"model": HealthAnswer, "description": "the store answers"},
                        503: {"model": HealthAnswer, "description": "the store does not answer"}})
    async def health() -> Response:
        async def work() -> Response:
            monitor = served().monitor
            backlog = monitor.backlog
            oldest = backlog.oldest_accepted_at
            ok = monitor.store_ok
            body = {"status": "ok" if ok else "unavailable", "backlog_events": backlog.events,
                    "oldest_age_s": round(max(0.0, time.time() - oldest), 3) if oldest is not None else 0.0}
            return _json(200 if ok else 503, orjson.dumps(body))
        return await handle(HEALTH_ROUTE, work)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "an API key (api-keys create)"}
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def openapi_document() -> bytes:
    """The API's OpenAPI document as committed in schemas/rest-openapi.json (sorted, indented)."""
    return orjson.dumps(build_app(None).openapi(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


if __name__ == "__main__":
    import sys

    sys.stdout.buffer.write(openapi_document())
