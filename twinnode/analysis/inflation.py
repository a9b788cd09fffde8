"""How much farther apart peers' statistics scatter than their twins' own spread says.

A peer's statistic x_q comes with the noise variance v_q its K twins show. Screening
(`screening`) models the rest as a factor: Var(x_q − θ) = σ² v_q, σ² ≥ 1, the inflation.
Two rules estimate σ² for the peer being judged, from the n other peers' spread over their
noise, s² = Σ_q (x_q − c)² / v_q / (n − 1) with n − 1 = d degrees of freedom:

- **Not noise-aware** (releases whose twins share one draw of the DP error, so v_q omits
  it; the rule of issue 9): σ² is unknown and large (2.5-6 in sd on randhie at ε = 1, very
  different between statistics). Each statistic's s² is moderated toward a prior
  σ² ~ s0² d0 / χ²_d0 fitted over the statistics of its family (`prior_inflation`, Smyth
  2004): s̃² = max(1, (d0 s0² + d s²) / (d0 + d)), a t reference with d0 + d df.
- **Noise-aware** (each twin carries its own draw of the release's DP error, so v_q
  includes it): σ² = 1 is the generator's claim, and it is known only so well. So the
  prior is not fitted but fixed at s0² = 1 with `NOISE_AWARE_PRIOR_DF` df:
  s̃² = max(1, (d_na + d s²) / (d_na + d)), t with d_na + d df. With few others the
  inflation stays near 1 (the others' s² carries d / (d_na + d) of the weight); real
  spread the generator does not know about (heterogeneous sites, a shifted peer among the
  others) still widens it as the others show it. d_na = 10: σ² ~ 10 / χ²_10 puts 90% of
  the sd ratio σ in [0.74, 1.48], the range measured for the DP generator's predicted DP
  error against the spread of 6 seeds (docs/GENERATOR.md, "Noise-aware twins"). Without
  others (one or two peers) the prior alone: s̃² = 1, t with d_na df.

Pure functions over arrays.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import special

from twinnode.analysis.arrays import BoolArray, FloatArray

FAMILIES = ("coefficients", "marginals")
NOISE_AWARE_PRIOR_DF = 10.0
"""Prior df of the noise-aware rule's σ² ~ d_na / χ²_d_na (see the module docstring)."""


def others_spread(x: FloatArray, v: FloatArray
                  ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Per statistic over the other peers (rows): the precision-weighted mean, its noise
    variance, the inflation s² of their spread over their noise, and its df."""
    good = np.isfinite(x) & np.isfinite(v) & (v > 0)
    w = np.where(good, 1.0 / np.where(good, v, 1.0), 0.0)
    xs = np.where(good, x, 0.0)
    d = good.sum(axis=0) - 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        wsum = w.sum(axis=0)
        center = (w * xs).sum(axis=0) / wsum
        s2 = (w * (xs - center) ** 2).sum(axis=0) / d
    return center, 1.0 / wsum, s2, d


def moderate(s2: FloatArray, d: FloatArray, family: NDArray[np.str_], usable: BoolArray
             ) -> tuple[FloatArray, FloatArray, dict[str, tuple[float, float]]]:
    """The rule for releases that are not noise-aware: each statistic's inflation s̃² (at
    least 1) and t df under its family's fitted prior, and each family's prior (d0, s0²)."""
    post, df = np.full(s2.shape, np.nan), np.full(s2.shape, np.nan)
    fitted: dict[str, tuple[float, float]] = {}
    for fam in FAMILIES:
        mine = usable & (family == fam)
        d0, s0 = fitted[fam] = prior_inflation(s2[mine], d[mine])
        post[mine] = s0 if np.isinf(d0) else (d0 * s0 + d[mine] * s2[mine]) / (d0 + d[mine])
        df[mine] = d0 + d[mine]
    return np.maximum(1.0, post), df, fitted


def noise_aware(s2: FloatArray, d: FloatArray, prior_df: float = NOISE_AWARE_PRIOR_DF
                ) -> tuple[FloatArray, FloatArray]:
    """The rule for noise-aware releases: s̃² = max(1, (d_na + d s²) / (d_na + d)) and its
    t df d_na + d; a statistic without a usable s² (d < 1) takes the prior alone."""
    s2, d = np.asarray(s2, float), np.asarray(d, float)
    seen = np.isfinite(s2) & (d >= 1)
    d = np.where(seen, d, 0.0)
    post = (prior_df + d * np.where(seen, s2, 0.0)) / (prior_df + d)
    return np.maximum(1.0, post), prior_df + d


def h(eps: float | FloatArray) -> FloatArray:
    """How a statistic's noise variance grows as ε falls: 1 + 1/ε² (an assumed shape that
    cancels when every peer uses one ε; `screening` transfers noise between peers with it)."""
    out: FloatArray = 1.0 + 1.0 / np.asarray(eps, float) ** 2
    return out


def prior_inflation(s2: FloatArray, d: FloatArray) -> tuple[float, float]:
    """Empirical-Bayes prior (d0, s0²) for per-statistic variances s2 with d df each.

    Smyth's (2004, limma `fitFDist`) moments of log s², for the model σ² ~ s0² d0 / χ²_d0
    across the statistics and s² ~ σ² χ²_d / d within each. d0 = inf when the s² vary no
    more than their own sampling allows (every statistic then uses s0²); with fewer than 3
    usable s², s0² is their geometric mean."""
    ok = np.isfinite(s2) & (s2 > 0) & (d >= 1)
    s2, d = np.asarray(s2[ok], float), np.asarray(d[ok], float)
    if s2.size == 0:
        return float("inf"), 1.0
    e = np.log(s2) - special.digamma(d / 2) + np.log(d / 2)
    if s2.size < 3:
        return float("inf"), float(np.exp(e.mean()))
    excess = e.var(ddof=1) - float(np.mean(special.polygamma(1, d / 2)))
    if excess <= 0:
        return float("inf"), float(np.exp(e.mean()))
    d0 = 2.0 * _trigamma_inverse(excess)
    return d0, float(np.exp(e.mean() + special.digamma(d0 / 2) - np.log(d0 / 2)))


def _trigamma_inverse(x: float) -> float:
    """y with trigamma(y) = x (Newton's method from limma's starting point)."""
    y = 0.5 + 1.0 / x
    for _ in range(50):
        tri = float(special.polygamma(1, y))
        step = tri * (1 - tri / x) / float(special.polygamma(2, y))
        y += step
        if abs(step) / y < 1e-8:
            break
    return y
