"""What the store files and indexes an envelope under: sender names, seqs, digests, status words,
and a `Put` (one envelope for `Store.put_many`) checked and packed into its container bytes.

Each check returns the value it accepts or raises StoreError: a sender name becomes a directory
name, so it must be safe as one, and a digest is indexed as lowercase hex text.
"""
from __future__ import annotations

import re
import time
from typing import Any, NamedTuple, Sequence

from twinnode.errors import StoreError
from twinnode.store.container import pack_envelope
from twinnode.trust.seqset import MAX_SEQ

SENDER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")
_TOKEN_RE = re.compile(r"[a-z][a-z0-9_\-]{0,31}")
_HEX_RE = re.compile(r"[0-9A-Fa-f]+")


def check_sender(sender: Any) -> str:
    """A sender name safe as a directory name (StoreError otherwise)."""
    if not isinstance(sender, str) or not SENDER_RE.fullmatch(sender):
        raise StoreError(f"sender name {sender!r} cannot be stored (letters, digits, _ . -; "
                         f"at most 64; not starting with '.' or '-')")
    return sender


def check_seq(seq: Any) -> int:
    """A sequence number in 1..MAX_SEQ (StoreError otherwise)."""
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_SEQ:
        raise StoreError(f"sequence number {seq!r} outside 1..{MAX_SEQ}")
    return seq


def normalize_digest(digest: Any) -> str:
    """Digests are indexed as text: bytes become lowercase hex, hex text is lowercased."""
    if isinstance(digest, (bytes, bytearray, memoryview)):
        text = bytes(digest).hex()
    elif isinstance(digest, str):
        text = digest.lower() if _HEX_RE.fullmatch(digest) else digest
    else:
        raise StoreError(f"digest must be bytes or str, not {type(digest).__name__}")
    if not 0 < len(text) <= 256 or not text.isprintable():
        raise StoreError(f"digest {text[:40]!r} must be 1..256 printable characters")
    return text


def check_token(name: str, value: Any) -> str:
    """A kind or status word: short, lowercase (StoreError naming `name` otherwise)."""
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise StoreError(f"{name} {value!r} must be a short lowercase word")
    return value


class Put(NamedTuple):
    """One envelope for `Store.put_many` (the arguments of `Store.put`)."""

    sender: str
    seq: int
    digest: bytes | str
    frames: Sequence[bytes]
    kind: str = "twin"
    k: int | None = None
    release: str | None = None
    status: str = "accepted"
    own: bool = False


Packed = tuple[dict[str, Any], bytes, bool]  # (index metadata, container bytes, own)


def pack_put(put: Put) -> Packed:
    """A checked Put as its metadata and container bytes (StoreError if anything is off)."""
    meta: dict[str, Any] = {
        "sender": check_sender(put.sender), "seq": check_seq(put.seq),
        "digest": normalize_digest(put.digest), "kind": check_token("kind", put.kind),
        "k": put.k, "release": put.release, "status": check_token("status", put.status),
        "received": time.time()}
    k, release, frames = put.k, put.release, put.frames
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
        raise StoreError(f"twin index k={k!r} must be a non-negative integer or None")
    if release is not None and (not isinstance(release, str) or len(release) > 256):
        raise StoreError(f"release {release!r} must be a string of at most 256 characters")
    if not isinstance(frames, (list, tuple)) or not all(
            isinstance(f, (bytes, bytearray, memoryview)) for f in frames):
        raise StoreError("frames must be a list of bytes")
    return meta, pack_envelope(meta, frames), bool(put.own)
