"""What `Store.open` does after a crash: replay the journal, then reconcile files and index rows.

1. The journal (`store.journal`): every intact record of every segment left behind is made
   whole. Its index row present with the same checksum: the file is rewritten if it is
   missing or differs (`restored`). No row: the envelope is written and indexed
   (`reindexed`: a batch cut short by the crash was never acknowledged, but its records are
   complete and were verified by the caller, and keeping them closes what would otherwise be
   a hole in a sender's sequence), unless the sender's content is already held under another
   seq, or a row holds other content under that seq (then the record is stale). The files
   written here are fsynced, with the index, before the segments are deleted.
2. The files: stray temp files (`atomic.is_temp_name`, from builds that wrote through a temp
   file) are deleted; an envelope file without an index row is re-indexed after its checksum
   and metadata verify, or quarantined; an index row whose file is missing or of the wrong
   size is quarantined (the row leaves the index, so catch-up can fetch the envelope again).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

from twinnode.atomic import fsync_dir, is_temp_name, mkdir_durable
from twinnode.errors import StoreError
from twinnode.store.container import container_checksum, unpack_envelope
from twinnode.store.index import Index
from twinnode.store.journal import Journal, records
from twinnode.store.layout import StateLayout, envelope_seq
from twinnode.store.names import (
    SENDER_RE,
    check_sender,
    check_seq,
    check_token,
    normalize_digest,
)

log = logging.getLogger("twinnode.store")

Quarantine = Callable[[str, int, str, "Path | None"], None]
COUNTS = ("temp_removed", "reindexed", "duplicates_removed", "quarantined", "restored")


def replay_journal(layout: StateLayout, index: Index, journal: Journal,
                   counts: dict[str, int]) -> set[Path]:
    """Make every intact journal record whole on disk and in the index; the files written
    (not yet fsynced: the caller checkpoints before deleting the segments)."""
    written: set[Path] = set()
    for segment in list(journal.sealed):
        for meta, blob in records(segment.read_bytes(), str(segment)):
            try:
                key = (check_sender(meta.get("sender")), check_seq(meta.get("seq")))
                meta["digest"] = normalize_digest(meta.get("digest"))
                check_token("kind", meta.get("kind"))
                check_token("status", meta.get("status"))
            except StoreError as exc:
                log.warning("journal record in %s skipped: %s", segment, exc)
                continue
            path = layout.envelope(*key)
            mkdir_durable(path.parent, mode=0o700)
            facts = index.file_facts(*key)
            wanted = (len(blob), container_checksum(blob))
            if facts is None:
                if index.seq_of_digest(key[0], meta["digest"]) is not None:
                    continue
                write_file(path, blob)
                index.insert(meta, *wanted)
                counts["reindexed"] += 1
            elif facts == wanted and not _file_is(path, blob):
                write_file(path, blob)
                counts["restored"] += 1
            else:
                continue
            written.add(path)
    return written


def reconcile_files(layout: StateLayout, index: Index, counts: dict[str, int],
                    quarantine: Quarantine) -> None:
    """Delete temp files, re-index complete orphans, quarantine rows without a good file."""
    rows = index.sizes()
    seen: set[tuple[str, int]] = set()
    for sender_dir in sorted(layout.envelopes.iterdir()):
        if not sender_dir.is_dir() or not SENDER_RE.fullmatch(sender_dir.name):
            log.warning("ignoring unexpected entry %s in the store", sender_dir)
            continue
        for path in sorted(sender_dir.iterdir()):
            seq = envelope_seq(path.name)
            if is_temp_name(path.name):
                path.unlink(missing_ok=True)
                counts["temp_removed"] += 1
            elif seq is None:
                log.warning("ignoring unexpected file %s in the store", path)
            elif (key := (sender_dir.name, seq)) in rows:
                seen.add(key)
                if path.stat().st_size != rows[key]:
                    quarantine(*key, "file size differs from the index", path)
            else:
                _adopt(index, key, path, counts, quarantine)
    for key in sorted(rows.keys() - seen):
        quarantine(*key, "file missing", None)


def write_file(path: Path, blob: bytes) -> None:
    """Write an envelope file in place, without an fsync (the journal holds its bytes)."""
    with open(path, "wb", opener=_private) as fh:
        fh.write(blob)


def _private(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_CLOEXEC, 0o600)


def _file_is(path: Path, blob: bytes) -> bool:
    try:
        return path.read_bytes() == blob
    except FileNotFoundError:
        return False


def _adopt(index: Index, key: tuple[str, int], path: Path, counts: dict[str, int],
           quarantine: Quarantine) -> None:
    """Index a complete file whose row a crash lost, or quarantine it if it is bad."""
    blob = path.read_bytes()
    try:
        meta: dict[str, Any]
        meta, _ = unpack_envelope(blob, str(path))
        if (meta.get("sender"), meta.get("seq")) != key:
            raise StoreError(f"{path}: metadata names {meta.get('sender')}#{meta.get('seq')}")
        meta["digest"] = normalize_digest(meta.get("digest"))
        check_token("kind", meta.get("kind"))
        check_token("status", meta.get("status"))
    except StoreError as exc:
        quarantine(*key, f"unindexed file failed verification: {exc}", path)
        return
    if index.seq_of_digest(key[0], meta["digest"]) is not None:
        path.unlink()
        fsync_dir(path.parent)
        counts["duplicates_removed"] += 1
        return
    index.insert(meta, len(blob), container_checksum(blob))
    counts["reindexed"] += 1
