"""The node's durable store: envelope files, a SQLite (WAL) index, own sequence numbers, state.

Layout under the state directory (one node process owns it, see `Store.open`):

    twinnode.lock                             flock held by the owner; its pid inside
    store/index.sqlite3                       the index (WAL mode); a row is the acknowledgement
    store/envelopes/<sender>/<seq:010d>.env   the frames exactly as received (`storefile` format)
    store/quarantine/                         files that failed a check, kept for inspection

Write order in `put`: the container file first (`atomic.write_bytes_atomic`: temp file,
fsync, rename, fsync directory), then its index row in one committed transaction; `put`
returns only after both. So after a SIGKILL at any point every envelope whose `put` returned
is present and intact.

Uniqueness: one envelope per (sender, seq), and one per (sender, payload digest): a sender's
content stored twice under two seqs is a duplicate, while two senders may hold the same
payload (judging content across senders would let one peer censor another by re-signing its
twin and delivering it first).

Index format 2 (`PRAGMA user_version`): format 1 (earlier builds) made the digest unique across
all senders and had a `state` table; `open` migrates it in one transaction (its rows satisfy
the new constraint as they are). An index of an unknown format is refused with a StoreError.

Recovery in `open`:
- stray temp files (`atomic.is_temp_name`, a crash before rename) are deleted: never read;
- an envelope file without an index row (a crash between rename and commit: the `put` never
  returned) is *re-indexed* after its checksum and metadata verify. It is complete (it was
  fsynced before the rename), it was verified by the caller before `put`, and keeping it
  closes what would otherwise be a permanent hole in a sender's (or our own) sequence;
  a file that fails verification is moved to quarantine instead;
- an index row whose file is missing or of the wrong size is quarantined: the row leaves the
  index (so catch-up can fetch the envelope again) and is recorded in `quarantined()`.
  `frames` checks size and SHA-256 on every read and quarantines a damaged file the same way,
  raising StoreError: a damaged file is never read as a twin.

Own sequence numbers: `put(..., own=True)` raises the own-seq counter to the twin's seq in
the same commit as its index row, and `next_own_seq(name)` is one above that counter, every
seq of ours stored now (a re-indexed orphan included) and every seq of ours quarantined. A seq is taken only by storing a
twin, so a publish that is cut short or refused leaves no gap; a twin signed but never
stored never left the process, so signing another under its seq is no equivocation.

Durability: `PRAGMA synchronous=FULL`. In WAL mode NORMAL already survives a process crash
(SIGKILL), but the last commits may roll back after a power loss or OS crash; FULL fsyncs the
WAL on every commit, so an own twin that was acknowledged (and then sent) is never forgotten
and its seq never handed out again (two different signed messages under one seq would be
equivocation), and an acknowledgement means the same thing after any crash. The price is one
fsync per commit on top of the two a `put` already pays for its file: scripts/bench_store.py
measured 6.5 ms vs 2.7 ms per 20 kB put on the 2-core dev VM, i.e. 0.65 s for a release of
K = 100 twins.

The store does not parse wire messages: callers pass sender, seq, digest and metadata.
Methods are thread-safe (one lock), so a node may call them through `asyncio.to_thread`.
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from twinnode.atomic import fsync_dir, is_temp_name, mkdir_durable, write_bytes_atomic
from twinnode.errors import StoreError
from twinnode.store.container import container_checksum, pack_envelope, unpack_envelope
from twinnode.trust.seqset import MAX_SEQ, Holding

log = logging.getLogger("twinnode.store")

FORMAT_VERSION = 2
SYNCHRONOUS = "FULL"  # see the module docstring; a module constant so the benchmark can compare
LOCK_NAME = "twinnode.lock"
_SENDER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")
_TOKEN_RE = re.compile(r"[a-z][a-z0-9_\-]{0,31}")
_HEX_RE = re.compile(r"[0-9A-Fa-f]+")
_FILE_RE = re.compile(r"(\d{10})\.env")

_ENVELOPES = """
CREATE TABLE envelopes (
    sender TEXT NOT NULL, seq INTEGER NOT NULL, digest TEXT NOT NULL,
    kind TEXT NOT NULL, k INTEGER, release TEXT, status TEXT NOT NULL,
    received REAL NOT NULL, size INTEGER NOT NULL, checksum TEXT NOT NULL,
    PRIMARY KEY (sender, seq), UNIQUE (sender, digest));
"""
_SCHEMA = _ENVELOPES + """
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE quarantine (
    id INTEGER PRIMARY KEY, sender TEXT NOT NULL, seq INTEGER NOT NULL, digest TEXT,
    reason TEXT NOT NULL, file TEXT, at REAL NOT NULL);
"""
# format 1 -> 2: the digest is unique per sender, not across senders; the unused state table goes
_MIGRATE_1 = ("ALTER TABLE envelopes RENAME TO envelopes_v1;" + _ENVELOPES +
              "INSERT INTO envelopes SELECT sender, seq, digest, kind, k, release, status, "
              "received, size, checksum FROM envelopes_v1; DROP TABLE envelopes_v1; "
              "DROP TABLE IF EXISTS state;")
_COLUMNS = "sender, seq, digest, kind, k, release, status, received, size"


@dataclass(frozen=True)
class EntryMeta:
    """What the index knows about one stored envelope."""

    sender: str
    seq: int
    digest: str
    kind: str
    k: int | None
    release: str | None
    status: str
    received: float
    size: int


# ---- pure helpers: names, sequence summaries, catch-up -------------------------------------

def check_sender(sender: Any) -> str:
    """A sender name safe as a directory name (StoreError otherwise)."""
    if not isinstance(sender, str) or not _SENDER_RE.fullmatch(sender):
        raise StoreError(f"sender name {sender!r} cannot be stored (letters, digits, _ . -; "
                         f"at most 64; not starting with '.' or '-')")
    return sender


def check_seq(seq: Any) -> int:
    """A sequence number in 1..MAX_SEQ (StoreError otherwise)."""
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_SEQ:
        raise StoreError(f"sequence number {seq!r} outside 1..{MAX_SEQ}")
    return seq


def normalize_digest(digest: bytes | bytearray | memoryview | str) -> str:
    """Digests are indexed as text: bytes become lowercase hex, hex text is lowercased."""
    if isinstance(digest, (bytes, bytearray, memoryview)):
        text = bytes(digest).hex()
    elif isinstance(digest, str):
        text = digest.lower() if _HEX_RE.fullmatch(digest) else digest
    else:
        raise StoreError(f"digest must be bytes or str, not {type(digest).__name__}")
    if not 0 < len(text) <= 256 or not text.isprintable():
        raise StoreError(f"digest {text[:40]!r} must be 1..256 printable characters")
    return text


def _check_token(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise StoreError(f"{name} {value!r} must be a short lowercase word")
    return value


# ---- the store ------------------------------------------------------------------------------

class Store:
    """One node's durable store; open with `Store.open(state_dir)`, one owner at a time."""

    def __init__(self, state_dir: Path, lock_fd: int, db: sqlite3.Connection) -> None:
        self.state_dir = state_dir
        self.root = state_dir / "store"
        self.envelopes_dir = self.root / "envelopes"
        self.quarantine_dir = self.root / "quarantine"
        self.recovery: dict[str, int] = {"temp_removed": 0, "reindexed": 0,
                                         "duplicates_removed": 0, "quarantined": 0}
        self._lock_fd: int | None = lock_fd
        self._db: sqlite3.Connection | None = db
        self._mutex = threading.RLock()

    @classmethod
    def open(cls, state_dir: str | Path) -> "Store":
        """Lock `state_dir`, open (or create) the index and recover from any earlier crash."""
        state_dir = Path(state_dir)
        try:
            mkdir_durable(state_dir, mode=0o700)
            lock_fd = _acquire_lock(state_dir)
        except OSError as exc:
            raise StoreError(f"cannot use state directory {state_dir}: {exc}") from None
        db = None
        try:
            root = state_dir / "store"
            for d in (root, root / "envelopes", root / "quarantine"):
                mkdir_durable(d, mode=0o700)
            db = _open_index(root / "index.sqlite3")
            store = cls(state_dir, lock_fd, db)
            try:
                store._recover()
            except OSError as exc:
                raise StoreError(f"store recovery in {root} failed: {exc}") from None
            return store
        except BaseException:
            if db is not None:
                db.close()
            _release_lock(lock_fd)
            raise

    def close(self) -> None:
        """Close the index and release the lock; safe to call twice."""
        with self._mutex:
            if self._db is not None:
                self._db.close()
                self._db = None
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
        """Store an envelope durably; True once acknowledged, False if (sender, seq) or
        (sender, digest) is already stored (then nothing is written). `own`: one of our own
        twins, so the own-seq counter rises to `seq` in the same commit."""
        meta = {"sender": check_sender(sender), "seq": check_seq(seq),
                "digest": normalize_digest(digest), "kind": _check_token("kind", kind),
                "k": k, "release": release, "status": _check_token("status", status),
                "received": time.time()}
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
            raise StoreError(f"twin index k={k!r} must be a non-negative integer or None")
        if release is not None and (not isinstance(release, str) or len(release) > 256):
            raise StoreError(f"release {release!r} must be a string of at most 256 characters")
        if not isinstance(frames, (list, tuple)) or not all(
                isinstance(f, (bytes, bytearray, memoryview)) for f in frames):
            raise StoreError("frames must be a list of bytes")
        blob = pack_envelope(meta, frames)
        with self._mutex:
            db = self._conn()
            if self._known(db, sender, seq, meta["digest"]):
                return False
            path = self._path(sender, seq)
            try:
                write_bytes_atomic(path, blob, dir_mode=0o700)
            except OSError as exc:
                raise StoreError(f"could not write envelope {sender}#{seq}: {exc}") from None
            try:
                with self._tx() as tx:
                    _insert(tx, meta, len(blob), container_checksum(blob))
                    if own:
                        _raise_own_seq(tx, seq)
            except sqlite3.Error as exc:
                path.unlink(missing_ok=True)  # never acknowledged
                raise StoreError(f"could not index envelope {sender}#{seq}: {exc}") from exc
        return True

    def has(self, sender: str, seq: int) -> bool:
        """Whether (sender, seq) is stored."""
        with self._mutex:
            return self._conn().execute("SELECT 1 FROM envelopes WHERE sender=? AND seq=?",
                                        (sender, seq)).fetchone() is not None

    def has_digest(self, sender: str, digest: bytes | str) -> int | None:
        """The seq under which `sender`'s envelope with this content digest is stored, or None."""
        with self._mutex:
            row = self._conn().execute("SELECT seq FROM envelopes WHERE sender=? AND digest=?",
                                       (sender, normalize_digest(digest))).fetchone()
        return None if row is None else int(row[0])

    def get(self, sender: str, seq: int) -> EntryMeta | None:
        """The index entry of (sender, seq), or None."""
        with self._mutex:
            row = self._conn().execute(f"SELECT {_COLUMNS} FROM envelopes WHERE sender=? "
                                       f"AND seq=?", (sender, seq)).fetchone()
        return EntryMeta(*row) if row else None

    def frames(self, sender: str, seq: int) -> list[bytes]:
        """The envelope's frames exactly as received, after checking size and checksum."""
        with self._mutex:
            row = self._conn().execute("SELECT size, checksum FROM envelopes WHERE sender=? "
                                       "AND seq=?", (sender, seq)).fetchone()
            if row is None:
                raise StoreError(f"no envelope {sender}#{seq} in the store")
            path = self._path(sender, seq)
            try:
                blob = path.read_bytes()
                if len(blob) != row[0] or container_checksum(blob) != row[1]:
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
        where, params = _filters(sender=sender, status=status)
        with self._mutex:
            rows = self._conn().execute(f"SELECT {_COLUMNS} FROM envelopes{where} "
                                        f"ORDER BY sender, seq", params).fetchall()
        return [EntryMeta(*r) for r in rows]

    def set_status(self, sender: str, seq: int, status: str) -> None:
        """Mark an envelope (e.g. "flagged", "excluded" by screening); never deletes it."""
        _check_token("status", status)
        with self._mutex, self._tx() as tx:
            cur = tx.execute("UPDATE envelopes SET status=? WHERE sender=? AND seq=?",
                             (status, sender, seq))
            if cur.rowcount == 0:
                raise StoreError(f"no envelope {sender}#{seq} in the store")

    def counts(self, status: str | None = None) -> dict[str, int]:
        """Envelopes held per sender (optionally only those with `status`)."""
        where, params = _filters(status=status)
        with self._mutex:
            rows = self._conn().execute(f"SELECT sender, COUNT(*) FROM envelopes{where} "
                                        f"GROUP BY sender ORDER BY sender", params).fetchall()
        return dict(rows)

    def last_seq(self, sender: str) -> int:
        """The highest seq stored from `sender` (0 if none)."""
        with self._mutex:
            row = self._conn().execute("SELECT MAX(seq) FROM envelopes WHERE sender=?",
                                       (sender,)).fetchone()
        return int(row[0] or 0)

    def holdings(self) -> dict[str, Holding]:
        """Per sender, what this store can serve."""
        return {s: Holding.of(seqs) for s, seqs in self._seqs_by_sender().items()}

    def missing(self, sender: str, have: Holding | None, limit: int | None = None) -> list[int]:
        """Seqs of `sender` held here that a requester holding `have` lacks, ascending (the
        envelopes a catch-up reply sends; `have` was checked by the wire)."""
        have = have if have is not None else Holding()
        if not isinstance(have, Holding):
            raise StoreError(f"catch-up summary must be a Holding, not {type(have).__name__}")
        with self._mutex:
            rows = self._conn().execute("SELECT seq FROM envelopes WHERE sender=? AND seq>? "
                                        "ORDER BY seq", (sender, have.watermark))
            return have.lacking((r[0] for r in rows), limit)

    def quarantined(self) -> list[dict[str, Any]]:
        """Records of quarantined envelopes (sender, seq, digest, reason, file, at)."""
        with self._mutex:
            rows = self._conn().execute("SELECT sender, seq, digest, reason, file, at FROM "
                                        "quarantine ORDER BY id").fetchall()
        keys = ("sender", "seq", "digest", "reason", "file", "at")
        return [dict(zip(keys, r)) for r in rows]

    # ---- own sequence numbers and small state ----

    def own_seq(self) -> int:
        """The highest own seq ever stored with `put(own=True)` (0 if none)."""
        with self._mutex:
            row = self._conn().execute(
                "SELECT value FROM counters WHERE name='own_seq'").fetchone()
        return int(row[0]) if row else 0

    def next_own_seq(self, own: str) -> int:
        """The seq for our next twin: above every own seq ever stored (the counter), every
        seq of `own` held now (a file re-indexed after a crash included) and every seq of
        `own` ever quarantined (a damaged file may have been sent before it was damaged)."""
        with self._mutex:
            row = self._conn().execute("SELECT MAX(seq) FROM quarantine WHERE sender=?",
                                       (own,)).fetchone()
        nxt = max(self.own_seq(), self.last_seq(own), int(row[0] or 0)) + 1
        if nxt > MAX_SEQ:
            raise StoreError(f"own sequence numbers exhausted (last {nxt - 1})")
        return nxt

    # ---- internals ----

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"the store at {self.root} is closed")
        return self._db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _path(self, sender: str, seq: int) -> Path:
        return self.envelopes_dir / check_sender(sender) / f"{check_seq(seq):010d}.env"

    @staticmethod
    def _known(db: sqlite3.Connection, sender: str, seq: int, digest: str) -> bool:
        return db.execute("SELECT 1 FROM envelopes WHERE sender=? AND (seq=? OR digest=?)",
                          (sender, seq, digest)).fetchone() is not None

    def _seqs_by_sender(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        with self._mutex:
            for sender, seq in self._conn().execute("SELECT sender, seq FROM envelopes "
                                                    "ORDER BY sender, seq"):
                out.setdefault(sender, []).append(seq)
        return out

    def _quarantine(self, sender: str, seq: int, reason: str, path: Path | None) -> None:
        """Move a bad file aside (first), then drop its row and record why (one commit)."""
        kept = None
        if path is not None and path.exists():
            kept = self.quarantine_dir / f"{sender}.{seq:010d}.{time.time_ns()}.env"
            os.replace(path, kept)
            fsync_dir(self.quarantine_dir)
            fsync_dir(path.parent)
        with self._tx() as tx:
            row = tx.execute("SELECT digest FROM envelopes WHERE sender=? AND seq=?",
                             (sender, seq)).fetchone()
            tx.execute("DELETE FROM envelopes WHERE sender=? AND seq=?", (sender, seq))
            tx.execute("INSERT INTO quarantine(sender, seq, digest, reason, file, at) "
                       "VALUES(?, ?, ?, ?, ?, ?)", (sender, seq, row[0] if row else None,
                                                    reason, str(kept) if kept else None,
                                                    time.time()))
        self.recovery["quarantined"] += 1
        log.warning("QUARANTINED envelope %s#%d: %s", sender, seq, reason)

    def _recover(self) -> None:
        """Delete temp files, re-index complete orphans, quarantine rows without a good file."""
        db = self._conn()
        rows = {(s, q): size for s, q, size in db.execute("SELECT sender, seq, size "
                                                          "FROM envelopes")}
        seen: set[tuple[str, int]] = set()
        for sender_dir in sorted(self.envelopes_dir.iterdir()):
            if not sender_dir.is_dir() or not _SENDER_RE.fullmatch(sender_dir.name):
                log.warning("ignoring unexpected entry %s in the store", sender_dir)
                continue
            for path in sorted(sender_dir.iterdir()):
                match = _FILE_RE.fullmatch(path.name)
                if is_temp_name(path.name):
                    path.unlink(missing_ok=True)
                    self.recovery["temp_removed"] += 1
                elif match is None:
                    log.warning("ignoring unexpected file %s in the store", path)
                elif (key := (sender_dir.name, int(match[1]))) in rows:
                    seen.add(key)
                    if path.stat().st_size != rows[key]:
                        self._quarantine(*key, "file size differs from the index", path)
                else:
                    self._adopt(key, path)
        for key in sorted(rows.keys() - seen):
            self._quarantine(*key, "file missing", None)
        if any(self.recovery.values()):
            log.warning("store recovery in %s: %s", self.root, self.recovery)

    def _adopt(self, key: tuple[str, int], path: Path) -> None:
        """Index a complete file whose row a crash lost, or quarantine it if it is bad."""
        blob = path.read_bytes()
        try:
            meta, _ = unpack_envelope(blob, str(path))
            if (meta.get("sender"), meta.get("seq")) != key:
                raise StoreError(f"{path}: metadata names {meta.get('sender')}#"
                                 f"{meta.get('seq')}")
            meta["digest"] = normalize_digest(meta.get("digest"))
            _check_token("kind", meta.get("kind"))
            _check_token("status", meta.get("status"))
        except StoreError as exc:
            self._quarantine(*key, f"unindexed file failed verification: {exc}", path)
            return
        if self.has_digest(key[0], meta["digest"]) is not None:
            path.unlink()
            fsync_dir(path.parent)
            self.recovery["duplicates_removed"] += 1
            return
        with self._tx() as tx:
            _insert(tx, meta, len(blob), container_checksum(blob))
        self.recovery["reindexed"] += 1


def _raise_own_seq(db: sqlite3.Connection, seq: int) -> None:
    db.execute("INSERT INTO counters(name, value) VALUES('own_seq', ?) ON CONFLICT(name) "
               "DO UPDATE SET value=MAX(value, excluded.value)", (seq,))


def _insert(db: sqlite3.Connection, meta: Mapping[str, Any], size: int, checksum: str) -> None:
    db.execute("INSERT INTO envelopes(sender, seq, digest, kind, k, release, status, received, "
               "size, checksum) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (meta["sender"], meta["seq"], meta["digest"], meta["kind"], meta.get("k"),
                meta.get("release"), meta["status"], float(meta["received"]), size, checksum))


def _filters(**equal: Any) -> tuple[str, tuple[Any, ...]]:
    used = {k: v for k, v in equal.items() if v is not None}
    if not used:
        return "", ()
    return " WHERE " + " AND ".join(f"{k}=?" for k in used), tuple(used.values())


def _open_index(path: Path) -> sqlite3.Connection:
    """The index connection in WAL mode with the chosen durability, schema ensured."""
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the store index {path}: {exc}") from None
    try:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"store index {path} cannot use WAL mode (got {mode})")
        db.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
        _ensure_format(db, path)
        return db
    except sqlite3.Error as exc:
        db.close()
        raise StoreError(f"store index {path} is unreadable: {exc}") from None
    except BaseException:
        db.close()
        raise


def _ensure_format(db: sqlite3.Connection, path: Path) -> None:
    """Create a new index, migrate a format-1 one, or refuse one this build cannot read."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if version == FORMAT_VERSION:
        return
    if version == 0 and not tables:
        script = _SCHEMA
    elif version == 1 and "envelopes" in tables:
        script = _MIGRATE_1
        log.warning("migrating the store index %s from format 1 to %d (a sender's content "
                    "digest is unique per sender)", path, FORMAT_VERSION)
    else:
        raise StoreError(f"store index {path} has format {version}, which this twinnode "
                         f"(format {FORMAT_VERSION}) cannot read; use a new state directory")
    db.executescript("BEGIN IMMEDIATE;" + script + f"PRAGMA user_version={FORMAT_VERSION}; COMMIT;")


def _acquire_lock(state_dir: Path) -> int:
    """An exclusive flock on the state directory's lock file, with our pid written in it."""
    path = state_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise StoreError(f"state directory {state_dir} is in use by pid {holder}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _release_lock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
