"""Hostile input: whatever a peer sends, `Verifier.open` raises a WireError or returns, quickly.

Random frames, random msgpack, declared lengths far beyond the bytes present, deep nesting, and
wrong types in every header field, both unsigned and signed by a pinned key (so the checks
after the signature are reached too).
"""
from __future__ import annotations

import hashlib
import math
import time
import tracemalloc
from typing import Any

import msgpack
import pytest
from conftest import SMALL_SCHEMA, make_small_frame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twinnode.data import frame_to_arrays
from twinnode.errors import MalformedMessage, SchemaMismatch, UnsupportedVersion, WireError
from twinnode.schema import Schema
from twinnode.trust.identity import Identity, TrustStore
from twinnode.twins import Provenance, Twin
from twinnode.wire import (
    CatchupEnd,
    CatchupRequest,
    Heartbeat,
    Holding,
    ReplayGuard,
    Signer,
    Verifier,
    encode_catchup_end,
    encode_catchup_request,
    encode_heartbeat,
    encode_twin,
    seal,
    signed_message,
)

NOW = 1_700_000_000.0
SCHEMA = Schema.from_toml(SMALL_SCHEMA)
ALICE = Identity.generate("alice")
SIGNER = Signer(ALICE)
TRUST = TrustStore([ALICE.peer(), Identity.generate("bob").peer()])
FUZZ = settings(max_examples=150, deadline=2000, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def verifier() -> Verifier:
    return Verifier(TRUST, SCHEMA, ReplayGuard(), local="bob", clock=lambda: NOW)


def valid_messages() -> dict[str, list[bytes]]:
    arrays = frame_to_arrays(SCHEMA, make_small_frame(SCHEMA, n=12, seed=3))
    prov = Provenance("alice", SCHEMA.hash, 1.0, 1e-3, 12, 2, 1, "substitute", "r", NOW, {"a": 1})
    return {
        "twin": encode_twin(Twin(prov, arrays), SCHEMA, 1, SIGNER),
        "hb": encode_heartbeat(Heartbeat("alice", 1, {"alice": 1}, created=NOW), SIGNER),
        "req": encode_catchup_request(
            CatchupRequest("alice", "bob", {"bob": Holding(1, ((3, 3),))}, created=NOW), SIGNER),
        "end": encode_catchup_end(CatchupEnd("alice", "bob", b"q" * 16, 3, created=NOW), SIGNER),
    }


VALID = valid_messages()


def open_or_wire_error(frames: Any) -> WireError | None:
    """Open; any exception that is not a WireError fails the test."""
    try:
        verifier().open(frames)
    except WireError as exc:
        return exc
    return None


def signed_raw(topic: bytes, header: bytes, payload: bytes = b"") -> list[bytes]:
    """Frames around arbitrary header bytes, validly signed by a pinned key."""
    digest = hashlib.sha256(payload).digest()
    return [topic, header, payload, ALICE.sign(signed_message(header, digest))]


def resealed(family: str, payload: bytes | None = None, **changes: Any) -> list[bytes]:
    frames = VALID[family]
    header = msgpack.unpackb(frames[1]) | changes
    if payload is not None:
        header["payload_len"] = len(payload)
        header["payload_digest"] = hashlib.sha256(payload).digest()
    return seal(header, frames[2] if payload is None else payload, SIGNER, topic_frame=frames[0])


# ------------------------------------------------------------------ strategies
scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.binary(max_size=40))
msgpack_values = st.recursive(
    scalars, lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids,
                                                                       max_size=5),
    max_leaves=25)
big_declared = st.builds(
    lambda prefix, n, tail: prefix + n.to_bytes(4, "big") + tail,
    st.sampled_from([b"\xdd", b"\xdf", b"\xdb", b"\xc6", b"\xc9"]),  # array/map/str/bin/ext 32
    st.integers(0, 2**32 - 1), st.binary(max_size=40))
frame_bytes = st.binary(max_size=300) | big_declared | msgpack_values.map(msgpack.packb)


# ------------------------------------------------------------------ properties
@FUZZ
@given(st.lists(frame_bytes | st.integers() | st.text(max_size=5), max_size=6)
       | st.binary(max_size=20) | st.none())
def test_random_frames_raise_only_wire_errors(frames):
    assert isinstance(open_or_wire_error(frames), WireError)


@FUZZ
@given(st.sampled_from(["twin", "hb", "req", "end"]), frame_bytes)
def test_random_signed_header_raises_only_wire_errors(family, header):
    frames = signed_raw(f"{family}:alice".encode(), header)
    assert isinstance(open_or_wire_error(frames), WireError)


@FUZZ
@given(st.sampled_from(["twin", "hb", "req", "end"]), st.data())
def test_any_value_in_any_header_field_gives_a_message_or_a_wire_error(family, data):
    # Prepare: one field replaced by an arbitrary msgpack value, signed by a pinned key
    header = msgpack.unpackb(VALID[family][1])
    key = data.draw(st.sampled_from(sorted(header)))
    value = data.draw(msgpack_values)
    # Execute
    result = open_or_wire_error(resealed(family, **{key: value}))
    # Assert: a value of another type is always refused before the signature is even checked
    if type(value) is not type(header[key]):
        assert isinstance(result, (MalformedMessage, UnsupportedVersion)), (key, value, result)


@FUZZ
@given(st.sampled_from(["twin", "hb", "req", "end"]), st.data())
def test_missing_or_extra_header_fields_are_malformed(family, data):
    header = msgpack.unpackb(VALID[family][1])
    if data.draw(st.booleans()):
        del header[data.draw(st.sampled_from(sorted(k for k in header if k != "version")))]
    else:
        header[data.draw(st.text(max_size=10).filter(lambda k: k not in header))] = 0
    frames = seal(header, VALID[family][2], SIGNER, topic_frame=VALID[family][0])
    assert isinstance(open_or_wire_error(frames), MalformedMessage)


payloads = (frame_bytes
            | st.lists(st.tuples(st.sampled_from(["age", "region", "smoker", "visits", "x"]),
                                 st.sampled_from(["f4", "u1", "u2", "u4", "bits", "f8", ""]),
                                 st.binary(max_size=80)).map(list), max_size=6).map(msgpack.packb))


@FUZZ
@given(payloads, st.integers(1, 100))
def test_random_payload_under_a_valid_signature_raises_only_wire_errors(payload, rows):
    frames = resealed("twin", payload=payload, rows=rows, n=rows)
    assert isinstance(open_or_wire_error(frames), WireError)


# ------------------------------------------------------------------ bombs: bounded memory/time
DEEP = b"\x91" * 60_000 + b"\xc0"
BOMBS = {
    "deeply nested header": ["twin:alice", DEEP, b""],
    "header declares 4G-element array": ["twin:alice", b"\xdd\xff\xff\xff\xff", b""],
    "header declares 4G-entry map": ["twin:alice", b"\xdf\xff\xff\xff\xff\xa1a", b""],
    "header declares 4 GB string": ["twin:alice", b"\x81\xa1a\xdb\xff\xff\xff\xff", b""],
    "header declares 4 GB binary": ["twin:alice", b"\x81\xa1a\xc6\xff\xff\xff\xff", b""],
    "header declares 4 GB ext": ["twin:alice", b"\xc9\xff\xff\xff\xff\x01", b""],
    "signed payload nested deeply": ["payload", DEEP],
    "signed payload declares 4G columns": ["payload", b"\xdd\xff\xff\xff\xff\x93"],
    "signed payload declares 4 GB column": ["payload",
                                            b"\x91\x93\xa3age\xa2f4\xc6\xff\xff\xff\xff"],
    "signed payload huge map": ["payload", b"\xdf\xff\xff\xff\xff"],
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_declared_sizes_and_nesting_cost_bounded_memory_and_time(name):
    # Prepare
    spec = BOMBS[name]
    if spec[0] == "payload":
        frames = resealed("twin", payload=spec[1])
    else:
        frames = signed_raw(spec[0].encode(), spec[1], spec[2])
    size = sum(map(len, frames))
    # Execute
    tracemalloc.start()
    t0 = time.perf_counter()
    result = open_or_wire_error(frames)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Assert
    assert isinstance(result, MalformedMessage), result
    assert elapsed < 0.5
    assert peak < 1_000_000 + 20 * size, peak


def test_huge_declared_row_count_is_refused_without_allocating_it():
    # Prepare: 1,000,000 rows (within max_rows) declared over a 12-row payload
    frames = resealed("twin", rows=1_000_000, n=1_000_000)
    # Execute
    tracemalloc.start()
    result = open_or_wire_error(frames)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Assert
    assert isinstance(result, SchemaMismatch) and peak < 1_000_000
    assert isinstance(open_or_wire_error(resealed("twin", rows=10**7, n=10**7)),
                      MalformedMessage)


# ------------------------------------------------------------------ every field, every wrong type
WRONG_VALUES = [None, True, -1, 2**64 - 1, 1.5, math.nan, "x", b"\x00" * 16, [], [1], {}, {"a": 1}]


def _cases() -> list[tuple[str, str, Any]]:
    out = []
    for family, frames in VALID.items():
        header = msgpack.unpackb(frames[1])
        for key, original in header.items():
            for value in WRONG_VALUES:
                if type(value) is not type(original):
                    out.append((family, key, value))
    return out


@pytest.mark.parametrize("family, key, value", _cases())
def test_wrong_type_in_any_header_field_is_malformed(family, key, value):
    result = open_or_wire_error(resealed(family, **{key: value}))
    assert isinstance(result, MalformedMessage), result
