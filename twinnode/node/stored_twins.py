"""Peers' twins for the analyses, read back from the store: each sender's latest publication,
each twin's payload decoded once per process (while the bounded cache holds it).

Which twins: `Store.latest_releases` (a query over what arrival indexed: sender, seq, release,
k) gives the twins of each peer's latest release; of those, the analysis takes one
publication, the draw of the highest seq (a release may be re-sampled: its draws share the
release id and differ in their signed `created` time).

Decoded once: a twin is verified and decoded when it arrives, stored byte for byte, and never
changes under its (sender, seq, digest). The first analysis that needs it reads it back (the
store checks the file's size and SHA-256), opens it with a `Verifier` (signature, digest,
schema, and the decode with its range checks) and keeps the decoded columns in an LRU cache,
in the compact dtypes the wire carries them in (u1/u2/u4, f4; bits as u1); later analyses
reuse them. CACHE_BYTES bounds it, far above one analysis's working set (the peers' latest K
twins).

Why a cache of compact columns, and not of the decoded arrays, nor no cache: measured on
randhie-sized twins (K = 100 twins of 3,230 rows from 4 peers, 28 MB on disk), reading and
decoding all 400 took 0.53 s a time; the decoded int64/float64 arrays take 103 MB, the compact
ones 32 MB, and widening the compact ones back to the exact arrays the decode gives takes
0.12 s. A node lives long and analyses now and then, so it keeps a third of the memory and
pays the widening; every analysis gets fresh arrays, as before, so nothing downstream can
alter the cache. The first read verifies again rather than trusting the file: the signature
check costs microseconds a twin, and it keeps the analysis's input tied to the peer's key, not
to our disk. Arrival does not fill the cache: a node relays far more twins than it analyses
(old releases, its own), and those would only take memory.

`decoded` counts the payloads decoded here over the process's lifetime (the node reports it
as the `twins_decoded` counter), `reused` the twins served from the cache.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from twinnode.errors import StoreError, WireError
from twinnode.eventlog import event
from twinnode.schema import Schema
from twinnode.store.index import EntryMeta
from twinnode.store.store import Store
from twinnode.trust.identity import TrustStore
from twinnode.trust.replay import ReplayGuard
from twinnode.twins import Provenance, Twin
from twinnode.wire import Verifier, WireLimits
from twinnode.wire.columnar import column_dtype

log = logging.getLogger("twinnode.node")

CACHE_BYTES = 256 << 20  # compact columns kept: ~3,000 randhie-sized twins
_COMPACT: dict[str, np.dtype[Any]] = {  # wire dtype -> the dtype its values are kept in
    "bits": np.dtype("u1"), "u1": np.dtype("u1"), "u2": np.dtype("<u2"), "u4": np.dtype("<u4"),
    "f4": np.dtype("<f4")}

Key = tuple[str, int, str]  # sender, seq, digest


@dataclass(frozen=True)
class _Compact:
    """One decoded twin: its provenance, its columns in compact dtypes, the decoded dtypes."""

    provenance: Provenance
    columns: Mapping[str, np.ndarray]
    dtypes: Mapping[str, np.dtype[Any]]
    nbytes: int

    def twin(self) -> Twin:
        """The twin exactly as the wire's decode gave it (fresh arrays)."""
        return Twin(self.provenance, {name: col.astype(self.dtypes[name])
                                      for name, col in self.columns.items()})


class StoredTwins:
    """The analysis's reader of stored twins, with the decoded-once cache (thread-safe)."""

    def __init__(self, trust: TrustStore, schema: Schema, limits: WireLimits = WireLimits(),
                 max_bytes: int = CACHE_BYTES) -> None:
        self.schema = schema
        self.max_bytes = max_bytes
        self.decoded = 0
        self.reused = 0
        self.trust = trust
        self._verifier = Verifier(trust, schema, ReplayGuard(), limits, retired=True)
        self._cache: OrderedDict[Key, _Compact] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def latest(self, store: Store, own: str) -> dict[str, list[Twin]]:
        """Each pinned peer's latest publication (not `own`'s), twins in seq order; a twin that
        fails its check is logged (`store.reverify_failed`) and left out, and so are the stored
        twins of a removed peer (kept in the store, not analysed). Blocking: run it in a
        thread."""
        by_sender: dict[str, list[Twin]] = {}
        with self._lock:
            for entry in store.latest_releases(exclude=own):
                if entry.sender not in self.trust:
                    continue
                twin = self._twin(store, entry)
                if twin is not None:
                    by_sender.setdefault(entry.sender, []).append(twin)
        peers: dict[str, list[Twin]] = {}
        for sender, twins in by_sender.items():
            created = twins[-1].provenance.created  # the draw of the highest seq
            peers[sender] = [t for t in twins if t.provenance.created == created]
        return peers

    def _twin(self, store: Store, entry: EntryMeta) -> Twin | None:
        key = (entry.sender, entry.seq, entry.digest)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.reused += 1
            return cached.twin()
        try:
            twin = self._verifier.open(store.frames(entry.sender, entry.seq), replay=False).twin
        except (WireError, StoreError) as exc:
            event(log, "store.reverify_failed", str(exc), level=logging.WARNING,
                  peer=entry.sender, seq=entry.seq)
            return None
        self.decoded += 1
        self._keep(key, self._compact(twin))
        return twin

    def _compact(self, twin: Twin) -> _Compact:
        columns: dict[str, np.ndarray] = {}
        dtypes: dict[str, np.dtype[Any]] = {}
        for col in self.schema.columns:
            wide = np.asarray(twin.arrays[col.name])
            columns[col.name] = wide.astype(_COMPACT[column_dtype(col)])
            dtypes[col.name] = wide.dtype
        return _Compact(twin.provenance, columns, dtypes,
                        sum(c.nbytes for c in columns.values()))

    def _keep(self, key: Key, item: _Compact) -> None:
        self._cache[key] = item
        self._bytes += item.nbytes
        while self._bytes > self.max_bytes and self._cache:
            _, old = self._cache.popitem(last=False)
            self._bytes -= old.nbytes
