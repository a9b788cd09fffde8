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
would leave b with 2 degrees of freedom).

An analysis checks its peers once (`usable_peers` at its entry) and passes the `PeerSet` to
every step below (screening's statistics, the weight's validation, each combined fit);
`usable_peers` returns a `PeerSet` as it is, so a step given one checks nothing again.
Pure functions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping, Sequence

import numpy as np

from twinnode.errors import AnalysisError
from twinnode.schema import Schema
from twinnode.twins import Twin

Peers = Mapping[str, Sequence[Twin]]
"""Each peer's twins as received: not yet checked."""
MIN_K = 2
"""Fully synthetic pooling needs at least two twins per peer (b has K - 1 degrees of freedom)."""
MIN_K_SHARE = 0.5
"""A peer with K below this share of the median K of a fit's peers is left out of the fit."""


@dataclass(frozen=True)
class PeerSet:
    """The peers whose twins are usable (whole releases, by index) and why others are not."""

    schema_hash: str                     # the schema the twins were checked under
    twins: Mapping[str, tuple[Twin, ...]]
    left_out: Mapping[str, str] = field(default_factory=dict)  # peer -> reason
    notes: Mapping[str, str] = field(default_factory=dict)     # peer -> e.g. re-sent copies

    def warnings(self) -> list[str]:
        """One line per peer left out, then the notes."""
        return ([f"peer {name!r} left out: {why}" for name, why in self.left_out.items()]
                + [f"peer {name!r}: {note}" for name, note in self.notes.items()])

    def noise_aware(self) -> dict[str, bool]:
        """Per peer: whether its release's twins each carry their own draw of its DP error
        (receipts from before noise-aware releases say nothing: False)."""
        return {name: bool(twins[0].provenance.generator.get("noise_aware", False))
                for name, twins in self.twins.items() if twins}

    def without(self, names: Collection[str]) -> PeerSet:
        """These peers less `names`: what checking the peers without them would give."""
        return self._keep(lambda name: name not in names)

    def only(self, names: Collection[str]) -> PeerSet:
        """These peers restricted to `names`."""
        return self._keep(lambda name: name in names)

    def _keep(self, wanted: Callable[[str], bool]) -> PeerSet:
        return PeerSet(self.schema_hash,
                       {n: t for n, t in self.twins.items() if wanted(n)},
                       {n: w for n, w in self.left_out.items() if wanted(n)},
                       {n: w for n, w in self.notes.items() if wanted(n)})


def usable_peers(schema: Schema, peers: Peers | PeerSet) -> PeerSet:
    """Check each peer's twins as one whole release under `schema` (see the docstring).

    A `PeerSet` is returned as it is (it was checked when it was made), after making sure
    it was checked under `schema`."""
    if isinstance(peers, PeerSet):
        if peers.schema_hash != schema.hash:
            raise AnalysisError(f"peers were checked under another schema than "
                                f"{schema.short_hash}")
        return peers
    usable: dict[str, tuple[Twin, ...]] = {}
    left_out: dict[str, str] = {}
    notes: dict[str, str] = {}
    for name, twins in peers.items():
        why, kept, note = _check(schema, list(twins))
        if why is None:
            usable[name] = kept
        else:
            left_out[name] = why
        if note:
            notes[name] = note
    return PeerSet(schema.hash, usable, left_out, notes)


def one_peer(schema: Schema, twins: Sequence[Twin]) -> PeerSet:
    """One peer's twins (named by their sender) checked as a release that can be pooled on
    its own; an AnalysisError says why not."""
    if not twins:
        raise AnalysisError("no twins to fit")
    name = twins[0].provenance.sender
    checked = usable_peers(schema, {name: twins})
    if name in checked.left_out:
        raise AnalysisError(f"twins of {name!r} cannot be pooled: {checked.left_out[name]}")
    return checked


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
    expected = schema.hash  # hashed once: it is the schema's canonical JSON each time
    if any(t.provenance.schema_hash != expected for t in twins):
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


def _facts(twin: Twin) -> tuple[int, int, float, float, str]:
    p = twin.provenance
    return (p.k, p.n, p.epsilon, p.delta, p.relation)


def _same_rows(a: Twin, b: Twin) -> bool:
    """Whether two twins hold the same columns with the same values."""
    if a.arrays.keys() != b.arrays.keys():
        return False
    return all(np.array_equal(np.asarray(a.arrays[c]), np.asarray(b.arrays[c]))
               for c in a.arrays)
