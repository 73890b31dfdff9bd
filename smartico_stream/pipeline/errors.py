"""Why a record was dead-lettered. Every reason is specific and free of personal data: it names the
field and the rule, never a value from the record."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from smartico_stream.adapters.base import AdapterError
from smartico_stream.events.raw import RawRecord
from smartico_stream.events.types import is_field_name


class RecordRejected(Exception):
    """Base of the pipeline's own rejections; ``error_class`` is what the dead letter carries."""

    error_class = "RecordRejected"


class MessageTooLarge(RecordRejected):
    error_class = "MessageTooLarge"


class MissingKey(RecordRejected):
    error_class = "MissingKey"


class DecodeError(RecordRejected):
    error_class = "DecodeError"


class NotAnObject(RecordRejected):
    error_class = "NotAnObject"


class InvalidText(RecordRejected):
    """A string (or a key) holds what no store accepts: a NUL character or a lone surrogate."""

    error_class = "InvalidText"


class TooDeep(RecordRejected):
    """Objects and arrays nested deeper than the limit."""

    error_class = "TooDeep"


@dataclass(slots=True)
class DeadLetter:
    """A record that could not be handled, with the reason and where it came from."""

    record: RawRecord
    stage: str  # decode | adapt | engine
    error_class: str
    message: str


# Pydantic prefixes the message of a ValueError raised in a validator; the field already says where.
_VALUE_ERROR_PREFIX = "Value error, "
# Only the project's own exceptions have messages written to name fields, never values.
_OWN_PACKAGES = frozenset({"smartico_stream", "smartico_stream_adapters"})


def _location(loc: tuple[int | str, ...]) -> str:
    # Keys in a location may come from the record (extra's keys): shown only when shaped like a field name.
    parts = [str(part) if isinstance(part, int) or is_field_name(part) else "<key>" for part in loc]
    return ".".join(parts) or "(record)"


def _message_is_value_free(exc: BaseException) -> bool:
    if isinstance(exc, RecordRejected | AdapterError):  # AdapterError: the adapter contract says so
        return True
    return type(exc).__module__.partition(".")[0] in _OWN_PACKAGES


def describe_error(exc: BaseException) -> tuple[str, str]:
    """(error class, message) for a dead letter. Pydantic errors are rendered field by field without
    the offending input, which may be personal data. The message of an exception from outside the
    project (an adapter bug's ``KeyError``, a library's ``ValueError``) may quote the record, so only
    its class is shown."""
    if isinstance(exc, ValidationError):
        lines = []
        for err in exc.errors(include_url=False, include_input=False, include_context=False):
            message = err["msg"]
            if err["type"] == "value_error" and message.startswith(_VALUE_ERROR_PREFIX):
                message = message[len(_VALUE_ERROR_PREFIX) :]
            lines.append(f"{_location(err['loc'])}: {message}")
        return "ValidationError", f"{exc.error_count()} invalid field(s) for {exc.title}: " + "; ".join(lines)
    error_class = getattr(exc, "error_class", None) or type(exc).__name__
    if not _message_is_value_free(exc):
        return error_class, f"{error_class} (message withheld: it may quote the record)"
    return error_class, str(exc) or error_class
