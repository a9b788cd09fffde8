"""Each twin's covariates calibrated to its own draw of the noisy marginals, then its outcome.

The mixture gets the shape of the covariates' joint distribution; the noisy marginals know
each column's distribution better (point masses at a bound, which Normal components
smear; rare levels, which noise-aware draws of a logit pull toward one half). So a twin's
continuous and count covariates are mapped, column by column and rank-preserving, and its
binary and categorical columns moved with the fewest changes (random rows of the
over-represented levels), onto a draw from the marginals' posterior (the released noisy counts plus
N(0, noise sd^2) again, clipped and normalised: each twin carries its own draw of the
marginals' DP error). Within a bin a row keeps its own value if it already lies there, so
point masses survive. Only then is the outcome drawn, from the twin's own head: y | x stays
exactly the head's, so the regression the head learned is kept (MST's failure was to lose
it). All of it is post-processing of released values.
"""
from __future__ import annotations

import numpy as np

from twinnode.generator.layout import Layout, ModelData
from twinnode.generator.marginals import Marginals, continuous_edges, count_edges, shares


def posterior_draw(counts: np.ndarray, noise_sd: float, n: int,
                   rng: np.random.Generator) -> np.ndarray:
    """One draw of a column's true shares given its noisy counts (flat prior), norm-subbed."""
    return shares(counts + rng.normal(0.0, noise_sd, counts.shape), n)


def truncated_draw(count: float, noise_sd: float, n: int, rng: np.random.Generator) -> float:
    """A draw of a true count given its noisy one, within [1, n - 1]: every twin keeps at least
    one row of each binary value, so the term stays estimable (a flat prior on that range)."""
    for _ in range(1000):
        x = count + rng.normal(0.0, noise_sd)
        if 1 <= x <= n - 1:
            return float(x)
    return float(np.clip(count, 1, n - 1))


def map_to_shares(x: np.ndarray, edges: np.ndarray, target: np.ndarray,
                  rng: np.random.Generator, integer: bool = False) -> np.ndarray:
    """x moved, rank-preserving, so its histogram over `edges` is `target` (up to rounding)."""
    n = len(x)
    order = np.lexsort((rng.random(n), x))  # ties (point masses) broken at random
    cdf = np.concatenate([[0.0], np.cumsum(target)])
    u = (np.arange(n) + 0.5) / n
    b = np.clip(np.searchsorted(cdf, u, side="right") - 1, 0, len(target) - 1)
    frac = (u - cdf[b]) / np.maximum(target[b], 1e-12)
    lo, hi = edges[b], edges[b + 1]
    xs = x[order]
    inside = (xs >= lo) & ((xs < hi) | ((b == len(target) - 1) & (xs <= hi)))
    placed = np.floor(lo + frac * (hi - lo)) if integer else lo + frac * (hi - lo)
    out = np.empty(n)
    out[order] = np.where(inside, xs, np.minimum(placed, hi - 1 if integer else hi))
    return out


def match_levels(codes: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Codes with the fewest changes (random rows of the over-represented levels moved to the
    under-represented ones) so that their level counts are round(n * target)."""
    n, levels = len(codes), len(target)
    want = np.floor(target * n).astype(int)
    want[np.argsort(target * n - want)[::-1][:n - want.sum()]] += 1  # largest remainders
    out = np.array(codes, np.int64)
    spare: list[np.ndarray] = []
    for level in range(levels):
        rows = np.flatnonzero(out == level)
        extra = len(rows) - want[level]
        if extra > 0:
            spare.append(rng.choice(rows, extra, replace=False))
    pool = rng.permutation(np.concatenate(spare)) if spare else np.zeros(0, np.int64)
    at = 0
    for level in range(levels):
        short = want[level] - int(np.sum(out == level))
        if short > 0:
            out[pool[at:at + short]] = level
            at += short
    return out


def calibrate_covariates(data: ModelData, layout: Layout, m: Marginals,
                         rng: np.random.Generator) -> ModelData:
    """The twin's covariates, column by column, onto a posterior draw of each marginal."""
    xb = np.array(data.xb, np.float64)
    rows = len(data.y)
    for j in range(xb.shape[1]):
        ones = np.clip(truncated_draw(m.binary[j], m.noise_sd, m.n, rng) / m.n,
                       1 / rows, 1 - 1 / rows)  # a row of each value, in more rows than N too
        xb[:, j] = match_levels(xb[:, j].astype(np.int64), np.array([1 - ones, ones]), rng)
    xc = np.array(data.xc, np.int64)
    for j in range(xc.shape[1]):
        xc[:, j] = match_levels(xc[:, j], posterior_draw(m.categorical[j], m.noise_sd, m.n, rng),
                                rng)
    xr = np.array(data.xr, np.float64)
    for j in range(xr.shape[1]):
        xr[:, j] = map_to_shares(xr[:, j], continuous_edges(),
                                 posterior_draw(m.continuous[j], m.noise_sd, m.n, rng), rng)
    xn = np.array(data.xn, np.float64)
    for j, (_, upper) in enumerate(layout.count):
        xn[:, j] = map_to_shares(xn[:, j], count_edges(upper),
                                 posterior_draw(m.count[j], m.noise_sd, m.n, rng), rng, integer=True)
    return data._replace(xb=xb.astype(np.float32), xc=xc.astype(np.int32),
                         xr=xr.astype(np.float32), xn=xn.astype(np.float32))


def draw_outcome(features: np.ndarray, coef: np.ndarray, intercept: float, outcome: str,
                 concentration: float | None, rng: np.random.Generator) -> np.ndarray:
    """y from the head: Poisson(exp(b + f.w)), or NB2 with the given concentration."""
    mean = np.exp(np.clip(intercept + features @ coef, -30.0, 30.0))
    if outcome == "negbinomial" and concentration is not None:
        mean = rng.gamma(concentration, mean / concentration)
    return rng.poisson(np.minimum(mean, 1e9)).astype(np.float32)
