"""The engine interface the pipeline feeds: each user's events, in source order, a batch at a time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from smartico_stream.events.models import CanonicalEvent
from smartico_stream.events.raw import UserKey


class Engine(Protocol):
    def apply_user_events(self, user: UserKey, events: Sequence[CanonicalEvent]) -> list[tuple[int, Exception]]:
        """Apply one user's events in order. Returns (index, error) for each event that could not be
        applied; the pipeline dead-letters those records and carries on with the rest."""
        ...
