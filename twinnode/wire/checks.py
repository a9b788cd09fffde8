"""The structural checks of inbound frames, before any signature is checked or payload read.

Frame count and sizes, the header's msgpack (with length limits), its version, then every
field of the family's header: its name, type and range, the topic it came under, and for a
twin the rows, cells and payload length its schema allows. Each failure is a
`MalformedMessage` (or `UnsupportedVersion`) naming the field; nothing here trusts the
sender, so nothing here may raise anything else. `wire.verify` calls these in order.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import msgpack

from twinnode.errors import MalformedMessage, UnsupportedVersion
from twinnode.schema import Schema
from twinnode.trust.identity import NAME_RE
from twinnode.trust.seqset import MAX_RANGES, MAX_SEQ, Holding
from twinnode.twins import RELATIONS
from twinnode.wire.columnar import max_payload_bytes
from twinnode.wire.envelope import (
    DIGEST_BYTES,
    END,
    FAMILIES,
    HEARTBEAT,
    REQUEST,
    TWIN,
    VERSION,
    topic,
)
from twinnode.wire.limits import WireLimits
from twinnode.wire.messages import NONCE_BYTES

__all__ = ["Frames", "split_frames", "unpack_header", "check_version", "check_header"]

Frames = tuple[bytes, bytes, bytes, bytes]
_HEX = frozenset("0123456789abcdef")


def split_frames(frames: Any, limits: WireLimits) -> Frames:
    """Exactly four frames of bytes, each within its size limit."""
    if not isinstance(frames, (list, tuple)) or len(frames) != 4:
        n = len(frames) if isinstance(frames, (list, tuple)) else type(frames).__name__
        raise MalformedMessage(f"expected 4 frames [topic, header, payload, signature], got {n}")
    if not all(isinstance(f, (bytes, bytearray, memoryview)) for f in frames):
        raise MalformedMessage("every frame must be bytes")
    topic_frame, header, payload, signature = (bytes(f) for f in frames)
    out = (topic_frame, header, payload, signature)
    for name, frame, cap in zip(("topic", "header", "payload", "signature"), out,
                                (limits.max_topic_bytes, limits.max_header_bytes,
                                 limits.max_payload_bytes, limits.max_signature_bytes)):
        if len(frame) > cap:
            raise MalformedMessage(f"{name} frame is {len(frame)} bytes, limit {cap}")
    return out


def unpack_header(header_bytes: bytes, limits: WireLimits) -> dict[Any, Any]:
    """The header frame as a map, unpacked with every msgpack length limit set."""
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


def check_version(header: dict[Any, Any]) -> None:
    """The header speaks this node's protocol version."""
    version = header.get("version")
    if type(version) is not int:
        raise MalformedMessage("header has no integer 'version'")
    if version != VERSION:
        raise UnsupportedVersion(f"protocol version {version}, this node speaks {VERSION}")


def check_header(h: dict[Any, Any], topic_frame: bytes, limits: WireLimits,
                 schema: Schema) -> str:
    """Field names, types and ranges of a version-1 header, and its topic; returns the family."""
    family = h.get("type")
    if family not in FAMILIES:
        raise MalformedMessage(f"unknown message type {family!r:.40}")
    spec = _SPECS[family]
    keys = set(h)
    optional = _OPTIONAL.get(family, {})
    if keys & set(optional):  # optional fields come all together or not at all
        spec = spec | optional
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
        _check_twin_size(h, limits, schema)
    elif h["payload_len"] != 0:
        raise MalformedMessage(f"a {family} message has no payload")
    return str(family)


def _check_twin_size(h: dict[Any, Any], limits: WireLimits, schema: Schema) -> None:
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


# ------------------------------------------------------------------ field checks
Check = Callable[[Any, WireLimits], "str | None"]


def _int(lo: int, hi: int | None = None) -> Check:
    def check(v: Any, limits: WireLimits) -> str | None:
        top = hi if hi is not None else MAX_SEQ
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


def _any(v: Any, limits: WireLimits) -> str | None:
    return None


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
        if _name(k, limits) or type(w) is not int or not 0 <= w <= MAX_SEQ:
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


def _tips(v: Any, limits: WireLimits) -> str | None:
    if type(v) is not dict or not v:
        return "must be a non-empty map of sender -> [seq, 32-byte digest]"
    for k, t in v.items():
        if _name(k, limits) or type(t) is not list or len(t) != 2 or _int(1)(t[0], limits) \
                or _bin(DIGEST_BYTES)(t[1], limits):
            return f"entry {k!r:.40}: must be node name -> [seq >= 1, 32-byte digest]"
    return None


_COMMON: dict[str, Check] = {
    "version": _int(VERSION, VERSION), "type": _any, "sender": _name,
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
# fields a header may carry, all of them or none (a heartbeat without them: the defaults)
_OPTIONAL: dict[str, dict[str, Check]] = {
    HEARTBEAT: {"max_rows": _int(1, 1_000_000), "max_frame": _int(1, 2**40)},
    REQUEST: {"tips": _tips},
}
