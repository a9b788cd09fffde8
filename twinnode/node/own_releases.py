"""What of a release of ours the store holds already: the check that makes publishing resumable.

A publish takes an own seq per twin as it stores it, so a publish cut short (cancelled,
crashed) leaves some twins of the release stored and sent, the rest not. Publishing the same
release again must send only the rest, under new seqs, and must refuse (before anything is
sent) a release whose twins all went out, a twin whose content went out under another release
or index, and two identical twins.
"""
from __future__ import annotations

from twinnode.errors import ControlError
from twinnode.schema import Schema
from twinnode.store.store import Store
from twinnode.twins import Release
from twinnode.wire import twin_digest


def published_before(store: Store, schema: Schema, own: str, release: Release) -> set[int]:
    """Indices of the twins of `release` already stored as `own`'s under this release and
    index (an earlier publish of it, cut short). ControlError, before anything is sent, if
    every twin was published, if a twin's content went out under another release or index, or
    if two twins are identical. Blocking (it encodes every payload): run it in a thread."""
    seen: dict[bytes, int] = {}
    done: set[int] = set()
    for i, twin in enumerate(release.twins):
        digest = twin_digest(twin, schema)
        seq = store.has_digest(own, digest)
        if seq is not None:
            entry = store.get(own, seq)
            p = twin.provenance
            if entry is None or (entry.release, entry.k) != (p.release, p.index):
                raise ControlError(f"own twin {i} repeats our twin seq {seq} of another "
                                   "release (duplicate); nothing was sent")
            done.add(i)
        if digest in seen:
            raise ControlError(f"own twins {seen[digest]} and {i} of this release are "
                               "identical (duplicate); nothing was sent")
        seen[digest] = i
    if done and len(done) == len(release.twins):
        raise ControlError(f"all {len(done)} twins of this release were published before "
                           "(duplicate); nothing was sent")
    return done
