"""A readers-writer lock shared by every pytest-xdist worker of one run, on files (``flock``).

The local RabbitMQ serves every worker at once; tests only ever touch their own exchanges and
queues, so any number of them share the broker (shared side). A test that stops and starts the
broker itself takes the exclusive side: it waits for the tests using the broker to finish, and
none starts until it is done. Writers go first: a writer holds the turnstile while it waits, so a
stream of readers cannot starve it.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def _flocked(path: Path, operation: int) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), operation)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class SharedResourceLock:
    """``with lock.shared():`` / ``with lock.exclusive():`` across processes, by lock files in
    ``directory`` (one directory per test run, seen by all its workers)."""

    def __init__(self, directory: Path, name: str) -> None:
        self._turnstile = directory / f"{name}.turnstile.lock"
        self._lock = directory / f"{name}.lock"

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Held alongside any other shared holder; waits while a writer holds or awaits the lock."""
        with _flocked(self._turnstile, fcntl.LOCK_EX):
            pass
        with _flocked(self._lock, fcntl.LOCK_SH):
            yield

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Held alone."""
        with _flocked(self._turnstile, fcntl.LOCK_EX), _flocked(self._lock, fcntl.LOCK_EX):
            yield
