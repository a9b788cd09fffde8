"""Envelope v1: the four frames every message travels in, and how they are signed.

Every message is four ZeroMQ frames (docs/PROTOCOL.md is the full specification):

    [topic, header, payload, signature]
    topic      b"<family>:<sender>"   family in twin | hb | req | end, so SUB filters by prefix
    header     msgpack map: version, type, sender, created, payload_len, payload_digest and
               the family's fields (twin: seq, provenance, rows; hb: latest, holdings, nonce;
               req: to, request_id, have (watermark + ranges), nonce;
               end: to, request_id, count, nonce)
    payload    twin: typed columns (twinnode.wire.columnar); other families: empty
    signature  Ed25519 over DOMAIN || u64(len header) || header || u64(32) || payload_digest

This module is the format and the signing; `wire.codec` fills the header of each family,
`wire.checks` and `wire.verify` take inbound frames apart in the order the protocol fixes.
Pure: no sockets, no clocks, no pickles.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any, Mapping

import msgpack

from twinnode.errors import DataError, MalformedMessage
from twinnode.trust.identity import Identity
from twinnode.twins import Twin
from twinnode.wire.messages import Message

__all__ = ["VERSION", "DOMAIN", "TWIN", "HEARTBEAT", "REQUEST", "END", "FAMILIES",
           "DIGEST_BYTES", "SIGNATURE_BYTES", "Envelope", "Signer", "topic", "signed_message",
           "seal", "envelope_frames"]

VERSION = 1
DOMAIN = b"twinnode/envelope/v1\x00"
TWIN, HEARTBEAT, REQUEST, END = "twin", "hb", "req", "end"
FAMILIES = (TWIN, HEARTBEAT, REQUEST, END)
DIGEST_BYTES = 32
SIGNATURE_BYTES = 64


@dataclass(frozen=True)
class Envelope:
    """A verified message: its family, parsed header, exact frames (store them verbatim)."""

    family: str
    sender: str
    header: Mapping[str, Any]
    frames: tuple[bytes, bytes, bytes, bytes]
    digest: bytes
    message: Message

    @property
    def seq(self) -> int | None:
        """The twin's per-sender sequence number (None for other families)."""
        seq = self.header.get("seq") if self.family == TWIN else None
        return seq if isinstance(seq, int) else None

    @property
    def twin(self) -> Twin:
        if not isinstance(self.message, Twin):
            raise MalformedMessage(f"a {self.family} message carries no twin")
        return self.message


class Signer:
    """Signs envelopes as one identity."""

    def __init__(self, identity: Identity) -> None:
        self.name = identity.name
        self._identity = identity

    def sign(self, header: bytes, digest: bytes) -> bytes:
        return self._identity.sign(signed_message(header, digest))


def topic(family: str, sender: str) -> bytes:
    """The first frame: family and sender, so a SUB socket can filter by prefix."""
    return f"{family}:{sender}".encode("utf-8")


def signed_message(header: bytes, digest: bytes) -> bytes:
    """The exact bytes an envelope signature covers: domain-separated and length-prefixed."""
    return (DOMAIN + struct.pack(">Q", len(header)) + header
            + struct.pack(">Q", len(digest)) + digest)


def seal(header: Mapping[str, Any], payload: bytes, signer: Signer,
         topic_frame: bytes | None = None) -> list[bytes]:
    """Pack `header` as given, sign it with its `payload_digest`: the low-level encoder."""
    header_bytes: bytes = msgpack.packb(dict(header), use_bin_type=True)
    digest = header.get("payload_digest")
    signature = signer.sign(header_bytes, digest if isinstance(digest, bytes) else b"")
    if topic_frame is None:
        topic_frame = topic(str(header.get("type")), str(header.get("sender")))
    return [topic_frame, header_bytes, payload, signature]


def envelope_frames(family: str, signer: Signer, sender: str, fields: Mapping[str, Any],
                    payload: bytes = b"", digest: bytes | None = None) -> list[bytes]:
    """The signed frames of one message: the common header fields around the family's.
    `digest`: the payload's SHA-256 when the caller computed it already (from these bytes)."""
    if sender != signer.name:
        raise DataError(f"message names sender {sender!r} but the signer is {signer.name!r}")
    header = {"version": VERSION, "type": family, "sender": sender, **fields,
              "payload_len": len(payload),
              "payload_digest": hashlib.sha256(payload).digest() if digest is None else digest}
    return seal(header, payload, signer)
