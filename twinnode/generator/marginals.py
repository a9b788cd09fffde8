"""Noisy one-way marginals of every column: the Gaussian mechanism that anchors the mixture.

Each column gets a histogram over public cells: a binary column its count of ones (N is
public, so the zeros add nothing), a categorical column one cell per level, a count column
(covariate or outcome) one cell per value up to 15 then coarser bins to its public upper
bound, a continuous column 16 equal bins over its public bounds. A row adds 1 to exactly one
cell of each histogram, so the L2 sensitivity of all d histograms together is sqrt(d) under
add/remove; every cell gets N(0, (z sqrt(d))^2) noise from d3p's ChaCha20 PRNG, z being the
calibration's `marginal_multiplier` (accounting.py). What the generator reads from them
(rates, level shares, means, quantiles) is post-processing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from twinnode.generator.layout import Layout, ModelData

CONTINUOUS_BINS = 16
FINE_COUNTS = 16  # count values 0..15 get a cell each; beyond, bins grow geometrically


@dataclass(frozen=True)
class Marginals:
    """Noisy cell counts per column group, in the layout's order; n is the public row count."""

    n: int
    binary: np.ndarray             # (n_binary,) noisy counts of ones
    categorical: list[np.ndarray]  # per column: noisy count per level
    count: list[np.ndarray]        # per count covariate: noisy count per bin of count_edges
    continuous: list[np.ndarray]   # per continuous column: noisy count per bin on [0, 1]
    outcome: np.ndarray            # noisy count per bin of count_edges(outcome_upper)
    noise_sd: float                # the noise std of every cell

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, for the posterior file."""
        return {"n": self.n, "binary": self.binary.tolist(),
                "categorical": [a.tolist() for a in self.categorical],
                "count": [a.tolist() for a in self.count],
                "continuous": [a.tolist() for a in self.continuous],
                "outcome": self.outcome.tolist(), "noise_sd": self.noise_sd}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Marginals":
        def arr(v: Any) -> np.ndarray:
            return np.asarray(v, np.float64)

        return cls(n=int(d["n"]), binary=arr(d["binary"]),
                   categorical=[arr(v) for v in d["categorical"]],
                   count=[arr(v) for v in d["count"]],
                   continuous=[arr(v) for v in d["continuous"]],
                   outcome=arr(d["outcome"]), noise_sd=float(d["noise_sd"]))


def count_edges(upper: int) -> np.ndarray:
    """Bin edges over 0..upper: one per value below FINE_COUNTS, then geometric."""
    if upper < FINE_COUNTS:
        return np.arange(upper + 2, dtype=np.float64)
    tail = np.geomspace(FINE_COUNTS, upper + 1, 8)
    return np.unique(np.concatenate([np.arange(FINE_COUNTS), np.rint(tail)]))


def continuous_edges() -> np.ndarray:
    return np.linspace(0.0, 1.0, CONTINUOUS_BINS + 1)


def histograms(data: ModelData, layout: Layout) -> Marginals:
    """The exact (noise-free) histograms; private: only `measure` may release them."""
    def hist(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
        return np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)[0].astype(float)

    return Marginals(
        n=len(data.y), binary=np.asarray(data.xb, np.float64).sum(axis=0),
        categorical=[np.bincount(data.xc[:, j], minlength=levels).astype(float)
                     for j, (_, levels) in enumerate(layout.categorical)],
        count=[hist(data.xn[:, j], count_edges(upper)) for j, (_, upper) in enumerate(layout.count)],
        continuous=[hist(data.xr[:, j], continuous_edges()) for j in range(len(layout.continuous))],
        outcome=hist(data.y, count_edges(layout.outcome_upper)), noise_sd=0.0)


def columns(layout: Layout) -> int:
    """d: the number of histograms (every covariate and the outcome)."""
    return (len(layout.binary) + len(layout.categorical) + len(layout.count)
            + len(layout.continuous) + 1)


def measure(data: ModelData, layout: Layout, multiplier: float,
            seed: int | None = None) -> Marginals:
    """The Gaussian mechanism on every histogram: noise std multiplier * sqrt(d) per cell."""
    import d3p.random as secure_rng

    exact = histograms(data, layout)
    sd = multiplier * np.sqrt(columns(layout))
    parts = [exact.binary, *exact.categorical, *exact.count, *exact.continuous, exact.outcome]
    sizes = [len(p) for p in parts]
    noise = np.asarray(secure_rng.normal(secure_rng.PRNGKey(seed), (sum(sizes),)),
                       np.float64) * sd
    noisy = np.split(np.concatenate(parts) + noise, np.cumsum(sizes)[:-1])
    nc, nn, nr = len(exact.categorical), len(exact.count), len(exact.continuous)
    return Marginals(n=exact.n, binary=noisy[0], categorical=noisy[1:1 + nc],
                     count=noisy[1 + nc:1 + nc + nn],
                     continuous=noisy[1 + nc + nn:1 + nc + nn + nr], outcome=noisy[-1],
                     noise_sd=float(sd))


def shares(counts: np.ndarray, n: int) -> np.ndarray:
    """Noisy counts -> a distribution over their cells, knowing the public total n.

    Norm-sub (Wang et al. 2020): subtract one threshold from every cell and clip at 0, the
    threshold chosen so the cells sum to n. Clipping alone would keep the positive noise of
    every empty cell, a bias toward the middle of the range; norm-sub removes it (it is the
    Euclidean projection of the counts onto the n-scaled simplex).
    """
    c = np.asarray(counts, np.float64)
    lo, hi = c.min() - n, c.max()
    for _ in range(100):  # bisection on the threshold: sum(max(c - t, 0)) falls as t grows
        t = 0.5 * (lo + hi)
        lo, hi = (t, hi) if np.clip(c - t, 0, None).sum() > n else (lo, t)
    p = np.clip(c - hi, 0, None)
    return p / p.sum() if p.sum() > 0 else np.full(len(c), 1.0 / len(c))


def binary_rates(m: Marginals) -> np.ndarray:
    """Rates of ones, kept half a row away from 0 and 1."""
    return np.clip(m.binary / m.n, 0.5 / m.n, 1 - 0.5 / m.n)


def binned_mean(counts: np.ndarray, edges: np.ndarray, n: int) -> float:
    """The mean of a count column from its noisy histogram (each bin at its midpoint)."""
    mids = np.where(np.diff(edges) == 1, edges[:-1], 0.5 * (edges[:-1] + edges[1:] - 1))
    return float(shares(counts, n) @ mids)


def quantiles(counts: np.ndarray, probs: np.ndarray, n: int) -> np.ndarray:
    """Quantiles on [0, 1] of a continuous column from its noisy histogram (linear in bins)."""
    cdf = np.concatenate([[0.0], np.cumsum(shares(counts, n))])
    return np.interp(probs, cdf, continuous_edges())
