"""Structured logs: JSON lines on stderr (or readable console lines), stdlib and librdkafka included.

Log events carry source coordinates (topic, partition, offset), never payloads: payloads may hold
personal data. Repeated warnings of one kind are rate-limited so a poison flood cannot drown the log.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import structlog
from structlog.typing import Processor


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Route structlog and stdlib logging (including librdkafka's) through one renderer."""
    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The RabbitMQ source and sinks log their own connection failures and retries, once each;
    # aio-pika and aiormq would add two lines of their own per attempt.
    for name in _QUIETED_CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.ERROR, root.level))


_QUIETED_CLIENT_LOGGERS = ("aiormq", "aio_pika")


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)


class RateLimiter:
    """Allows ``burst`` occurrences of a key per ``period_s`` and counts the rest, so the caller can
    log "N more suppressed" once the period turns."""

    def __init__(self, burst: int = 10, period_s: float = 10.0) -> None:
        self._burst = burst
        self._period_s = period_s
        self._windows: dict[str, tuple[float, int, int]] = {}  # key -> (start, allowed, suppressed)

    def allow(self, key: str) -> tuple[bool, int]:
        """(log this one?, how many were suppressed in the period that just ended)."""
        now = time.monotonic()
        start, allowed, suppressed = self._windows.get(key, (now, 0, 0))
        carried = 0
        if now - start >= self._period_s:
            carried, start, allowed, suppressed = suppressed, now, 0, 0
        if allowed < self._burst:
            self._windows[key] = (start, allowed + 1, suppressed)
            return True, carried
        self._windows[key] = (start, allowed, suppressed + 1)
        return False, carried
