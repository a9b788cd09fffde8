"""Each twin's covariates calibrated to its own draw of the noisy marginals, then its outcome.

The mixture gets the shape of the covariates' joint distribution; the noisy marginals know
each column's distribution better (point masses at a bound, which Normal components
smear). So a twin's continuous and count covariates are mapped, column by column and
rank-preserving, onto a draw from the marginals' posterior (the released noisy counts plus
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


def calibrate_covariates(data: ModelData, layout: Layout, m: Marginals,
                         rng: np.random.Generator) -> ModelData:
    """The twin's count and continuous covariates mapped onto a posterior draw of each marginal."""
    xr = np.array(data.xr, np.float64)
    for j in range(xr.shape[1]):
        xr[:, j] = map_to_shares(xr[:, j], continuous_edges(),
                                 posterior_draw(m.continuous[j], m.noise_sd, m.n, rng), rng)
    xn = np.array(data.xn, np.float64)
    for j, (_, upper) in enumerate(layout.count):
        xn[:, j] = map_to_shares(xn[:, j], count_edges(upper),
                                 posterior_draw(m.count[j], m.noise_sd, m.n, rng), rng, integer=True)
    return data._replace(xr=xr.astype(np.float32), xn=xn.astype(np.float32))


def draw_outcome(features: np.ndarray, coef: np.ndarray, intercept: float, outcome: str,
                 concentration: float | None, rng: np.random.Generator) -> np.ndarray:
    """y from the head: Poisson(exp(b + f.w)), or NB2 with the given concentration."""
    mean = np.exp(np.clip(intercept + features @ coef, -30.0, 30.0))
    if outcome == "negbinomial" and concentration is not None:
        mean = rng.gamma(concentration, mean / concentration)
    return rng.poisson(np.minimum(mean, 1e9)).astype(np.float32)
