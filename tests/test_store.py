"""The durable store: acknowledged envelopes survive SIGKILL, damaged files are never read."""
from __future__ import annotations

import hashlib
import inspect
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinnode.errors import StoreError
from twinnode.store.container import pack_envelope, unpack_envelope
from twinnode.store.store import Put, Store
from twinnode.trust.seqset import Holding, SeqSet


def frames_for(sender: str, seq: int) -> list[bytes]:
    """Deterministic envelope frames for (sender, seq), of varied size (also run in the child)."""
    seed = hashlib.sha256(f"{sender}/{seq}".encode()).digest()
    size = (16, 1500, 20_000, 150_000)[seed[0] % 4]
    payload = (seed * (size // 32 + 1))[:size]
    return [b"twin", f"{sender}:{seq}".encode(), payload, seed]


def digest_of(frames: list[bytes]) -> bytes:
    return hashlib.sha256(b"".join(frames)).digest()


def put(store: Store, sender: str, seq: int, **kw) -> bool:
    frames = frames_for(sender, seq)
    return store.put(sender, seq, digest_of(frames), frames, **kw)


def env_path(state: Path, sender: str, seq: int) -> Path:
    return state / "store" / "envelopes" / sender / f"{seq:010d}.env"


# ---- basic contract -------------------------------------------------------------------------

def test_put_then_reopen_returns_identical_frames_and_metadata(tmp_path):
    # Prepare
    with Store.open(tmp_path) as store:
        # Execute
        assert put(store, "alice", 1, k=3, release="r1")
        assert put(store, "bob", 1, kind="heartbeat", status="own")
    # Assert
    with Store.open(tmp_path) as store:
        assert store.frames("alice", 1) == frames_for("alice", 1)
        entry = store.get("alice", 1)
        assert (entry.k, entry.release, entry.kind, entry.status) == (3, "r1", "twin", "accepted")
        assert entry.digest == digest_of(frames_for("alice", 1)).hex()
        assert store.get("bob", 1).kind == "heartbeat"
        assert store.counts() == {"alice": 1, "bob": 1}
        assert store.has("alice", 1) and not store.has("alice", 2)
        assert store.has_digest("bob", digest_of(frames_for("bob", 1)).hex().upper()) == 1


def test_put_is_idempotent_by_sender_seq_and_by_digest(tmp_path):
    with Store.open(tmp_path) as store:
        frames = frames_for("alice", 1)
        assert store.put("alice", 1, digest_of(frames), frames)

        again = store.put("alice", 1, digest_of(frames), frames)
        same_seq_other_content = store.put("alice", 1, b"other", [b"x"])
        same_content_other_seq = store.put("alice", 2, digest_of(frames), frames)

        assert (again, same_seq_other_content, same_content_other_seq) == (False, False, False)
        assert store.frames("alice", 1) == frames
        assert [e.seq for e in store.list()] == [1]
        assert not env_path(tmp_path, "alice", 2).exists()


@pytest.mark.parametrize("sender,seq", [("../etc", 1), (".hidden", 1), ("", 1), ("a/b", 1),
                                        ("alice", 0), ("alice", True), ("alice", 10**10)])
def test_unsafe_sender_names_and_out_of_range_seqs_are_refused(tmp_path, sender, seq):
    with Store.open(tmp_path) as store:
        with pytest.raises(StoreError):
            store.put(sender, seq, b"d", [b"x"])
        assert store.list() == []


def test_concurrent_puts_from_threads_store_each_envelope_once(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    keys = [("alice", seq) for seq in range(1, 21)] * 3  # every key offered three times
    with Store.open(tmp_path) as store, ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda key: put(store, *key), keys))

        assert sum(results) == 20
        assert [e.seq for e in store.list()] == list(range(1, 21))
        assert all(store.frames("alice", s) == frames_for("alice", s) for s in range(1, 21))


def test_list_filters_and_set_status_marks_without_deleting(tmp_path):
    with Store.open(tmp_path) as store:
        for seq in (1, 2, 3):
            put(store, "alice", seq)
        put(store, "bob", 1)

        store.set_status("alice", 2, "excluded")
        with pytest.raises(StoreError, match="no envelope alice#9"):
            store.set_status("alice", 9, "flagged")

    with Store.open(tmp_path) as store:
        assert [e.seq for e in store.list(sender="alice")] == [1, 2, 3]
        assert [(e.sender, e.seq) for e in store.list(status="excluded")] == [("alice", 2)]
        assert store.counts(status="accepted") == {"alice": 2, "bob": 1}
        assert store.frames("alice", 2) == frames_for("alice", 2)


def test_holdings_and_missing_describe_gaps_for_catch_up(tmp_path):
    with Store.open(tmp_path) as store:
        for seq in (1, 2, 3, 5, 8):
            put(store, "alice", seq)
        put(store, "bob", 2)

        holdings = store.holdings()
        lacks = store.missing("alice", Holding(2, ((5, 6),)))
        lacks_limited = store.missing("alice", Holding(), limit=2)

        assert holdings == {"alice": Holding(3, ((5, 5), (8, 8))), "bob": Holding(0, ((2, 2),))}
        assert lacks == [3, 8]
        assert lacks_limited == [1, 2]
        assert store.missing("carol", None) == []
        assert store.last_seq("alice") == 8 and store.last_seq("carol") == 0
        with pytest.raises(StoreError, match="must be a Holding"):
            store.missing("alice", {"watermark": 2})


@pytest.mark.parametrize("have", [Holding(-1), Holding("3"), Holding(True),
                                  Holding(0, ((0, 1),)), Holding(2, ((3, 4),)),
                                  Holding(0, ((5, 4),)), Holding(0, ((2, 3), (4, 5))),
                                  Holding(0, ((2, 3, 4),)), Holding(0, (("2", 3),)),
                                  Holding(10**10)])
def test_a_malformed_holding_from_a_peer_is_named_as_a_problem(have):
    assert have.problem() is not None


@given(st.sets(st.integers(1, 60), max_size=40), st.randoms(use_true_random=False))
@settings(max_examples=200, deadline=None)
def test_a_holding_describes_exactly_the_seqs_held_however_they_arrived(held, rnd):
    # Prepare: the same seqs added to a SeqSet in a random order
    order = list(held)
    rnd.shuffle(order)
    seqset = SeqSet()
    for seq in order:
        seqset.add(seq)
    # Execute
    summary = Holding.of(held)
    # Assert
    assert summary.problem() is None and seqset.holding() == summary
    assert summary.count() == len(held) and summary.latest == max(held, default=0)
    assert [s for s in range(1, 62) if summary.has(s)] == sorted(held)
    assert summary.lacking(sorted(held)) == [] and Holding().lacking(sorted(held)) == sorted(held)
    assert summary.watermark + 1 not in held
    assert summary.gaps(61, 100) == [s for s in range(summary.watermark + 1, 62) if s not in held]


def test_own_seqs_continue_above_every_own_twin_ever_stored_across_reopen(tmp_path):
    with Store.open(tmp_path) as store:
        first = store.next_own_seq("me")
        for seq in (1, 2, 3):
            put(store, "me", seq, own=True)
        put(store, "alice", 50)  # a peer's seqs are not ours
        after_three = store.next_own_seq("me")
    env_path(tmp_path, "me", 3).unlink()  # the newest own twin is lost (quarantined on open)
    with Store.open(tmp_path) as store:
        after_reopen = store.next_own_seq("me")
        own = store.own_seq()

    assert (first, after_three, after_reopen, own) == (1, 4, 4, 3)


def test_an_own_file_reindexed_after_a_crash_raises_the_next_own_seq(tmp_path):
    # a crash between rename and commit: the file of own seq 2 exists, its row (and the
    # counter's rise) does not; the twin may have been sent, so 2 must not be signed again
    frames = frames_for("me", 2)
    meta = {"sender": "me", "seq": 2, "digest": digest_of(frames).hex(), "kind": "twin",
            "k": 1, "release": "r1", "status": "accepted", "received": 1.0}
    with Store.open(tmp_path) as store:
        put(store, "me", 1, own=True)
    env_path(tmp_path, "me", 2).write_bytes(pack_envelope(meta, frames))
    with Store.open(tmp_path) as store:
        assert store.own_seq() == 1 and store.next_own_seq("me") == 3
    env_path(tmp_path, "me", 2).unlink()  # and then its file is lost as well (quarantined)
    with Store.open(tmp_path) as store:
        assert not store.has("me", 2) and store.next_own_seq("me") == 3


def test_the_same_content_twice_from_one_sender_is_a_duplicate_but_not_across_senders(tmp_path):
    frames = frames_for("alice", 1)
    with Store.open(tmp_path) as store:
        first = store.put("alice", 1, digest_of(frames), frames)
        again = store.put("alice", 2, digest_of(frames), frames)
        other = store.put("bob", 1, digest_of(frames), frames)
        assert (first, again, other) == (True, False, True)
        assert store.has_digest("alice", digest_of(frames)) == 1
        assert not store.has("alice", 2)


def test_second_open_of_a_state_dir_in_use_names_the_owner_pid(tmp_path):
    store = Store.open(tmp_path)
    with pytest.raises(StoreError, match=f"in use by pid {os.getpid()}"):
        Store.open(tmp_path)
    store.close()
    store.close()  # safe twice
    with Store.open(tmp_path) as again:
        assert again.list() == []
    with pytest.raises(StoreError, match="closed"):
        store.list()


def test_index_is_in_wal_mode(tmp_path):
    with Store.open(tmp_path) as store:
        put(store, "alice", 1)
        db = sqlite3.connect(tmp_path / "store" / "index.sqlite3")
        try:
            mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        finally:
            db.close()
    assert mode == "wal"


def test_unreadable_index_is_a_clear_store_error(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "index.sqlite3").write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match="index.*unreadable"):
        Store.open(tmp_path)
    # the failed open released its lock
    (tmp_path / "store" / "index.sqlite3").unlink()
    Store.open(tmp_path).close()


# ---- recovery -------------------------------------------------------------------------------

def test_stray_temp_file_is_deleted_on_open_and_never_listed(tmp_path):
    with Store.open(tmp_path) as store:
        put(store, "alice", 1)
    stray = env_path(tmp_path, "alice", 2).with_name(".0000000002.env.k3j2.tmp")
    stray.write_bytes(pack_envelope({"sender": "alice", "seq": 2}, [b"half"])[:20])

    with Store.open(tmp_path) as store:
        assert not stray.exists()
        assert store.recovery["temp_removed"] == 1
        assert [e.seq for e in store.list()] == [1]


def test_complete_file_without_index_row_is_reindexed_on_open(tmp_path):
    # a crash between rename and commit leaves exactly this: a complete file, no row
    frames = frames_for("alice", 2)
    meta = {"sender": "alice", "seq": 2, "digest": digest_of(frames).hex(), "kind": "twin",
            "k": 4, "release": "r9", "status": "accepted", "received": 1.0}
    with Store.open(tmp_path) as store:
        put(store, "alice", 1)
    env_path(tmp_path, "alice", 2).write_bytes(pack_envelope(meta, frames))

    with Store.open(tmp_path) as store:
        assert store.recovery["reindexed"] == 1
        assert store.frames("alice", 2) == frames
        assert (store.get("alice", 2).k, store.get("alice", 2).release) == (4, "r9")
        assert store.holdings() == {"alice": Holding(2)}


def test_unindexed_file_that_fails_its_checksum_is_quarantined_not_indexed(tmp_path):
    frames = frames_for("alice", 1)
    meta = {"sender": "alice", "seq": 1, "digest": "ab", "kind": "twin", "k": None,
            "release": None, "status": "accepted", "received": 1.0}
    blob = bytearray(pack_envelope(meta, frames))
    blob[60] ^= 0x01
    Store.open(tmp_path).close()
    env_path(tmp_path, "alice", 1).parent.mkdir()
    env_path(tmp_path, "alice", 1).write_bytes(bytes(blob))

    with Store.open(tmp_path) as store:
        assert store.list() == [] and not store.has("alice", 1)
        [record] = store.quarantined()
        assert "checksum" in record["reason"]
        assert Path(record["file"]).read_bytes() == bytes(blob)
        assert not env_path(tmp_path, "alice", 1).exists()


def test_index_row_whose_file_vanished_is_quarantined_on_open(tmp_path):
    with Store.open(tmp_path) as store:
        put(store, "alice", 1)
        put(store, "alice", 2)
    env_path(tmp_path, "alice", 1).unlink()

    with Store.open(tmp_path) as store:
        assert not store.has("alice", 1)
        assert store.holdings() == {"alice": Holding(0, ((2, 2),))}
        assert [(q["sender"], q["seq"], q["reason"]) for q in store.quarantined()] == [
            ("alice", 1, "file missing")]
        # catch-up may now store it again
        assert put(store, "alice", 1)


def test_flipped_byte_is_caught_on_read_and_the_file_quarantined(tmp_path):
    with Store.open(tmp_path) as store:
        put(store, "alice", 1)
        store.checkpoint()  # the file is written from the journal
        path = env_path(tmp_path, "alice", 1)
        blob = bytearray(path.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        path.write_bytes(bytes(blob))

        with pytest.raises(StoreError, match="alice#1 is unreadable and was quarantined"):
            store.frames("alice", 1)

        assert not store.has("alice", 1)
        assert store.quarantined()[0]["seq"] == 1


# ---- group commit -----------------------------------------------------------------------------

def puts(sender: str, seqs, **kw) -> list[Put]:
    return [Put(sender, s, digest_of(frames_for(sender, s)), frames_for(sender, s), **kw)
            for s in seqs]


def test_a_batch_is_made_durable_with_one_fsync_and_read_back_before_any_checkpoint(
        tmp_path, monkeypatch):
    # Prepare: count the fsyncs this thread makes (the checkpoint thread's are its own)
    import threading

    synced: list[str] = []
    main = threading.current_thread()
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)

        def counting(fd, _real=real, _name=name):
            if threading.current_thread() is main:
                synced.append(_name)
            return _real(fd)
        monkeypatch.setattr(os, name, counting)
    with Store.open(tmp_path) as store:
        synced.clear()
        # Execute: a first batch (a new journal segment), then a second batch
        first = store.put_many(puts("alice", range(1, 11)) + puts("alice", [3]))
        after_first, synced[:] = list(synced), []
        second = store.put_many(puts("bob", range(1, 21)) + puts("alice", [11]))
        after_second = list(synced)
        # Assert: one data sync per batch (plus the new segment's directory entry, once)
        assert first == [True] * 10 + [False] and second == [True] * 21
        assert after_first == ["fdatasync", "fsync"] and after_second == ["fdatasync"]
        assert not env_path(tmp_path, "alice", 1).exists()  # not checkpointed yet
        assert store.frames("bob", 20) == frames_for("bob", 20)
        assert store.holdings() == {"alice": Holding(11), "bob": Holding(20)}
        store.checkpoint()
        assert env_path(tmp_path, "alice", 1).read_bytes()[:4] == b"TNEV"
        assert list((tmp_path / "store" / "journal").iterdir()) == []
        assert store.frames("alice", 11) == frames_for("alice", 11)


def test_a_torn_journal_tail_is_not_read_and_the_records_before_it_are_recovered(tmp_path):
    # Prepare: a store killed after its journal got two batches, the second cut mid-record
    # (its index rows lost too: the crash came before their commit)
    from twinnode.store.journal import MAGIC

    with Store.open(tmp_path) as store:
        put(store, "alice", 1)
    meta = {"sender": "alice", "kind": "twin", "k": None, "release": None,
            "status": "accepted", "received": 1.0}
    blobs = [pack_envelope({**meta, "seq": s, "digest": digest_of(frames_for("alice", s)).hex()},
                           frames_for("alice", s)) for s in (2, 3)]
    segment = tmp_path / "store" / "journal" / f"{7:010d}.tnj"
    whole = MAGIC + b"".join(len(b).to_bytes(8, "big") + b for b in blobs)
    segment.write_bytes(whole[:-10])
    # Execute
    with Store.open(tmp_path) as store:
        # Assert
        assert [e.seq for e in store.list()] == [1, 2] and store.recovery["reindexed"] == 1
        assert store.frames("alice", 2) == frames_for("alice", 2) and store.quarantined() == []
    assert not segment.exists() and not env_path(tmp_path, "alice", 3).exists()


def test_a_damaged_journal_record_is_quarantined_on_read_and_a_lost_file_restored(tmp_path):
    with Store.open(tmp_path) as store:
        store.put_many(puts("alice", [1, 2]))
        [segment] = (tmp_path / "store" / "journal").iterdir()
        blob = bytearray(segment.read_bytes())
        blob[-100] ^= 0xFF  # inside alice#2's record
        segment.write_bytes(bytes(blob))
        with pytest.raises(StoreError, match="alice#2 is unreadable and was quarantined"):
            store.frames("alice", 2)
        assert store.frames("alice", 1) == frames_for("alice", 1)
        assert [q["seq"] for q in store.quarantined()] == [2]
    with Store.open(tmp_path) as store:
        assert store.holdings() == {"alice": Holding(1)}


def test_what_a_crash_leaves_before_the_checkpoint_reopens_with_every_envelope(tmp_path):
    import shutil

    with Store.open(tmp_path / "a") as store:
        put(store, "alice", 1)
        store.checkpoint()
        store.put_many(puts("alice", [2, 3]))
        # a copy taken now is what a SIGKILL leaves: rows and journal, no files for 2 and 3
        shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "twinnode.lock").unlink()
    with Store.open(tmp_path / "b") as store:
        assert store.recovery["restored"] == 2 and store.quarantined() == []
        assert [store.frames("alice", s) for s in (1, 2, 3)] == \
            [frames_for("alice", s) for s in (1, 2, 3)]
    assert list((tmp_path / "b" / "store" / "journal").iterdir()) == []


# ---- container format -----------------------------------------------------------------------

@given(st.lists(st.binary(max_size=300), min_size=1, max_size=6),
       st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=4))
@settings(max_examples=100, deadline=None)
def test_container_round_trips_frames_byte_for_byte(frames, meta):
    assert unpack_envelope(pack_envelope(meta, frames)) == (meta, frames)


def test_every_truncation_and_bad_header_of_a_container_is_refused():
    blob = pack_envelope({"sender": "alice"}, [b"abc", b"", b"defg"])
    for cut in range(len(blob)):
        with pytest.raises(StoreError):
            unpack_envelope(blob[:cut])
    with pytest.raises(StoreError, match="magic"):
        unpack_envelope(b"XXXX" + blob[4:])
    with pytest.raises(StoreError, match="format 2"):
        unpack_envelope(blob[:4] + b"\x00\x02" + blob[6:])
    with pytest.raises(StoreError, match="1..65536 frames"):
        pack_envelope({}, [])


# ---- crash safety with real processes --------------------------------------------------------

CHILD = """
import hashlib, os, random, sys
from twinnode.store.store import Put, Store
{frames_src}
state, log, seed, segment = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
out = open(log, "a", buffering=1)
def note(*words):
    out.write(" ".join(map(str, words)) + "\\n")  # line buffered: one write() per line
def put(sender, seq, **kw):
    f = frames_for(sender, seq)
    return Put(sender, seq, hashlib.sha256(b"".join(f)).digest(), f, **kw)
store = Store.open(state, segment_bytes=segment)  # small segments: checkpoints mid-flight
note("open", os.getpid())
senders = ["alice", "bob", "carol"]
while True:
    r = rng.random()
    if r < 0.1:  # a batch of own twins, as a publish makes them
        first = store.next_own_seq("me")
        seqs = list(range(first, first + rng.randint(1, 4)))
        for seq, ok in zip(seqs, store.put_many([put("me", s, own=True) for s in seqs])):
            note("own", seq) if ok else note("BUG own seq taken", seq)
    elif r < 0.2 and store.last_seq("alice"):
        seq = rng.randint(1, store.last_seq("alice"))
        if store.has("alice", seq):
            f = frames_for("alice", seq)
            if store.put("alice", seq + 10**6, hashlib.sha256(b"".join(f)).digest(), f):
                note("BUG duplicate digest accepted", seq)
            store.set_status("alice", seq, "flagged")
            note("flagged alice", seq)
    elif r < 0.23:
        store.checkpoint()
    else:  # a batch of peers' twins received close together, some of them twice
        nxt = {{s: store.last_seq(s) for s in senders}}
        batch, fresh = [], []
        for _ in range(rng.randint(1, 12)):
            sender = rng.choice(senders)
            if batch and rng.random() < 0.15:
                batch.append(rng.choice(batch))  # the same envelope again: refused
                fresh.append(False)
                continue
            nxt[sender] += rng.choice([1, 1, 1, 2])
            batch.append(put(sender, nxt[sender], k=nxt[sender] % 10))
            fresh.append(True)
        for p, new, ok in zip(batch, fresh, store.put_many(batch)):
            if ok and new:
                note("ack", p.sender, p.seq)
            elif ok or new:
                note("BUG batch result", p.sender, p.seq, new, ok)
"""


def read_log(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")[:-1]  # a line cut by the kill has no newline: not acknowledged
    return [line.split() for line in lines]


def check_store_against_log(state: Path, log: list[list[str]]) -> dict[str, int]:
    """Reopen (recover) and check every acknowledged write; returns the recovery counts."""
    acked = {(w[1], int(w[2])) for w in log if w[0] == "ack"}
    flagged = {("alice", int(w[2])) for w in log if w[0] == "flagged"}
    own = [int(w[1]) for w in log if w[0] == "own"]
    assert not [w for w in log if w[0] == "BUG"]
    with Store.open(state) as store:
        entries = store.list()
        keys = {(e.sender, e.seq) for e in entries}
        assert acked <= keys, f"acknowledged but lost: {sorted(acked - keys)}"
        for e in entries:  # acknowledged or re-indexed: either way complete and exact
            assert store.frames(e.sender, e.seq) == frames_for(e.sender, e.seq)
            assert e.digest == digest_of(frames_for(e.sender, e.seq)).hex()
        assert len({e.digest for e in entries}) == len(entries)
        assert all(store.get(*key).status == "flagged" for key in flagged)
        on_disk = {(p.parent.name, int(p.stem))
                   for p in (state / "store" / "envelopes").glob("*/*")}
        assert on_disk == keys, "index and files disagree (or a temp file survived)"
        assert store.quarantined() == []
        assert own == sorted(set(own)), "an own seq was taken twice or went backwards"
        assert store.own_seq() >= max(own, default=0)
        assert store.next_own_seq("me") > max(own, default=0)
        return dict(store.recovery)


def test_sigkill_at_random_moments_loses_no_acknowledged_envelope_of_any_batch(tmp_path):
    # Prepare: a writer storing batches (group commit: one fsync per batch), with journal
    # segments small enough that checkpoints run (in the background) between the kills
    rng = random.Random(7)
    state, log = tmp_path / "state", tmp_path / "acks.log"
    script = CHILD.format(frames_src=textwrap.dedent(inspect.getsource(frames_for)))
    recovered = dict.fromkeys(("temp_removed", "reindexed", "duplicates_removed", "restored"), 0)
    kills, with_journal, started = 40, 0, time.monotonic()
    for round_ in range(kills):
        # Execute: start a writer, kill it mid-flight
        child = subprocess.Popen([sys.executable, "-c", script, str(state), str(log),
                                  str(round_), str(rng.choice([200_000, 1_000_000]))],
                                 stderr=subprocess.PIPE)
        if round_ % 4 == 0:
            time.sleep(rng.uniform(0.0, 0.25))  # often during start-up and recovery
        else:
            deadline = time.monotonic() + 20
            while ["open", str(child.pid)] not in read_log(log):
                assert child.poll() is None, child.stderr.read().decode()
                assert time.monotonic() < deadline, "writer did not start"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.2))
        child.kill()
        child.wait(timeout=10)
        child.stderr.close()
        journal = state / "store" / "journal"
        with_journal += journal.is_dir() and any(journal.iterdir())
        # Assert
        counts = check_store_against_log(state, read_log(log))
        for key in recovered:
            recovered[key] += counts[key]
        assert not any(journal.iterdir()), "recovery left the journal"
    acked = sum(1 for w in read_log(log) if w[0] == "ack")
    print(f"{kills} kills in {time.monotonic() - started:.1f} s, {acked} acknowledged puts, "
          f"{with_journal} kills left a journal to replay, recovery: {recovered}")
    assert acked > 100 and with_journal >= kills // 4


FORMAT_1 = """
CREATE TABLE envelopes (
    sender TEXT NOT NULL, seq INTEGER NOT NULL, digest TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL, k INTEGER, release TEXT, status TEXT NOT NULL,
    received REAL NOT NULL, size INTEGER NOT NULL, checksum TEXT NOT NULL,
    PRIMARY KEY (sender, seq));
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE quarantine (
    id INTEGER PRIMARY KEY, sender TEXT NOT NULL, seq INTEGER NOT NULL, digest TEXT,
    reason TEXT NOT NULL, file TEXT, at REAL NOT NULL);
PRAGMA user_version=1;
"""


def test_a_format_1_index_is_migrated_and_an_unknown_format_refused(tmp_path):
    # Prepare: an earlier build's store holding alice#1 and our own counter at 4
    with Store.open(tmp_path / "a") as store:
        put(store, "alice", 1, k=2, release="r1")
        put(store, "me", 4, own=True)
        rows = store._conn().execute("SELECT * FROM envelopes ORDER BY sender").fetchall()
    index = tmp_path / "a" / "store" / "index.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    db = sqlite3.connect(index)
    db.executescript(FORMAT_1)
    db.executemany("INSERT INTO envelopes VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
    db.execute("INSERT INTO counters VALUES ('own_seq', 4)")
    db.commit()
    db.close()
    # Execute
    with Store.open(tmp_path / "a") as store:
        migrated = (store.get("alice", 1).release, store.frames("alice", 1), store.own_seq())
        shared = store.put("bob", 1, digest_of(frames_for("alice", 1)), frames_for("alice", 1))
    db = sqlite3.connect(index)
    db.execute("PRAGMA user_version=7")
    db.commit()
    db.close()
    # Assert
    assert migrated == ("r1", frames_for("alice", 1), 4) and shared
    with pytest.raises(StoreError, match="format 7"):
        Store.open(tmp_path / "a")


# ---- the format across the renovation --------------------------------------------------------

FIXTURE = Path(__file__).parent / "fixtures" / "store-9c89b38"


def fixture_module():
    """tests/fixtures/make_store_9c89b38.py (its frames function made the fixture's files)."""
    import importlib.util

    path = FIXTURE.with_name("make_store_9c89b38.py")
    spec = importlib.util.spec_from_file_location("make_store_9c89b38", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_store_written_before_the_renovation_opens_and_reads_as_it_was_written(tmp_path):
    # Prepare: a copy of the state directory the pre-renovation store (9c89b38) wrote
    import shutil

    made = fixture_module()
    state = tmp_path / "state"
    shutil.copytree(FIXTURE, state)
    files = {p.relative_to(state): p.read_bytes() for p in state.glob("store/envelopes/*/*")}
    # Execute
    with Store.open(state) as store:
        entries = store.list()
        frames = {(e.sender, e.seq): store.frames(e.sender, e.seq) for e in entries}
        facts = (store.own_seq(), store.next_own_seq("me"), store.counts(),
                 [(q["sender"], q["seq"], q["reason"]) for q in store.quarantined()],
                 store.holdings()["bob"], store.recovery)
        latest = [(e.sender, e.seq) for e in store.latest_releases(exclude="me")]
        assert store.put("bob", 2, made.fixture_digest(made.fixture_frames("bob", 2)),
                         made.fixture_frames("bob", 2), k=2, release="bob-r1")
    # Assert: every envelope exactly as written, with its index facts
    assert sorted(frames) == sorted(made.CONTENT)
    assert all(f == made.fixture_frames(*key) for key, f in frames.items())
    assert all(e.digest == made.fixture_digest(made.fixture_frames(e.sender, e.seq)).hex()
               and e.k == e.seq % 3 and e.release == f"{e.sender}-r1" for e in entries)
    assert {(e.sender, e.seq) for e in entries if e.status == "flagged"} == {("alice", 2)}
    assert facts == (3, 4, {"alice": 3, "bob": 2, "me": 2}, [("me", 3, "file missing")],
                     Holding(1, ((3, 3),)), {"temp_removed": 0, "reindexed": 0,
                                             "duplicates_removed": 0, "quarantined": 0,
                                             "restored": 0})
    assert latest == [("alice", 1), ("alice", 2), ("alice", 3), ("bob", 1), ("bob", 3)]
    # nothing was rewritten, the index kept its format, and the new put reopens
    new_file = Path("store/envelopes/bob") / f"{2:010d}.env"
    assert {p.relative_to(state): p.read_bytes() for p in state.glob("store/envelopes/*/*")
            if p.relative_to(state) != new_file} == files
    db = sqlite3.connect(state / "store" / "index.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()
    assert list((state / "store" / "journal").iterdir()) == []  # a clean close leaves none
    with Store.open(state) as store:
        assert store.frames("bob", 2) == made.fixture_frames("bob", 2)


def test_a_container_is_the_byte_layout_its_docstring_documents():
    # Prepare: the bytes built by hand from store/container.py's table
    import json
    import struct

    meta = {"sender": "alice", "seq": 7, "digest": "ab", "kind": "twin", "k": 1,
            "release": "r", "status": "accepted", "received": 1.5}
    frames = [b"twin:alice", b"", b"\x00\x01payload"]
    meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    body = b"TNEV" + struct.pack(">H", 1) + struct.pack(">I", len(meta_bytes)) + meta_bytes
    body += struct.pack(">I", len(frames))
    for frame in frames:
        body += struct.pack(">Q", len(frame)) + frame
    handmade = body + hashlib.sha256(body).digest()
    # Execute / Assert
    assert pack_envelope(meta, frames) == handmade
    assert unpack_envelope(handmade) == (meta, frames)


def test_latest_releases_are_each_senders_twins_of_the_release_of_its_highest_seq(tmp_path):
    with Store.open(tmp_path) as store:
        for sender, seq, release, kind in (("alice", 1, "a1", "twin"), ("alice", 2, "a2", "twin"),
                                           ("alice", 3, "a1", "twin"), ("alice", 4, "a2", "twin"),
                                           ("bob", 1, "b1", "twin"), ("bob", 2, None, "note"),
                                           ("me", 1, "m1", "twin")):
            put(store, sender, seq, release=release, kind=kind)
        # Execute / Assert: alice's a2 (seq 4 is highest), bob's b1 (his note is no twin)
        assert [(e.sender, e.seq) for e in store.latest_releases(exclude="me")] == \
            [("alice", 2), ("alice", 4), ("bob", 1)]
        assert [e.sender for e in store.latest_releases()].count("me") == 1
