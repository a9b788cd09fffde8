"""Starting values from the noisy marginals: where the mixture begins when it is anchored.

Under DP noise the mixture's parameters move little from where they start (at epsilon = 1 a
component's rate of a rare binary stays near its start), so the start decides the marginals:
from the public start (binary rates uniform in [0.2, 0.8]) a 2% column came out at 30-48%.
Anchored, every component starts at the column's noisy marginal, spread a little so the
components can still separate: binary rates and count means jittered on the logit/log scale,
level shares drawn around the noisy shares, continuous means at the noisy quantiles, and the
outcome head's intercept at the log of the noisy outcome mean (its coefficients at 0, so the
head starts at the right mean). All of it is post-processing of the released marginals; the
jitter comes from the public seed.
"""
from __future__ import annotations

import numpy as np

from twinnode.generator.layout import Layout
from twinnode.generator.marginals import (Marginals, binary_rates, binned_mean, continuous_edges,
                                          count_edges, quantiles, shares)
from twinnode.generator.models import PUBLIC_SEED, public_init
from twinnode.generator.settings import GeneratorSettings

JITTER = 0.3           # sd of the components' spread on the logit / log scale
LEVEL_CONCENTRATION = 50.0


def anchored_start(layout: Layout, settings: GeneratorSettings,
                   m: Marginals) -> dict[str, np.ndarray]:
    """The public start with every covariate group and the intercept moved to the marginals."""
    k = settings.components
    rng = np.random.default_rng(PUBLIC_SEED + 1)
    start = public_init(layout, settings)
    if layout.binary:
        logit = np.log(binary_rates(m)) - np.log1p(-binary_rates(m))
        start["p_bin"] = _f32(1.0 / (1.0 + np.exp(-(logit + rng.normal(0, JITTER, (k, len(logit)))))))
    for j, counts in enumerate(m.categorical):
        alpha = LEVEL_CONCENTRATION * shares(counts, m.n) + 0.05
        start[f"p_cat_{j}"] = _f32(np.clip(rng.dirichlet(alpha, k), 1e-4, None))
    if layout.count:
        means = np.array([binned_mean(c, count_edges(upper), m.n)
                          for c, (_, upper) in zip(m.count, layout.count)])
        start["count_log_rate"] = _f32(np.log(np.maximum(means, 0.05))
                                       + rng.normal(0, JITTER, (k, len(means))))
    if layout.continuous:
        probs = (np.arange(k) + 0.5) / k
        locs = np.stack([quantiles(c, probs, m.n) for c in m.continuous], axis=1)
        start["cont_loc"] = _f32(np.clip(rng.permuted(locs, axis=0), 0.01, 0.99))
    mean_y = binned_mean(m.outcome, count_edges(layout.outcome_upper), m.n)
    start["intercept"] = _f32(np.log(max(mean_y, 0.05)))
    return start


def head_center(layout: Layout, m: Marginals) -> tuple[float, ...]:
    """The head's features' means under the noisy marginals, in `head_features`' order
    (binary rates, level shares but the first, count means / upper, continuous means)."""
    parts = [binary_rates(m)] if layout.binary else []
    parts += [shares(counts, m.n)[1:] for counts in m.categorical]
    parts += [np.array([binned_mean(c, count_edges(upper), m.n) / max(upper, 1)])
              for c, (_, upper) in zip(m.count, layout.count)]
    mids = 0.5 * (continuous_edges()[:-1] + continuous_edges()[1:])
    parts += [np.array([shares(c, m.n) @ mids]) for c in m.continuous]
    return tuple(float(v) for v in np.concatenate(parts)) if parts else ()


def _f32(a: np.ndarray | float) -> np.ndarray:
    return np.asarray(a, np.float32)
