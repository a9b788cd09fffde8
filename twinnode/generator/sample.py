"""Draw synthetic twin data sets from a trained posterior (free: post-processing).

Each twin comes from its own posterior draw of the model's parameters, then N rows from the
model's generative story with those parameters, decoded back to the schema's types.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import Predictive

from twinnode.generator.calibrate import calibrate_covariates, draw_outcome
from twinnode.generator.dpsvi import SCALE, head_mask
from twinnode.generator.layout import Layout, ModelData
from twinnode.generator.marginals import Marginals
from twinnode.generator.models import row_features, set_up
from twinnode.generator.settings import GeneratorSettings

_ROW_SITES = ("xb", "xn", "xr", "y")


def sample_twins(params: Mapping[str, np.ndarray], layout: Layout, n: int, k: int,
                 settings: GeneratorSettings, seed: int | None = None,
                 group: int = 10, loc_noise_sd: np.ndarray | None = None,
                 head_cov: np.ndarray | None = None,
                 marginals: Marginals | None = None) -> list[dict[str, np.ndarray]]:
    """K twins of n rows, as schema arrays (`Schema.check_arrays` layout).

    With `loc_noise_sd` (noise-aware), each twin's parameters are drawn around its own draw
    of the guide's locations: the DP noise left in them, N(0, loc_noise_sd^2), is added to
    the guide's own N(0, scale^2), both diagonal, so each draw has sd sqrt(scale^2 + noise^2).
    With `head_cov` (headnoise.py), the head's (coef..., intercept) get that DP error instead
    of the trace's estimate. With `marginals`, each twin's covariates are calibrated to its
    own draw of them before its outcome is drawn from its head (calibrate.py).
    """
    key = jax.random.PRNGKey(np.random.SeedSequence(seed).generate_state(1)[0])
    guide = set_up(layout, n, settings)[1]
    jparams = {name: jnp.asarray(v) for name, v in params.items()}
    if loc_noise_sd is not None:
        noise = np.where(head_mask(guide), 0.0, loc_noise_sd) if head_cov is not None \
            else loc_noise_sd
        jparams[SCALE] = jnp.sqrt(jparams[SCALE] ** 2 + jnp.asarray(noise) ** 2)
    draw_key, rows_key = jax.random.split(key)
    thetas = guide.sample_posterior(draw_key, jparams, sample_shape=(k,))
    if head_cov is not None:
        thetas = _add_head_noise(thetas, head_cov, jax.random.fold_in(draw_key, 1), k)
    rows_of = draw_rows(layout, n, settings)
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    twins: list[dict[str, np.ndarray]] = []
    for start in range(0, k, group):
        part = {name: v[start:start + group] for name, v in thetas.items()}
        size = len(next(iter(part.values())))
        full = {name: jnp.concatenate([v, jnp.repeat(v[:1], group - size, axis=0)])
                for name, v in part.items()}  # one shape for every group: compiled once
        out = rows_of(jax.random.fold_in(rows_key, start), full)
        for i in range(size):
            data = predicted_rows(out, i, n, layout)
            if marginals is not None:
                data = _calibrated(data, {k: np.asarray(v[i]) for k, v in part.items()},
                                   layout, settings, marginals, rng)
            twins.append(layout.decode(data))
    return twins


@lru_cache(maxsize=8)
def draw_rows(layout: Layout, n: int, settings: GeneratorSettings
              ) -> Callable[[jax.Array, Mapping[str, jax.Array]], Any]:
    """The model's rows for a group of parameter draws, jitted once per (layout, n, settings):
    a Predictive traced anew for every group recompiled each time (most of a draw's time)."""
    model = set_up(layout, n, settings)[0]
    sites = row_sites(layout)

    @jax.jit
    def rows(key: jax.Array, draws: Mapping[str, jax.Array]) -> Any:
        return Predictive(model, posterior_samples=draws, return_sites=sites)(key)

    return rows


def _calibrated(data: ModelData, theta: Mapping[str, np.ndarray], layout: Layout,
                settings: GeneratorSettings, marginals: Marginals,
                rng: np.random.Generator) -> ModelData:
    """Covariates onto a draw of the marginals, then y from this twin's own head."""
    data = calibrate_covariates(data, layout, marginals, rng)
    f = row_features(data, layout, settings)
    conc = theta.get("concentration")
    y = draw_outcome(f, np.asarray(theta["coef"], np.float64), float(theta["intercept"]),
                     settings.outcome, None if conc is None else float(conc), rng)
    return data._replace(y=y)


def _add_head_noise(thetas: dict[str, jax.Array], cov: np.ndarray, key: jax.Array,
                    k: int) -> dict[str, jax.Array]:
    """Each draw's head moved by its own N(0, cov) draw of the head's DP error."""
    p = thetas["coef"].shape[-1]
    delta = jax.random.multivariate_normal(key, jnp.zeros(p + 1), jnp.asarray(cov), (k,))
    return {**thetas, "coef": thetas["coef"] + delta[:, :p],
            "intercept": thetas["intercept"] + delta[:, p]}


def row_sites(layout: Layout) -> list[str]:
    """The model's sample sites that make up the rows (covariates and outcome)."""
    return list(_ROW_SITES) + [f"xc_{j}" for j in range(len(layout.categorical))]


def predicted_rows(out: Mapping[str, jnp.ndarray], i: int, n: int,
                   layout: Layout) -> ModelData:
    """Draw i of a Predictive's `row_sites` output, as the model's arrays."""
    def take(name: str, width: int, dtype: type) -> np.ndarray:
        if width == 0 or name not in out:
            return np.zeros((n, 0), dtype)
        return np.asarray(out[name][i], dtype).reshape(n, width)

    xc = (np.stack([np.asarray(out[f"xc_{j}"][i]) for j in range(len(layout.categorical))], 1)
          if layout.categorical else np.zeros((n, 0), np.int32))
    return ModelData(xb=take("xb", len(layout.binary), np.float32), xc=xc,
                     xn=take("xn", len(layout.count), np.float32),
                     xr=take("xr", len(layout.continuous), np.float32),
                     y=np.asarray(out["y"][i], np.float32).reshape(n))
