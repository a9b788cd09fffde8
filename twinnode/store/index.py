"""The store's SQLite index: its schema, its format migrations, and every query the store asks.

Tables (format 2, `PRAGMA user_version`):

    envelopes   one row per acknowledged envelope: sender, seq, digest, kind, k, release,
                status, received, size, checksum; PRIMARY KEY (sender, seq),
                UNIQUE (sender, digest)
    counters    name -> value; `own_seq`, the highest own seq ever stored
    quarantine  what left the index because its file was missing or damaged, and why

Format 1 (earlier builds) made the digest unique across all senders and had a `state` table;
`open_index` migrates it in one transaction (its rows satisfy the new constraint as they are).
An index of an unknown format is refused with a StoreError.

Durability: `PRAGMA synchronous=FULL` in WAL mode (store.py's docstring says why). `Index` is
not thread-safe: `Store` serialises every call under its lock.
"""
from __future__ import annotations

import logging
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from twinnode.errors import StoreError
from twinnode.store.names import normalize_digest

log = logging.getLogger("twinnode.store")

FORMAT_VERSION = 2
SYNCHRONOUS = "FULL"  # see store.py's docstring; a module constant so the benchmark can compare

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
_QUARANTINE_KEYS = ("sender", "seq", "digest", "reason", "file", "at")


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


class Index:
    """The queries over one open index connection; `open_index` makes it."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db: sqlite3.Connection | None = db
        self.path = path

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection (StoreError once closed)."""
        if self._db is None:
            raise StoreError(f"the store index {self.path} is closed")
        return self._db

    @property
    def closed(self) -> bool:
        return self._db is None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextmanager
    def transaction(self, synchronous: str = SYNCHRONOUS) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back if the body raises; the commit at
        `synchronous` (NORMAL: no fsync, for rows the journal already made durable)."""
        db = self.conn
        if synchronous != SYNCHRONOUS:
            db.execute(f"PRAGMA synchronous={synchronous}")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            if synchronous != SYNCHRONOUS:
                db.execute(f"PRAGMA synchronous={SYNCHRONOUS}")

    def checkpoint(self) -> bool:
        """Copy the WAL into the database and fsync both (`wal_checkpoint(FULL)`): every row
        committed so far is durable on its own; False if a reader kept it from finishing."""
        busy, _, _ = self.conn.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
        return int(busy) == 0

    # ---- writes ----

    def insert(self, meta: Mapping[str, Any], size: int, checksum: str, *,
               own: bool = False) -> None:
        """One envelope's row (and, for one of our own twins, the own-seq counter raised to
        its seq) in one committed transaction."""
        with self.transaction() as tx:
            tx.execute("INSERT INTO envelopes(sender, seq, digest, kind, k, release, status, "
                       "received, size, checksum) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (meta["sender"], meta["seq"], meta["digest"], meta["kind"],
                        meta.get("k"), meta.get("release"), meta["status"],
                        float(meta["received"]), size, checksum))
            if own:
                tx.execute("INSERT INTO counters(name, value) VALUES('own_seq', ?) ON "
                           "CONFLICT(name) DO UPDATE SET value=MAX(value, excluded.value)",
                           (meta["seq"],))

    def insert_many(self, rows: Sequence[tuple[Mapping[str, Any], int, str, bool]]) -> None:
        """The rows (metadata, size, checksum, own) of a batch the journal holds, in one
        commit without an fsync (`checkpoint` makes them durable on their own); the own-seq
        counter rises to the highest own seq among them."""
        own = max((m["seq"] for m, _, _, is_own in rows if is_own), default=None)
        with self.transaction("NORMAL") as tx:
            tx.executemany(
                "INSERT INTO envelopes(sender, seq, digest, kind, k, release, status, received, "
                "size, checksum) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(m["sender"], m["seq"], m["digest"], m["kind"], m.get("k"), m.get("release"),
                  m["status"], float(m["received"]), size, checksum)
                 for m, size, checksum, _ in rows])
            if own is not None:
                tx.execute("INSERT INTO counters(name, value) VALUES('own_seq', ?) ON "
                           "CONFLICT(name) DO UPDATE SET value=MAX(value, excluded.value)",
                           (own,))

    def set_status(self, sender: str, seq: int, status: str) -> bool:
        """Mark one row; False if there is none."""
        with self.transaction() as tx:
            cur = tx.execute("UPDATE envelopes SET status=? WHERE sender=? AND seq=?",
                             (status, sender, seq))
            return cur.rowcount > 0

    def quarantine(self, sender: str, seq: int, reason: str, file: str | None,
                   at: float) -> None:
        """Drop the row of (sender, seq) and record why, in one commit."""
        with self.transaction() as tx:
            row = tx.execute("SELECT digest FROM envelopes WHERE sender=? AND seq=?",
                             (sender, seq)).fetchone()
            tx.execute("DELETE FROM envelopes WHERE sender=? AND seq=?", (sender, seq))
            tx.execute("INSERT INTO quarantine(sender, seq, digest, reason, file, at) "
                       "VALUES(?, ?, ?, ?, ?, ?)",
                       (sender, seq, row[0] if row else None, reason, file, at))

    # ---- reads ----

    def known(self, sender: str, seq: int, digest: str) -> bool:
        """Whether (sender, seq) or (sender, digest) has a row."""
        return self.conn.execute("SELECT 1 FROM envelopes WHERE sender=? AND (seq=? OR "
                                 "digest=?)", (sender, seq, digest)).fetchone() is not None

    def has(self, sender: str, seq: int) -> bool:
        return self.conn.execute("SELECT 1 FROM envelopes WHERE sender=? AND seq=?",
                                 (sender, seq)).fetchone() is not None

    def seq_of_digest(self, sender: str, digest: bytes | str) -> int | None:
        row = self.conn.execute("SELECT seq FROM envelopes WHERE sender=? AND digest=?",
                                (sender, normalize_digest(digest))).fetchone()
        return None if row is None else int(row[0])

    def entry(self, sender: str, seq: int) -> EntryMeta | None:
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM envelopes WHERE sender=? AND seq=?",
                                (sender, seq)).fetchone()
        return EntryMeta(*row) if row else None

    def file_facts(self, sender: str, seq: int) -> tuple[int, str] | None:
        """(size, checksum) the file of (sender, seq) must have, or None without a row."""
        row = self.conn.execute("SELECT size, checksum FROM envelopes WHERE sender=? AND "
                                "seq=?", (sender, seq)).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def entries(self, sender: str | None = None,
                status: str | None = None) -> list[EntryMeta]:
        """Rows by sender then seq, optionally for one sender and/or status."""
        where, params = _filters(sender=sender, status=status)
        rows = self.conn.execute(f"SELECT {_COLUMNS} FROM envelopes{where} "
                                 f"ORDER BY sender, seq", params).fetchall()
        return [EntryMeta(*r) for r in rows]

    def latest_releases(self, exclude: str | None = None) -> list[EntryMeta]:
        """The twins of each sender's latest release (the release of its highest-seq twin), by
        sender then seq; `exclude` leaves one sender (ourselves) out."""
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM envelopes AS e WHERE e.kind='twin' AND e.sender IS NOT ? "
            "AND e.release IS (SELECT l.release FROM envelopes AS l WHERE l.sender=e.sender "
            "AND l.kind='twin' ORDER BY l.seq DESC LIMIT 1) ORDER BY e.sender, e.seq",
            (exclude,)).fetchall()
        return [EntryMeta(*r) for r in rows]

    def counts(self, status: str | None = None) -> dict[str, int]:
        where, params = _filters(status=status)
        rows = self.conn.execute(f"SELECT sender, COUNT(*) FROM envelopes{where} "
                                 f"GROUP BY sender ORDER BY sender", params).fetchall()
        return {str(s): int(n) for s, n in rows}

    def last_seq(self, sender: str) -> int:
        row = self.conn.execute("SELECT MAX(seq) FROM envelopes WHERE sender=?",
                                (sender,)).fetchone()
        return int(row[0] or 0)

    def seqs_by_sender(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for sender, seq in self.conn.execute("SELECT sender, seq FROM envelopes "
                                             "ORDER BY sender, seq"):
            out.setdefault(sender, []).append(seq)
        return out

    def seqs_above(self, sender: str, watermark: int) -> Iterator[int]:
        """`sender`'s seqs above `watermark`, ascending (a cursor: consume it under the lock)."""
        rows = self.conn.execute("SELECT seq FROM envelopes WHERE sender=? AND seq>? "
                                 "ORDER BY seq", (sender, watermark))
        return (int(r[0]) for r in rows)

    def sizes(self) -> dict[tuple[str, int], int]:
        """(sender, seq) -> file size, of every row (for recovery)."""
        return {(s, q): size for s, q, size in
                self.conn.execute("SELECT sender, seq, size FROM envelopes")}

    def quarantined(self) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT sender, seq, digest, reason, file, at FROM "
                                 "quarantine ORDER BY id").fetchall()
        return [dict(zip(_QUARANTINE_KEYS, r)) for r in rows]

    def own_seq(self) -> int:
        row = self.conn.execute("SELECT value FROM counters WHERE name='own_seq'").fetchone()
        return int(row[0]) if row else 0

    def last_quarantined_seq(self, sender: str) -> int:
        row = self.conn.execute("SELECT MAX(seq) FROM quarantine WHERE sender=?",
                                (sender,)).fetchone()
        return int(row[0] or 0)


def open_index(path: Path) -> Index:
    """The index at `path` in WAL mode with the chosen durability, its format ensured."""
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
        return Index(db, path)
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


def _filters(**equal: Any) -> tuple[str, tuple[Any, ...]]:
    used = {k: v for k, v in equal.items() if v is not None}
    if not used:
        return "", ()
    return " WHERE " + " AND ".join(f"{k}=?" for k in used), tuple(used.values())
