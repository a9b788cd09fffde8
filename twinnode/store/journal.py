"""The store's group-commit journal: a batch of envelopes made durable with one fsync.

`Store.put_many` appends the containers of a whole batch (`store.container` bytes, each with
its own SHA-256) to the current journal segment in one write and one `fdatasync`; that is the
moment the batch is durable and may be acknowledged. The envelope files and index rows that
follow are written without an fsync of their own. A checkpoint (`Store.checkpoint`: in the
background when a segment fills up, and at every close) fsyncs those files and the index,
then deletes the segments it covered; recovery replays whatever segments a crash left behind.

    store/journal/<n:010d>.tnj   a segment: b"TNJ1", then records
    record                       length L (8 bytes, big-endian), then L bytes of a container

A segment is only ever appended to. A crash during an append leaves a torn tail: `records`
stops at the first record that runs past the end or fails its container checksum (nothing
after it was acknowledged). The first append to a new segment also fsyncs the directory, so
the segment's name survives a power loss as well as its bytes.
"""
from __future__ import annotations

import logging
import os
import re
import struct
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

from twinnode.atomic import fsync_dir
from twinnode.errors import StoreError
from twinnode.store.container import unpack_envelope

log = logging.getLogger("twinnode.store")

MAGIC = b"TNJ1"
SEGMENT_BYTES = 32 << 20  # a segment is sealed (and checkpointed) once it holds this much
_LEN = struct.Struct(">Q")
_IOV_MAX = 512
_NAME_RE = re.compile(r"(\d{10})\.tnj")


class Location(NamedTuple):
    """Where a record's container is: its segment, offset and length."""

    segment: Path
    offset: int
    length: int


def read_record(place: Location) -> bytes:
    """The container bytes at `place` (OSError if the segment is unreadable)."""
    with open(place.segment, "rb") as fh:
        fh.seek(place.offset)
        return fh.read(place.length)


def segment_number(name: str) -> int | None:
    """The number a segment file name stands for, or None for any other name."""
    match = _NAME_RE.fullmatch(name)
    return int(match[1]) if match else None


def records(blob: bytes, source: str = "<journal>") -> Iterator[tuple[dict[str, Any], bytes]]:
    """(metadata, container bytes) of each intact record of a segment, in order, up to the
    first torn or damaged one (a crash's unacknowledged tail)."""
    if blob[:len(MAGIC)] != MAGIC:
        log.warning("journal segment %s has no header; nothing in it is read", source)
        return
    pos = len(MAGIC)
    while pos + _LEN.size <= len(blob):
        (length,) = _LEN.unpack_from(blob, pos)
        start, pos = pos + _LEN.size, pos + _LEN.size + length
        if pos > len(blob):
            return
        container = blob[start:pos]
        try:
            meta, _ = unpack_envelope(container, f"{source}@{start}")
        except StoreError:
            return
        yield meta, container


class Journal:
    """The segments of one store's journal; not thread-safe (the store's lock guards it)."""

    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self.sealed: list[Path] = self.segments()
        self._next = max((segment_number(p.name) or 0 for p in self.sealed), default=0) + 1

    def segments(self) -> list[Path]:
        """The segment files on disk, oldest first."""
        found = [p for p in self.directory.iterdir() if segment_number(p.name) is not None]
        return sorted(found, key=lambda p: segment_number(p.name) or 0)

    @property
    def full(self) -> bool:
        """Whether the current segment holds `segment_bytes` or more (time to seal it)."""
        return self._fd is not None and self._size >= self.segment_bytes

    def append(self, containers: Sequence[bytes]) -> list[Location]:
        """Append one batch and fdatasync it: on return the batch is durable; where each
        container is."""
        parts = [] if self._fd is not None else [MAGIC]
        places, pos = [], self._size + len(MAGIC) * (self._fd is None)
        for blob in containers:
            parts += [_LEN.pack(len(blob)), blob]
            places.append((pos + _LEN.size, len(blob)))
            pos += _LEN.size + len(blob)
        size, new = sum(len(p) for p in parts), self._fd is None
        try:
            if new:
                self._open_segment()
            assert self._fd is not None
            _write_all(self._fd, parts)
            os.fdatasync(self._fd)
            if new:
                fsync_dir(self.directory)
        except OSError:
            self.seal()  # a failed append may have left a torn tail: later batches go elsewhere
            raise
        self._size += size
        assert self._path is not None
        return [Location(self._path, offset, length) for offset, length in places]

    def seal(self) -> None:
        """Close the current segment: later batches start a new one."""
        if self._fd is None:
            return
        os.close(self._fd)
        assert self._path is not None
        self.sealed.append(self._path)
        self._fd, self._path, self._size = None, None, 0

    def remove(self, paths: Sequence[Path]) -> None:
        """Delete checkpointed segments (durably)."""
        for path in paths:
            path.unlink(missing_ok=True)
            self.sealed.remove(path)
        if paths:
            fsync_dir(self.directory)

    def close(self) -> None:
        self.seal()

    def _open_segment(self) -> None:
        path = self.directory / f"{self._next:010d}.tnj"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._path, self._size = path, 0
        self._next += 1


def _write_all(fd: int, parts: list[bytes]) -> None:
    """Write `parts` in order with writev (no joined copy), finishing any short write."""
    views = [memoryview(p) for p in parts if p]
    while views:
        done = os.writev(fd, views[:_IOV_MAX])
        while done and views:
            if done >= len(views[0]):
                done -= len(views.pop(0))
            else:
                views[0], done = views[0][done:], 0
