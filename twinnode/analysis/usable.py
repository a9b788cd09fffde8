"""Which peers' twins an analysis can use, and the K they share.

A peer's twins enter an analysis only as one whole release: every twin made under this
schema, from one release and one draw (the same release id and `created`), with the same
provenance facts (k, n, ε, δ, relation), and every index 0..k-1 present. Anything else is
that peer's defect (or a release still arriving), and it leaves out that peer alone, with
the reason in the report; it never stops the analysis at this party:

- no twins; twins from more than one release or draw, or with differing provenance;
  twins made under another schema;
- the same index twice with different contents: which one is the release? Neither is
  used. The same index twice with identical contents (a re-sent twin) is one twin, so the
  copies are ignored: sound, they are the same rows;
- incomplete: fewer distinct indices than its provenance's k (a release still arriving
  over the lossy transport, or cut short). The twins it has are exchangeable draws and
  could be pooled, but they would cut the K of every fit it joins; it is used once whole;
- K < 2: fully synthetic pooling needs the spread of at least two twins (b); with one,
  T would be ū alone and the peers' noise would vanish from the variance.

The K of one fit is shared by the peers in that fit only (`common_k`): the smallest K
among them, each peer cut to its first K twins by index (twins are exchangeable). A peer
whose K is below half the median K of the fit's peers is left out of that fit instead, so
that one peer cannot shrink everyone's K (a peer with K = 3 among peers with K = 100
would leave b with 2 degrees of freedom). Pure functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from twinnode.schema import Schema
from twinnode.twins import Twin

Peers = Mapping[str, Sequence[Twin]]
MIN_K = 2
"""Fully synthetic pooling needs at least two twins per peer (b has K - 1 degrees of freedom)."""
MIN_K_SHARE = 0.5
"""A peer with K below this share of the median K of a fit's peers is left out of the fit."""


@dataclass(frozen=True)
class PeerSet:
    """The peers whose twins are usable (whole releases, by index) and why others are not."""

    twins: Mapping[str, tuple[Twin, ...]]
    left_out: Mapping[str, str]          # peer -> reason
    notes: tuple[str, ...] = ()          # about peers that are used (e.g. re-sent copies)

    def warnings(self) -> list[str]:
        """One line per peer left out, then the notes."""
        return ([f"peer {name!r} left out: {why}" for name, why in self.left_out.items()]
                + list(self.notes))


def usable_peers(schema: Schema, peers: Peers) -> PeerSet:
    """Check each peer's twins as one whole release under `schema` (see the docstring)."""
    usable: dict[str, tuple[Twin, ...]] = {}
    left_out: dict[str, str] = {}
    notes: list[str] = []
    for name, twins in peers.items():
        why, kept, note = _check(schema, list(twins))
        if why is None:
            usable[name] = kept
        else:
            left_out[name] = why
        if note:
            notes.append(f"peer {name!r}: {note}")
    return PeerSet(usable, left_out, tuple(notes))


def common_k(twins: Mapping[str, Sequence[Twin]]
             ) -> tuple[dict[str, list[Twin]], int, list[str]]:
    """Cut usable peers to the smallest K among them; leave out a peer far below the rest."""
    ks = {name: len(t) for name, t in twins.items()}
    if not ks:
        return {}, 0, []
    median = float(np.median(list(ks.values())))
    floor = MIN_K_SHARE * median
    warnings = [f"peer {name!r} left out: K = {k} twins, below {MIN_K_SHARE:g} x the median "
                f"K ({median:g}) of the peers in this fit" for name, k in ks.items()
                if k < floor]
    kept = {name: list(t) for name, t in twins.items() if ks[name] >= floor}
    k = min(len(t) for t in kept.values())
    if len({len(t) for t in kept.values()}) > 1:
        listed = ", ".join(f"{n}: {len(t)}" for n, t in kept.items())
        warnings.append(f"peers have different K ({listed}); using the first {k} twins of "
                        "each")
    return {name: t[:k] for name, t in kept.items()}, k, warnings


def _check(schema: Schema, twins: list[Twin]
           ) -> tuple[str | None, tuple[Twin, ...], str]:
    """(reason to leave out or None, the twins by index, a note) for one peer."""
    if not twins:
        return "no twins", (), ""
    first = twins[0].provenance
    if any(t.provenance.schema_hash != schema.hash for t in twins):
        return (f"twins made under another schema than {schema.short_hash}"), (), ""
    draws = {(t.provenance.release, t.provenance.created) for t in twins}
    if len(draws) > 1:
        return (f"twins from {len(draws)} releases or draws; a peer's twins must be one "
                "release"), (), ""
    facts = {_facts(t) for t in twins}
    if len(facts) > 1:
        return "twins of one release disagree on k, n, epsilon, delta or relation", (), ""
    by_index: dict[int, Twin] = {}
    copies = 0
    for twin in twins:
        i = twin.provenance.index
        if i not in by_index:
            by_index[i] = twin
        elif _same_rows(by_index[i], twin):
            copies += 1
        else:
            return f"two different twins with index {i}", (), ""
    k = first.k
    note = f"{copies} re-sent copy(ies) of a twin ignored" if copies else ""
    if len(by_index) < k:
        return (f"incomplete release: {len(by_index)} of its {k} twins held; used once "
                "complete"), (), note
    if k < MIN_K:
        return (f"K = {k} twin: pooling fully synthetic data needs at least {MIN_K}"), (), note
    return None, tuple(by_index[i] for i in range(k)), note


def _facts(twin: Twin) -> tuple:
    p = twin.provenance
    return (p.k, p.n, p.epsilon, p.delta, p.relation)


def _same_rows(a: Twin, b: Twin) -> bool:
    """Whether two twins hold the same columns with the same values."""
    if a.arrays.keys() != b.arrays.keys():
        return False
    return all(np.array_equal(np.asarray(a.arrays[c]), np.asarray(b.arrays[c]))
               for c in a.arrays)
