"""Draw synthetic twin data sets from a trained posterior (free: post-processing).

Each twin comes from its own posterior draw of the model's parameters, then N rows from the
model's generative story with those parameters, decoded back to the schema's types.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.handlers import seed as seed_handler
from numpyro.infer import Predictive

from twinnode.generator.dpsvi import SCALE
from twinnode.generator.layout import Layout, ModelData
from twinnode.generator.models import make_guide, make_model
from twinnode.generator.settings import GeneratorSettings

_ROW_SITES = ("xb", "xn", "xr", "y")


def sample_twins(params: Mapping[str, np.ndarray], layout: Layout, n: int, k: int,
                 settings: GeneratorSettings, seed: int | None = None,
                 group: int = 10, loc_noise_sd: np.ndarray | None = None
                 ) -> list[dict[str, np.ndarray]]:
    """K twins of n rows, as schema arrays (`Schema.check_arrays` layout).

    With `loc_noise_sd` (noise-aware), each twin's parameters are drawn around its own draw
    of the guide's locations: the DP noise left in them, N(0, loc_noise_sd^2), is added to
    the guide's own N(0, scale^2), both diagonal, so each draw has sd sqrt(scale^2 + noise^2).
    """
    key = jax.random.PRNGKey(np.random.SeedSequence(seed).generate_state(1)[0])
    model = make_model(layout, n, settings)
    guide = make_guide(model, layout, settings)
    seed_handler(guide, 0)(*layout.dummy())  # set up the guide's shapes; no data involved
    jparams = {name: jnp.asarray(v) for name, v in params.items()}
    if loc_noise_sd is not None:
        jparams[SCALE] = jnp.sqrt(jparams[SCALE] ** 2 + jnp.asarray(loc_noise_sd) ** 2)
    draw_key, rows_key = jax.random.split(key)
    thetas = guide.sample_posterior(draw_key, jparams, sample_shape=(k,))
    sites = list(_ROW_SITES) + [f"xc_{j}" for j in range(len(layout.categorical))]
    twins: list[dict[str, np.ndarray]] = []
    for start in range(0, k, group):
        part = {name: v[start:start + group] for name, v in thetas.items()}
        predictive = Predictive(model, posterior_samples=part, return_sites=sites)
        out = predictive(jax.random.fold_in(rows_key, start))
        for i in range(len(next(iter(part.values())))):
            twins.append(layout.decode(_model_data(out, i, n, layout)))
    return twins


def _model_data(out: Mapping[str, jnp.ndarray], i: int, n: int, layout: Layout) -> ModelData:
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
