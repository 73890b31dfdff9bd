"""Crash points for crash tests: the real process, killed at a chosen instant.

``Failpoints({"after_store_commit": 3})`` makes the process SIGKILL itself the 3rd time it reaches
that point. Points: ``before_store_commit``, ``after_store_commit`` (before the Kafka commit),
``after_sink_delivery`` (before the sink cursor is advanced), ``rest_after_inbox_commit`` (REST: accepted
events are committed to the inbox, the answer is not sent yet).

Nothing in the production configuration path builds one with targets: the service gets an empty
set unless its constructor is handed one, which only the crash tests' entry point
(``python -m tests.support.failpoint_run``) does. An empty set costs a dictionary miss per ``hit``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping


class Failpoints:
    """Named crash points, each with the hit count at which the process kills itself."""

    def __init__(self, targets: Mapping[str, int]) -> None:
        self._targets = dict(targets)
        self._counts: dict[str, int] = {}

    @classmethod
    def parse(cls, spec: str) -> Failpoints:
        """``"after_store_commit=3,before_store_commit"`` (a bare name means ``=1``).

        Raises ValueError naming the item when a count is not a positive integer."""
        targets: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, count = item.partition("=")
            try:
                target = int(count or 1)
            except ValueError:
                raise ValueError(f"failpoint {item!r}: the count must be an integer") from None
            if not name.strip() or target < 1:
                raise ValueError(f"failpoint {item!r}: expected NAME or NAME=COUNT with COUNT >= 1")
            targets[name.strip()] = target
        return cls(targets)

    @property
    def targets(self) -> Mapping[str, int]:
        """Point name -> the pass that kills (a copy)."""
        return dict(self._targets)

    def hit(self, name: str) -> None:
        """Count one pass through ``name``; SIGKILL this process on the targeted pass."""
        target = self._targets.get(name)
        if target is None:
            return
        self._counts[name] = self._counts.get(name, 0) + 1
        if self._counts[name] == target:
            os.kill(os.getpid(), signal.SIGKILL)
