"""Records that carry a row instead of bytes (a replica view): the decode step hands the row to the
adapter as it is, with the driver's native types (datetime, Decimal, int), instead of parsing JSON.

The pipeline decodes bytes; this subclass adds the row path in front of it and leaves every other
record to the pipeline's own decoding. (Meant to fold into ``Pipeline._decode`` itself once the
pipeline is free to change; until then the service builds this class when ``source: replica``.)
"""

from __future__ import annotations

from typing import Any

from smartico_stream.adapters.base import RecordContext
from smartico_stream.events.raw import RawRecord
from smartico_stream.pipeline.errors import InvalidText, MissingKey
from smartico_stream.pipeline.pipeline import Pipeline

_NUL_REASON = "contains a NUL character, which stores refuse"


def check_row(row: dict[str, Any]) -> None:
    """Refuse what a store would refuse (as the pipeline's ``check_storable`` does for JSON): a NUL
    in a text column. Names the column, never the value."""
    bad = [column for column, value in row.items() if isinstance(value, str) and "\x00" in value]
    if bad:
        raise InvalidText("; ".join(f"column {column} {_NUL_REASON}" for column in bad[:3]))


class RowPipeline(Pipeline):
    """The pipeline, with rows (``RawRecord.row``) decoded as themselves."""

    def _decode(self, record: RawRecord) -> tuple[dict[str, object], RecordContext]:
        row = record.row
        if row is None:
            return super()._decode(record)
        if record.key is None and self._limits.require_key:
            raise MissingKey("row has no user id; every view needs its user id column (user_column)")
        message = dict(row)
        check_row(message)
        context = RecordContext(
            stream=self._stream_of_topic[record.topic],
            topic=record.topic,
            key=record.key.decode("utf-8", "replace") if record.key is not None else None,
            headers=dict(record.headers),
        )
        return message, context
