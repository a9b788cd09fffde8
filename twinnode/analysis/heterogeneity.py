"""The between-release term of T: what the sites' own estimates say the K twins cannot show.

The pooling rules see only the spread of the K twins of each release. Two errors are shared
by all K twins of a release and so are invisible to b: the DP error of a release whose twins
are not drawn from a noise-aware posterior (the noise is drawn once, at training), and a
real difference between the peer's population and the party's. Both make peer j's own
estimate β̂_j (its twins alone, pooled by the K-twin rule, variance v_j) differ from the
party's local estimate β̂_L (variance v_L) by more than v_j + v_L allows. As in a
random-effects meta-analysis, model, per term,

    β̂_L = β + e_L,   β̂_j = β + δ_j + e_j,   δ_j ~ (0, τ²),   e_s ~ (0, v_s),

with c_s = 0 for the local site (its rows are real: no release error; its estimand β) and
c_s = 1 for each peer. Cochran's Q = Σ w_s (β̂_s − β̄_w)², w_s = 1/v_s, β̄_w = Σ w_s β̂_s / W,
has E[Q] = (m − 1) + τ² (Σ c_s w_s − Σ c_s w_s² / W) over the m sites with an estimate
(expand Q = Σ w_s ε_s² − W ε̄², ε_s = β̂_s − β). Hence the estimators (`tau_squared`):

- ``dl`` (DerSimonian & Laird 1986, generalised to c_s): τ² = max(0, (Q − (m − 1)) /
  (Σ c_s w_s − Σ c_s w_s² / W)); with every c_s = 1 it is the textbook DL.
- ``pm`` (Paule & Mandel 1982, recommended over DL by Veroniki et al. 2016): the τ² ≥ 0
  at which the generalised Q(τ²), with w_s = 1/(v_s + c_s τ²), equals its expectation m − 1
  (0 when Q(0) ≤ m − 1); found by bisection, Q(τ²) decreasing in τ².
- ``pmm`` (default; the median-unbiased Paule–Mandel of Viechtbauer's metafor): the same
  with the median of χ²_{m−1} as the target, so τ² is truncated to 0 less often. With few
  sites the intervals lose most of their coverage when τ² is truncated to 0 although it is
  not (measured in tests/test_heterogeneity.py: 4 peers, one imprecise local site,
  τ² = 3 × the peers' variance: coverage 0.90 with pm and dl, 0.92 with pmm, 0.61
  without the term; with τ² known it would be 0.955).

How τ² reaches the combined estimate: linearised, q̄ ≈ Σ_s a_s β̂_s with a_L = I_L / H and
a_j = λ I_j / H, H = I_L + λ Σ I_i, where I_s = 1 / ū_s is the information of the site's rows
(the inverse of the mean within-fit sandwich variance of its own fit; twin rows weigh λ in
the combined fit). So the release errors add Var = τ² Σ_j a_j² (`peer_shares`; per term, a
diagonal approximation to the matrix shares H⁻¹ λ H_j), and T_RE = T + τ² Σ_j a_j². At λ = 0
the shares vanish and T is the local fit's; with τ² = 0 it is T as before. Degrees of
freedom: the added part rests on the m − 1 degrees of freedom of τ², so Satterthwaite
combines it with T's: 1/ν = (T/T_RE)²/ν_T + (added/T_RE)²/(m − 1) (`pooling.widen`).

Few sites: the party's own rows are a site, so with one peer m = 2 and τ² rests on one
degree of freedom; the t reference with ν near 1 then makes the interval wide whenever τ²
is not 0 (conservative, on purpose: one peer against one local fit is all the evidence).
A fit with no local rows and one peer (m = 1) has no between-site information: τ² is not
estimated, T is left as it is and `note` says so (the report's ``heterogeneity``).
Sites with a missing estimate or a non-positive variance for a term are left out of that
term. Pure functions over arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats

from twinnode.analysis.arrays import BoolArray, FloatArray, IntArray
from twinnode.analysis.options import HETEROGENEITIES
from twinnode.atomic import jsonable
from twinnode.errors import AnalysisError

_BISECTIONS = 80


@dataclass(frozen=True)
class Heterogeneity:
    """Per term: τ², Cochran's Q, sites used, τ²'s df, Σ_j a_j², and the variance added to T."""

    method: str
    tau2: FloatArray
    q: FloatArray
    sites: IntArray
    df: FloatArray
    share2: FloatArray
    added: FloatArray
    note: str = ""

    def to_dict(self, terms: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = jsonable({
            "method": self.method, "note": self.note,
            "terms": {t: {"tau2": self.tau2[j], "q": self.q[j], "sites": int(self.sites[j]),
                          "df": self.df[j], "peer_share2": self.share2[j],
                          "added_variance": self.added[j]} for j, t in enumerate(terms)}})
        return out


def tau_squared(est: FloatArray, var: FloatArray, random: BoolArray, method: str = "pmm"
                ) -> tuple[FloatArray, FloatArray, IntArray]:
    """τ² per term from m sites' estimates and variances (m, p); `random` (m,) marks the
    sites with a release error (c_s = 1). Returns τ² (NaN with fewer than 2 sites or no
    random site), Cochran's Q at τ² = 0, and the number of sites per term."""
    if method not in HETEROGENEITIES or method == "off":
        raise AnalysisError(f"unknown heterogeneity estimator {method!r}; expected one of "
                            f"{', '.join(h for h in HETEROGENEITIES if h != 'off')}")
    y = np.atleast_2d(np.asarray(est, np.float64))
    v = np.atleast_2d(np.asarray(var, np.float64))
    c = np.broadcast_to(np.asarray(random, bool)[:, None], y.shape).astype(np.float64)
    ok = np.isfinite(y) & np.isfinite(v) & (v > 0)
    m = ok.sum(axis=0)
    usable = (m >= 2) & ((c * ok).sum(axis=0) > 0)
    y, v = np.where(ok, y, 0.0), np.where(ok, v, 1.0)
    q0 = _q(y, v, ok, c, np.zeros(y.shape[1]))
    if method == "dl":
        w = np.where(ok, 1.0 / v, 0.0)
        W = w.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            denom = (c * w).sum(axis=0) - (c * w ** 2).sum(axis=0) / W
            tau2 = np.maximum(0.0, (q0 - (m - 1)) / denom)
    else:
        df = np.maximum(m - 1.0, 1.0)
        target = df if method == "pm" else stats.chi2.median(df)
        tau2 = _paule_mandel(y, v, ok, c, np.where(m >= 2, target, 0.0), q0)
    tau2 = np.where(usable, tau2, np.nan)
    return tau2, np.where(m >= 2, q0, np.nan), m


def _q(y: FloatArray, v: FloatArray, ok: BoolArray, c: FloatArray, tau2: FloatArray
       ) -> FloatArray:
    """The generalised Q: Σ w_s (y_s − ȳ_w)², w_s = 1/(v_s + c_s τ²), per term."""
    w = np.where(ok, 1.0 / (v + c * tau2[None, :]), 0.0)
    W = np.maximum(w.sum(axis=0), 1e-300)
    mean = (w * y).sum(axis=0) / W
    out: FloatArray = (w * (y - mean) ** 2).sum(axis=0)
    return out


def _paule_mandel(y: FloatArray, v: FloatArray, ok: BoolArray, c: FloatArray,
                  target: FloatArray, q0: FloatArray) -> FloatArray:
    """The root of Q(τ²) = target (0 where Q(0) is already at most that), by bisection."""
    m = ok.sum(axis=0)
    positive = q0 > target
    spread = np.where(ok, (y - np.where(ok, y, 0).sum(0) / np.maximum(m, 1)) ** 2, 0.0)
    hi = np.maximum(spread.sum(axis=0), np.where(ok, v, 0).max(axis=0)) + 1e-300
    for _ in range(200):  # Q(τ²) → (the fixed sites' Q) ≤ m − 1 as τ² grows: a bracket exists
        above = positive & (_q(y, v, ok, c, hi) > target)
        if not above.any():
            break
        hi = np.where(above, hi * 4.0, hi)
    lo = np.zeros_like(hi)
    for _ in range(_BISECTIONS):
        mid = (lo + hi) / 2.0
        above = _q(y, v, ok, c, mid) > target
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    return np.where(positive, (lo + hi) / 2.0, 0.0)


def peer_shares(local_info: FloatArray | None, peer_info: FloatArray, weight: float
                ) -> FloatArray:
    """a_j = λ I_j / (I_L + λ Σ I_i) per peer and term (J, p): each peer's share of q̄.

    Infos are 1 / ū of each site's own fit; a missing one counts as 0 (no rows)."""
    peer = np.nan_to_num(np.atleast_2d(np.asarray(peer_info, np.float64)))
    local = (np.zeros(peer.shape[1]) if local_info is None
             else np.nan_to_num(np.asarray(local_info, np.float64)))
    total = local + weight * peer.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares: FloatArray = np.where(total > 0, weight * peer / total, 0.0)
    return shares


def between_release(peer_est: FloatArray, peer_var: FloatArray, peer_info: FloatArray,
                    weight: float, *, local_est: FloatArray | None = None,
                    local_var: FloatArray | None = None, method: str = "pmm"
                    ) -> Heterogeneity:
    """τ² from the peers' (J, p) and the local site's (p,) estimates and variances, and the
    variance it adds to the combined T at twin weight `weight` (module docstring)."""
    peer_est = np.atleast_2d(np.asarray(peer_est, np.float64))
    est, var = peer_est, np.atleast_2d(np.asarray(peer_var, np.float64))
    random = np.ones(len(est), bool)
    local_info = None
    if local_est is not None and local_var is not None:
        est = np.vstack([np.asarray(local_est, np.float64)[None], est])
        var = np.vstack([np.asarray(local_var, np.float64)[None], var])
        random = np.concatenate([[False], random])
        local_info = 1.0 / np.asarray(local_var, np.float64)
    tau2, q, sites = tau_squared(est, var, random, method)
    share2 = (peer_shares(local_info, peer_info, weight) ** 2).sum(axis=0)
    added = np.where(np.isfinite(tau2), np.nan_to_num(tau2) * share2, 0.0)
    note = "" if np.isfinite(tau2).any() else (
        "not estimable: fewer than 2 sites (one peer and no local rows); T is the pooling "
        "rule's")
    return Heterogeneity(method=method, tau2=tau2, q=q, sites=sites,
                         df=np.where(sites >= 2, sites - 1.0, np.nan), share2=share2,
                         added=added, note=note)
