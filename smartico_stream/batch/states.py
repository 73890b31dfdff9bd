"""Committed user states kept in memory between batches (an LRU bounded by
``engine.state_cache_size``), read through to the store for the rest."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from cachetools import LRUCache

from smartico_stream.engine.state import UserState
from smartico_stream.events.raw import UserKey
from smartico_stream.store.base import Store


class StateCache:
    """The states of users as last committed. An attempt changes states in place; a failed attempt
    must :meth:`forget` what it touched, a committed one :meth:`advance` it."""

    def __init__(self, store: Store, size: int) -> None:
        self._store = store
        self._cache: LRUCache[UserKey, UserState] = LRUCache(maxsize=max(size, 1))

    async def existing(
        self, users: Sequence[UserKey], known: Mapping[UserKey, UserState] = {}
    ) -> dict[UserKey, UserState]:
        """The committed states of these users that exist: from ``known``, the cache, else the store."""
        found = {key: state for key in users if (state := known.get(key) or self._cache.get(key)) is not None}
        missing = [key for key in users if key not in found]
        if missing:
            found.update(await self._store.load_users(missing))
        return found

    async def for_users(
        self, users: Sequence[UserKey], known: Mapping[UserKey, UserState] = {}
    ) -> dict[UserKey, UserState]:
        """A state for every user: the committed one, else a new one."""
        found = await self.existing(users, known)
        return {key: found.get(key) or UserState(brand=key[0], user=key[1]) for key in users}

    def advance(self, states: Mapping[UserKey, UserState]) -> None:
        """These states were committed: they are the cache's now, one version on, and the store
        has every part of them (nothing changed since)."""
        for key, state in states.items():
            state.version += 1
            state.changed = 0
            self._cache[key] = state

    def forget(self, users: Iterable[UserKey]) -> None:
        """Drop states a failed attempt may have changed; the next attempt reloads them."""
        for key in users:
            self._cache.pop(key, None)

    def clear(self) -> None:
        self._cache.clear()
