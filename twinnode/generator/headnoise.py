"""How much DP noise is left in the averaged outcome head: the head's part of noise-awareness.

Each DP step adds N(0, (sigma C / q)^2) to every coordinate of the full-data gradient (C the
clipping norm, q the sampling rate; the head's coordinates get C / head_weight, dpsvi.py).
Averaged over the last W steps (Polyak-Ruppert), the released head is off the optimum by
I^-1 times the average of those draws: covariance (sigma C / (q w))^2 / W * I^-2, with I the
Fisher information of the head for the N rows. The batch means of the trace (trace.py) cannot
show this: the head's iterates decorrelate over more steps than a batch holds. I is computed
from the released parameters alone (post-processing): covariates drawn from the released
mixture, the rows' Poisson (or NB2) weights at the released head.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import Predictive

from twinnode.generator.layout import Layout
from twinnode.generator.models import row_features, set_up
from twinnode.generator.sample import predicted_rows, row_sites
from twinnode.generator.settings import GeneratorSettings

ROWS = 20_000  # synthetic rows the information is averaged over


def synthetic_design(params: Mapping[str, np.ndarray], layout: Layout,
                     settings: GeneratorSettings, seed: int = 0
                     ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """ROWS covariate rows drawn from the released mixture as the head's design (features,
    then a column of ones), and the guide's point estimate they were drawn at."""
    model, guide = set_up(layout, ROWS, settings)
    point = guide.median({k: jnp.asarray(v) for k, v in params.items()})
    out = Predictive(model, posterior_samples={k: v[None] for k, v in point.items()},
                     return_sites=row_sites(layout))(jax.random.PRNGKey(seed))
    f = row_features(predicted_rows(out, 0, ROWS, layout), layout, settings)
    return np.concatenate([f, np.ones((ROWS, 1))], axis=1), point


def head_information(params: Mapping[str, np.ndarray], layout: Layout, n: int,
                     settings: GeneratorSettings, seed: int = 0) -> np.ndarray:
    """Fisher information of the head's (coef..., intercept) for n rows at the released fit."""
    design, point = synthetic_design(params, layout, settings, seed)
    eta = design @ np.r_[np.asarray(point["coef"], np.float64), float(point["intercept"])]
    mu = np.exp(np.clip(eta, -30, 30))
    if settings.outcome == "negbinomial":
        mu = mu / (1.0 + mu / float(point["concentration"]))
    return (n / ROWS) * (design * mu[:, None]).T @ design


def head_noise_cov(information: np.ndarray, sigma: float, clip: float, q: float,
                   head_weight: float, window: int) -> np.ndarray:
    """Covariance of the averaged head's DP error: (sigma C / (q w))^2 / W * I^-2."""
    inv = np.linalg.pinv(information)
    per_step = (sigma * clip / (q * head_weight)) ** 2
    cov = per_step / max(window, 1) * inv @ inv
    return 0.5 * (cov + cov.T)
