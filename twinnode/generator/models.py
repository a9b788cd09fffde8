"""The twin generator's probabilistic model: NumPyro functions only.

Inference (d3p DPSVI) lives in train.py and sampling in sample.py; both take `twin_model`
as a callable, in numpyro's way.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.handlers import scale

from twinnode.generator.layout import Layout

_EPS = 1e-6
MIN_SCALE = 0.01  # floor on a component's sd (share of the column's range): keeps point masses
                  # (many zeros, a few plan levels) from collapsing a component to infinite density


def head_features(xb, xc, xn, xr, layout: Layout, origin: str = "lower"):
    """The outcome head's covariates, each mapped onto [0, 1] by its public range.

    Scaling by the schema's bounds (never by data statistics) keeps every coefficient of
    order one, so N(0, 1) priors fit them. The lower bound, not the midpoint, is the zero:
    with the midpoint, a rare binary column (1 in a hundred rows) would sit at -1 in almost
    every row and its coefficient would be tied to the intercept, which under DP noise
    trains poorly; at zero, only the rows that have it inform its coefficient. (`origin=
    "midpoint"` maps onto [-1, 1] instead, as the first prototype did; kept for comparisons.)
    """
    parts = [xb]
    for j, (_, levels) in enumerate(layout.categorical):
        parts.append(jax.nn.one_hot(xc[:, j], levels)[:, 1:])
    uppers = jnp.asarray([float(u) for _, u in layout.count], jnp.float32)
    parts.append(xn / jnp.maximum(uppers, 1.0))
    parts.append(xr)
    f = jnp.concatenate([p.astype(jnp.float32) for p in parts], axis=-1)
    return 2.0 * f - 1.0 if origin == "midpoint" else f


def twin_model(xb=None, xc=None, xn=None, xr=None, y=None, *, layout: Layout,
               num_rows: int, components: int = 16, outcome: str = "poisson",
               head_origin: str = "lower"):
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
    `num_rows / batch` (a minibatch stands for the whole data set). With `xb=None` the
    model samples `num_rows` new rows instead.
    """
    k = components
    nb, nn, nr = len(layout.binary), len(layout.count), len(layout.continuous)
    weights = numpyro.sample("weights", dist.Dirichlet(jnp.ones(k)))
    p_bin = numpyro.sample("p_bin", dist.Beta(1.0, 1.0).expand([k, nb]).to_event(2)) if nb else None
    p_cat = [numpyro.sample(f"p_cat_{j}", dist.Dirichlet(jnp.ones(levels)).expand([k]).to_event(1))
             for j, (_, levels) in enumerate(layout.categorical)]
    log_rate = (numpyro.sample("count_log_rate", dist.Normal(0.0, 3.0).expand([k, nn]).to_event(2))
                if nn else None)
    if nr:
        loc = numpyro.sample("cont_loc", dist.Normal(0.5, 1.0).expand([k, nr]).to_event(2))
        sd = MIN_SCALE + numpyro.sample("cont_scale",
                                        dist.LogNormal(-2.0, 1.0).expand([k, nr]).to_event(2))
    n_features = len(layout.feature_names)
    coef = numpyro.sample("coef", dist.Normal(0.0, 1.0).expand([n_features]).to_event(1))
    intercept = numpyro.sample("intercept", dist.Normal(0.0, 2.5))
    phi = (numpyro.sample("concentration", dist.LogNormal(0.0, 2.0))
           if outcome == "negbinomial" else None)

    generating = xb is None
    n = num_rows if generating else y.shape[0]
    with numpyro.plate("rows", n), scale(scale=1.0 if generating else num_rows / n):
        if generating:
            z = numpyro.sample("z", dist.Categorical(weights))
            xb = (numpyro.sample("xb", dist.Bernoulli(probs=p_bin[z]).to_event(1))
                  if nb else jnp.zeros((n, 0)))
            xc = jnp.stack([numpyro.sample(f"xc_{j}", dist.Categorical(probs=p[z]))
                            for j, p in enumerate(p_cat)], axis=-1) if p_cat else jnp.zeros((n, 0), jnp.int32)
            xn = (numpyro.sample("xn", dist.Poisson(jnp.exp(log_rate[z])).to_event(1))
                  if nn else jnp.zeros((n, 0)))
            xr = (jnp.clip(numpyro.sample("xr", dist.Normal(loc[z], sd[z]).to_event(1)), 0.0, 1.0)
                  if nr else jnp.zeros((n, 0)))
        else:
            ll = jnp.broadcast_to(jnp.log(weights), (n, k))
            if nb:
                p = jnp.clip(p_bin, _EPS, 1 - _EPS)
                ll = ll + dist.Bernoulli(probs=p).log_prob(xb[:, None, :]).sum(-1)
            for j, p in enumerate(p_cat):
                ll = ll + jnp.log(jnp.clip(p, _EPS, 1.0))[:, xc[:, j]].T
            if nn:
                ll = ll + dist.Poisson(jnp.exp(log_rate)).log_prob(xn[:, None, :]).sum(-1)
            if nr:
                ll = ll + dist.Normal(loc, sd).log_prob(xr[:, None, :]).sum(-1)
            numpyro.factor("covariates", jax.nn.logsumexp(ll, axis=-1))
        eta = jnp.clip(intercept + head_features(xb, xc, xn, xr, layout, head_origin) @ coef,
                       -30.0, 30.0)
        mean = jnp.exp(eta)
        if outcome == "negbinomial":
            numpyro.sample("y", dist.NegativeBinomial2(mean, phi), obs=y)
        else:
            numpyro.sample("y", dist.Poisson(mean), obs=y)
