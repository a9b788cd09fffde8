"""Envelope v1: how twins, heartbeats and catch-up messages are framed, signed and checked.

Every message is four ZeroMQ frames (docs/PROTOCOL.md is the full specification):

    [topic, header, payload, signature]
    topic      b"<family>:<sender>"   family in twin | hb | req | end, so SUB filters by prefix
    header     msgpack map: version, type, sender, created, payload_len, payload_digest and
               the family's fields (twin: seq, provenance, rows; hb: latest, holdings, nonce;
               req: to, request_id, have (watermark + ranges), nonce;
               end: to, request_id, count, nonce)
    payload    twin: typed columns (twinnode.wire.columnar); other families: empty
    signature  Ed25519 over DOMAIN || u64(len header) || header || u64(32) || payload_digest

`Verifier.open` checks, in this order, raising exactly one WireError subclass: frame count and
sizes -> version -> header fields and topic (a twin's rows = its n, within `max_rows`, its
payload within what that many rows can take) -> sender pinned -> signature -> replay/duplicate
(twins: `ReplayGuard`; others: freshness window, nonce, recipient) -> the twin header's schema
hash -> payload digest -> payload decode -> columns against the schema. Pure: no sockets, no
clocks except the injectable one, no pickles.
"""
from __future__ import annotations

import hashlib
import math
import os
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import msgpack

from twinnode.atomic import jsonable
from twinnode.errors import (
    DataError,
    DigestMismatch,
    InvalidSignature,
    MalformedMessage,
    MisaddressedMessage,
    ReplayedMessage,
    SchemaMismatch,
    StaleMessage,
    UnsupportedVersion,
    WireError,
)
from twinnode.schema import Schema
from twinnode.trust.identity import NAME_RE, Identity, TrustStore, verify
from twinnode.trust.replay import Holding, ReplayGuard
from twinnode.trust.seqset import MAX_RANGES, MAX_SEQ, bounded
from twinnode.twins import RELATIONS, Provenance, Twin
from twinnode.wire.columnar import decode_columns, encode_columns, max_payload_bytes, unpack_columns

VERSION = 1
DOMAIN = b"twinnode/envelope/v1\x00"
TWIN, HEARTBEAT, REQUEST, END = "twin", "hb", "req", "end"
FAMILIES = (TWIN, HEARTBEAT, REQUEST, END)
NONCE_BYTES = 16
DIGEST_BYTES = 32
SIGNATURE_BYTES = 64
_MAX_SEQ = MAX_SEQ  # seqs, counts and watermarks: the limit the store shares (seqset.py)
_HEX = frozenset("0123456789abcdef")

__all__ = ["VERSION", "FAMILIES", "TWIN", "HEARTBEAT", "REQUEST", "END", "WireLimits",
           "Signer", "Envelope", "Heartbeat", "CatchupRequest", "CatchupEnd", "Holding",
           "ReplayGuard", "Verifier", "limits_for", "topic", "signed_message", "seal",
           "encode_twin", "twin_digest", "encode_heartbeat", "encode_catchup_request", "encode_catchup_end", "decode_twin",
           "decode_heartbeat", "decode_catchup_request", "decode_catchup_end", "rejection_line"]


@dataclass(frozen=True)
class WireLimits:
    """Bounds on what a peer can make us parse or allocate, checked before the work."""

    max_topic_bytes: int = 128
    max_header_bytes: int = 64 * 1024
    max_payload_bytes: int = 64 * 1024 * 1024
    max_signature_bytes: int = 1024      # a signature of any length but 64 is refused later
    max_str_len: int = 4096              # any string in a header
    max_bin_len: int = 64                # any binary in a header (digests, nonces)
    max_array_len: int = 10_000          # any array in a header (e.g. catch-up `ranges`)
    max_map_len: int = 1024              # any map in a header (holdings, have, generator)
    max_rows: int = 1_000_000            # rows in one peer twin (a node sets [network] max_rows)
    max_cells: int = 20_000_000          # rows x columns: bounds the decoded arrays (8 B each)
    max_columns: int = 1000
    freshness_s: float = 300.0           # heartbeats/catch-up: |now - created| within this
    max_nonces: int = 65_536             # remembered (sender, nonce) pairs of fresh messages


def limits_for(schema: Schema, max_rows: int, base: WireLimits = WireLimits()) -> WireLimits:
    """`base` narrowed to twins of at most `max_rows` rows under `schema`: the payload limit
    becomes what that many rows can take, so a peer cannot make us buffer more."""
    rows = min(max_rows, base.max_rows)
    return replace(base, max_rows=rows,
                   max_payload_bytes=min(base.max_payload_bytes, max_payload_bytes(schema, rows)))


# ------------------------------------------------------------------ messages
@dataclass(frozen=True)
class Heartbeat:
    """Alive, my latest twin seq, and the watermark of every sender whose twins I hold."""

    sender: str
    latest: int
    holdings: Mapping[str, int]
    created: float = field(default_factory=time.time)
    nonce: bytes = field(default_factory=lambda: os.urandom(NONCE_BYTES))


@dataclass(frozen=True)
class CatchupRequest:
    """Send me the stored twins I lack; `have` says what I hold per sender (bounded to
    `seqset.MAX_RANGES` ranges when encoded: it may claim less than is held)."""

    sender: str
    to: str
    have: Mapping[str, Holding]
    request_id: bytes = field(default_factory=lambda: os.urandom(NONCE_BYTES))
    created: float = field(default_factory=time.time)
    nonce: bytes = field(default_factory=lambda: os.urandom(NONCE_BYTES))


@dataclass(frozen=True)
class CatchupEnd:
    """The end of a catch-up reply: `count` twin envelopes were sent for `request_id`."""

    sender: str
    to: str
    request_id: bytes
    count: int
    created: float = field(default_factory=time.time)
    nonce: bytes = field(default_factory=lambda: os.urandom(NONCE_BYTES))


Message = Twin | Heartbeat | CatchupRequest | CatchupEnd


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
        return self.header.get("seq") if self.family == TWIN else None

    @property
    def twin(self) -> Twin:
        if not isinstance(self.message, Twin):
            raise MalformedMessage(f"a {self.family} message carries no twin")
        return self.message


# ------------------------------------------------------------------ sending
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
    header_bytes = msgpack.packb(dict(header), use_bin_type=True)
    digest = header.get("payload_digest")
    signature = signer.sign(header_bytes, digest if isinstance(digest, bytes) else b"")
    if topic_frame is None:
        topic_frame = topic(str(header.get("type")), str(header.get("sender")))
    return [topic_frame, header_bytes, payload, signature]


def _envelope(family: str, signer: Signer, sender: str, fields: Mapping[str, Any],
              payload: bytes = b"") -> list[bytes]:
    if sender != signer.name:
        raise DataError(f"message names sender {sender!r} but the signer is {signer.name!r}")
    header = {"version": VERSION, "type": family, "sender": sender, **fields,
              "payload_len": len(payload), "payload_digest": hashlib.sha256(payload).digest()}
    return seal(header, payload, signer)


def encode_twin(twin: Twin, schema: Schema, seq: int, signer: Signer) -> list[bytes]:
    """A twin as signed frames; DataError if it does not fit `schema` (peers would refuse it)."""
    p = twin.provenance
    if p.schema_hash != schema.hash:
        raise DataError(f"twin was made under schema {p.schema_hash[:12]}, not {schema.short_hash}")
    if not isinstance(seq, int) or not 1 <= seq <= _MAX_SEQ:
        raise DataError(f"twin sequence numbers are 1..{_MAX_SEQ}, got {seq!r}")
    payload, rows = encode_columns(twin.arrays, schema)
    if rows != p.n:
        raise DataError(f"twin has {rows} rows but its provenance says N = {p.n}; a twin has "
                        "the size of the data it was made from")
    fields = {"seq": seq, "created": float(p.created), "schema_hash": p.schema_hash,
              "epsilon": float(p.epsilon), "delta": float(p.delta), "n": int(p.n),
              "k": int(p.k), "index": int(p.index), "relation": p.relation,
              "release": p.release, "generator": jsonable(dict(p.generator)), "rows": rows}
    return _envelope(TWIN, signer, p.sender, fields, payload)


def twin_digest(twin: Twin, schema: Schema) -> bytes:
    """The payload digest `encode_twin` would sign for `twin` (it does not depend on the seq):
    lets a sender find a twin it already published before it takes a seq for it."""
    payload, _ = encode_columns(twin.arrays, schema)
    return hashlib.sha256(payload).digest()


def encode_heartbeat(hb: Heartbeat, signer: Signer) -> list[bytes]:
    """A heartbeat as signed frames."""
    return _envelope(HEARTBEAT, signer, hb.sender, {
        "created": float(hb.created), "latest": int(hb.latest),
        "holdings": {str(k): int(v) for k, v in hb.holdings.items()}, "nonce": hb.nonce})


def encode_catchup_request(req: CatchupRequest, signer: Signer) -> list[bytes]:
    """A catch-up request as signed frames."""
    have = {str(k): {"watermark": int(h.watermark), "ranges": [[int(a), int(b)] for a, b in
                                                             h.ranges]}
            for k, h in bounded(req.have, MAX_RANGES).items()}
    return _envelope(REQUEST, signer, req.sender, {
        "created": float(req.created), "to": req.to, "request_id": req.request_id,
        "have": have, "nonce": req.nonce})


def encode_catchup_end(end: CatchupEnd, signer: Signer) -> list[bytes]:
    """The end-of-reply marker as signed frames."""
    return _envelope(END, signer, end.sender, {
        "created": float(end.created), "to": end.to, "request_id": end.request_id,
        "count": int(end.count), "nonce": end.nonce})


# ------------------------------------------------------------------ receiving
class Verifier:
    """Opens inbound frames: every check of the protocol, in order; one WireError on refusal.

    Twins are recorded as seen only by `accept(envelope)`, once the caller has stored them;
    heartbeats and catch-up messages are judged by freshness and remembered on success.
    """

    def __init__(self, trust: TrustStore, schema: Schema, guard: ReplayGuard,
                 limits: WireLimits = WireLimits(), *, local: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.trust, self.schema, self.guard, self.limits = trust, schema, guard, limits
        self.local = local
        self.clock = clock
        self._nonces: OrderedDict[tuple[str, bytes], float] = OrderedDict()

    def open(self, frames: Sequence[bytes], *, replay: bool = True) -> Envelope:
        """Check and decode one inbound multipart message, in the module docstring's order.
        `replay=False` skips the replay guard (not the freshness of other families): for
        re-reading twins this node stored itself, which were checked when they arrived."""
        topic_frame, header_bytes, payload, signature = _split_frames(frames, self.limits)
        header = _unpack_header(header_bytes, self.limits)
        sender, seq = header.get("sender"), header.get("seq")
        try:
            return self._open(header, (topic_frame, header_bytes, payload, signature), replay)
        except WireError as exc:
            exc.sender, exc.seq = sender, seq  # type: ignore[attr-defined]  # for rejection_line
            raise

    def accept(self, envelope: Envelope) -> None:
        """Record a stored twin as seen, so a re-send is a replay and its content a duplicate."""
        if envelope.family == TWIN:
            self.guard.accept(envelope.sender, envelope.header["seq"], envelope.digest)

    def _open(self, header: dict[str, Any], frames: tuple[bytes, bytes, bytes, bytes],
              replay: bool) -> Envelope:
        topic_frame, header_bytes, payload, signature = frames
        _check_version(header)
        family = _check_header(header, topic_frame, self.limits, self.schema)
        sender, digest = header["sender"], header["payload_digest"]
        peer = self.trust.get(sender)
        if not verify(peer.verifier, signature, signed_message(header_bytes, digest)):
            raise InvalidSignature(f"signature ({len(signature)} bytes) does not verify under "
                                   f"{sender}'s pinned key")
        if family == TWIN:
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
        message = self._message(family, header, payload)
        if family != TWIN:
            self._remember(sender, header["nonce"], header["created"])
        return Envelope(family, sender, header, frames, digest, message)

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

    def _message(self, family: str, h: Mapping[str, Any], payload: bytes) -> Message:
        if family == HEARTBEAT:
            return Heartbeat(h["sender"], h["latest"], dict(h["holdings"]), h["created"],
                             h["nonce"])
        if family == REQUEST:
            have = {k: Holding(v["watermark"], tuple((a, b) for a, b in v["ranges"]))
                    for k, v in h["have"].items()}
            return CatchupRequest(h["sender"], h["to"], have, h["request_id"], h["created"],
                                  h["nonce"])
        if family == END:
            return CatchupEnd(h["sender"], h["to"], h["request_id"], h["count"], h["created"],
                              h["nonce"])
        columns = unpack_columns(payload, self.limits.max_columns)
        arrays = decode_columns(columns, h["rows"], self.schema)
        try:
            prov = Provenance(sender=h["sender"], schema_hash=h["schema_hash"],
                              epsilon=h["epsilon"], delta=h["delta"], n=h["n"], k=h["k"],
                              index=h["index"], relation=h["relation"], release=h["release"],
                              created=h["created"], generator=h["generator"])
        except DataError as exc:
            raise MalformedMessage(f"invalid provenance: {exc}") from None
        return Twin(prov, arrays)


def _decode_as(family: str, frames: Sequence[bytes], verifier: Verifier) -> Envelope:
    env = verifier.open(frames)
    if env.family != family:
        raise MalformedMessage(f"expected a {family} message, got {env.family}")
    return env


def decode_twin(frames: Sequence[bytes], verifier: Verifier) -> Envelope:
    """Frames -> verified Envelope whose `message` is a Twin."""
    return _decode_as(TWIN, frames, verifier)


def decode_heartbeat(frames: Sequence[bytes], verifier: Verifier) -> Envelope:
    """Frames -> verified Envelope whose `message` is a Heartbeat."""
    return _decode_as(HEARTBEAT, frames, verifier)


def decode_catchup_request(frames: Sequence[bytes], verifier: Verifier) -> Envelope:
    """Frames -> verified Envelope whose `message` is a CatchupRequest."""
    return _decode_as(REQUEST, frames, verifier)


def decode_catchup_end(frames: Sequence[bytes], verifier: Verifier) -> Envelope:
    """Frames -> verified Envelope whose `message` is a CatchupEnd."""
    return _decode_as(END, frames, verifier)


def rejection_line(exc: WireError) -> str:
    """The log line for a refused message: `REJECTED (<reason>) peer=... seq=...: detail`."""
    sender = getattr(exc, "sender", None)
    peer = sender if isinstance(sender, str) and NAME_RE.match(sender) else (
        "?" if sender is None else repr(sender)[:40])
    seq = getattr(exc, "seq", None)
    seq_text = str(seq) if isinstance(seq, int) and not isinstance(seq, bool) else "-"
    return f"REJECTED ({exc.reason}) peer={peer} seq={seq_text}: {exc}"


# ------------------------------------------------------------------ checks
def _split_frames(frames: Any, limits: WireLimits) -> tuple[bytes, bytes, bytes, bytes]:
    if not isinstance(frames, (list, tuple)) or len(frames) != 4:
        n = len(frames) if isinstance(frames, (list, tuple)) else type(frames).__name__
        raise MalformedMessage(f"expected 4 frames [topic, header, payload, signature], got {n}")
    if not all(isinstance(f, (bytes, bytearray, memoryview)) for f in frames):
        raise MalformedMessage("every frame must be bytes")
    out = tuple(bytes(f) for f in frames)
    for name, frame, cap in zip(("topic", "header", "payload", "signature"), out,
                                (limits.max_topic_bytes, limits.max_header_bytes,
                                 limits.max_payload_bytes, limits.max_signature_bytes)):
        if len(frame) > cap:
            raise MalformedMessage(f"{name} frame is {len(frame)} bytes, limit {cap}")
    return out  # type: ignore[return-value]


def _unpack_header(header_bytes: bytes, limits: WireLimits) -> dict[str, Any]:
    try:
        header = msgpack.unpackb(header_bytes, raw=False, strict_map_key=True, use_list=True,
                                 max_str_len=limits.max_str_len, max_bin_len=limits.max_bin_len,
                                 max_array_len=limits.max_array_len,
                                 max_map_len=limits.max_map_len, max_ext_len=0)
    except Exception as exc:  # msgpack raises ValueError, StackError, UnicodeDecodeError, ...
        raise MalformedMessage(f"header is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise MalformedMessage(f"header must be a map, got {type(header).__name__}")
    return header


def _check_version(header: dict[str, Any]) -> None:
    version = header.get("version")
    if type(version) is not int:
        raise MalformedMessage("header has no integer 'version'")
    if version != VERSION:
        raise UnsupportedVersion(f"protocol version {version}, this node speaks {VERSION}")


def _check_header(h: dict[str, Any], topic_frame: bytes, limits: WireLimits,
                  schema: Schema) -> str:
    """Field names, types and ranges of a version-1 header, and its topic; returns the family."""
    family = h.get("type")
    if family not in FAMILIES:
        raise MalformedMessage(f"unknown message type {family!r:.40}")
    spec = _SPECS[family]
    keys = set(h)
    if keys != set(spec):
        missing = sorted(set(spec) - keys)
        extra = sorted(repr(k)[:40] for k in keys - set(spec))
        raise MalformedMessage(f"{family} header: missing {missing}, unexpected {extra}")
    for key, check in spec.items():
        problem = check(h[key], limits)
        if problem:
            raise MalformedMessage(f"{family} header field '{key}': {problem}")
    if topic_frame != topic(family, h["sender"]):
        raise MalformedMessage(f"topic {topic_frame[:80]!r} does not match the header's "
                               f"{family} from {h['sender']}")
    if family == TWIN:
        if h["index"] >= h["k"]:
            raise MalformedMessage(f"twin index {h['index']} outside 0..{h['k'] - 1}")
        if h["rows"] != h["n"]:
            raise MalformedMessage(f"twin has {h['rows']} rows but claims N = {h['n']}: a twin "
                                   "has the size of the data it was made from")
        n_columns = len(schema.columns)
        if h["rows"] * n_columns > limits.max_cells:
            raise MalformedMessage(f"{h['rows']} rows x {n_columns} columns exceeds "
                                   f"{limits.max_cells} cells")
        most = max_payload_bytes(schema, h["rows"])
        if h["payload_len"] > most:
            raise MalformedMessage(f"payload of {h['payload_len']} bytes exceeds the {most} "
                                   f"that {h['rows']} rows of this schema can take")
    elif h["payload_len"] != 0:
        raise MalformedMessage(f"a {family} message has no payload")
    return family


Check = Callable[[Any, WireLimits], "str | None"]


def _int(lo: int, hi: int | None = None) -> Check:
    def check(v: Any, limits: WireLimits) -> str | None:
        top = hi if hi is not None else _MAX_SEQ
        if type(v) is not int or not lo <= v <= top:
            return f"must be an integer in {lo}..{top}"
        return None
    return check


def _float(lo: float, hi: float, lo_open: bool = False) -> Check:
    def check(v: Any, limits: WireLimits) -> str | None:
        ok = type(v) is float and math.isfinite(v) and lo <= v < hi and not (lo_open and v == lo)
        if not ok:
            return f"must be a finite float in {'(' if lo_open else '['}{lo}, {hi})"
        return None
    return check


def _bin(n: int) -> Check:
    def check(v: Any, limits: WireLimits) -> str | None:
        return None if type(v) is bytes and len(v) == n else f"must be {n} bytes"
    return check


def _name(v: Any, limits: WireLimits) -> str | None:
    return None if type(v) is str and NAME_RE.match(v) else "must be a node name"


def _rows(v: Any, limits: WireLimits) -> str | None:
    return _int(1, limits.max_rows)(v, limits)


def _payload_len(v: Any, limits: WireLimits) -> str | None:
    return _int(0, limits.max_payload_bytes)(v, limits)


def _schema_hash(v: Any, limits: WireLimits) -> str | None:
    ok = type(v) is str and len(v) == 64 and set(v) <= _HEX
    return None if ok else "must be 64 lowercase hex digits"


def _relation(v: Any, limits: WireLimits) -> str | None:
    return None if v in RELATIONS and type(v) is str else f"must be one of {RELATIONS}"


def _release(v: Any, limits: WireLimits) -> str | None:
    return None if type(v) is str and len(v) <= 256 else "must be a string of at most 256 chars"


def _generator(v: Any, limits: WireLimits) -> str | None:
    """A small JSON-like map of generator settings (bounded depth; no binaries)."""
    if type(v) is not dict:
        return "must be a map"
    stack: list[tuple[Any, int]] = [(v, 0)]
    while stack:
        x, depth = stack.pop()
        if depth > 8:
            return "is nested deeper than 8 levels"
        if type(x) is dict:
            if not all(type(k) is str for k in x):
                return "map keys must be strings"
            stack.extend((y, depth + 1) for y in x.values())
        elif type(x) is list:
            stack.extend((y, depth + 1) for y in x)
        elif type(x) is float and not math.isfinite(x):
            return "holds a non-finite float"
        elif type(x) not in (str, int, float, bool, type(None)):
            return f"holds a {type(x).__name__}"
    return None


def _holdings(v: Any, limits: WireLimits) -> str | None:
    if type(v) is not dict:
        return "must be a map of sender -> watermark"
    for k, w in v.items():
        if _name(k, limits) or type(w) is not int or not 0 <= w <= _MAX_SEQ:
            return f"entry {k!r:.40}: must be node name -> integer >= 0"
    return None


def _have(v: Any, limits: WireLimits) -> str | None:
    if type(v) is not dict:
        return "must be a map of sender -> {watermark, ranges}"
    total = 0
    for k, h in v.items():
        bad = f"entry {k!r:.40}: must be node name -> {{watermark: int, ranges: [[int, int]]}}"
        if _name(k, limits) or type(h) is not dict or set(h) != {"watermark", "ranges"}:
            return bad
        ranges = h["ranges"]
        if type(ranges) is not list or not all(type(r) is list for r in ranges):
            return bad
        total += len(ranges)
        if total > MAX_RANGES:
            return f"lists more than {MAX_RANGES} ranges"
        problem = Holding(h["watermark"], tuple(tuple(r) for r in ranges)).problem()
        if problem:
            return f"entry {k!r:.40}: {problem}"
    return None


_COMMON: dict[str, Check] = {
    "version": _int(VERSION, VERSION), "type": lambda v, _: None, "sender": _name,
    "created": _float(0.0, 2.0**40), "payload_len": _payload_len,
    "payload_digest": _bin(DIGEST_BYTES)}
_SPECS: dict[str, dict[str, Check]] = {
    TWIN: _COMMON | {
        "seq": _int(1), "schema_hash": _schema_hash, "epsilon": _float(0.0, math.inf, True),
        "delta": _float(0.0, 1.0), "n": _int(1), "k": _int(1, 1_000_000),
        "index": _int(0, 999_999), "relation": _relation, "release": _release,
        "generator": _generator, "rows": _rows},
    HEARTBEAT: _COMMON | {"latest": _int(0), "holdings": _holdings, "nonce": _bin(NONCE_BYTES)},
    REQUEST: _COMMON | {"to": _name, "request_id": _bin(NONCE_BYTES), "have": _have,
                        "nonce": _bin(NONCE_BYTES)},
    END: _COMMON | {"to": _name, "request_id": _bin(NONCE_BYTES), "count": _int(0),
                    "nonce": _bin(NONCE_BYTES)},
}
