"""The wire bytes are pinned: one message of each family, made with a fixed key, fixed times and
fixed nonces, must encode to exactly the frames recorded here (computed with the code before
the renovation split wire/envelope.py). Any change to the bytes a peer receives fails loudly;
a deliberate change is a new protocol version, not an edit of these digests.

Ed25519 signatures are deterministic (RFC 8032), so the signature frame is pinned as well.
"""
from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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
    decode_catchup_end,
    decode_catchup_request,
    decode_heartbeat,
    decode_twin,
    encode_catchup_end,
    encode_catchup_request,
    encode_heartbeat,
    encode_twin,
)

CREATED = 1_700_000_000.25
ROWS = 11  # not a multiple of 8: the binary column's padding bits are pinned too
SCHEMA = Schema.from_toml("""
name = "golden"
outcome = "visits"

[columns.visits]
type = "count"
upper = 1000

[columns.age]
type = "continuous"
lower = 18.0
upper = 90.0

[columns.smoker]
type = "binary"

[columns.region]
type = "categorical"
levels = ["north", "south", "east"]
""", "golden.toml")

# sha256 over the frames, each prefixed by its u64 big-endian length.
GOLDEN = {
    "twin": "22ef28547f188663b93e37627f992a05e278e3b495b68da15afef273b7d4ef38",
    "hb": "bf6a552ebe1c67f189d15cfb7beed4973ff9d5561383d7ad9843206bcfd9cb97",
    "req": "8ce444b63755df3d47afee9ceca19d590f0aef1e42be37353f63228c4ac47610",
    "end": "661c25554cc915605fcb35742ab3d9ba622cd6723bab36ed6120a448d144d977",
    # a heartbeat carrying its sender's limits (issue 15); "hb" above, without them, is the
    # heartbeat of a node at the default limits, byte for byte as before
    "hb-limits": "ef1166eb379f18f5120892d6c1476fea47d362b38fc727a9b9bb2a58088905d6",
    # a catch-up request offering the digest of the highest seq held per sender (issue 15:
    # equivocation seen by catch-up); "req" above, without them, is byte for byte as before
    "req-tips": "606f66b5c4650befb9355b927971a863a9fc2fe7f9f6f0b7db3297840ba80752",
}


def frames_digest(frames: list[bytes]) -> str:
    h = hashlib.sha256()
    for frame in frames:
        h.update(struct.pack(">Q", len(frame)) + frame)
    return h.hexdigest()


def golden_identity() -> Identity:
    """A fixed Ed25519 key (the CURVE keys do not touch the envelope bytes)."""
    secret = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    curve_public, curve_secret = (b"TMiy*y961:<2M>vLKs]lNj[Tc)B!b(T+3x2T<ihJ",
                                  b"!HyBb3!{R:eWtmDakaEhqQcmRb#o}dq/)Ps}ar+{")
    return Identity("alice", secret, curve_public, curve_secret)


def golden_twin() -> Twin:
    i = np.arange(ROWS)
    arrays = {"visits": (i * 97) % 1001, "age": 18.0 + i * 7.123456789,
              "smoker": (i * 5 // 3) % 2, "region": i % 3}
    prov = Provenance(sender="alice", schema_hash=SCHEMA.hash, epsilon=1.0, delta=1e-3,
                      n=ROWS, k=4, index=2, relation="add-remove", release="run-7",
                      created=CREATED - 60.0,
                      generator={"components": 16, "epochs": [4, 8], "lr": 0.01,
                                 "aligned": True, "note": None, "nested": {"a": "b"}})
    return Twin(prov, arrays)


def golden_messages() -> dict[str, list[bytes]]:
    signer = Signer(golden_identity())
    rid = bytes(range(16, 32))
    nonce = {family: bytes([i]) * 16 for i, family in enumerate(("hb", "req", "end"))}
    have = {"alice": Holding(3), "carol": Holding(5, ((8, 9), (12, 20)))}
    return {
        "twin": encode_twin(golden_twin(), SCHEMA, 42, signer),
        "hb": encode_heartbeat(Heartbeat("alice", 42, {"bob": 7, "carol": 0}, CREATED,
                                         nonce["hb"]), signer),
        "hb-limits": encode_heartbeat(Heartbeat("alice", 42, {"bob": 7, "carol": 0}, CREATED,
                                                nonce["hb"], 500, 123_456), signer),
        "req": encode_catchup_request(CatchupRequest("alice", "bob", have, rid, CREATED,
                                                     nonce["req"]), signer),
        "req-tips": encode_catchup_request(CatchupRequest(
            "alice", "bob", have, rid, CREATED, nonce["req"],
            {"alice": (3, b"\x0a" * 32), "carol": (20, b"\x0b" * 32)}), signer),
        "end": encode_catchup_end(CatchupEnd("alice", "bob", rid, 17, CREATED, nonce["end"]),
                                  signer),
    }


@pytest.mark.parametrize("family", sorted(GOLDEN))
def test_encoded_frames_are_byte_for_byte_the_pinned_ones(family: str) -> None:
    frames = golden_messages()[family]
    assert frames_digest(frames) == GOLDEN[family], (
        f"the {family} envelope's bytes changed: peers of the previous version would refuse "
        "or misread it")


def test_the_pinned_frames_open_back_to_the_messages_that_made_them() -> None:
    messages = golden_messages()
    trust = TrustStore([golden_identity().peer()])
    verifier = Verifier(trust, SCHEMA, ReplayGuard(), local="bob", clock=lambda: CREATED)
    twin = decode_twin(messages["twin"], verifier).twin
    sent = golden_twin()
    assert twin.provenance == sent.provenance
    for name, values in sent.arrays.items():
        want = values.astype(np.float32) if name == "age" else values
        np.testing.assert_array_equal(twin.arrays[name], want)
    hb = decode_heartbeat(messages["hb"], verifier).message
    assert hb.holdings == {"bob": 7, "carol": 0} and (hb.max_rows, hb.max_frame) == (None, None)
    hb = decode_heartbeat(messages["hb-limits"], Verifier(trust, SCHEMA, ReplayGuard(),
                                                          local="bob", clock=lambda: CREATED)
                          ).message
    assert (hb.max_rows, hb.max_frame, hb.holdings) == (500, 123_456, {"bob": 7, "carol": 0})
    req = decode_catchup_request(messages["req"], verifier).message
    assert req.have["carol"] == Holding(5, ((8, 9), (12, 20))) and req.tips is None
    req = decode_catchup_request(messages["req-tips"], Verifier(
        trust, SCHEMA, ReplayGuard(), local="bob", clock=lambda: CREATED)).message
    assert req.tips == {"alice": (3, b"\x0a" * 32), "carol": (20, b"\x0b" * 32)}
    assert decode_catchup_end(messages["end"], verifier).message.count == 17
