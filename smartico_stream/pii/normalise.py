"""Normalisation of PII before it is hashed or encrypted (pure functions, no I/O).

Phones become E.164 using the user's country (``user_country``) to read national formats;
emails are trimmed and lower-cased. Normalising first means one person's ``+44 7700 900123``
and ``07700 900123`` produce the same lookup hash.

These functions run on every profile event from every operator, so bad input yields a
"not valid" result instead of an exception: one operator's garbage field must not stop a stream.

:class:`PhoneNormaliser` is :func:`normalise_phone` behind a bounded LRU keyed by ``(raw, country)``:
parsing with ``phonenumbers`` costs tens of microseconds, a hit about one (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import phonenumbers
from cachetools import LRUCache
from phonenumbers import CountryCodeSource, NumberParseException, PhoneNumber, PhoneNumberFormat, ValidationResult

__all__ = [
    "NormalisedPhone",
    "PhoneNormaliser",
    "email_domain",
    "is_plausible_email",
    "normalise_email",
    "normalise_phone",
]

# Separators people and operators put in phone numbers; dropped before parsing.
_PHONE_SEPARATORS = str.maketrans("", "", "-.()")

# phonenumbers' pseudo-regions: "ZZ" unknown, "001" non-geographic (+800, +882, ...). Not countries.
_NOT_A_REGION = frozenset({"ZZ", "001"})


@dataclass(frozen=True)
class NormalisedPhone:
    """Result of :func:`normalise_phone`.

    ``e164``: ``"+<cc><number>"`` when the input parsed and has a possible length for its
    country (a full number: local-only numbers missing their area code do not count), else
    ``None``. ``valid``: the number matches a real numbering plan range
    (``phonenumbers.is_valid_number``); a possible-but-invalid number keeps its ``e164`` so it
    can still be matched, but should not be texted. ``region_used``: the ISO 3166-1 alpha-2
    region the digits were read as — the user's country for national input, the number's own
    country when it carried ``+CC``/``00CC`` — or ``None`` when unknown.
    """

    e164: str | None
    valid: bool
    region_used: str | None


def _region(country: str | None) -> str | None:
    """The user's country as a region phonenumbers knows, or ``None``."""
    if not isinstance(country, str):
        return None
    code = country.strip().upper()
    return code if code in phonenumbers.SUPPORTED_REGIONS else None


def _parse(text: str, region: str | None) -> PhoneNumber | None:
    try:
        return phonenumbers.parse(text, region, keep_raw_input=True)
    except NumberParseException:
        return None


def _is_possible(number: PhoneNumber) -> bool:
    # Strictly IS_POSSIBLE: phonenumbers.is_possible_number also accepts IS_POSSIBLE_LOCAL_ONLY
    # (a subscriber number without its area code, e.g. "12" in DE or a 7-digit US number), whose
    # "+CC" form would be a different, wrong number.
    return phonenumbers.is_possible_number_with_reason(number) == ValidationResult.IS_POSSIBLE


def _rank(number: PhoneNumber) -> int:
    if phonenumbers.is_valid_number(number):
        return 2
    if _is_possible(number):
        return 1
    return 0


def normalise_phone(raw: object, country: str | None) -> NormalisedPhone:
    """Normalise ``raw`` to E.164, reading national formats as numbers of ``country``.

    ``country`` is the user's ISO alpha-2 ``user_country``; input with ``+CC`` or ``00CC`` keeps
    its own country code regardless (a German number of a UK user stays German). Spaces, dashes,
    dots and parentheses are ignored. Never raises: garbage gives
    ``NormalisedPhone(None, False, <country>)``, and so does anything that is not a string.
    """
    region = _region(country)
    garbage = NormalisedPhone(None, False, region)
    if not isinstance(raw, str):
        return garbage
    text = "".join(raw.split()).translate(_PHONE_SEPARATORS)
    if not text:
        return garbage

    candidates = [text]
    if text.startswith("00"):
        # "00" is the international prefix almost everywhere, but not for every region
        # (US/CA dial 011, AU 0011) and not at all without a region; operators send 00CC
        # regardless of the user's country, so also read it as "+CC". The first reading
        # that is valid wins (the region's own IDD handling, e.g. GB's 00, comes first).
        candidates.append("+" + text[2:])
    best: PhoneNumber | None = None
    best_rank = -1
    try:
        for candidate in candidates:
            number = _parse(candidate, region)
            if number is not None and (rank := _rank(number)) > best_rank:
                best, best_rank = number, rank
        if best is None:
            return garbage
        e164 = phonenumbers.format_number(best, PhoneNumberFormat.E164) if _is_possible(best) else None
        return NormalisedPhone(e164, best_rank == 2, _region_of(best, region))
    except Exception:  # noqa: BLE001 - "never raises" is the contract; see the module docstring
        # phonenumbers documents NumberParseException only; anything else from it on odd
        # input is still garbage for us, not a reason to stop the stream.
        return garbage


# What the guard and the custom-field detector call to normalise a phone: normalise_phone or a cache of it.
PhoneNormalise = Callable[[object, str | None], NormalisedPhone]

DEFAULT_PHONE_CACHE_SIZE = 10_000


class PhoneNormaliser:
    """:func:`normalise_phone` with its results kept in a bounded LRU keyed by ``(raw, country)``.

    The same number comes back with every profile update of a user, and custom fields repeat theirs on
    every event. The result depends only on the two arguments (phonenumbers' metadata is fixed for the
    process), so a cached result is the one a fresh parse would give. Only strings are cached; each
    entry costs a few hundred bytes, so the default bound keeps it to a few megabytes. The cache lives
    in one guard (no module-level state) and is never written anywhere: it holds numbers in plaintext,
    as the process does while it handles them anyway.
    """

    __slots__ = ("_cache", "hits", "misses")

    def __init__(self, maxsize: int = DEFAULT_PHONE_CACHE_SIZE) -> None:
        self._cache: LRUCache[tuple[str, str | None], NormalisedPhone] = LRUCache(maxsize=max(maxsize, 1))
        self.hits = 0
        self.misses = 0

    def __call__(self, raw: object, country: str | None) -> NormalisedPhone:
        """What ``normalise_phone(raw, country)`` returns."""
        if not isinstance(raw, str) or not (country is None or isinstance(country, str)):
            return normalise_phone(raw, country)
        key = (raw, country)
        found = self._cache.get(key)
        if found is None:
            self.misses += 1
            found = self._cache[key] = normalise_phone(raw, country)
        else:
            self.hits += 1
        return found

    def __len__(self) -> int:
        return len(self._cache)


def _region_of(number: PhoneNumber, default: str | None) -> str | None:
    """The region the number was read as: ``default`` unless the input named its own country code."""
    if number.country_code_source == CountryCodeSource.FROM_DEFAULT_COUNTRY:
        return default
    # For shared codes (+1: US, CA, ...) pick the region by number; fall back to the code's main
    # region when the number matches none (e.g. an invalid +1 number).
    region = phonenumbers.region_code_for_number(number)
    if not region and number.country_code is not None:
        region = phonenumbers.region_code_for_country_code(number.country_code)
    return None if not region or region in _NOT_A_REGION else region


def normalise_email(raw: object) -> str | None:
    """Trimmed, lower-cased email, or ``None`` when nothing is left after trimming (or ``raw`` is
    not a string).

    No validation here (see :func:`is_plausible_email`): a malformed address still needs one
    stable form for its lookup hash.
    """
    if not isinstance(raw, str):
        return None
    email = raw.strip().lower()
    return email or None


def email_domain(normalised_email: str) -> str | None:
    """The part after the last ``"@"``, or ``None`` if there is no ``"@"`` or nothing follows it."""
    _, at, domain = normalised_email.rpartition("@")
    return domain if at and domain else None


def is_plausible_email(normalised_email: str) -> bool:
    """Cheap sanity check, not RFC 5322: one ``"@"``, a non-empty local part, a dotted domain
    with no empty labels, and no whitespace anywhere."""
    if not isinstance(normalised_email, str) or any(ch.isspace() for ch in normalised_email):
        return False
    local, at, domain = normalised_email.partition("@")
    if not at or not local or "@" in domain:
        return False
    labels = domain.split(".")
    return len(labels) >= 2 and all(labels)
