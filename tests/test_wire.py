"""Envelope v1: round trips, dtypes, tampering, replays, forged senders, schema checks."""
from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

import msgpack
import numpy as np
import pytest
from conftest import make_small_frame

from twinnode.data import frame_to_arrays, randhie
from twinnode.errors import (
    DataError,
    DigestMismatch,
    DuplicateMessage,
    EquivocatedMessage,
    InvalidSignature,
    MalformedMessage,
    MisaddressedMessage,
    ReplayedMessage,
    SchemaMismatch,
    StaleMessage,
    UnknownSender,
    UnsupportedVersion,
    WireError,
)
from twinnode.schema import Schema
from twinnode.trust.identity import Identity, TrustStore
from twinnode.trust.seqset import MAX_RANGES
from twinnode.twins import Provenance, Twin
from twinnode.wire import (
    CatchupEnd,
    CatchupRequest,
    Heartbeat,
    Holding,
    ReplayGuard,
    Signer,
    Verifier,
    WireLimits,
    decode_catchup_end,
    decode_catchup_request,
    decode_heartbeat,
    decode_twin,
    encode_catchup_end,
    encode_catchup_request,
    encode_heartbeat,
    encode_twin,
    limits_for,
    rejection_line,
    seal,
    twin_digest,
)
from twinnode.wire.columnar import column_dtype, decode_columns, float32_bounds

NOW = 1_700_000_000.0
PRE_SIGNATURE = (MalformedMessage, UnsupportedVersion, UnknownSender, InvalidSignature)


# ------------------------------------------------------------------ makers
@pytest.fixture(scope="module")
def alice() -> Identity:
    return Identity.generate("alice")


@pytest.fixture(scope="module")
def bob() -> Identity:
    return Identity.generate("bob")


@pytest.fixture(scope="module")
def trust(alice: Identity, bob: Identity) -> TrustStore:
    return TrustStore([alice.peer(), bob.peer()])


def make_twin(schema: Schema, sender: str = "alice", rows: int = 20, seed: int = 0,
              index: int = 0) -> Twin:
    arrays = frame_to_arrays(schema, make_small_frame(schema, n=rows, seed=seed))
    prov = Provenance(sender=sender, schema_hash=schema.hash, epsilon=1.0, delta=1e-3, n=rows,
                      k=5, index=index, relation="add-remove", release="run-1",
                      created=NOW - 3600, generator={"components": 16, "epochs": [4, 8]})
    return Twin(prov, arrays)


def make_verifier(trust: TrustStore, schema: Schema, **kwargs: Any) -> Verifier:
    return Verifier(trust, schema, ReplayGuard(), local="bob", clock=lambda: NOW, **kwargs)


def twin_header(frames: list[bytes]) -> dict[str, Any]:
    return msgpack.unpackb(frames[1])


def reseal(frames: list[bytes], signer: Signer, payload: bytes | None = None,
           **changes: Any) -> list[bytes]:
    """The same message with header fields changed (and the digest refreshed), signed again."""
    header = twin_header(frames) | changes
    if payload is not None:
        header["payload_len"] = len(payload)
        header["payload_digest"] = hashlib.sha256(payload).digest()
    return seal(header, frames[2] if payload is None else payload, signer)


class _SignerAs(Signer):
    """Signs with one identity's key while claiming another name (a forger's tool)."""

    def __init__(self, identity: Identity, name: str) -> None:
        super().__init__(identity)
        self.name = name


def flipped(frames: list[bytes], which: int, pos: int, mask: int) -> list[bytes]:
    out = list(frames)
    b = bytearray(out[which])
    b[pos] ^= mask
    out[which] = bytes(b)
    return out


# ------------------------------------------------------------------ round trips
def test_twin_round_trip_restores_provenance_and_columns(small_schema, alice, trust):
    # Prepare
    twin = make_twin(small_schema)
    verifier = make_verifier(trust, small_schema)
    # Execute
    frames = encode_twin(twin, small_schema, 1, Signer(alice))
    env = decode_twin(frames, verifier)
    # Assert
    assert env.family == "twin" and env.sender == "alice" and env.seq == 1
    assert env.frames == tuple(frames)
    assert env.twin.provenance == twin.provenance
    for col in small_schema.columns:
        got, sent = env.twin.arrays[col.name], twin.arrays[col.name]
        if col.type == "continuous":
            assert got.dtype == np.float64
            np.testing.assert_array_equal(got, sent.astype(np.float32).astype(np.float64))
        else:
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, sent)
    small_schema.check_arrays(env.twin.arrays)


def test_heartbeat_round_trip(small_schema, alice, trust):
    hb = Heartbeat("alice", latest=7, holdings={"alice": 7, "bob": 3}, created=NOW - 5)
    env = decode_heartbeat(encode_heartbeat(hb, Signer(alice)), make_verifier(trust, small_schema))
    assert env.family == "hb" and env.message == hb and env.seq is None


def test_catchup_request_round_trip(small_schema, alice, trust):
    req = CatchupRequest("alice", to="bob", have={"alice": Holding(4, ((6, 7), (9, 9))),
                                                  "bob": Holding(0)}, created=NOW + 2)
    env = decode_catchup_request(encode_catchup_request(req, Signer(alice)),
                                 make_verifier(trust, small_schema))
    assert env.family == "req" and env.message == req


def test_catchup_end_round_trip(small_schema, alice, trust):
    end = CatchupEnd("alice", to="bob", request_id=b"r" * 16, count=12, created=NOW)
    env = decode_catchup_end(encode_catchup_end(end, Signer(alice)),
                             make_verifier(trust, small_schema))
    assert env.family == "end" and env.message == end


def test_topics_name_family_and_sender_for_prefix_filtering(small_schema, alice):
    signer = Signer(alice)
    topics = [encode_twin(make_twin(small_schema), small_schema, 1, signer)[0],
              encode_heartbeat(Heartbeat("alice", 0, {}), signer)[0],
              encode_catchup_request(CatchupRequest("alice", "bob", {}), signer)[0],
              encode_catchup_end(CatchupEnd("alice", "bob", b"r" * 16, 0), signer)[0]]
    assert topics == [b"twin:alice", b"hb:alice", b"req:alice", b"end:alice"]


def test_decode_of_the_wrong_family_is_refused(small_schema, alice, trust):
    frames = encode_heartbeat(Heartbeat("alice", 0, {}, created=NOW), Signer(alice))
    with pytest.raises(MalformedMessage):
        decode_twin(frames, make_verifier(trust, small_schema))


def test_encoding_refuses_a_twin_that_peers_would_refuse(small_schema, alice, bob):
    twin = make_twin(small_schema)
    with pytest.raises(DataError, match="signer"):
        encode_twin(twin, small_schema, 1, Signer(bob))
    with pytest.raises(DataError, match=r"are 1\.\."):
        encode_twin(twin, small_schema, 0, Signer(alice))
    with pytest.raises(DataError, match="N = 21"):
        encode_twin(Twin(replace(twin.provenance, n=21), twin.arrays), small_schema, 1,
                    Signer(alice))
    other = Schema.from_toml(small_schema.to_toml().replace("upper = 50", "upper = 60"))
    with pytest.raises(DataError, match="schema"):
        encode_twin(twin, other, 1, Signer(alice))


# ------------------------------------------------------------------ dtypes and size
def test_each_column_travels_in_its_smallest_faithful_dtype(small_schema, alice):
    frames = encode_twin(make_twin(small_schema, rows=21), small_schema, 1, Signer(alice))
    cols = {name: (dtype, len(data)) for name, dtype, data in msgpack.unpackb(frames[2])}
    assert cols == {"age": ("f4", 84), "region": ("u1", 21), "smoker": ("bits", 3),
                    "visits": ("u1", 21)}


@pytest.mark.parametrize("spec, dtype", [
    ('type = "count"\nupper = 255', "u1"), ('type = "count"\nupper = 256', "u2"),
    ('type = "count"\nupper = 65535', "u2"), ('type = "count"\nupper = 65536', "u4"),
    ('type = "categorical"\nlevels = [' + ", ".join(f'"l{i}"' for i in range(256)) + "]", "u1"),
    ('type = "categorical"\nlevels = [' + ", ".join(f'"l{i}"' for i in range(257)) + "]", "u2"),
    ('type = "binary"', "bits"), ('type = "continuous"\nlower = 0\nupper = 1', "f4")])
def test_dtype_is_the_smallest_that_holds_the_schema_bound(spec, dtype):
    schema = Schema.from_toml(f"[columns.x]\n{spec}\n")
    assert column_dtype(schema.columns[0]) == dtype


def test_wide_count_column_round_trips_at_its_bound(alice):
    # Prepare: a count bound that needs u4, values at 0 and at the bound
    schema = Schema.from_toml('[columns.c]\ntype = "count"\nupper = 100000\n')
    arrays = {"c": np.array([0, 1, 65536, 100000], dtype=np.int64)}
    prov = Provenance("alice", schema.hash, 1.0, 0.0, 4, 1, 0, "substitute", "r", NOW, {})
    verifier = Verifier(TrustStore([alice.peer()]), schema, ReplayGuard(), clock=lambda: NOW)
    # Execute
    env = verifier.open(encode_twin(Twin(prov, arrays), schema, 1, Signer(alice)))
    # Assert
    np.testing.assert_array_equal(env.twin.arrays["c"], arrays["c"])


def test_continuous_values_at_a_bound_float32_rounds_past_stay_inside(alice):
    # Prepare: float32(0.1) > 0.1, so a naive cast would leave the schema's bounds
    schema = Schema.from_toml('[columns.x]\ntype = "continuous"\nlower = -0.1\nupper = 0.1\n')
    assert float(np.float32(0.1)) > 0.1
    arrays = {"x": np.array([-0.1, 0.0, 0.1, 0.0999999999])}
    prov = Provenance("alice", schema.hash, 1.0, 0.0, 4, 1, 0, "substitute", "r", NOW, {})
    verifier = Verifier(TrustStore([alice.peer()]), schema, ReplayGuard(), clock=lambda: NOW)
    # Execute
    env = verifier.open(encode_twin(Twin(prov, arrays), schema, 1, Signer(alice)))
    # Assert
    got = env.twin.arrays["x"]
    assert got.min() >= -0.1 and got.max() <= 0.1
    np.testing.assert_allclose(got, arrays["x"], rtol=0, atol=1e-8)
    lo, hi = float32_bounds(schema.columns[0])
    assert float(hi) <= 0.1 < float(np.nextafter(hi, np.float32(1)))


@pytest.mark.parametrize("lower, upper", [(-0.1, 0.1), (0.0, 1.0), (1e-40, 3e-38),
                                          (-1e300, 1e300), (0.1, 0.10000000000000002),
                                          (5.0, 1e39)])
def test_float32_column_check_equals_the_float64_definition_value_by_value(lower, upper):
    # Prepare: float32 values around both bounds, the float32 range's ends, NaN and infinities
    schema = Schema.from_toml(f'[columns.x]\ntype = "continuous"\nlower = {lower!r}\n'
                              f'upper = {upper!r}\n')
    with np.errstate(over="ignore"):  # a bound past the float32 range casts to infinity
        edges = [np.float32(v) for v in (lower, upper, 0.0, -0.0, 1e-45, np.nan, np.inf,
                                         np.finfo(np.float32).max, -np.finfo(np.float32).max,
                                         -np.inf)]
        values = {v for e in edges for v in (e, np.nextafter(e, np.float32(np.inf)),
                                             np.nextafter(e, np.float32(-np.inf)))}
    for v in values:
        # Execute: one value alone, checked as the wire checks it
        data = np.array([v], dtype="<f4").tobytes()
        try:
            decode_columns([("x", "f4", data)], 1, schema)
            accepted = True
        except SchemaMismatch:
            accepted = False
        # Assert: accepted exactly when finite and inside [lower, upper] as a float64
        assert accepted == bool(np.isfinite(v) and lower <= float(v) <= upper), (v, lower, upper)


def test_decoded_columns_are_made_when_read_and_equal_the_encoded_arrays(small_schema, alice,
                                                                          trust):
    twin = make_twin(small_schema, rows=21)
    env = make_verifier(trust, small_schema).open(
        encode_twin(twin, small_schema, 1, Signer(alice)))
    arrays = env.twin.arrays
    assert list(arrays) == small_schema.names and len(arrays) == len(small_schema.names)
    for name in small_schema.names:
        got = arrays[name]
        assert got.dtype in (np.int64, np.float64) and arrays[name] is got  # made once
        np.testing.assert_allclose(got, twin.arrays[name], rtol=1e-7, atol=0)  # float32


def test_randhie_twin_payload_is_a_quarter_of_float64_msgpack(alice):
    # Prepare
    schema, frame = randhie()
    arrays = {k: v[:2000] for k, v in frame_to_arrays(schema, frame).items()}
    prov = Provenance("alice", schema.hash, 1.0, 1e-4, 2000, 1, 0, "add-remove", "r", NOW, {})
    # Execute
    frames = encode_twin(Twin(prov, arrays), schema, 1, Signer(alice))
    baseline = msgpack.packb({k: v.astype(np.float64).tolist() for k, v in arrays.items()})
    # Assert: 1 (mdvis u1) + 5 x 4 (float32) + 4 / 8 (bits) = 21.5 bytes per row, plus framing
    assert 2000 * 21.5 <= len(frames[2]) <= 2000 * 21.5 + 200
    assert sum(map(len, frames)) < len(baseline) / 4


# ------------------------------------------------------------------ tampering
def _expect_flip(verifier: Verifier, frames: list[bytes], which: int, pos: int, mask: int) -> None:
    bad = flipped(frames, which, pos, mask)
    with pytest.raises(WireError) as info:
        verifier.open(bad)
    expected = {0: (MalformedMessage,), 1: PRE_SIGNATURE, 2: (DigestMismatch,),
                3: (InvalidSignature,)}[which]
    assert type(info.value) in expected, (which, pos, mask, info.value)


def test_every_single_byte_flip_of_a_small_twin_is_rejected(small_schema, alice, trust):
    # Prepare
    verifier = make_verifier(trust, small_schema)
    frames = encode_twin(make_twin(small_schema, rows=20), small_schema, 1, Signer(alice))
    verifier.open(frames)  # the untouched message is fine (and not burnt: nothing accepted)
    # Execute / Assert: every position of every frame, one bit and the whole byte
    tried = 0
    for which, frame in enumerate(frames):
        for pos in range(len(frame)):
            for mask in (0x01, 0xFF):
                _expect_flip(verifier, frames, which, pos, mask)
                tried += 1
    assert tried == 2 * sum(map(len, frames)) > 1000
    assert verifier.guard.latest("alice") == 0


def test_header_flips_hit_the_expected_checks(small_schema, alice, trust):
    # Prepare
    verifier = make_verifier(trust, small_schema)
    frames = encode_twin(make_twin(small_schema), small_schema, 1, Signer(alice))
    header = frames[1]
    version_pos = header.index(b"\xa7version") + 8
    sender_pos = header.index(b"\xa5alice") + 2  # "alice" -> "amice"
    created_pos = header.index(b"\xa7created") + 8 + 3
    # Execute / Assert
    with pytest.raises(UnsupportedVersion):
        verifier.open(flipped(frames, 1, version_pos, 0x02))
    with pytest.raises(MalformedMessage, match="topic"):
        verifier.open(flipped(frames, 1, sender_pos, 0x01))
    with pytest.raises(InvalidSignature):
        verifier.open(flipped(frames, 1, created_pos, 0x01))


def test_sampled_byte_flips_of_a_large_twin_are_rejected(small_schema, alice, trust):
    # Prepare
    rng = random.Random(7)
    verifier = make_verifier(trust, small_schema)
    frames = encode_twin(make_twin(small_schema, rows=20_000), small_schema, 1, Signer(alice))
    assert len(frames[2]) > 100_000
    # Execute / Assert: all of topic, header and signature; 300 payload positions
    for which in (0, 1, 3):
        for pos in range(len(frames[which])):
            _expect_flip(verifier, frames, which, pos, 0xFF)
    for pos in rng.sample(range(len(frames[2])), 300):
        _expect_flip(verifier, frames, 2, pos, rng.randrange(1, 256))


def test_truncated_or_extended_frames_are_rejected(small_schema, alice, trust):
    verifier = make_verifier(trust, small_schema)
    frames = encode_twin(make_twin(small_schema), small_schema, 1, Signer(alice))
    with pytest.raises(DigestMismatch, match="bytes"):
        verifier.open([frames[0], frames[1], frames[2][:-1], frames[3]])
    with pytest.raises(MalformedMessage):
        verifier.open([frames[0], frames[1][:-1], frames[2], frames[3]])
    with pytest.raises(MalformedMessage, match="4 frames"):
        verifier.open(frames[:3])
    with pytest.raises(MalformedMessage, match="4 frames"):
        verifier.open(frames + [b""])


# ------------------------------------------------------------------ forged senders
def test_signature_by_an_unpinned_key_is_rejected(small_schema, trust):
    mallory = Identity.generate("mallory")
    frames = encode_twin(make_twin(small_schema, sender="mallory"), small_schema, 1,
                         Signer(mallory))
    with pytest.raises(UnknownSender):
        make_verifier(trust, small_schema).open(frames)


def test_unpinned_key_claiming_a_pinned_name_is_rejected(small_schema, trust):
    impostor = Identity.generate("alice")  # same name, different key
    frames = encode_twin(make_twin(small_schema), small_schema, 1, Signer(impostor))
    with pytest.raises(InvalidSignature):
        make_verifier(trust, small_schema).open(frames)


def test_pinned_key_under_another_senders_name_is_rejected(small_schema, alice, bob, trust):
    # Prepare: bob (pinned) signs a twin that says it is from alice
    good = encode_twin(make_twin(small_schema), small_schema, 1, Signer(alice))
    forged = seal(twin_header(good), good[2], _SignerAs(bob, "alice"))
    # Execute / Assert
    with pytest.raises(InvalidSignature):
        make_verifier(trust, small_schema).open(forged)


@pytest.mark.parametrize("cut", [0, 1, 32, 63])
def test_truncated_signature_is_rejected(small_schema, alice, trust, cut):
    frames = encode_twin(make_twin(small_schema), small_schema, 1, Signer(alice))
    with pytest.raises(InvalidSignature):
        make_verifier(trust, small_schema).open(frames[:3] + [frames[3][:cut]])


def test_signature_with_extra_bytes_is_rejected(small_schema, alice, trust):
    frames = encode_twin(make_twin(small_schema), small_schema, 1, Signer(alice))
    with pytest.raises(InvalidSignature):
        make_verifier(trust, small_schema).open(frames[:3] + [frames[3] + b"\x00"])


def test_forwarded_envelope_verifies_at_any_node(small_schema, alice, bob, trust):
    # Prepare: bob stored alice's frames; carol receives them from bob verbatim
    frames = encode_twin(make_twin(small_schema), small_schema, 1, Signer(alice))
    stored = make_verifier(trust, small_schema).open(frames).frames
    carol = Verifier(trust, small_schema, ReplayGuard(), local="carol", clock=lambda: NOW)
    # Execute
    env = carol.open(list(stored))
    # Assert
    assert env.sender == "alice" and env.frames == stored


# ------------------------------------------------------------------ replay and duplicates
def test_resent_twin_is_rejected_as_a_replay_once_accepted(small_schema, alice, trust):
    # Prepare
    verifier = make_verifier(trust, small_schema)
    frames = encode_twin(make_twin(small_schema), small_schema, 1, Signer(alice))
    env = verifier.open(frames)
    verifier.open(frames)  # not yet stored: opening again is allowed
    # Execute
    verifier.accept(env)
    # Assert
    with pytest.raises(ReplayedMessage) as info:
        verifier.open(frames)
    assert rejection_line(info.value).startswith("REJECTED (replay) peer=alice seq=1: ")


def test_same_content_under_a_new_seq_is_a_duplicate(small_schema, alice, trust):
    verifier = make_verifier(trust, small_schema)
    twin = make_twin(small_schema)
    verifier.accept(verifier.open(encode_twin(twin, small_schema, 1, Signer(alice))))
    with pytest.raises(DuplicateMessage):
        verifier.open(encode_twin(twin, small_schema, 2, Signer(alice)))


def test_out_of_order_twins_are_accepted_once_each(small_schema, alice, trust):
    # Prepare: seq 3 arrives live before 1 and 2 come through catch-up
    verifier = make_verifier(trust, small_schema)
    frames = {s: encode_twin(make_twin(small_schema, seed=s), small_schema, s, Signer(alice))
              for s in (1, 2, 3)}
    # Execute
    verifier.accept(verifier.open(frames[3]))
    watermark_after_3 = verifier.guard.latest("alice")
    verifier.accept(verifier.open(frames[1]))
    verifier.accept(verifier.open(frames[2]))
    # Assert
    assert watermark_after_3 == 0 and verifier.guard.latest("alice") == 3
    for s in (1, 2, 3):
        with pytest.raises(ReplayedMessage):
            verifier.open(frames[s])


def test_twin_refused_by_the_schema_check_is_not_burnt(small_schema, alice, trust):
    # Prepare: a valid signed twin whose column is out of the schema
    verifier = make_verifier(trust, small_schema)
    good = encode_twin(make_twin(small_schema), small_schema, 1, Signer(alice))
    cols = msgpack.unpackb(good[2])
    cols[3][2] = bytes([99]) + cols[3][2][1:]  # visits: 99 > upper 50
    bad = reseal(good, Signer(alice), payload=msgpack.packb(cols))
    # Execute
    with pytest.raises(SchemaMismatch):
        verifier.open(bad)
    # Assert: the good twin with the same seq is still accepted
    assert not verifier.guard.accepted("alice", 1)
    verifier.accept(verifier.open(good))
    assert verifier.guard.latest("alice") == 1


def test_heartbeat_is_refused_when_stale_from_the_future_or_repeated(small_schema, alice, trust):
    verifier = make_verifier(trust, small_schema)
    signer = Signer(alice)
    with pytest.raises(StaleMessage, match="stale") as info:
        verifier.open(encode_heartbeat(Heartbeat("alice", 1, {}, created=NOW - 301), signer))
    assert rejection_line(info.value).startswith("REJECTED (stale) peer=alice")
    with pytest.raises(StaleMessage, match="stale"):
        verifier.open(encode_heartbeat(Heartbeat("alice", 1, {}, created=NOW + 301), signer))
    frames = encode_heartbeat(Heartbeat("alice", 1, {}, created=NOW - 10), signer)
    verifier.open(frames)
    with pytest.raises(ReplayedMessage, match="nonce"):
        verifier.open(frames)


def test_catchup_request_addressed_to_another_node_is_refused(small_schema, alice, trust):
    frames = encode_catchup_request(CatchupRequest("alice", "carol", {}, created=NOW),
                                    Signer(alice))
    with pytest.raises(MisaddressedMessage, match="addressed") as info:
        make_verifier(trust, small_schema).open(frames)
    assert info.value.reason == "misaddressed"


def test_non_twin_message_with_a_payload_is_malformed(small_schema, alice, trust):
    frames = encode_heartbeat(Heartbeat("alice", 1, {}, created=NOW), Signer(alice))
    bad = reseal(frames, Signer(alice), payload=b"x")
    with pytest.raises(MalformedMessage, match="no payload"):
        make_verifier(trust, small_schema).open(bad)


def test_replay_guard_tracks_gaps_as_ranges():
    # Prepare
    guard = ReplayGuard()
    # Execute
    for seq in (1, 2, 5, 6, 9):
        guard.accept("alice", seq, hashlib.sha256(b"%d" % seq).digest())
    # Assert
    assert guard.latest("alice") == 2 and guard.accepted("alice", 5)
    assert not guard.accepted("alice", 3)
    assert guard.have() == {"alice": Holding(2, ((5, 6), (9, 9)))}
    assert guard.holdings() == {"alice": 2}
    assert guard.missing("alice", 10) == [3, 4, 7, 8, 10]


def test_another_senders_twin_with_the_same_payload_does_not_censor_the_original(
        small_schema, alice, bob, trust):
    # Prepare: bob re-signs alice's payload under his own name, and it arrives first
    verifier = make_verifier(trust, small_schema)
    original = encode_twin(make_twin(small_schema), small_schema, 1, Signer(alice))
    header = twin_header(original) | {"sender": "bob"}
    copy = seal(header, original[2], Signer(bob))
    verifier.accept(verifier.open(copy))
    # Execute
    env = verifier.open(original)
    # Assert: alice's twin is accepted; her own content under a new seq is still a duplicate
    verifier.accept(env)
    assert env.sender == "alice" and verifier.guard.latest("alice") == 1
    with pytest.raises(DuplicateMessage):
        verifier.open(reseal(original, Signer(alice), seq=2))


def test_a_second_different_twin_under_an_accepted_seq_is_equivocation(small_schema, alice,
                                                                        trust):
    verifier = make_verifier(trust, small_schema)
    first = encode_twin(make_twin(small_schema, seed=1), small_schema, 1, Signer(alice))
    verifier.accept(verifier.open(first))
    other = encode_twin(make_twin(small_schema, seed=2), small_schema, 1, Signer(alice))
    with pytest.raises(EquivocatedMessage) as info:
        verifier.open(other)
    assert rejection_line(info.value).startswith("REJECTED (equivocation) peer=alice seq=1")
    with pytest.raises(ReplayedMessage) as again:  # the same twin again is a plain replay
        verifier.open(first)
    assert type(again.value) is ReplayedMessage


def test_replay_guard_remembers_a_bounded_number_of_digests():
    guard = ReplayGuard(max_digests=3)
    digests = [bytes([i]) * 32 for i in range(5)]
    for seq, d in enumerate(digests, 1):
        guard.accept("alice", seq, d)
    guard.check("alice", 6, digests[0])  # evicted: no longer detected
    guard.check("bob", 1, digests[4])  # another sender's content is its own
    with pytest.raises(DuplicateMessage):
        guard.check("alice", 6, digests[4])


def test_seq_far_beyond_the_watermark_is_refused():
    guard = ReplayGuard(max_ahead=10)
    guard.check("alice", 10, b"a" * 32)
    with pytest.raises(MalformedMessage, match="ahead"):
        guard.check("alice", 11, b"a" * 32)


# ------------------------------------------------------------------ schema checks
def _payload_with(small_schema, alice, edit) -> list[bytes]:
    good = encode_twin(make_twin(small_schema, rows=20), small_schema, 1, Signer(alice))
    cols = msgpack.unpackb(good[2])
    edit(cols)
    return reseal(good, Signer(alice), payload=msgpack.packb(cols))


def _set(i: int, j: int, value: Any):
    def edit(cols: list) -> None:
        cols[i][j] = value
    return edit


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.reverse(), "columns"),
    (lambda c: c.pop(), "columns"),
    (_set(0, 0, "Age"), "columns"),
    (_set(0, 1, "f8"), "dtype"),
    (_set(2, 1, "u1"), "dtype"),
    (_set(0, 2, b"\x00" * 79), "bytes"),
    (_set(1, 2, b"\x03" * 20), "code 3"),
    (_set(3, 2, b"\x33" * 20), "count 51"),
    (_set(0, 2, np.full(20, np.nan, "<f4").tobytes()), "finite"),
    (_set(0, 2, np.full(20, np.inf, "<f4").tobytes()), "finite"),
    (_set(0, 2, np.full(20, 17.0, "<f4").tobytes()), "finite"),
    (_set(2, 2, b"\x00\x00\xf0"), "padding"),
])
def test_columns_that_do_not_fit_the_schema_are_refused(small_schema, alice, trust, edit, match):
    frames = _payload_with(small_schema, alice, edit)
    with pytest.raises(SchemaMismatch, match=match):
        make_verifier(trust, small_schema).open(frames)


def test_twin_whose_rows_differ_from_its_n_is_refused_before_the_signature(
        small_schema, alice, trust):
    good = encode_twin(make_twin(small_schema, rows=20), small_schema, 1, Signer(alice))
    bad = reseal(good, Signer(alice), n=20_000)  # claims a large party, sends 20 rows
    with pytest.raises(MalformedMessage, match="claims N = 20000"):
        make_verifier(trust, small_schema).open(bad)


def test_twin_above_the_configured_row_bound_is_refused(small_schema, alice, trust):
    # Prepare: a node that takes peer twins of at most 10 rows
    limits = limits_for(small_schema, 10)
    frames = encode_twin(make_twin(small_schema, rows=20), small_schema, 1, Signer(alice))
    # Execute / Assert
    assert limits.max_rows == 10 and limits.max_payload_bytes < 200
    with pytest.raises(MalformedMessage):
        make_verifier(trust, small_schema, limits=limits).open(frames)
    small = encode_twin(make_twin(small_schema, rows=10), small_schema, 1, Signer(alice))
    assert make_verifier(trust, small_schema, limits=limits).open(small).seq == 1


def test_payload_longer_than_its_rows_can_take_is_refused_before_hashing(small_schema, alice,
                                                                        trust):
    good = encode_twin(make_twin(small_schema, rows=20), small_schema, 1, Signer(alice))
    padded = reseal(good, Signer(alice), payload=good[2] + b"\0" * 1000)
    with pytest.raises(MalformedMessage, match="20 rows of this schema can take"):
        make_verifier(trust, small_schema).open(padded)


def test_foreign_schema_hash_is_refused_before_the_payload_is_decoded(small_schema, alice,
                                                                      trust):
    # Prepare: another schema's hash over a payload that is not even msgpack
    good = encode_twin(make_twin(small_schema), small_schema, 1, Signer(alice))
    bad = reseal(good, Signer(alice), payload=b"\xc1" * 50, schema_hash="0" * 64)
    # Execute / Assert: the signed header's hash decides, not a decode error
    with pytest.raises(SchemaMismatch, match="schema 000000000000"):
        make_verifier(trust, small_schema).open(bad)


def test_stored_twin_far_ahead_reopens_without_the_replay_window(small_schema, alice, trust):
    frames = encode_twin(make_twin(small_schema), small_schema, 200_000, Signer(alice))
    with pytest.raises(MalformedMessage, match="ahead"):
        make_verifier(trust, small_schema).open(frames)
    assert make_verifier(trust, small_schema).open(frames, replay=False).seq == 200_000


def test_twin_digest_is_what_encode_twin_signs(small_schema, alice):
    twin = make_twin(small_schema)
    frames = encode_twin(twin, small_schema, 7, Signer(alice))
    assert twin_digest(twin, small_schema) == hashlib.sha256(frames[2]).digest()


def test_catchup_request_with_many_gaps_is_bounded_and_still_accepted(small_schema, alice,
                                                                      trust):
    # Prepare: every other seq held, 5,000 ranges for alice and 3 for bob
    many = Holding(1, tuple((s, s) for s in range(3, 10_003, 2)))
    req = CatchupRequest("alice", "bob", {"alice": many, "bob": Holding(0, ((2, 4),) * 1)},
                         created=NOW)
    # Execute
    frames = encode_catchup_request(req, Signer(alice))
    got = make_verifier(trust, small_schema).open(frames).message
    # Assert: it fits the header limit, claims only what is held, lowest ranges first
    assert len(frames[1]) < WireLimits().max_header_bytes
    assert sum(len(h.ranges) for h in got.have.values()) == MAX_RANGES
    assert got.have["bob"] == Holding(0, ((2, 4),))
    assert got.have["alice"].ranges == many.ranges[:MAX_RANGES - 1]


@pytest.mark.parametrize("ranges", [[[2, 2]], [[3, 2]], [[5, 6], [7, 8]], [[5, 8], [6, 9]],
                                    [[3]], [[3, 4, 5]], [[3, True]], [[3, 2**40]]])
def test_catchup_request_with_bad_ranges_is_malformed(small_schema, alice, trust, ranges):
    frames = encode_catchup_request(CatchupRequest("alice", "bob", {}, created=NOW),
                                    Signer(alice))
    bad = reseal(frames, Signer(alice), have={"alice": {"watermark": 1, "ranges": ranges}})
    with pytest.raises(MalformedMessage, match="have"):
        make_verifier(trust, small_schema).open(bad)


def test_catchup_request_over_the_range_limit_is_malformed(small_schema, alice, trust):
    frames = encode_catchup_request(CatchupRequest("alice", "bob", {}, created=NOW),
                                    Signer(alice))
    ranges = [[s, s] for s in range(3, 3 + 2 * (MAX_RANGES + 1), 2)]
    bad = reseal(frames, Signer(alice), have={"alice": {"watermark": 1, "ranges": ranges}})
    with pytest.raises(MalformedMessage, match=f"more than {MAX_RANGES} ranges"):
        make_verifier(trust, small_schema).open(bad)


def test_twin_under_another_schema_hash_is_refused(small_schema, alice, trust):
    good = encode_twin(make_twin(small_schema), small_schema, 1, Signer(alice))
    with pytest.raises(SchemaMismatch, match="schema"):
        make_verifier(trust, small_schema).open(reseal(good, Signer(alice), schema_hash="0" * 64))


def test_unsupported_version_is_named(small_schema, alice, trust):
    good = encode_twin(make_twin(small_schema), small_schema, 1, Signer(alice))
    with pytest.raises(UnsupportedVersion, match="version 2"):
        make_verifier(trust, small_schema).open(reseal(good, Signer(alice), version=2))


def test_frames_over_the_size_limits_are_refused_before_parsing(small_schema, alice, trust):
    frames = encode_twin(make_twin(small_schema, rows=200), small_schema, 1, Signer(alice))
    limits = WireLimits(max_payload_bytes=len(frames[2]) - 1)
    with pytest.raises(MalformedMessage, match="payload frame"):
        make_verifier(trust, small_schema, limits=limits).open(frames)
    limits = WireLimits(max_header_bytes=len(frames[1]) - 1)
    with pytest.raises(MalformedMessage, match="header frame"):
        make_verifier(trust, small_schema, limits=limits).open(frames)


def test_rejection_line_without_a_parsed_header():
    exc = MalformedMessage("expected 4 frames")
    assert rejection_line(exc) == "REJECTED (malformed) peer=? seq=-: expected 4 frames"


def test_created_time_is_not_judged_for_twins(small_schema, alice, trust):
    # Twins are stored and forwarded for as long as the study runs: no freshness window.
    verifier = Verifier(trust, small_schema, ReplayGuard(), clock=lambda: time.time() + 10**7)
    frames = encode_twin(make_twin(small_schema), small_schema, 1, Signer(alice))
    assert verifier.open(frames).twin.provenance.created == NOW - 3600


def test_the_bytes_layer_loads_no_network_frames_or_jax_library():
    # The import contract checks the source; this checks what a fresh interpreter loads.
    code = ("import sys, twinnode.wire, twinnode.trust.identity, twinnode.trust.certs\n"
            "print(','.join(sorted(m for m in ('zmq', 'pandas', 'jax', 'numpyro', 'd3p', "
            "'statsmodels') if m in sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == ""


def test_well_formed_is_every_check_before_the_signature(small_schema, alice, trust):
    # Prepare: a heartbeat, the same with a forged signature, and three malformed ones
    verifier = make_verifier(trust, small_schema)
    good = encode_heartbeat(Heartbeat("alice", 0, {}, created=NOW), Signer(alice))
    forged = [*good[:3], b"\0" * 64]
    # Execute / Assert: shape, header and topic decide; the signature is not looked at
    assert verifier.well_formed(good) and verifier.well_formed(forged)
    assert not verifier.well_formed([good[0], b"\xc1", b"", b""])
    assert not verifier.well_formed([b"hb:bob", *good[1:]])
    assert not verifier.well_formed(good[:3])
    with pytest.raises(InvalidSignature):
        verifier.open(forged)
