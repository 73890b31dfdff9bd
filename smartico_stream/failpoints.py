"""Crash points for crash tests: the real process, killed at a chosen instant.

``SMARTICO_STREAM_FAILPOINTS="after_store_commit=3"`` makes the process SIGKILL itself the 3rd time
it reaches that point (several points: comma-separated). Points: ``before_store_commit``,
``after_store_commit`` (before the Kafka commit), ``after_sink_delivery`` (before the sink cursor
is advanced). Unset in production: then ``hit`` is a dictionary miss.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping

ENV = "SMARTICO_STREAM_FAILPOINTS"


class Failpoints:
    def __init__(self, targets: Mapping[str, int]) -> None:
        self._targets = dict(targets)
        self._counts: dict[str, int] = {}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Failpoints:
        spec = (os.environ if environ is None else environ).get(ENV, "")
        targets = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, count = item.partition("=")
            targets[name.strip()] = int(count or 1)
        return cls(targets)

    def hit(self, name: str) -> None:
        target = self._targets.get(name)
        if target is None:
            return
        self._counts[name] = self._counts.get(name, 0) + 1
        if self._counts[name] == target:
            os.kill(os.getpid(), signal.SIGKILL)
