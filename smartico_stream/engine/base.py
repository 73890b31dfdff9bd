"""The engine interface the pipeline feeds: each user's events, in source order, a batch at a time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol

from smartico_stream.events.models import CanonicalEvent
from smartico_stream.events.raw import UserKey


class AlreadyApplied:
    """What an engine reports, in place of an error, for an event it did not apply because it is a
    repeat of one it applied before (a money event the user's state remembers, engine.payments)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ALREADY_APPLIED"


ALREADY_APPLIED: Final = AlreadyApplied()

Outcome = Exception | AlreadyApplied


class Engine(Protocol):
    def apply_user_events(self, user: UserKey, events: Sequence[CanonicalEvent]) -> Sequence[tuple[int, Outcome]]:
        """Apply one user's events in order. Returns (index, error) for each event that could not be
        applied, which the pipeline dead-letters (carrying on with the rest), and (index,
        ``ALREADY_APPLIED``) for each repeat the engine recognised and skipped, which the pipeline
        counts as deduplicated."""
        ...
