"""The JSONL sink: one ``Action.to_json()`` line per action appended to a file."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import Field, field_validator

from smartico_stream.engine.actions import Action
from smartico_stream.observability.logging import get_logger
from smartico_stream.sinks.base import SinkError, SinkSettingsBase, closed_error, setting_problem

log = get_logger(__name__)

__all__ = ["JsonlSink", "JsonlSinkSettings"]


class JsonlSinkSettings(SinkSettingsBase):
    """``type: jsonl``: append actions to a JSON-lines file."""

    type: Literal["jsonl"] = Field(default="jsonl", description="selects this sink")
    path: Path = Field(
        default=Path("/var/smartico-stream/actions.jsonl"),
        strict=False,  # a YAML string
        description="the file; missing parent directories are created. One sink per file",
    )
    fsync: bool = Field(default=True, description="the batch is on disk (fsync) before the delivery counts")

    @field_validator("path", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if value == "":
            raise setting_problem("must not be empty")
        return value

    @field_validator("path")
    @classmethod
    def _not_a_directory(cls, value: Path) -> Path:
        if value.is_dir():
            raise setting_problem("is a directory; give the file to append to, e.g. DIR/actions.jsonl")
        return value

    def default_name(self) -> str:
        return JsonlSink.default_name(self.path)

    def create(self, kafka_connection: Mapping[str, Any] | None = None) -> JsonlSink:
        return JsonlSink(self.path, fsync=self.fsync, name=self.name)


class JsonlSink:
    """Appends one ``Action.to_json()`` line per action to a file (the demo's and the tests' sink,
    and a simple hand-off to log shippers).

    Lines are byte-stable: the same actions always give the same bytes, so a replayed batch shows up
    as exactly repeated lines. With ``fsync`` (the default) a batch is on disk before ``deliver``
    returns. One sink per file: the sink repairs a torn last line left by a crash (it drops the
    incomplete line, which the relay resends because its batch was never acknowledged), which is
    only safe when nothing else writes the file."""

    def __init__(self, path: Path | str, fsync: bool = True, name: str | None = None) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.name = name or self.default_name(self.path)
        self._file: IO[bytes] | None = None
        self._closed = False
        self._lock = asyncio.Lock()

    @staticmethod
    def default_name(path: Path) -> str:
        """The sink's name without ``name``: ``jsonl:<path>``."""
        return f"jsonl:{path}"

    async def deliver(self, actions: Sequence[Action]) -> None:
        if self._closed:
            raise closed_error(self.name)
        if not actions:
            return
        data = b"".join(action.to_json() + b"\n" for action in actions)
        async with self._lock:
            try:
                await asyncio.to_thread(self._append, data)
            except OSError as exc:
                # Disk full, permissions, a vanished mount: all may be fixed without a restart.
                raise SinkError(f"{self.name}: write failed: {exc}", retryable=True) from exc

    def _append(self, data: bytes) -> None:
        if self._file is not None and self._rotated(self._file):
            self._drop_file()
        file = self._file if self._file is not None else self._open()
        start = file.seek(0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:  # a raw file may take a write in pieces
                written = file.write(view)
                view = view[written or 0 :]
            if self.fsync:
                os.fsync(file.fileno())
        except OSError:
            # Leave no partial line behind: the next batch would be glued onto it.
            try:
                file.truncate(start)
            except OSError:
                self._drop_file()  # reopening repairs the torn tail
            raise

    def _open(self) -> IO[bytes]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        # Unbuffered: a failed write leaves nothing in a buffer, so truncating undoes it exactly.
        file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open across batches
        try:
            if not created:
                _drop_torn_tail(file, self.path, self.name)
            elif self.fsync:
                _fsync_directory(self.path.parent)  # make the new directory entry durable too
        except OSError:
            file.close()
            raise
        self._file = file
        return file

    def _rotated(self, file: IO[bytes]) -> bool:
        """The path no longer names the open file (moved or deleted by a log rotator): writing on
        would append to a file nobody reads."""
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return True
        opened = os.fstat(file.fileno())
        return (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino)

    def _drop_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    async def close(self) -> None:
        self._closed = True
        async with self._lock:
            self._drop_file()


def _drop_torn_tail(file: IO[bytes], path: Path, name: str, chunk: int = 64 * 1024) -> None:
    """Truncate an unterminated last line (a write interrupted by a crash)."""
    size = file.seek(0, os.SEEK_END)
    if size == 0:
        return
    with open(path, "rb") as reader:
        reader.seek(size - 1)
        if reader.read(1) == b"\n":
            return
        end = size
        keep = 0
        while end > 0:
            begin = max(0, end - chunk)
            reader.seek(begin)
            block = reader.read(end - begin)
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = begin + newline + 1
                break
            end = begin
    file.truncate(keep)
    log.warning("dropped a torn last line (its batch was never acknowledged)", sink=name, bytes=size - keep)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some platforms/filesystems cannot open directories; the file itself is synced
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
