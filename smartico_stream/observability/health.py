"""Liveness and readiness.

Liveness comes only from the poll loop's heartbeat, never from the broker or the database: a broker
outage must not make Kubernetes restart every pod. Readiness means connected and joined."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class Health:
    heartbeat_timeout_s: float = 60.0
    _last_beat: float = field(default_factory=time.monotonic)
    _ready: threading.Event = field(default_factory=threading.Event)
    _reason: str = "starting"

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    def set_ready(self, ready: bool, reason: str = "") -> None:
        self._reason = reason
        if ready:
            self._ready.set()
        else:
            self._ready.clear()

    def live(self) -> tuple[bool, str]:
        idle = time.monotonic() - self._last_beat
        if idle > self.heartbeat_timeout_s:
            return False, f"poll loop has not turned for {idle:.0f}s (limit {self.heartbeat_timeout_s:.0f}s)"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        return (True, "ok") if self._ready.is_set() else (False, self._reason or "not ready")
