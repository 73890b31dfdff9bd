"""The plumbing between the orchestrator and the processes it spawns: the shared array's slots,
core pinning, and one answer per pipe."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

# Slots of the array shared by the orchestrator, the cluster process and the consumer under test.
PRODUCED, FLUSHED, FETCHED, READY, STARTED_AT, STOP, DONE, PACE_START = range(8)
SLOTS = 8


def pin_cpus(cpus: list[int] | None) -> None:
    """Pin this process to ``cpus`` (nothing when None, or where the OS has no affinity call)."""
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))


def quiet_librdkafka() -> logging.Logger:
    """A logger for librdkafka that drops every line, so the clients' chatter about the mock
    cluster stays off stderr, where the progress lines go."""
    logger = logging.getLogger("smartico_stream.bench.rdkafka")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


class BenchError(RuntimeError):
    """A process of the bench died, did not answer in time, or reported a failure."""


async def receive(conn: Any, process: Any, timeout_s: float, what: str) -> dict[str, Any]:
    """The next message from ``process`` on ``conn``, waited for off the event loop; a
    :class:`BenchError` naming ``what`` when the process dies or ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await asyncio.to_thread(conn.poll, 0.2):
            try:
                message: dict[str, Any] = conn.recv()
            except EOFError:
                raise BenchError(f"{what}: the process died (exit code {process.exitcode})") from None
            return message
        if not process.is_alive():
            if conn.poll(0):
                continue
            raise BenchError(f"{what}: the process died (exit code {process.exitcode})")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: no answer within {timeout_s:.0f} s")


def stop_process(process: Any) -> None:
    """Join ``process``, then terminate and finally kill it if it does not exit by itself."""
    process.join(10)
    if process.is_alive():
        process.terminate()
        process.join(5)
    if process.is_alive():
        process.kill()
        process.join(5)
