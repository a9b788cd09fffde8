"""The on-disk container of one stored envelope: a pure byte format, no I/O.

A container holds the envelope's frames exactly as received, plus the metadata the store
indexed them under (so a file whose index row was lost in a crash can be re-indexed), and a
SHA-256 over everything before it (so a damaged file is never read as a twin).

    offset  size  field
    0       4     magic  b"TNEV"
    4       2     format version, big-endian (1)
    6       4     metadata length M, big-endian
    10      M     metadata: UTF-8 JSON object (sender, seq, digest, kind, k, release, status,
                  received)
    10+M    4     frame count F, big-endian
    ...           F times: frame length L (8 bytes, big-endian), then L bytes of the frame
    end-32  32    SHA-256 of all bytes above
"""
from __future__ import annotations

import hashlib
import json
import struct
from typing import Any, Mapping, Sequence

from twinnode.errors import StoreError

MAGIC = b"TNEV"
VERSION = 1
CHECKSUM_SIZE = 32
MAX_META = 1 << 20
MAX_FRAMES = 1 << 16
_HEAD = struct.Struct(">4sHI")
_COUNT = struct.Struct(">I")
_LEN = struct.Struct(">Q")


def pack_envelope(meta: Mapping[str, Any], frames: Sequence[bytes]) -> bytes:
    """Container bytes for `frames` (kept byte for byte) and their JSON-able `meta`."""
    meta_bytes = json.dumps(dict(meta), sort_keys=True, separators=(",", ":"),
                            allow_nan=False).encode("utf-8")
    if len(meta_bytes) > MAX_META:
        raise StoreError(f"envelope metadata is {len(meta_bytes)} bytes (limit {MAX_META})")
    if not 0 < len(frames) <= MAX_FRAMES:
        raise StoreError(f"an envelope needs 1..{MAX_FRAMES} frames, got {len(frames)}")
    parts = [_HEAD.pack(MAGIC, VERSION, len(meta_bytes)), meta_bytes, _COUNT.pack(len(frames))]
    for frame in frames:
        parts.append(_LEN.pack(len(frame)))
        parts.append(frame)
    digest = hashlib.sha256()
    for part in parts:  # hashed piece by piece, joined once: a twin's bytes are copied once
        digest.update(part)
    parts.append(digest.digest())
    return b"".join(parts)


def container_checksum(blob: bytes) -> str:
    """The checksum a container carries (hex), as recorded in the index; no validation."""
    return blob[-CHECKSUM_SIZE:].hex()


def unpack_envelope(blob: bytes, source: str = "<container>") -> tuple[dict[str, Any], list[bytes]]:
    """(meta, frames) from container bytes; StoreError naming `source` if anything is off."""
    if len(blob) < _HEAD.size + _COUNT.size + CHECKSUM_SIZE:
        raise StoreError(f"{source}: truncated envelope file ({len(blob)} bytes)")
    body, checksum = memoryview(blob)[:-CHECKSUM_SIZE], blob[-CHECKSUM_SIZE:]
    magic, version, meta_len = _HEAD.unpack_from(body, 0)
    if magic != MAGIC:
        raise StoreError(f"{source}: not an envelope file (magic {magic!r})")
    if version != VERSION:
        raise StoreError(f"{source}: envelope file format {version} is not supported "
                         f"(this version reads {VERSION})")
    if hashlib.sha256(body).digest() != checksum:
        raise StoreError(f"{source}: envelope file checksum mismatch (damaged or truncated)")
    pos = _HEAD.size
    if meta_len > MAX_META or pos + meta_len + _COUNT.size > len(body):
        raise StoreError(f"{source}: metadata length {meta_len} runs past the end")
    try:
        meta = json.loads(bytes(body[pos:pos + meta_len]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{source}: metadata is not JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise StoreError(f"{source}: metadata is not a JSON object")
    pos += meta_len
    (count,) = _COUNT.unpack_from(body, pos)
    pos += _COUNT.size
    if not 0 < count <= MAX_FRAMES:
        raise StoreError(f"{source}: frame count {count} outside 1..{MAX_FRAMES}")
    frames: list[bytes] = []
    for i in range(count):
        if pos + _LEN.size > len(body):
            raise StoreError(f"{source}: frame {i} header runs past the end")
        (length,) = _LEN.unpack_from(body, pos)
        pos += _LEN.size
        if pos + length > len(body):
            raise StoreError(f"{source}: frame {i} ({length} bytes) runs past the end")
        frames.append(bytes(body[pos:pos + length]))
        pos += length
    if pos != len(body):
        raise StoreError(f"{source}: {len(body) - pos} unexpected bytes after the last frame")
    return meta, frames
