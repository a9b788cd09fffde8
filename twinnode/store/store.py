"""The node's durable store: envelope files, a SQLite (WAL) index, a group-commit journal.

Layout under the state directory (one node process owns it, see `Store.open`; the paths are
`store.layout`'s):

    twinnode.lock                             flock held by the owner; its pid inside
    store/index.sqlite3                       the index (`store.index`; WAL mode); a row is the
                                              acknowledgement
    store/journal/<n>.tnj                     batches not yet checkpointed (`store.journal`)
    store/envelopes/<sender>/<seq:010d>.env   the frames exactly as received (`store.container`)
    store/quarantine/                         files that failed a check, kept for inspection

Group commit (`put_many`; `put` is a batch of one): the containers of the whole batch are
appended to the journal in one write and made durable with one `fdatasync`; then their index
rows are committed in one transaction without an fsync of their own (the journal already
holds them). `put_many` returns only after both, so after a SIGKILL (or a power loss) at any
point every envelope whose put returned True is recovered, byte for byte. Until the next
checkpoint an envelope is read from its journal record; the checkpoint (a thread: after a
second without puts, when a segment holds `segment_bytes`, and at `close`) writes the
envelope files, fsyncs them, their directories and the index, and deletes the segments. A
clean close therefore leaves the plain per-envelope layout that builds before the journal
wrote and read (tests/fixtures/store-9c89b38 is such a store); such a build opening a store
after a crash would quarantine the rows whose files were not written yet, and catch-up would
fetch them again.

Uniqueness: one envelope per (sender, seq), and one per (sender, payload digest): a sender's
content stored twice under two seqs is a duplicate, while two senders may hold the same
payload (judging content across senders would let one peer censor another by re-signing its
twin and delivering it first). The index's format, and the migration of the earlier one, are
`store.index`'s; recovery at `open` is `store.recovery`'s. `frames` checks size and SHA-256
on every read and quarantines damaged content (the row leaves the index, so catch-up can
fetch the envelope again), raising StoreError: a damaged file is never read as a twin.

Own sequence numbers: `Put.own` raises the own-seq counter to the twin's seq in the same
commit as its index row, and `next_own_seq(name)` is one above that counter, every seq of
ours stored now (one recovered from the journal included) and every seq of ours quarantined.
A seq is taken only by storing a twin, so a publish that is cut short or refused leaves no
gap; a twin signed but never stored never left the process, so signing another under its
seq is no equivocation. An own twin is sent only after its batch is durable, so a seq that
was sent is never handed out again, and two different signed twins under one seq
(equivocation) cannot come from us.

Cost (scripts/bench_store.py, 70 kB envelopes on the 2-core dev VM): one fsync per batch
instead of three per envelope (file, directory, WAL at synchronous=FULL).

The store does not parse wire messages: callers pass sender, seq, digest and metadata.
Methods are thread-safe (one lock), so a node may call them through `asyncio.to_thread`.
"""
from __future__ import annotations

import builtins
import fcntl
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from twinnode.atomic import fsync_dir, mkdir_durable
from twinnode.errors import StoreError
from twinnode.store.container import container_checksum, unpack_envelope
from twinnode.store.index import EntryMeta, Index, open_index
from twinnode.store.journal import SEGMENT_BYTES, Journal, Location, read_record
from twinnode.store.layout import StateLayout
from twinnode.store.names import (
    Packed,
    Put,
    check_sender,
    check_seq,
    check_token,
    pack_put,
)
from twinnode.store.recovery import COUNTS, reconcile_files, replay_journal, write_file
from twinnode.trust.seqset import MAX_SEQ, Holding

log = logging.getLogger("twinnode.store")
__all__ = ["Packed", "Put", "Store", "pack_put"]

IDLE_CHECKPOINT = 1.0  # seconds without a put after which the journal is checkpointed


class Store:
    """One node's durable store; open with `Store.open(state_dir)`, one owner at a time."""

    def __init__(self, layout: StateLayout, lock_fd: int, index: Index,
                 journal: Journal) -> None:
        self.layout = layout
        self.state_dir = layout.root
        self.root = layout.store
        self.envelopes_dir = layout.envelopes
        self.quarantine_dir = layout.quarantine
        self.recovery: dict[str, int] = dict.fromkeys(COUNTS, 0)
        self._lock_fd: int | None = lock_fd
        self._index = index
        self._journal = journal
        self._in_journal: dict[tuple[str, int], Location] = {}  # acknowledged, no file yet
        self._unsynced: set[Path] = set()  # files recovery wrote, synced at the checkpoint
        self._dirs: set[Path] = set()      # sender directories known to exist
        self._mutex = threading.RLock()
        self._checkpointing = threading.Lock()
        self._last_put = time.monotonic()
        self._wake = threading.Event()
        self._closing = False
        self._checkpointer: threading.Thread | None = None

    @classmethod
    def open(cls, state_dir: str | Path, segment_bytes: int = SEGMENT_BYTES) -> "Store":
        """Lock `state_dir`, open (or create) the index and recover from any earlier crash
        (`store.recovery`). `segment_bytes`: when the journal is checkpointed."""
        layout = StateLayout.of(state_dir)
        try:
            mkdir_durable(layout.root, mode=0o700)
            lock_fd = _acquire_lock(layout)
        except OSError as exc:
            raise StoreError(f"cannot use state directory {layout.root}: {exc}") from None
        index = None
        try:
            for d in (layout.store, layout.envelopes, layout.quarantine, layout.journal):
                mkdir_durable(d, mode=0o700)
            index = open_index(layout.index)
            store = cls(layout, lock_fd, index, Journal(layout.journal, segment_bytes))
            try:
                store._recover()
            except OSError as exc:
                raise StoreError(f"store recovery in {layout.store} failed: {exc}") from None
            store._checkpointer = threading.Thread(target=store._checkpoint_when_due,
                                                   name="store-checkpoint", daemon=True)
            store._checkpointer.start()
            return store
        except BaseException:
            if index is not None:
                index.close()
            _release_lock(lock_fd)
            raise

    def close(self) -> None:
        """Checkpoint (so a clean close leaves no journal), close the index and release the
        lock; safe to call twice."""
        self._closing = True
        self._wake.set()
        if self._checkpointer is not None and self._checkpointer is not threading.current_thread():
            self._checkpointer.join()
        if not self._index.closed:
            self.checkpoint()
        with self._mutex:
            self._journal.close()
            self._index.close()
            if self._lock_fd is not None:
                _release_lock(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- envelopes ----

    def put(self, sender: str, seq: int, digest: bytes | str, frames: Sequence[bytes], *,
            kind: str = "twin", k: int | None = None, release: str | None = None,
            status: str = "accepted", own: bool = False) -> bool:
        """Store one envelope durably (a batch of one, see `put_many`); True once
        acknowledged, False if (sender, seq) or (sender, digest) is already stored."""
        return self.put_many([Put(sender, seq, digest, frames, kind=kind, k=k,
                                  release=release, status=status, own=own)])[0]

    def put_many(self, puts: Sequence[Put]) -> builtins.list[bool]:
        """Store a batch durably with one fsync (group commit); per envelope True once
        acknowledged, False if its (sender, seq) or (sender, digest) is already stored or
        comes earlier in the batch (then nothing is written for it). `Put.own`: one of our
        own twins, so the own-seq counter rises to its seq in the same commit."""
        return self.put_packed([pack_put(p) for p in puts])

    def put_packed(self, packed: Sequence[Packed]) -> builtins.list[bool]:
        """`put_many` of puts the caller packed already (`store.names.pack_put`: checked, in
        their containers): a node packs each twin as it arrives, on its own thread, so the
        thread that writes a batch holds Python's lock for little more than the index."""
        results = [False] * len(packed)
        with self._mutex:
            fresh: builtins.list[int] = []
            keys: set[tuple[str, object]] = set()
            for i, (meta, _, _) in enumerate(packed):
                s, q, d = meta["sender"], meta["seq"], meta["digest"]
                if (s, q) in keys or (s, d) in keys or self._index.known(s, q, d):
                    continue
                keys |= {(s, q), (s, d)}
                fresh.append(i)
            if not fresh:
                return results
            try:
                places = self._journal.append([packed[i][1] for i in fresh])  # durable now
                self._index.insert_many([(meta, len(blob), container_checksum(blob), own)
                                         for meta, blob, own in (packed[i] for i in fresh)])
            except (OSError, sqlite3.Error) as exc:  # the journal may hold it: recovery would
                self._journal.seal()                 # index it, as a batch a crash cut short
                raise StoreError(f"could not store {len(fresh)} envelope(s): {exc}") from None
            for i, place in zip(fresh, places):
                results[i] = True
                self._in_journal[(packed[i][0]["sender"], packed[i][0]["seq"])] = place
            self._last_put = time.monotonic()
            if self._journal.full:
                self._journal.seal()
                self._wake.set()
        return results

    def has(self, sender: str, seq: int) -> bool:
        """Whether (sender, seq) is stored."""
        with self._mutex:
            return self._index.has(sender, seq)

    def has_digest(self, sender: str, digest: bytes | str) -> int | None:
        """The seq under which `sender`'s envelope with this content digest is stored, or None."""
        with self._mutex:
            return self._index.seq_of_digest(sender, digest)

    def get(self, sender: str, seq: int) -> EntryMeta | None:
        """The index entry of (sender, seq), or None."""
        with self._mutex:
            return self._index.entry(sender, seq)

    def frames(self, sender: str, seq: int) -> list[bytes]:
        """The envelope's frames exactly as received, after checking size and checksum."""
        with self._mutex:
            facts = self._index.file_facts(sender, seq)
            if facts is None:
                raise StoreError(f"no envelope {sender}#{seq} in the store")
            path = self._path(sender, seq)
            place = self._in_journal.get((sender, seq))
            try:
                blob = path.read_bytes() if place is None else read_record(place)
                if (len(blob), container_checksum(blob)) != facts:
                    raise StoreError(f"{path}: size or checksum differs from the index")
                return unpack_envelope(blob, str(path))[1]
            except (FileNotFoundError, StoreError) as exc:  # the content is gone or damaged
                why = "file missing" if isinstance(exc, FileNotFoundError) else str(exc)
                self._quarantine(sender, seq, why, path)
                raise StoreError(f"envelope {sender}#{seq} is unreadable and was "
                                 f"quarantined: {why}") from None
            except OSError as exc:  # e.g. out of file descriptors: the file may be fine
                raise StoreError(f"cannot read envelope {sender}#{seq}: {exc}") from None

    def list(self, sender: str | None = None, status: str | None = None) -> list[EntryMeta]:
        """Index entries, by sender then seq, optionally for one sender and/or status."""
        with self._mutex:
            return self._index.entries(sender, status)

    def latest_releases(self, exclude: str | None = None) -> builtins.list[EntryMeta]:
        """The twins of each sender's latest release (the release of its highest-seq twin),
        by sender then seq, leaving out `exclude` (ourselves): what an analysis reads."""
        with self._mutex:
            return self._index.latest_releases(exclude)

    def set_status(self, sender: str, seq: int, status: str) -> None:
        """Mark an envelope (e.g. "flagged", "excluded" by screening); never deletes it."""
        check_token("status", status)
        with self._mutex:
            if not self._index.set_status(sender, seq, status):
                raise StoreError(f"no envelope {sender}#{seq} in the store")

    def counts(self, status: str | None = None) -> dict[str, int]:
        """Envelopes held per sender (optionally only those with `status`)."""
        with self._mutex:
            return self._index.counts(status)

    def last_seq(self, sender: str) -> int:
        """The highest seq stored from `sender` (0 if none)."""
        with self._mutex:
            return self._index.last_seq(sender)

    def holdings(self) -> dict[str, Holding]:
        """Per sender, what this store can serve."""
        with self._mutex:
            by_sender = self._index.seqs_by_sender()
        return {s: Holding.of(seqs) for s, seqs in by_sender.items()}

    def missing(self, sender: str, have: Holding | None,
                limit: int | None = None) -> builtins.list[int]:
        """Seqs of `sender` held here that a requester holding `have` lacks, ascending (the
        envelopes a catch-up reply sends; `have` was checked by the wire)."""
        have = have if have is not None else Holding()
        if not isinstance(have, Holding):
            raise StoreError(f"catch-up summary must be a Holding, not {type(have).__name__}")
        with self._mutex:
            return have.lacking(self._index.seqs_above(sender, have.watermark), limit)

    def quarantined(self) -> builtins.list[dict[str, Any]]:
        """Records of quarantined envelopes (sender, seq, digest, reason, file, at)."""
        with self._mutex:
            return self._index.quarantined()

    # ---- durability ----

    def checkpoint(self) -> None:
        """Write the files of the envelopes the journal holds, fsync them, their directories
        and the index, then delete the journal segments: afterwards the store is the plain
        per-envelope layout (what builds before the journal read). Runs beside `put_many`,
        which it holds up for one file at a time."""
        with self._checkpointing:
            with self._mutex:
                self._journal.seal()
                sealed = list(self._journal.sealed)
                todo = list(self._in_journal.items())
                files, self._unsynced = self._unsynced, set()
            if not sealed:
                return
            try:
                for key, place in todo:
                    with self._mutex:
                        if self._in_journal.get(key) == place:  # not quarantined meanwhile
                            files.add(self._write_file(key, read_record(place)))
                for path in sorted(files):
                    _fsync_file(path)
                for directory in sorted({p.parent for p in files}):
                    fsync_dir(directory)
                with self._mutex:
                    if self._index.closed or not self._index.checkpoint():
                        self._unsynced |= files  # the index is busy: the journal stays
                        return
                    self._journal.remove(sealed)
                    for key, place in todo:
                        if self._in_journal.get(key) == place:
                            del self._in_journal[key]
            except (OSError, sqlite3.Error, StoreError) as exc:
                with self._mutex:
                    self._unsynced |= files
                log.error("store checkpoint failed (the journal is kept): %s", exc)

    def _checkpoint_when_due(self) -> None:
        """The checkpoint thread: after a second without puts, or when a segment is full."""
        while not self._closing:
            self._wake.wait(IDLE_CHECKPOINT)
            self._wake.clear()
            with self._mutex:
                due = bool(self._journal.sealed) or (bool(self._in_journal) and time.monotonic()
                                                     - self._last_put >= IDLE_CHECKPOINT)
            if due and not self._closing:
                self.checkpoint()

    # ---- own sequence numbers ----

    def own_seq(self) -> int:
        """The highest own seq ever stored with `put(own=True)` (0 if none)."""
        with self._mutex:
            return self._index.own_seq()

    def next_own_seq(self, own: str) -> int:
        """The seq for our next twin: above every own seq ever stored (the counter), every
        seq of `own` held now (a file re-indexed after a crash included) and every seq of
        `own` ever quarantined (a damaged file may have been sent before it was damaged)."""
        with self._mutex:
            nxt = max(self._index.own_seq(), self._index.last_seq(own),
                      self._index.last_quarantined_seq(own)) + 1
        if nxt > MAX_SEQ:
            raise StoreError(f"own sequence numbers exhausted (last {nxt - 1})")
        return nxt

    # ---- internals ----

    def _conn(self) -> sqlite3.Connection:
        """The index connection (for tests that inspect the rows)."""
        return self._index.conn

    def _path(self, sender: str, seq: int) -> Path:
        return self.layout.envelope(check_sender(sender), check_seq(seq))

    def _quarantine(self, sender: str, seq: int, reason: str, path: Path | None) -> None:
        """Move a bad file aside (first), then drop its row and record why (one commit)."""
        self._in_journal.pop((sender, seq), None)
        kept = None
        if path is not None and path.exists():
            kept = self.layout.quarantined(sender, seq, time.time_ns())
            os.replace(path, kept)
            fsync_dir(self.quarantine_dir)
            fsync_dir(path.parent)
        self._index.quarantine(sender, seq, reason, str(kept) if kept else None, time.time())
        self.recovery["quarantined"] += 1
        log.warning("QUARANTINED envelope %s#%d: %s", sender, seq, reason)

    def _recover(self) -> None:
        """Replay the journal, checkpoint it away, reconcile files and rows (`store.recovery`)."""
        self._unsynced |= replay_journal(self.layout, self._index, self._journal,
                                         self.recovery)
        self.checkpoint()
        reconcile_files(self.layout, self._index, self.recovery, self._quarantine)
        if any(self.recovery.values()):
            log.warning("store recovery in %s: %s", self.root, self.recovery)

    def _write_file(self, key: tuple[str, int], blob: bytes) -> Path:
        """An envelope's file, from its journal record (not fsynced: the caller syncs)."""
        path = self._path(*key)
        if path.parent not in self._dirs:
            mkdir_durable(path.parent, mode=0o700)
            self._dirs.add(path.parent)
        write_file(path, blob)
        return path


def _fsync_file(path: Path) -> None:
    """fsync one file; one moved away meanwhile (quarantine syncs its own move) is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _acquire_lock(layout: StateLayout) -> int:
    """An exclusive flock on the state directory's lock file, with our pid written in it."""
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise StoreError(f"state directory {layout.root} is in use by pid {holder}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _release_lock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
