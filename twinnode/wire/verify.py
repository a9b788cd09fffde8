"""Opening inbound frames: every check of the protocol, in order, and one WireError on refusal.

`Verifier.open` checks, in this order, raising exactly one WireError subclass: frame count and
sizes -> (with `expect`: the family belongs where it came in, and only a twin has a payload)
-> version -> header fields and topic (a twin's rows = its n, its payload within what that
many rows can take) -> sender pinned -> signature -> a twin's rows and payload within this
node's `max_rows` (`TwinTooLarge`: the sender signed it, so the refusal is for good and names
a (sender, seq) that is really too large; sizes up to the protocol's own bounds pass the
earlier checks for this) -> replay/duplicate
(twins: `ReplayGuard`; others: freshness window, nonce, recipient) -> the twin header's schema
hash -> payload digest -> payload decode -> columns against the schema. The structural checks
are `wire.checks`', the decoding `wire.codec`'s. Pure: no sockets, no clocks except the
injectable one, no pickles. `rejection_line` is the log line a refusal gets.
"""
from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Callable, Collection, Mapping, Sequence

from twinnode.errors import (
    DigestMismatch,
    InvalidSignature,
    MalformedMessage,
    MisaddressedMessage,
    ReplayedMessage,
    SchemaMismatch,
    StaleMessage,
    TwinTooLarge,
    WireError,
)
from twinnode.schema import Schema
from twinnode.trust.identity import NAME_RE, TrustStore, verify
from twinnode.trust.replay import ReplayGuard
from twinnode.wire.checks import Frames, check_header, check_version, split_frames, unpack_header
from twinnode.wire.codec import read_message
from twinnode.wire.envelope import FAMILIES, TWIN, Envelope, signed_message
from twinnode.wire.limits import WireLimits

__all__ = ["Verifier", "rejection_line"]


class Verifier:
    """Opens inbound frames: every check of the protocol, in order; one WireError on refusal.

    Twins are recorded as seen only by `accept(envelope)`, once the caller has stored them;
    heartbeats and catch-up messages are judged by freshness and remembered on success.
    """

    def __init__(self, trust: TrustStore, schema: Schema, guard: ReplayGuard,
                 limits: WireLimits = WireLimits(), *, local: str | None = None,
                 clock: Callable[[], float] = time.time, retired: bool = False) -> None:
        """`retired=True` also accepts a sender's retired signing keys: only for re-reading
        twins this node stored before a rotation (never for what arrives)."""
        self.trust, self.schema, self.guard, self.limits = trust, schema, guard, limits
        protocol = WireLimits()  # a twin up to the protocol's bounds is parsed, then refused
        self._structure = replace(limits, max_rows=max(limits.max_rows, protocol.max_rows),
                                  max_payload_bytes=max(limits.max_payload_bytes,
                                                        protocol.max_payload_bytes))
        self.retired = retired
        self.local = local
        self.clock = clock
        self._nonces: OrderedDict[tuple[str, bytes], float] = OrderedDict()

    def open(self, frames: Sequence[bytes], *, replay: bool = True,
             expect: Collection[str] | None = None, channel: str = "?") -> Envelope:
        """Check and decode one inbound multipart message, in the module docstring's order.
        `replay=False` skips the replay guard (not the freshness of other families): for
        re-reading twins this node stored itself, which were checked when they arrived.
        `expect`: the families that belong on `channel`; anything else is refused before its
        signature is checked or its payload hashed (what a flood costs stays small)."""
        topic_frame, header_bytes, payload, signature = split_frames(frames, self._structure)
        if expect is not None and TWIN not in expect and payload:
            raise MalformedMessage(f"a message on the {channel} channel has no payload, this "
                                   f"one has {len(payload)} bytes")
        header = unpack_header(header_bytes, self.limits)
        sender, seq = header.get("sender"), header.get("seq")
        try:
            family = header.get("type")
            if expect is not None and family not in expect:
                kind = family if family in FAMILIES else repr(family)[:40]
                raise MalformedMessage(f"a {kind} message does not belong on the {channel} "
                                       "channel")
            return self._open(header, (topic_frame, header_bytes, payload, signature), replay)
        except WireError as exc:
            exc.sender, exc.seq = sender, seq  # type: ignore[attr-defined]  # for rejection_line
            raise

    def well_formed(self, frames: Sequence[bytes]) -> bool:
        """Whether `frames` pass every check before the signature's (sizes, header fields,
        topic): a node may leave such a message unopened (`Catchup.skip_heartbeat`), while
        anything else still goes through `open` and is refused and counted."""
        try:
            topic_frame, header_bytes, payload, _ = split_frames(frames, self._structure)
            header = unpack_header(header_bytes, self.limits)
            check_version(header)
            check_header(header, topic_frame, self._structure, self.schema)
        except WireError:
            return False
        return True

    def accept(self, envelope: Envelope) -> None:
        """Record a stored twin as seen, so a re-send is a replay and its content a duplicate."""
        if envelope.family == TWIN:
            self.guard.accept(envelope.sender, envelope.header["seq"], envelope.digest)

    def _open(self, header: dict[Any, Any], frames: Frames, replay: bool) -> Envelope:
        topic_frame, header_bytes, payload, signature = frames
        check_version(header)
        family = check_header(header, topic_frame, self._structure, self.schema)
        if family != TWIN and len(payload) > self.limits.max_payload_bytes:
            raise MalformedMessage(f"payload frame is {len(payload)} bytes, "
                                   f"limit {self.limits.max_payload_bytes}")
        sender, digest = header["sender"], header["payload_digest"]
        peer = self.trust.get(sender)
        signed = signed_message(header_bytes, digest)
        if not verify(peer.verifier, signature, signed) and not (
                self.retired and any(verify(k, signature, signed)
                                     for k in peer.retired_verifiers)):
            raise InvalidSignature(f"signature ({len(signature)} bytes) does not verify under "
                                   f"{sender}'s pinned key")
        if family == TWIN:
            self._check_size(header, payload)
            if replay:
                self.guard.check(sender, header["seq"], digest)
            if header["schema_hash"] != self.schema.hash:  # signed: no need to hash the payload
                raise SchemaMismatch(f"twin was made under schema {header['schema_hash'][:12]}, "
                                     f"ours is {self.schema.short_hash}")
        else:
            self._check_fresh(header)
        if len(payload) != header["payload_len"]:
            raise DigestMismatch(f"payload is {len(payload)} bytes, header says "
                                 f"{header['payload_len']}")
        if hashlib.sha256(payload).digest() != digest:
            raise DigestMismatch("payload does not match the signed SHA-256 digest")
        message = read_message(family, header, payload, self.schema, self.limits.max_columns)
        if family != TWIN:
            self._remember(sender, header["nonce"], header["created"])
        return Envelope(family, sender, header, frames, digest, message)

    def _check_size(self, header: Mapping[str, Any], payload: bytes) -> None:
        """A signed twin within the protocol's bounds but over this node's: TwinTooLarge."""
        rows, most = header["rows"], self.limits.max_payload_bytes
        if rows > self.limits.max_rows:
            raise TwinTooLarge(f"twin has {rows} rows, this node takes at most "
                               f"{self.limits.max_rows} ([network] max_rows)")
        if len(payload) > most:
            raise TwinTooLarge(f"payload frame is {len(payload)} bytes, limit {most}")

    def _check_fresh(self, header: Mapping[str, Any]) -> None:
        age = self.clock() - header["created"]
        if abs(age) > self.limits.freshness_s:
            raise StaleMessage(f"{header['type']} message is stale: created {age:.0f} s ago, "
                               f"accepted within +-{self.limits.freshness_s:.0f} s (clocks "
                               "apart?)")
        if (header["sender"], header["nonce"]) in self._nonces:
            raise ReplayedMessage(f"{header['type']} message nonce already seen")
        to = header.get("to")
        if to is not None and self.local is not None and to != self.local:
            raise MisaddressedMessage(f"{header['type']} message is addressed to {to!r}, "
                                      f"not {self.local!r}")

    def _remember(self, sender: str, nonce: bytes, created: float) -> None:
        self._nonces[(sender, nonce)] = created
        horizon = self.clock() - self.limits.freshness_s
        while self._nonces and (len(self._nonces) > self.limits.max_nonces
                                or next(iter(self._nonces.values())) < horizon):
            self._nonces.popitem(last=False)


def rejection_line(exc: WireError) -> str:
    """The log line for a refused message: `REJECTED (<reason>) peer=... seq=...: detail`."""
    sender = getattr(exc, "sender", None)
    peer = sender if isinstance(sender, str) and NAME_RE.match(sender) else (
        "?" if sender is None else repr(sender)[:40])
    seq = getattr(exc, "seq", None)
    seq_text = str(seq) if isinstance(seq, int) and not isinstance(seq, bool) else "-"
    return f"REJECTED ({exc.reason}) peer={peer} seq={seq_text}: {exc}"
