"""``smartico-stream demo --transport rest``: the synthetic operator stream sent over HTTP to the
service's own REST API (``source: rest``), in batches of consecutive records of one stream (a
change of stream starts a new batch, so each user's records keep their order), over keep-alive
connections. A record that is not a JSON object cannot travel inside a batch: it is sent alone to
``POST /v1/events``, whose 400 is how the API refuses it."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import httpx
import orjson

from smartico_stream.demo.synthetic import StreamSpec, SyntheticRecord, synthetic_stream
from smartico_stream.events.raw import Stream

BATCH = 500


class RestFeeder:
    """Sends the stream; ``accepted`` and ``rejected`` are the API's per-event verdicts (a 400 counts
    as one rejected event), never more than ``max_ahead`` accepted events ahead of the service."""

    def __init__(self, base_url: str, token: str, spec: StreamSpec, consumed: Callable[[], int],
                 deadline: float | None, max_ahead: int) -> None:
        self._base_url = base_url
        self._headers = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
        self._spec = spec
        self._consumed = consumed
        self._deadline = deadline
        self._max_ahead = max_ahead
        self.produced = 0
        self.accepted = 0
        self.rejected = 0
        self.kinds: Counter[str] = Counter()
        self.error: BaseException | None = None
        self.done = False

    async def run(self) -> None:
        try:
            async with httpx.AsyncClient(base_url=self._base_url, timeout=60) as http:
                await self._send(http)
        except Exception as exc:  # noqa: BLE001 - reported by the demo instead of dying silently
            self.error = exc
        finally:
            self.done = True

    async def _send(self, http: httpx.AsyncClient) -> None:
        import asyncio

        pending: list[bytes] = []
        stream: Stream | None = None
        for record in synthetic_stream(self._spec):
            if self._deadline is not None and time.monotonic() > self._deadline:
                break
            self._count(record)
            if not _is_object(record.value):
                await self._flush(http, pending, stream)
                pending = []
                await self._post(http, "/v1/events", record.stream, record.value)
                continue
            if stream is not None and (record.stream is not stream or len(pending) >= BATCH):
                await self._flush(http, pending, stream)
                pending = []
            stream = record.stream
            pending.append(record.value)
            while self.accepted - self._consumed() > self._max_ahead:  # noqa: ASYNC110 - a counter, no event
                await asyncio.sleep(0.01)
        await self._flush(http, pending, stream)

    def _count(self, record: SyntheticRecord) -> None:
        self.kinds[record.kind.value] += 1
        if record.defect:
            self.kinds[f"malformed:{record.defect}"] += 1
        self.produced += 1

    async def _flush(self, http: httpx.AsyncClient, values: list[bytes], stream: Stream | None) -> None:
        if values and stream is not None:
            await self._post(http, "/v1/batch", stream, b"[" + b",".join(values) + b"]")

    async def _post(self, http: httpx.AsyncClient, route: str, stream: Stream, body: bytes) -> None:
        answer = await http.post(route, params={"stream": stream.value}, content=body, headers=self._headers)
        if answer.status_code == 200:
            verdict = answer.json()
            self.accepted += verdict["accepted"]
            self.rejected += verdict["rejected"] + verdict["ignored"]
        elif answer.status_code in (400, 413):
            self.rejected += 1
        else:
            raise RuntimeError(f"the REST API answered {answer.status_code}: {answer.text[:200]}")


def _is_object(value: bytes) -> bool:
    try:
        return isinstance(orjson.loads(value), dict)
    except orjson.JSONDecodeError:
        return False
