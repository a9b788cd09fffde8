"""The twin generator's probabilistic model and its guide: NumPyro functions only.

`twin_model` tells the generative story; `make_model` fixes its settings and `make_guide`
builds the diagonal Normal guide around public starting values. Inference (d3p DPSVI) lives
in dpsvi.py and train.py and sampling in sample.py; both take the model as a callable, in
numpyro's way.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.handlers import scale, seed
from numpyro.infer.autoguide import AutoDiagonalNormal
from numpyro.infer.initialization import init_to_value

from twinnode.generator.layout import Layout, ModelData
from twinnode.generator.settings import GeneratorSettings

_EPS = 1e-6
MIN_SCALE = 0.01  # floor on a component's sd (share of the column's range): keeps point masses
                  # (many zeros, a few plan levels) from collapsing a component to infinite density
COEF_PRIOR_SD, INTERCEPT_PRIOR_SD = 1.0, 2.5  # the head's priors (features on [0, 1])
PUBLIC_SEED = 20230405  # the guide's starting values come from this seed, never from data


def twin_model(xb: jax.Array | None = None, xc: jax.Array | None = None,
               xn: jax.Array | None = None, xr: jax.Array | None = None,
               y: jax.Array | None = None, *, layout: Layout, num_rows: int,
               components: int = 16, outcome: str = "poisson",
               head_origin: str = "lower", head_center: tuple[float, ...] = ()) -> None:
    """Mixture over covariates with a GLM outcome head (Prediger et al. 2023).

    Generative story:
      weights ~ Dirichlet(1, ..., 1) over `components` mixture components;
      per component and covariate column, flat priors on its likelihood's parameters:
        binary      x ~ Bernoulli(p),          p ~ Beta(1, 1)
        categorical x ~ Categorical(pi),       pi ~ Dirichlet(1, ..., 1)
        count       x ~ Poisson(exp(r)),       r ~ Normal(0, 3)
        continuous  u ~ Normal(m, s) on the value scaled to [0, 1] by the public bounds,
                    m ~ Normal(0.5, 1), s = 0.01 + LogNormal(-2, 1);
      for each row: z ~ Categorical(weights), covariates independent given z;
      outcome y ~ Poisson(exp(b + w . f(x))) (or NegBinomial with concentration phi),
      w ~ Normal(0, 1) per feature f of `head_features`, b ~ Normal(0, 2.5).

    With data given, z is summed out, and the rows' log-likelihood is scaled by
    `num_rows / batch` (a minibatch stands for the whole data set). Without data (`xb=None`)
    the model samples `num_rows` new rows instead.
    """
    mixture = mixture_prior(layout, components)
    coef = numpyro.sample("coef", dist.Normal(0.0, COEF_PRIOR_SD)
                          .expand([len(layout.feature_names)]).to_event(1))
    intercept = numpyro.sample("intercept", dist.Normal(0.0, INTERCEPT_PRIOR_SD))
    phi = (numpyro.sample("concentration", dist.LogNormal(0.0, 2.0))
           if outcome == "negbinomial" else None)

    covariates = (None if xb is None or xc is None or xn is None or xr is None
                  else (xb, xc, xn, xr))
    n = num_rows if covariates is None else covariates[0].shape[0]
    with numpyro.plate("rows", n), scale(scale=1.0 if covariates is None else num_rows / n):
        if covariates is None:
            covariates = sample_covariates(mixture, n)
        else:
            numpyro.factor("covariates", covariate_log_likelihood(mixture, *covariates))
        f = head_features(*covariates, layout, head_origin, head_center)
        mean = jnp.exp(jnp.clip(intercept + f @ coef, -30.0, 30.0))
        numpyro.sample("y", dist.NegativeBinomial2(mean, phi) if outcome == "negbinomial"
                       else dist.Poisson(mean), obs=y)


class Mixture(NamedTuple):
    """One draw of the covariate mixture's parameters; None where the schema has no such column."""

    weights: jax.Array                 # (k,)
    p_bin: jax.Array | None            # (k, n_binary) Bernoulli probabilities
    p_cat: list[jax.Array]             # per categorical column: (k, levels) probabilities
    log_rate: jax.Array | None         # (k, n_count) Poisson log rates
    loc: jax.Array | None              # (k, n_continuous) Normal means on [0, 1]
    sd: jax.Array | None               # (k, n_continuous) Normal sds, MIN_SCALE and up


def mixture_prior(layout: Layout, k: int) -> Mixture:
    """The mixture's sample sites: weights, then each column group's parameters."""
    nb, nn, nr = len(layout.binary), len(layout.count), len(layout.continuous)
    weights = numpyro.sample("weights", dist.Dirichlet(jnp.ones(k)))
    p_bin = numpyro.sample("p_bin", dist.Beta(1.0, 1.0).expand([k, nb]).to_event(2)) if nb else None
    p_cat = [numpyro.sample(f"p_cat_{j}", dist.Dirichlet(jnp.ones(levels)).expand([k]).to_event(1))
             for j, (_, levels) in enumerate(layout.categorical)]
    log_rate = (numpyro.sample("count_log_rate", dist.Normal(0.0, 3.0).expand([k, nn]).to_event(2))
                if nn else None)
    loc = sd = None
    if nr:
        loc = numpyro.sample("cont_loc", dist.Normal(0.5, 1.0).expand([k, nr]).to_event(2))
        sd = MIN_SCALE + numpyro.sample("cont_scale",
                                        dist.LogNormal(-2.0, 1.0).expand([k, nr]).to_event(2))
    return Mixture(weights, p_bin, p_cat, log_rate, loc, sd)


def sample_covariates(mix: Mixture, n: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """n new rows' covariates (xb, xc, xn, xr): a component z per row, then each column."""
    z = numpyro.sample("z", dist.Categorical(mix.weights))
    xb = (numpyro.sample("xb", dist.Bernoulli(probs=mix.p_bin[z]).to_event(1))
          if mix.p_bin is not None else jnp.zeros((n, 0)))
    xc = (jnp.stack([numpyro.sample(f"xc_{j}", dist.Categorical(probs=p[z]))
                     for j, p in enumerate(mix.p_cat)], axis=-1)
          if mix.p_cat else jnp.zeros((n, 0), jnp.int32))
    xn = (numpyro.sample("xn", dist.Poisson(jnp.exp(mix.log_rate[z])).to_event(1))
          if mix.log_rate is not None else jnp.zeros((n, 0)))
    xr = (jnp.clip(numpyro.sample("xr", dist.Normal(mix.loc[z], mix.sd[z]).to_event(1)), 0.0, 1.0)
          if mix.loc is not None and mix.sd is not None else jnp.zeros((n, 0)))
    return xb, xc, xn, xr


def covariate_log_likelihood(mix: Mixture, xb: jax.Array, xc: jax.Array, xn: jax.Array,
                             xr: jax.Array) -> jax.Array:
    """Each row's log-likelihood of its covariates, the component summed out: (n,)."""
    ll = jnp.broadcast_to(jnp.log(mix.weights), (xb.shape[0], mix.weights.shape[0]))
    if mix.p_bin is not None:
        p = jnp.clip(mix.p_bin, _EPS, 1 - _EPS)
        ll = ll + dist.Bernoulli(probs=p).log_prob(xb[:, None, :]).sum(-1)
    for j, p in enumerate(mix.p_cat):
        ll = ll + jnp.log(jnp.clip(p, _EPS, 1.0))[:, xc[:, j]].T
    if mix.log_rate is not None:
        ll = ll + dist.Poisson(jnp.exp(mix.log_rate)).log_prob(xn[:, None, :]).sum(-1)
    if mix.loc is not None and mix.sd is not None:
        ll = ll + dist.Normal(mix.loc, mix.sd).log_prob(xr[:, None, :]).sum(-1)
    return jax.nn.logsumexp(ll, axis=-1)


def head_features(xb: jax.Array, xc: jax.Array, xn: jax.Array, xr: jax.Array, layout: Layout,
                  origin: str = "lower", center: tuple[float, ...] = ()) -> jax.Array:
    """The outcome head's covariates, each mapped onto [0, 1] by its public range.

    Scaling by the schema's bounds (never by data statistics) keeps every coefficient of
    order one, so N(0, 1) priors fit them. The lower bound, not the midpoint, is the zero:
    with the midpoint, a rare binary column (1 in a hundred rows) would sit at -1 in almost
    every row and its coefficient would be tied to the intercept, which under DP noise
    trains poorly; at zero, only the rows that have it inform its coefficient. (`origin=
    "midpoint"` maps onto [-1, 1] instead, as the first prototype did; kept for comparisons.)
    A `center` (one value per feature: the noisy marginal means, anchor.py) is subtracted
    last, so the intercept is the log rate at the average row and no longer tied to the
    slopes (`center_head`, off by default: docs/GENERATOR.md, "The head under DP noise").
    """
    parts = [xb]
    for j, (_, levels) in enumerate(layout.categorical):
        parts.append(jax.nn.one_hot(xc[:, j], levels)[:, 1:])
    uppers = jnp.asarray([float(u) for _, u in layout.count], jnp.float32)
    parts.append(xn / jnp.maximum(uppers, 1.0))
    parts.append(xr)
    f = jnp.concatenate([p.astype(jnp.float32) for p in parts], axis=-1)
    f = 2.0 * f - 1.0 if origin == "midpoint" else f
    return f - jnp.asarray(center, jnp.float32) if center else f


def row_features(data: ModelData, layout: Layout, settings: GeneratorSettings) -> np.ndarray:
    """`head_features` of a set of rows given as the model's arrays, as float64 numpy."""
    xb, xc, xn, xr = (jnp.asarray(a) for a in data[:4])
    return np.asarray(head_features(xb, xc, xn, xr, layout, settings.head_origin,
                                    settings.head_center), np.float64)


def make_model(layout: Layout, n: int, settings: GeneratorSettings) -> Callable[..., None]:
    """`twin_model` for a schema's layout, n rows and the settings' model options."""
    return partial(twin_model, layout=layout, num_rows=n, components=settings.components,
                   outcome=settings.outcome, head_origin=settings.head_origin,
                   head_center=settings.head_center)


def public_init(layout: Layout, settings: GeneratorSettings) -> dict[str, np.ndarray]:
    """Starting values drawn from a fixed public seed (never from the data).

    Components start spread over the public range (continuous means uniform in [0, 1],
    binary rates in [0.2, 0.8]) with equal weights, and the outcome head at zero, so no
    component starts where no data can reach it.
    """
    k = settings.components
    rng = np.random.default_rng(PUBLIC_SEED)
    init: dict[str, np.ndarray] = {
        "weights": np.full(k, 1.0 / k, np.float32),
        "coef": np.zeros(len(layout.feature_names), np.float32),
        "intercept": np.zeros((), np.float32),
    }
    if layout.binary:
        init["p_bin"] = rng.uniform(0.2, 0.8, (k, len(layout.binary))).astype(np.float32)
    for j, (_, levels) in enumerate(layout.categorical):
        init[f"p_cat_{j}"] = rng.dirichlet(np.full(levels, 5.0), k).astype(np.float32)
    if layout.count:
        init["count_log_rate"] = rng.normal(0.0, 1.0, (k, len(layout.count))).astype(np.float32)
    if layout.continuous:
        init["cont_loc"] = rng.uniform(0.05, 0.95, (k, len(layout.continuous))).astype(np.float32)
        init["cont_scale"] = np.full((k, len(layout.continuous)), 0.15, np.float32)
    if settings.outcome == "negbinomial":
        init["concentration"] = np.ones((), np.float32)
    return init


def make_guide(model: Callable[..., None], layout: Layout, settings: GeneratorSettings,
               start: Mapping[str, np.ndarray] | None = None) -> AutoDiagonalNormal:
    """Diagonal Normal guide (init_scale 0.1) around `start` (default: the public values)."""
    values = {k: jnp.asarray(v) for k, v in
              (public_init(layout, settings) if start is None else start).items()}
    return AutoDiagonalNormal(model, init_scale=settings.init_scale,
                              init_loc_fn=init_to_value(values=values))


def set_up(layout: Layout, n: int, settings: GeneratorSettings,
           start: Mapping[str, np.ndarray] | None = None
           ) -> tuple[Callable[..., None], AutoDiagonalNormal]:
    """The model for n rows and its guide, set up (shapes, unconstrained start) on one
    harmless dummy row: no data involved."""
    model = make_model(layout, n, settings)
    guide = make_guide(model, layout, settings, start)
    seed(guide, 0)(*layout.dummy())
    return model, guide


def initial_latent(layout: Layout, n: int, settings: GeneratorSettings,
                   start: Mapping[str, np.ndarray]) -> np.ndarray:
    """The guide's flat unconstrained location vector for starting values `start`."""
    return np.asarray(set_up(layout, n, settings, start)[1]._init_latent)
