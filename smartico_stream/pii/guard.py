"""The PII guard: on arrival, before dedup and the engine, personal data leaves the event.

Emails are trimmed and lower-cased, phones normalised to E.164 with the user's country as the
region for national numbers. The values are encrypted (AES-GCM) for the isolated PII vault, with a
keyed hash beside them for lookups; the event keeps only derived, non-identifying fields
(``has_email``, ``has_phone``, ``phone_valid``, optionally ``email_domain``). Without a key ring
the values are dropped: nothing downstream ever sees plaintext either way.

Custom fields (an event's ``extra``, any event type) get the same treatment when their value looks
like an email or a phone (:mod:`.detect`) or their key is listed in ``pii.custom_fields``: the value
becomes ``null``, a sibling ``has_<key>: true`` says one was there, and the vault holds it as field
``custom.<dotted path>``.

**Unchanged values are not protected again.** Most profile updates repeat the user's email, phone and
names (an operator loading its history sends every update of every profile), and normalising a phone
(``phonenumbers``), encrypting and writing a vault row cost far more than the rest of an event. So the
guard remembers, per (brand, user, field), a keyed digest of the value as received (for a phone: with
the region it is read in; for an email: trimmed and lower-cased; custom fields: their normalised
form) of the last value *the vault committed*. When an event's digest equals it, the field yields no
record: no normalisation, no encryption, no vault row. The event's derived fields are set exactly as
before: ``has_email``, ``email_domain`` and ``has_phone`` come from cheap string work, ``phone_valid``
from the memory.

Where that memory lives, and why it keeps exactly-once right:

- In the guard (an LRU of ``pii.unchanged_memory_users`` users), not in the user's state: the guard runs
  before the engine, and is handed only a user's known country (most states are loaded afterwards,
  for the engine); digests in the state would also grow every state document the store rewrites.
- An entry is written only by the record's ``on_stored`` callback, which :meth:`PiiVault.write` calls
  after the vault's transaction committed. A crash, a failed or dry-run write, or a record dedup drops
  never leaves an entry that says "stored" for a value the vault does not hold; a crash loses the
  memory with the process, and the replay does the full work. A record the guard emits drops the
  field's entry at once, so a later event of the same batch is compared with nothing, not with a value
  that is about to be overwritten.
- An entry is trusted only within one *run* of its Kafka partition: consecutive offsets
  (``event.source``) seen by this guard. Any gap or step back (a rebalance after which another member
  committed part of the partition, a batch redone after a conflict, a record without events or
  dead-lettered, a compacted or transactional offset) starts a new run, and entries of an older run, or of another
  partition, are ignored. A partition taken over by another member that committed nothing resumes
  at the very next offset: that member wrote only values of records this one now reads again, in the
  same order, so the vault ends as it would without the memory. (Two partitions owned by two members
  that both carry the same user's same field have no order between them with or without it.) A file
  (``simulate``) has one reader: any step forward continues the run.
- RabbitMQ delivery tags say nothing about what another consumer of the queue handled meanwhile
  (messages it acked are gone), so RabbitMQ events are never skipped; nor is an event without
  source coordinates, nor anything without a key ring.

The digest is BLAKE2b keyed with a random per-guard secret, so the memory holds no value an attacker
with a dump could test guesses against offline. Phone normalisation itself is cached too
(:class:`~.normalise.PhoneNormaliser`, keyed by (raw, region)), for custom fields and for the repeats
the memory cannot vouch for.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from functools import partial
from typing import Any, cast

import orjson
from cachetools import LRUCache

from smartico_stream.events.models import CanonicalEvent, EventType, UserProfile
from smartico_stream.pii.crypto import encrypt, lookup_hash
from smartico_stream.pii.detect import lookup_form, recognise
from smartico_stream.pii.keys import KeyRing
from smartico_stream.pii.normalise import (
    DEFAULT_PHONE_CACHE_SIZE,
    PhoneNormalise,
    PhoneNormaliser,
    email_domain,
    is_plausible_email,
    normalise_email,
)
from smartico_stream.pii.vault import PiiRecord, value_aad

_PROFILE = EventType.USER_PROFILE.value

NAME_FIELDS = ("first_name", "last_name")
CUSTOM_PREFIX = "custom."  # vault field of a custom value: custom.<dotted path in extra>
MARKER_PREFIX = "has_"
# Users remembered: a few hundred bytes each (docs/performance.md), enough for the users of many batches
# of a busy stream, which is where repeats cluster.
DEFAULT_MEMORY_SIZE = 50_000  # pii.unchanged_memory_users

UserKey = tuple[str, str]  # brand, user
# digest of the value as received, run it was stored in, its "valid" flag
Stored = tuple[bytes, int, bool]
# one event's view of the memory: its user, its run, what is remembered of the user (vault field -> Stored)
Memo = tuple[UserKey, int, dict[str, Stored] | None]


class PiiGuard:
    """Strips personal data from events (:meth:`protect`), skipping values the vault already holds.

    ``memory_size`` bounds the memory of stored values, in users (0 turns the skip off); ``phone_cache_size``
    bounds the phone normalisation cache. See the module docstring."""

    def __init__(self, ring: KeyRing | None, encrypt_names: bool = True, keep_email_domain: bool = False,
                 custom_fields: Iterable[str] = (), memory_size: int = DEFAULT_MEMORY_SIZE,
                 phone_cache_size: int = DEFAULT_PHONE_CACHE_SIZE) -> None:
        self._ring = ring
        self._encrypt_names = encrypt_names
        self._keep_email_domain = keep_email_domain
        self._custom_fields = frozenset(custom_fields)
        self._phones: PhoneNormalise = PhoneNormaliser(phone_cache_size)
        self._memory: LRUCache[UserKey, dict[str, Stored]] | None = (
            LRUCache(maxsize=memory_size) if ring is not None and memory_size > 0 else None
        )
        self._secret = secrets.token_bytes(32)
        self._runs: dict[tuple[str, int], list[int]] = {}  # (topic, partition) -> [last offset, run]
        self._last_run = 0
        self.skipped = 0  # fields found unchanged (no record made)

    @property
    def stores_values(self) -> bool:
        return self._ring is not None

    def protect(self, event: CanonicalEvent, default_region: str | None = None) -> list[PiiRecord]:
        """Strip personal data from ``event`` (in place); return the encrypted records to store.
        ``default_region`` (the user's known country) reads national phone numbers in profile
        updates that do not repeat the country."""
        records: list[PiiRecord] = []
        memo = self._memo(event)
        if event.extra:
            region = (cast(UserProfile, event).country if event.type == _PROFILE else None) or default_region
            for path, value, valid in self._strip_custom(event.extra, region):
                field = CUSTOM_PREFIX + path
                seen = self._recall(memo, field, value)
                if seen is None or seen[1] is None:
                    records += self._record(event, field, value, valid, memo, seen)
        if event.type != _PROFILE:
            return records
        event = cast(UserProfile, event)  # a profile record (dispatch on type: events/records.py)
        if event.email is not None:
            email = normalise_email(event.email)
            event.has_email = email is not None
            event.email = None
            if email is not None:
                if self._keep_email_domain:
                    event.email_domain = email_domain(email)
                seen = self._recall(memo, "email", email)
                if seen is None or seen[1] is None:
                    records += self._record(event, "email", email, is_plausible_email(email), memo, seen)
        if event.phone is not None:
            raw = event.phone
            region = event.country or default_region
            event.has_phone = bool(raw.strip())
            event.phone = None
            # The region is part of what is compared: the same national digits are another number elsewhere.
            seen = self._recall(memo, "phone", f"{region or ''}\x1f{raw}")
            if seen is not None and seen[1] is not None:
                event.phone_valid = seen[1]
            else:
                phone = self._phones(raw, region)
                event.phone_valid = phone.valid
                # An unparseable number is still kept (encrypted, flagged invalid): support may need it.
                value = phone.e164 or raw.strip()
                if value:
                    records += self._record(event, "phone", value, phone.valid, memo, seen)
        for field in NAME_FIELDS:
            value = getattr(event, field)
            if value is not None:
                setattr(event, field, None)  # names are stored encrypted where configured, else not at all
                if self._encrypt_names and (name := value.strip()):
                    seen = self._recall(memo, field, name)
                    if seen is None or seen[1] is None:
                        records += self._record(event, field, name, True, memo, seen)
        return records

    def _run_of(self, event: CanonicalEvent) -> int | None:
        """The run of consecutive offsets of its partition ``event`` belongs to (module docstring),
        or ``None`` when it has no source coordinates."""
        source = event.source
        if source is None or source.partition is None or source.offset is None or source.transport == "rabbitmq":
            return None
        offset = source.offset
        run = self._runs.get((source.topic, source.partition))
        # The same record or the next one; a file has a single reader, so any step forward.
        if run is not None and (run[0] <= offset <= run[0] + 1 or (source.transport == "file" and offset > run[0])):
            run[0] = offset
            return run[1]
        self._last_run += 1
        self._runs[(source.topic, source.partition)] = [offset, self._last_run]
        return self._last_run

    def _memo(self, event: CanonicalEvent) -> Memo | None:
        """What the memory holds for ``event``'s user, in ``event``'s run; ``None`` when nothing can be
        remembered for it (no memory, or no run: see the module docstring)."""
        if self._memory is None or (run := self._run_of(event)) is None:
            return None
        user = (event.brand_id, event.user_id)
        return user, run, self._memory.get(user)

    def _recall(self, memo: Memo | None, field: str, received: str) -> tuple[bytes, bool | None] | None:
        """(digest of ``received``, the remembered "valid" flag when the vault holds this very value
        for ``field`` else ``None``), or ``None`` when nothing is remembered for this event."""
        if memo is None:
            return None
        digest = hashlib.blake2b(received.encode("utf-8", "surrogatepass"), key=self._secret, digest_size=16).digest()
        stored = memo[2].get(field) if memo[2] is not None else None
        if stored is not None and stored[0] == digest and stored[1] == memo[1]:
            self.skipped += 1
            return digest, stored[2]
        return digest, None

    def _remember(self, user: UserKey, field: str, stored: Stored) -> None:
        """The vault committed ``field`` of ``user`` (a record's ``on_stored``)."""
        if self._memory is None:
            return
        fields = self._memory.get(user)
        if fields is None:
            fields = self._memory[user] = {}
        fields[field] = stored

    def _record(self, event: CanonicalEvent, field: str, value: str, valid: bool,
                memo: Memo | None = None, seen: tuple[bytes, bool | None] | None = None) -> list[PiiRecord]:
        if self._ring is None:
            return []
        on_stored = None
        if memo is not None and seen is not None:
            if memo[2] is not None:
                # Until the vault commits this record, the row's value is in flux: forget what it held.
                memo[2].pop(field, None)
            on_stored = partial(self._remember, memo[0], field, (seen[0], memo[1], valid))
        aad = value_aad(event.brand_id, event.user_id, field)
        return [
            PiiRecord(
                brand=event.brand_id,
                user=event.user_id,
                field=field,
                token=encrypt(self._ring, value, aad),
                lookup_hash=lookup_hash(self._ring, value, field),
                valid=valid,
                on_stored=on_stored,
            )
        ]

    def _strip_custom(self, extra: dict[str, Any], region: str | None) -> list[tuple[str, str, bool]]:
        """Replace the personal data in ``extra`` (in place, at any depth) by ``null`` with a sibling
        ``has_<key>: true`` (a list item is only nulled); return (dotted path, normalised value,
        valid) of each. Iterative, so no nesting depth gets past it; most values cost a type test,
        most strings an ``"@"`` test and one character-class match (this runs on every event)."""
        found: list[tuple[str, str, bool]] = []
        listed = self._custom_fields
        stack: list[tuple[dict[str, Any] | list[Any], str]] = [(extra, "")]
        while stack:
            container, prefix = stack.pop()
            pairs = container.items() if type(container) is dict else enumerate(container)
            changes: list[tuple[str | int, tuple[str, bool]]] = []
            for key, value in pairs:
                kind = type(value)
                if listed and value is not None and (key in listed or f"{prefix}{key}" in listed):
                    changes.append((key, _listed_value(_as_text(value), region, self._phones)))
                elif kind is str:
                    if (protected := recognise(value, region, self._phones)) is not None:
                        changes.append((key, protected))
                elif kind is dict or kind is list:
                    stack.append((value, f"{prefix}{key}."))
                # numbers and booleans are never read as contact data unless the field is listed
            for key, (value, valid) in changes:  # after the loop: a marker changes the dict's size
                if isinstance(container, dict):
                    container[str(key)] = None
                    container[f"{MARKER_PREFIX}{key}"] = bool(value)
                else:
                    container[int(key)] = None
                if value:
                    found.append((f"{prefix}{key}", value, valid))
        return found


def _listed_value(text: str, region: str | None, normalise: PhoneNormalise) -> tuple[str, bool]:
    """(normalised value, valid) of a listed field's value: ``""`` when there is nothing in it."""
    value = lookup_form(text, region, normalise)
    if not value:
        return "", False
    if "@" in value:
        return value, is_plausible_email(value)
    phone = normalise(value, region)
    return value, phone.valid if phone.e164 else True  # not a phone at all: kept as it came


def _as_text(value: object) -> str:
    """A listed field's value as text: a string as it is, anything else as compact JSON."""
    return value if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
