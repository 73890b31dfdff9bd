"""Why a record was dead-lettered. Every reason is specific and free of personal data."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from smartico_stream.events.raw import RawRecord


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


@dataclass(slots=True)
class DeadLetter:
    """A record that could not be handled, with the reason and where it came from."""

    record: RawRecord
    stage: str  # decode | adapt | engine
    error_class: str
    message: str


def describe_error(exc: BaseException) -> tuple[str, str]:
    """(error class, message) for a dead letter. Pydantic errors are rendered field by field without
    the offending input, which may be personal data."""
    if isinstance(exc, ValidationError):
        lines = [
            f"{'.'.join(str(part) for part in err['loc']) or '(record)'}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        return "ValidationError", f"{exc.error_count()} invalid field(s) for {exc.title}: " + "; ".join(lines)
    error_class = getattr(exc, "error_class", None) or type(exc).__name__
    return error_class, str(exc) or error_class
