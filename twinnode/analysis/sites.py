"""Each site's own fit, and what the combined analysis learns from comparing them.

A site is the party's own rows (the local fit) or one peer's release (its K twins alone,
pooled by the K-twin rule: with no local rows the mixed rule is Raghunathan–Reiter's).
From them: the between-release term of the combined T (`heterogeneity`, applied by
`add_between_release` when `AnalysisOptions.heterogeneity` is not "off") and the per-term
agreement of all the peers' twins with the local rows (`agreement`). `party.analyze_party`
composes these; studies can call them on any fit. Pure functions: no files, no sockets.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping

import numpy as np

from twinnode.analysis.agreement import Agreement, agreement
from twinnode.analysis.fit import AnalysisOptions, PooledFit, combined_fit
from twinnode.analysis.heterogeneity import between_release
from twinnode.analysis.pooling import widen
from twinnode.analysis.usable import PeerSet
from twinnode.errors import AnalysisError
from twinnode.schema import Schema


def peer_fits(schema: Schema, peers: PeerSet, options: AnalysisOptions | None = None
              ) -> dict[str, PooledFit]:
    """Each usable peer's twins alone (all of its K), pooled as fully synthetic data."""
    options = options or AnalysisOptions()
    return {name: combined_fit(schema, None, peers.only([name]), options=options)
            for name in peers.twins}


def add_between_release(fit: PooledFit, local: PooledFit | None,
                        singles: Mapping[str, PooledFit]) -> PooledFit:
    """`fit` with the between-release term added to T (`heterogeneity`), estimated from its
    peers' own fits in `singles` and, when the fit has local rows, the `local` fit."""
    method = fit.options.heterogeneity
    if method == "off" or not fit.peers or fit.heterogeneity is not None:
        return fit
    missing = [n for n in fit.peers if n not in singles]
    if missing:
        raise AnalysisError(f"no own fit of peer(s) {', '.join(missing)} to estimate the "
                            "between-release term")
    own = [singles[n] for n in fit.peers]
    with np.errstate(divide="ignore"):
        info = 1.0 / np.array([f.pooled.u_bar for f in own])
    with_local = local is not None and fit.rows.get("local", 0) > 0
    het = between_release(np.array([f.estimate for f in own]),
                          np.array([f.pooled.total for f in own]), info, fit.weight,
                          local_est=local.estimate if with_local and local else None,
                          local_var=local.pooled.total if with_local and local else None,
                          method=method)
    warnings = fit.warnings + ((f"between-release term {het.note}",) if het.note else ())
    return replace(fit, pooled=widen(fit.pooled, het.added, het.df), heterogeneity=het,
                   warnings=warnings)


def twins_agreement(schema: Schema, local: PooledFit, peers: PeerSet,
                    options: AnalysisOptions | None = None,
                    alpha: float | None = None) -> Agreement | None:
    """Per term, all of `peers`' twins alone against the local fit (`agreement`) at `alpha`
    (default: the options' `agreement_alpha`); None without peers."""
    if not peers.twins:
        return None
    options = options or local.options
    twins = combined_fit(schema, None, peers, options=options)
    return agreement(twins.terms, twins.estimate, twins.pooled.total, local.estimate,
                     local.pooled.total, peers=twins.peers,
                     alpha=options.agreement_alpha if alpha is None else alpha)
