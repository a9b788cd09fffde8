"""Each message family as a symmetric pair: `encode_x(message, signer) -> frames` and
`decode_x(frames, verifier) -> Envelope`, one section per family (Flower's serde layout).

An encoder writes the family's header fields (and for a twin its typed columns,
`wire.columnar`) and seals them (`wire.envelope`). A decoder hands the frames to a verifier,
which runs every check of the protocol before it calls this module's `read_message` to turn
the checked header (and payload) back into the message; the decoder then insists on its
family. Header field order is part of the signed bytes: do not reorder the dicts below.
"""
from __future__ import annotations

import hashlib
from typing import Any, Mapping, NamedTuple, Protocol, Sequence

from twinnode.atomic import jsonable
from twinnode.errors import DataError, MalformedMessage
from twinnode.schema import Schema
from twinnode.trust.seqset import MAX_RANGES, MAX_SEQ, Holding, bounded
from twinnode.twins import Provenance, Twin
from twinnode.wire.columnar import decode_columns, encode_columns, unpack_columns
from twinnode.wire.envelope import END, HEARTBEAT, REQUEST, TWIN, Envelope, Signer, envelope_frames
from twinnode.wire.messages import CatchupEnd, CatchupRequest, Heartbeat, Message

__all__ = ["Opener", "TwinPayload", "twin_payload", "encode_twin", "twin_digest", "decode_twin", "encode_heartbeat",
           "decode_heartbeat", "encode_catchup_request", "decode_catchup_request",
           "encode_catchup_end", "decode_catchup_end", "read_message"]


class Opener(Protocol):
    """What a decoder needs: something that checks frames and opens them (`Verifier`)."""

    def open(self, frames: Sequence[bytes]) -> Envelope:
        """A verified Envelope, or the WireError that says why not."""
        ...


def read_message(family: str, header: Mapping[str, Any], payload: bytes, schema: Schema,
                 max_columns: int) -> Message:
    """A checked header (and a twin's digest-checked payload) -> the message it carries."""
    if family == HEARTBEAT:
        return _read_heartbeat(header)
    if family == REQUEST:
        return _read_catchup_request(header)
    if family == END:
        return _read_catchup_end(header)
    return _read_twin(header, payload, schema, max_columns)


def _decode_as(family: str, frames: Sequence[bytes], verifier: Opener) -> Envelope:
    env = verifier.open(frames)
    if env.family != family:
        raise MalformedMessage(f"expected a {family} message, got {env.family}")
    return env


# ------------------------------------------------------------------ twin
class TwinPayload(NamedTuple):
    """A twin's encoded columns, their row count and SHA-256: what `encode_twin` signs."""

    payload: bytes
    rows: int
    digest: bytes


def twin_payload(twin: Twin, schema: Schema) -> TwinPayload:
    """A twin's columns as payload bytes (checked against `schema`: DataError if they misfit)
    and their digest, which does not depend on the seq: a publish encodes each twin once,
    finds the twins it published before by the digest, and signs the same bytes."""
    payload, rows = encode_columns(twin.arrays, schema)
    return TwinPayload(payload, rows, hashlib.sha256(payload).digest())


def encode_twin(twin: Twin, schema: Schema, seq: int, signer: Signer,
                payload: TwinPayload | None = None) -> list[bytes]:
    """A twin as signed frames; DataError if it does not fit `schema` (peers would refuse it).
    `payload`: this twin's `twin_payload`, made earlier (not encoded again)."""
    p = twin.provenance
    if p.schema_hash != schema.hash:
        raise DataError(f"twin was made under schema {p.schema_hash[:12]}, not {schema.short_hash}")
    if not isinstance(seq, int) or not 1 <= seq <= MAX_SEQ:
        raise DataError(f"twin sequence numbers are 1..{MAX_SEQ}, got {seq!r}")
    data, rows, digest = payload if payload is not None else twin_payload(twin, schema)
    if rows != p.n:
        raise DataError(f"twin has {rows} rows but its provenance says N = {p.n}; a twin has "
                        "the size of the data it was made from")
    fields = {"seq": seq, "created": float(p.created), "schema_hash": p.schema_hash,
              "epsilon": float(p.epsilon), "delta": float(p.delta), "n": int(p.n),
              "k": int(p.k), "index": int(p.index), "relation": p.relation,
              "release": p.release, "generator": jsonable(dict(p.generator)), "rows": rows}
    return envelope_frames(TWIN, signer, p.sender, fields, data, digest)


def twin_digest(twin: Twin, schema: Schema) -> bytes:
    """The payload digest `encode_twin` would sign for `twin` (it does not depend on the seq):
    lets a sender find a twin it already published before it takes a seq for it."""
    return twin_payload(twin, schema).digest


def decode_twin(frames: Sequence[bytes], verifier: Opener) -> Envelope:
    """Frames -> verified Envelope whose `message` is a Twin."""
    return _decode_as(TWIN, frames, verifier)


def _read_twin(h: Mapping[str, Any], payload: bytes, schema: Schema, max_columns: int) -> Twin:
    columns = unpack_columns(payload, max_columns)
    arrays = decode_columns(columns, h["rows"], schema)
    try:
        prov = Provenance(sender=h["sender"], schema_hash=h["schema_hash"],
                          epsilon=h["epsilon"], delta=h["delta"], n=h["n"], k=h["k"],
                          index=h["index"], relation=h["relation"], release=h["release"],
                          created=h["created"], generator=h["generator"])
    except DataError as exc:
        raise MalformedMessage(f"invalid provenance: {exc}") from None
    return Twin(prov, arrays)


# ------------------------------------------------------------------ heartbeat
def encode_heartbeat(hb: Heartbeat, signer: Signer) -> list[bytes]:
    """A heartbeat as signed frames."""
    fields: dict[str, Any] = {"created": float(hb.created), "latest": int(hb.latest),
                              "holdings": {str(k): int(v) for k, v in hb.holdings.items()}}
    if hb.max_rows is not None and hb.max_frame is not None:  # absent: the defaults (and
        fields["max_rows"] = int(hb.max_rows)                  # the bytes of version 1.0)
        fields["max_frame"] = int(hb.max_frame)
    return envelope_frames(HEARTBEAT, signer, hb.sender, {**fields, "nonce": hb.nonce})


def decode_heartbeat(frames: Sequence[bytes], verifier: Opener) -> Envelope:
    """Frames -> verified Envelope whose `message` is a Heartbeat."""
    return _decode_as(HEARTBEAT, frames, verifier)


def _read_heartbeat(h: Mapping[str, Any]) -> Heartbeat:
    return Heartbeat(h["sender"], h["latest"], dict(h["holdings"]), h["created"], h["nonce"],
                     h.get("max_rows"), h.get("max_frame"))


# ------------------------------------------------------------------ catch-up request
def encode_catchup_request(req: CatchupRequest, signer: Signer) -> list[bytes]:
    """A catch-up request as signed frames."""
    have = {str(k): {"watermark": int(h.watermark), "ranges": [[int(a), int(b)] for a, b in
                                                             h.ranges]}
            for k, h in bounded(req.have, MAX_RANGES).items()}
    fields: dict[str, Any] = {"created": float(req.created), "to": req.to,
                              "request_id": req.request_id, "have": have}
    if req.tips:  # optional (absent: the bytes of version 1.0); only senders named in have
        fields["tips"] = {str(k): [int(seq), bytes(d)] for k, (seq, d) in req.tips.items()
                          if k in have}
    return envelope_frames(REQUEST, signer, req.sender, {**fields, "nonce": req.nonce})


def decode_catchup_request(frames: Sequence[bytes], verifier: Opener) -> Envelope:
    """Frames -> verified Envelope whose `message` is a CatchupRequest."""
    return _decode_as(REQUEST, frames, verifier)


def _read_catchup_request(h: Mapping[str, Any]) -> CatchupRequest:
    have = {k: Holding(v["watermark"], tuple((a, b) for a, b in v["ranges"]))
            for k, v in h["have"].items()}
    tips = {k: (int(seq), bytes(d)) for k, (seq, d) in h["tips"].items()} \
        if "tips" in h else None
    return CatchupRequest(h["sender"], h["to"], have, h["request_id"], h["created"], h["nonce"],
                          tips)


# ------------------------------------------------------------------ catch-up end
def encode_catchup_end(end: CatchupEnd, signer: Signer) -> list[bytes]:
    """The end-of-reply marker as signed frames."""
    return envelope_frames(END, signer, end.sender, {
        "created": float(end.created), "to": end.to, "request_id": end.request_id,
        "count": int(end.count), "nonce": end.nonce})


def decode_catchup_end(frames: Sequence[bytes], verifier: Opener) -> Envelope:
    """Frames -> verified Envelope whose `message` is a CatchupEnd."""
    return _decode_as(END, frames, verifier)


def _read_catchup_end(h: Mapping[str, Any]) -> CatchupEnd:
    return CatchupEnd(h["sender"], h["to"], h["request_id"], h["count"], h["created"],
                      h["nonce"])
