"""The state directory's layout: every path a node keeps under its state directory, in one place.

    <state>/
      twinnode.lock                           flock held by the owning process; its pid inside
      control.sock                            the control socket (0600)
      store/index.sqlite3                     the store's index (SQLite, WAL)
      store/envelopes/<sender>/<seq:010d>.env one stored envelope (`store.container` format)
      store/quarantine/                       files that failed a check, kept for inspection
      store/journal/<n:010d>.tnj              group-commit journal segments (`store.journal`)
      ledger.json, .ledger.lock               the privacy ledger and its flock
      posterior.npz                           the latest trained posterior
      releases/<id>-<time>.json               the receipt of each release this node drew
      reports/<kind>-<UTC time>.json          screening and analysis reports

Node logs go to stderr (the lab's harness keeps them beside the state directory, not in it).
These names are the on-disk format: changing one orphans what an existing node keeps. Paths
only: nothing here touches the disk, so the CLI may import it without the store's weight.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = "twinnode.lock"
SOCKET_NAME = "control.sock"
STORE_DIR = "store"
INDEX_NAME = "index.sqlite3"
ENVELOPES_DIR = "envelopes"
QUARANTINE_DIR = "quarantine"
JOURNAL_DIR = "journal"
LEDGER_NAME = "ledger.json"
LEDGER_LOCK_NAME = ".ledger.lock"
POSTERIOR_NAME = "posterior.npz"
RECEIPTS_DIR = "releases"
REPORTS_DIR = "reports"
_ENVELOPE_RE = re.compile(r"(\d{10})\.env")


@dataclass(frozen=True)
class StateLayout:
    """The paths under one state directory; `StateLayout.of(state_dir)` builds it."""

    root: Path

    @classmethod
    def of(cls, state_dir: str | Path) -> "StateLayout":
        return cls(Path(state_dir))

    @property
    def lock(self) -> Path:
        return self.root / LOCK_NAME

    @property
    def control_socket(self) -> Path:
        return self.root / SOCKET_NAME

    @property
    def store(self) -> Path:
        return self.root / STORE_DIR

    @property
    def index(self) -> Path:
        return self.store / INDEX_NAME

    @property
    def envelopes(self) -> Path:
        return self.store / ENVELOPES_DIR

    @property
    def quarantine(self) -> Path:
        return self.store / QUARANTINE_DIR

    @property
    def journal(self) -> Path:
        return self.store / JOURNAL_DIR

    @property
    def ledger(self) -> Path:
        return self.root / LEDGER_NAME

    @property
    def ledger_lock(self) -> Path:
        return self.root / LEDGER_LOCK_NAME

    @property
    def posterior(self) -> Path:
        return self.root / POSTERIOR_NAME

    @property
    def receipts(self) -> Path:
        return self.root / RECEIPTS_DIR

    @property
    def reports(self) -> Path:
        return self.root / REPORTS_DIR

    def envelope(self, sender: str, seq: int) -> Path:
        """The file of (sender, seq); the caller has checked both (`store.names`)."""
        return self.envelopes / sender / envelope_name(seq)

    def quarantined(self, sender: str, seq: int, stamp: int) -> Path:
        """Where a bad file of (sender, seq) is kept, `stamp` (ns) telling repeats apart."""
        return self.quarantine / f"{sender}.{seq:010d}.{stamp}.env"


def envelope_name(seq: int) -> str:
    """The file name of a stored envelope: its seq, zero-padded to 10 digits."""
    return f"{seq:010d}.env"


def envelope_seq(name: str) -> int | None:
    """The seq an envelope file name stands for, or None for any other name."""
    match = _ENVELOPE_RE.fullmatch(name)
    return int(match[1]) if match else None
