"""The statistics screening judges a peer by, computed from the peer's twins alone.

Per peer: its own pooled Poisson coefficients (its K twins fitted and pooled as fully
synthetic data, as `fit.twins_fit` does) and per-column marginal summaries (the mean of
each continuous or count column, the rate of 1 of each binary column, the rate of each
level of each categorical column), each averaged over its K twins with a noise variance v:
max(T, ū), Raghunathan–Reiter T from its K twins with the within-twin variance ū as its
floor. Each statistic belongs to a family, coefficients or marginals, which `screening`
moderates separately. Each peer's statistics use all of its own K twins (no common K is
needed to judge), and say whether its release is noise-aware (its provenance's
`generator["noise_aware"]`; releases from before say nothing: not). `local_statistics` are
the same statistics from the party's own rows, the reference screening anchors on: the
local fit's coefficients with their robust (HC1) variances, and the marginal summaries
with their sampling variances. `screening` judges these statistics; this module only
computes them.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import pandas as pd

from twinnode.analysis.arrays import Columns, FloatArray
from twinnode.analysis.fit import AnalysisOptions, combined_fit, local_fit
from twinnode.analysis.pooling import pool
from twinnode.analysis.screening import LocalStatistics, PeerStatistics
from twinnode.analysis.usable import PeerSet, one_peer
from twinnode.data import frame_to_arrays
from twinnode.schema import Column, Schema
from twinnode.twins import Twin


def peer_statistics(schema: Schema, twins: Sequence[Twin],
                    options: AnalysisOptions | None = None) -> PeerStatistics:
    """One peer's pooled coefficients and marginal summaries, each with its noise variance."""
    return _statistics(schema, one_peer(schema, twins), options or AnalysisOptions())


def statistics_by_peer(schema: Schema, peers: PeerSet, options: AnalysisOptions | None = None
                       ) -> dict[str, PeerStatistics]:
    """`peer_statistics` of every usable peer, in order (the peers are not checked again)."""
    options = options or AnalysisOptions()
    return {name: _statistics(schema, peers.only([name]), options) for name in peers.twins}


def _statistics(schema: Schema, peer: PeerSet, options: AnalysisOptions) -> PeerStatistics:
    """The statistics of the one peer in `peer`."""
    (twins,) = peer.twins.values()
    fit = combined_fit(schema, None, peer,
                       options=replace(options, rule="reiter", fallback="within"))
    names = [f"coef:{t}" for t in fit.terms]
    values = [fit.estimate]
    variances = [np.maximum(fit.pooled.total, fit.pooled.u_bar)]
    per_twin_value, per_twin_var = [], []
    labels: list[str] = []
    for twin in twins:
        v, u, labels = _marginals(schema, twin.arrays)
        per_twin_value.append(v)
        per_twin_var.append(u)
    # the marginals pooled by the same rule as the coefficients
    marginal = pool(np.array(per_twin_value), np.sqrt(np.array(per_twin_var)),
                    rule="reiter", fallback="within")
    names += labels
    values.append(marginal.estimate)
    variances.append(np.maximum(marginal.total, marginal.u_bar))
    prov = twins[0].provenance
    families = tuple("coefficients" if n.startswith("coef:") else "marginals" for n in names)
    return PeerStatistics(names=tuple(names), families=families,
                          values=np.concatenate(values),
                          variances=np.concatenate(variances), n=int(prov.n),
                          epsilon=float(prov.epsilon), k=len(twins),
                          rows=int(round(np.mean([t.rows for t in twins]))),
                          noise_aware=bool(prov.generator.get("noise_aware", False)))


def local_statistics(schema: Schema, frame: pd.DataFrame,
                     options: AnalysisOptions | None = None) -> LocalStatistics:
    """The statistics of `peer_statistics`, in its order, from the party's own rows, each
    with its sampling variance (the coefficients' robust SE², the marginals' as one twin's)."""
    fit = local_fit(schema, frame, options or AnalysisOptions())
    values, variances, labels = _marginals(schema, frame_to_arrays(schema, frame))
    return LocalStatistics(names=tuple(f"coef:{t}" for t in fit.terms) + tuple(labels),
                           values=np.concatenate([fit.estimate, values]),
                           variances=np.concatenate([fit.se ** 2, variances]),
                           rows=len(frame))


def _marginals(schema: Schema, arrays: Columns) -> tuple[FloatArray, FloatArray, list[str]]:
    """Per-column summaries of one twin, the variance of each, and their names."""
    values, variances, labels = [], [], []
    for col in schema.columns:
        a = np.asarray(arrays[col.name])
        n = len(a)
        if col.type in ("continuous", "count"):
            x = a.astype(np.float64)
            values.append(x.mean())
            variances.append(max(x.var(ddof=1) if n > 1 else 0.0, _unit_floor(col)) / n)
            labels.append(f"mean:{col.name}")
            continue
        levels = ("1",) if col.type == "binary" else col.levels
        codes = (1,) if col.type == "binary" else range(len(col.levels))
        for code, level in zip(codes, levels):
            count = float(np.sum(a == code))
            r = (count + 0.5) / (n + 1.0)  # keeps the variance positive at rate 0 or 1
            values.append(count / n)
            variances.append(r * (1 - r) / n)
            labels.append(f"rate:{col.name}={level}")
    return np.array(values), np.array(variances), labels


def _unit_floor(col: Column) -> float:
    """A tiny variance floor so a constant column cannot give a zero scale."""
    if col.type == "count":
        return 0.25
    assert col.lower is not None and col.upper is not None  # a schema's continuous column
    return ((col.upper - col.lower) / 1000.0) ** 2
