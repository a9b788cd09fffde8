"""How much DP noise is left in the averaged outcome head: the head's part of noise-awareness.

Each DP step adds N(0, (sigma C / q)^2) to every coordinate of the full-data gradient (C the
clipping norm, q the sampling rate; the head's coordinates get C / head_weight, dpsvi.py).
Averaged over the last W steps (Polyak-Ruppert), the released head is off the optimum by
I^-1 times the average of those draws: covariance (sigma C / (q w))^2 / W * I^-2, with I the
Fisher information of the head for the N rows. The batch means of the trace (trace.py) cannot
show this: the head's iterates decorrelate over more steps than a batch holds. I is computed
from the released parameters alone (post-processing): covariates drawn from the released
mixture, the rows' Poisson (or NB2) weights at the released head.

The same information corrects the average's lag (`newton_head`). Under DP noise Adam moves a
weakly informed direction of the head slowly, so the window's average can still lag behind
the optimum toward the start. The window's mean noisy gradient (trace.py) is I/N (w - w*)
plus the mean of the steps' noise, so one Newton step from the average, w - (I/N)^-1 g,
removes the lag, and what is left is the error above, converged or not. Both are exact with
the party's own information; the released mixture's rows, even calibrated to the noisy
marginals, lack its covariates' correlations, and on randhie they under-state the head's error
1.1-1.8-fold (uncalibrated: up to 3.9-fold; docs/GENERATOR.md, "The head under DP noise"),
which is why the step is off by default.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import Predictive

from twinnode.generator.calibrate import calibrate_covariates
from twinnode.generator.dpsvi import LOC, latent_index
from twinnode.generator.layout import Layout
from twinnode.generator.marginals import Marginals
from twinnode.generator.models import (COEF_PRIOR_SD, INTERCEPT_PRIOR_SD, row_features,
                                       set_up)
from twinnode.generator.sample import predicted_rows, row_sites
from twinnode.generator.settings import GeneratorSettings

ROWS = 20_000  # synthetic rows the information is averaged over


def synthetic_design(params: Mapping[str, np.ndarray], layout: Layout,
                     settings: GeneratorSettings, seed: int = 0,
                     marginals: Marginals | None = None
                     ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """ROWS covariate rows drawn from the released mixture as the head's design (features,
    then a column of ones), and the guide's point estimate they were drawn at. With the
    release's noisy `marginals`, the rows are first mapped onto them as a twin's are
    (calibrate.py): the mixture alone spreads a continuous column too wide under DP noise,
    and the head's information along it with it."""
    model, guide = set_up(layout, ROWS, settings)
    point = guide.median({k: jnp.asarray(v) for k, v in params.items()})
    out = Predictive(model, posterior_samples={k: v[None] for k, v in point.items()},
                     return_sites=row_sites(layout))(jax.random.PRNGKey(seed))
    rows = predicted_rows(out, 0, ROWS, layout)
    if marginals is not None:
        rows = calibrate_covariates(rows, layout, marginals, np.random.default_rng(seed))
    f = row_features(rows, layout, settings)
    return np.concatenate([f, np.ones((ROWS, 1))], axis=1), point


def head_information(params: Mapping[str, np.ndarray], layout: Layout, n: int,
                     settings: GeneratorSettings, seed: int = 0,
                     marginals: Marginals | None = None) -> np.ndarray:
    """Fisher information of the head's (coef..., intercept) for n rows at the released fit."""
    design, point = synthetic_design(params, layout, settings, seed, marginals)
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


def head_index(layout: Layout, settings: GeneratorSettings) -> np.ndarray:
    """Where the head's (coef..., intercept) sit in the guide's flat latent vector."""
    index = latent_index(set_up(layout, 1, settings)[1])
    return np.r_[index["coef"], index["intercept"]]


def newton_head(params: Mapping[str, np.ndarray], gradient: np.ndarray, layout: Layout,
                n: int, settings: GeneratorSettings,
                marginals: Marginals | None = None) -> dict[str, np.ndarray]:
    """The averaged parameters with the head moved one Newton step along the window's mean
    noisy gradient of the locations (per row: each row's term carries 1/n of the prior)."""
    at = head_index(layout, settings)
    prior = np.r_[np.full(len(at) - 1, COEF_PRIOR_SD), INTERCEPT_PRIOR_SD] ** -2.0
    curvature = head_information(params, layout, n, settings, marginals=marginals) \
        + np.diag(prior)
    step = np.linalg.pinv(curvature) @ (n * np.asarray(gradient, np.float64)[at])
    loc = np.array(params[LOC], np.float64)
    loc[at] -= step
    return {**params, LOC: loc.astype(np.asarray(params[LOC]).dtype)}
