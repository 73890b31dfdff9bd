"""The synthetic operator stream, generated once per run into a compact binary file that every
producer replays."""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from smartico_stream.events.raw import Stream

# The embedded cluster keeps ~4-5 MB per partition (measured: 10.5k records of 400 bytes), so the
# stream's oversized records stay small and the size limit sits just below them, as in the demo.
MAX_MESSAGE_BYTES = 64 * 1024
OVERSIZED_BYTES = MAX_MESSAGE_BYTES + 4096
TOPICS = {Stream.PROFILE: "user_profile", Stream.PAYMENTS: "payments", Stream.CASINO: "casino", Stream.SPORT: "sport"}
STREAM_ORDER = (Stream.PROFILE, Stream.PAYMENTS, Stream.CASINO, Stream.SPORT)
KINDS = ("ok", "duplicate", "malformed")


_HEADER = struct.Struct("<BBiI")  # stream index, kind index, key length (-1: no key), value length
_USER_FIELD = re.compile(rb'"user_ext_id":("(?:[^"\\]|\\.)*"|-?[0-9]+)')


def write_stream(path: Path, users: int, events: int, population: int | None = None) -> dict[str, int]:
    """Write ``synthetic_stream(StreamSpec(users, events))`` to ``path`` in a compact binary form.

    With ``population``, each OK or duplicate record is moved to user ``p<crc32(value) % population>``
    (its key and ``user_ext_id`` rewritten; byte-identical duplicates stay identical): the synthetic
    generator registers at most ~0.09 new users per record, so this is how a run of a few hundred
    thousand records reaches 1M distinct users. Malformed records are left alone."""
    from smartico_stream.demo.synthetic import StreamSpec, synthetic_stream

    spec = StreamSpec(users=users, events=events, oversized_bytes=OVERSIZED_BYTES)
    stream_index = {stream: i for i, stream in enumerate(STREAM_ORDER)}
    kind_index = {kind: i for i, kind in enumerate(KINDS)}
    count = size = 0
    with path.open("wb", buffering=1 << 20) as out:
        for record in synthetic_stream(spec):
            key, value = record.key, record.value
            if population is not None and record.kind.value != "malformed":
                user = f"p{zlib.crc32(value) % population}".encode()
                value = _USER_FIELD.sub(b'"user_ext_id":"' + user + b'"', value, count=1)
                key = user
            out.write(_HEADER.pack(stream_index[record.stream], kind_index[record.kind.value],
                                   -1 if key is None else len(key), len(value)))
            if key:
                out.write(key)
            out.write(value)
            count += 1
            size += len(value)
    return {"records": count, "bytes": size}


def read_stream(path: Path) -> Iterator[tuple[int, int, bytes | None, bytes]]:
    """(stream index, kind index, key, value) per record, in stream order."""
    unpack, header = _HEADER.unpack, _HEADER.size
    with path.open("rb", buffering=1 << 20) as source:
        read = source.read
        while True:
            head = read(header)
            if len(head) < header:
                return
            stream, kind, key_length, value_length = unpack(head)
            key = read(key_length) if key_length > 0 else (b"" if key_length == 0 else None)
            yield stream, kind, key, read(value_length)
