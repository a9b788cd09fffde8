"""Do the peers' twins agree with the party's own rows? One test per coefficient.

For each term, the twins-only estimate β̂_T (all the fit's peers' twins, no local rows,
pooled by the K-twin rule with its variance v_T) against the local-only estimate β̂_L
(variance v_L): z = (β̂_T − β̂_L) / sqrt(v_T + v_L), two-sided normal p-value. The two are
independent (the twins are made from other parties' rows). v_T is what the twins claim
about their own precision, without the between-release term: a disagreement here is
exactly what that term must absorb, and a term that disagrees is one where the twins
should not be trusted to narrow the party's interval.

Over the terms tested, Holm's step-down correction (Holm 1979) controls the family-wise
error at `alpha` (0.05 by default): p-values sorted ascending, the i-th of m adjusted to
max over j ≤ i of min(1, (m − j + 1) p_(j)); a term disagrees when its adjusted p-value is
below alpha. Holm rather than Bonferroni: the same guarantee, never less power. A term
without both estimates is not tested (and not counted in m). Pure functions over arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats

from twinnode.analysis.arrays import BoolArray, FloatArray
from twinnode.analysis.options import DEFAULT_AGREEMENT_ALPHA
from twinnode.atomic import jsonable
from twinnode.errors import AnalysisError


@dataclass(frozen=True)
class Agreement:
    """Per term: the twins-only and local estimates, z, p, Holm-adjusted p, disagreement."""

    terms: tuple[str, ...]
    twins_estimate: FloatArray
    twins_se: FloatArray
    local_estimate: FloatArray
    local_se: FloatArray
    z: FloatArray
    p: FloatArray
    p_holm: FloatArray
    disagree: BoolArray
    alpha: float
    peers: tuple[str, ...] = ()

    @property
    def disagreeing(self) -> tuple[str, ...]:
        return tuple(t for t, d in zip(self.terms, self.disagree) if d)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = jsonable({
            "test": "twins-only vs local-only estimate, z = diff / sqrt(var_twins + "
                    "var_local), Holm over the terms tested",
            "alpha": self.alpha, "correction": "holm", "peers": list(self.peers),
            "tested": int(np.isfinite(self.p).sum()), "disagreeing": list(self.disagreeing),
            "terms": {t: {"twins_estimate": self.twins_estimate[j],
                          "twins_se": self.twins_se[j], "z": self.z[j], "p": self.p[j],
                          "p_holm": self.p_holm[j], "disagree": bool(self.disagree[j])}
                      for j, t in enumerate(self.terms)}})
        return out


def holm(p: FloatArray) -> FloatArray:
    """Holm-adjusted p-values of the finite entries of `p` (NaN stays NaN)."""
    p = np.asarray(p, np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def agreement(terms: Sequence[str], twins_est: FloatArray, twins_var: FloatArray,
              local_est: FloatArray, local_var: FloatArray, *,
              alpha: float = DEFAULT_AGREEMENT_ALPHA, peers: Sequence[str] = ()) -> Agreement:
    """The per-term test of the twins-only estimate against the local one (module doc)."""
    if not 0 < alpha < 1:
        raise AnalysisError(f"agreement alpha must be in (0, 1), got {alpha}")
    te, tv = np.asarray(twins_est, np.float64), np.asarray(twins_var, np.float64)
    le, lv = np.asarray(local_est, np.float64), np.asarray(local_var, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (te - le) / np.sqrt(tv + lv)
    z = np.where(np.isfinite(z), z, np.nan)
    p = 2.0 * stats.norm.sf(np.abs(z))
    adjusted = holm(p)
    disagree = np.isfinite(adjusted) & (adjusted < alpha)
    with np.errstate(invalid="ignore"):
        return Agreement(terms=tuple(terms), twins_estimate=te, twins_se=np.sqrt(tv),
                         local_estimate=le, local_se=np.sqrt(lv), z=z, p=p, p_holm=adjusted,
                         disagree=disagree, alpha=alpha, peers=tuple(peers))
