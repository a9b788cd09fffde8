"""The analyses' reader of stored twins (node.stored_twins): the exact decoded twins, once."""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
from conftest import make_small_frame

from twinnode.data import frame_to_arrays
from twinnode.node.stored_twins import StoredTwins
from twinnode.schema import Schema
from twinnode.store.store import Store
from twinnode.trust.identity import Identity, TrustStore
from twinnode.twins import Provenance, Twin
from twinnode.wire import ReplayGuard, Signer, Verifier, encode_twin


@pytest.fixture
def world(tmp_path, small_schema: Schema):
    """A store holding bob's release r0 (seqs 1-3), then r1 drawn twice (4-6 and 7-9)."""
    bob = Identity.generate("bob")
    trust = TrustStore([bob.peer("tcp://127.0.0.1:1", "tcp://127.0.0.1:2")])
    store = Store.open(tmp_path / "state")
    frames = {}
    seq = 0
    for release, created in (("r0", 1.0), ("r1", 2.0), ("r1", 3.0)):
        for i in range(3):
            seq += 1
            prov = Provenance(sender="bob", schema_hash=small_schema.hash, epsilon=1.0,
                              delta=1e-3, n=30, k=3, index=i, relation="add-remove",
                              release=release, created=created)
            arrays = frame_to_arrays(small_schema, make_small_frame(small_schema, 30, seed=seq))
            frames[seq] = encode_twin(Twin(prov, arrays), small_schema, seq, Signer(bob))
            env = Verifier(trust, small_schema, ReplayGuard()).open(frames[seq])
            assert store.put("bob", seq, env.digest, env.frames, k=i, release=release)
    yield trust, store, frames
    store.close()


def test_the_latest_draw_of_the_latest_release_is_read_exactly_as_the_wire_decodes_it(
        world, small_schema):
    trust, store, frames = world
    reader = StoredTwins(trust, small_schema)
    direct = [Verifier(trust, small_schema, ReplayGuard()).open(frames[s]).twin
              for s in (7, 8, 9)]
    # Execute: read twice (the second from the cache)
    first, second = reader.latest(store, own="alice"), reader.latest(store, own="alice")
    # Assert: bob's draw of created 3.0, same provenance, values and dtypes both times
    for got in (first, second):
        assert list(got) == ["bob"] and len(got["bob"]) == 3
        for twin, want in zip(got["bob"], direct):
            assert twin.provenance == want.provenance
            for name, array in want.arrays.items():
                assert twin.arrays[name].dtype == array.dtype
                np.testing.assert_array_equal(twin.arrays[name], array)
    assert (reader.decoded, reader.reused) == (6, 6)  # r1's two draws, decoded once
    assert reader.latest(store, own="bob") == {}  # our own twins are not a peer's


def test_a_cached_twin_cannot_be_altered_through_what_a_reader_got(world, small_schema):
    trust, store, _ = world
    reader = StoredTwins(trust, small_schema)
    got = reader.latest(store, own="alice")["bob"][0]
    got.arrays["age"][:] = 0.0
    assert reader.latest(store, own="alice")["bob"][0].arrays["age"].min() >= 18.0


def test_a_cache_over_its_bound_decodes_again(world, small_schema):
    trust, store, _ = world
    reader = StoredTwins(trust, small_schema, max_bytes=1)
    reader.latest(store, own="alice")
    reader.latest(store, own="alice")
    assert (reader.decoded, reader.reused) == (12, 0)


def test_a_damaged_stored_twin_is_left_out_and_logged(world, small_schema, caplog):
    trust, store, _ = world
    store.checkpoint()  # the envelope files are written from the journal
    path = store.layout.envelope("bob", 8)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    reader = StoredTwins(trust, small_schema)
    # Execute
    with caplog.at_level(logging.WARNING, logger="twinnode.node"):
        got = reader.latest(store, own="alice")
    # Assert: seq 8 quarantined by the store, the others read
    assert [t.provenance.index for t in got["bob"]] == [0, 2]
    assert any(getattr(r, "event", "") == "store.reverify_failed" for r in caplog.records)
    assert reader.decoded == 5


def test_a_twin_signed_by_another_key_is_not_read(world, small_schema):
    trust, store, frames = world
    mallory = Identity.generate("bob")  # bob's name, another key
    header_twin = Verifier(trust, small_schema, ReplayGuard()).open(frames[9]).twin
    forged = encode_twin(Twin(replace(header_twin.provenance, created=4.0),
                              header_twin.arrays), small_schema, 10, Signer(mallory))
    store.put("bob", 10, b"forged-digest", forged, k=2, release="r1")
    got = StoredTwins(trust, small_schema).latest(store, own="alice")
    # the forged twin (the highest seq) is refused, so the draw of 3.0 stays the latest
    assert [t.provenance.created for t in got["bob"]] == [3.0, 3.0, 3.0]
