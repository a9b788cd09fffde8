"""Aligned DP variational inference (DPVIm; Jälkö, Prediger, Honkela, Kaski 2022).

For a diagonal Normal guide with the reparametrisation theta = mu + s * eta, the gradient of
the ELBO with respect to the scale s is the gradient with respect to mu times eta, plus the
entropy term -1/s, which does not touch the data. So when every example in a step shares one
draw eta, only the mu-gradient needs privatising: clip each example's gradient of the
potential at theta, sum, add N(0, (sigma C)^2), and derive the scale's update from that noisy
sum. The released vector has half the dimension of d3p's (loc and scale) for the same noise,
and the accountant's sigma and epsilon describe exactly it.

Clipping is per group (McMahan et al. 2018): the outcome head's coordinates are clipped to
C * sqrt(share) and the covariate model's to C * sqrt(1 - share), so the sum still has norm
at most C per example. Jointly clipped, the head got a few percent of the norm: on randhie the
Normal components' location gradients are ~15x larger than the head's, and the head, which the
analysis depends on, drowned in the noise.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer.util import potential_energy

from twinnode.generator.train import PoissonDPSVI

LOC, SCALE = "auto_loc", "auto_scale"
HEAD_SITES = ("coef", "intercept", "concentration")


class AlignedDPSVI(PoissonDPSVI):
    """DPSVI whose privatised gradient is the guide locations' alone.

    `masked_update(state, mask, *batch)` serves both batchings: Poisson (a padded batch,
    `expected_batch` = qN) and fixed-size (mask all true, `expected_batch` = the batch size).
    `head_share` is the share of C^2 that the outcome head's group is clipped to (0: one
    joint clipping, as d3p does).
    """

    def __init__(self, *args: Any, head_share: float = 0.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not 0 <= head_share < 1:
            raise ValueError(f"head_share must be in [0, 1), got {head_share}")
        self._head_share = head_share
        self._head_mask: np.ndarray | None = None

    def init(self, rng_key, *args, **kwargs):
        state = super().init(rng_key, *args, **kwargs)
        dim = self.guide.latent_dim
        index = self.guide._unpack_latent(np.arange(dim, dtype=np.float32))
        head = np.zeros(dim, bool)
        for name in HEAD_SITES:
            if name in index:
                head[np.asarray(index[name]).astype(int).ravel()] = True
        self._head_mask = head
        return state

    def clip_per_group(self, px_grad: jnp.ndarray) -> jnp.ndarray:
        """Clip each example's head part to C sqrt(share), the rest to C sqrt(1 - share)."""
        head = jnp.asarray(self._head_mask)
        bounds = self._clipping_threshold * jnp.sqrt(
            jnp.where(head, self._head_share, 1.0 - self._head_share))

        def clip_one(g):
            nh = jnp.linalg.norm(jnp.where(head, g, 0.0))
            nr = jnp.linalg.norm(jnp.where(head, 0.0, g))
            norms = jnp.where(head, nh, nr)
            return g / jnp.maximum(1.0, norms / bounds)

        return jax.vmap(clip_one)(px_grad)

    def _potential_per_row(self, theta: jnp.ndarray, row: tuple[jnp.ndarray, ...]) -> jnp.ndarray:
        """-log p(x_i | theta) - (log prior + log|J|)(theta) / N for one example."""
        args = tuple(jnp.expand_dims(a, 0) for a in row)
        unpacked = self.guide._unpack_latent(theta)
        return potential_energy(self.model, args, {}, unpacked)

    def released_sum(self, svi_state: Any, theta: jnp.ndarray, mask: jnp.ndarray,
                     *batch: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Sum of clipped per-example mu-gradients (what the noise protects), and the losses."""
        scale = svi_state.observation_scale
        px_value, px_grad = jax.vmap(jax.value_and_grad(
            lambda th, *row: self._potential_per_row(th, row) / scale),
            in_axes=(None,) + (0,) * len(batch))(theta, *batch)
        if self._head_share > 0:
            clipped = self.clip_per_group(px_grad)
        else:
            _, clipped = self._clip_gradients(svi_state, px_grad)
        keep = mask & jnp.all(jnp.isfinite(clipped), axis=1)
        total = jnp.sum(jnp.where(keep[:, None], clipped, 0.0), axis=0)
        loss = jnp.sum(jnp.where(keep, px_value, 0.0)) / jnp.maximum(jnp.sum(keep), 1)
        return total, loss * scale

    def masked_update(self, svi_state, mask, *batch):
        svi_state, (eta_key, noise_key) = self._split_rng_key(svi_state, 2)
        params = self.optim.get_params(svi_state.optim_state)
        constrained = self.constrain_fn(params)
        loc, scale = constrained[LOC], constrained[SCALE]
        eta = jax.random.normal(self._rng_suite.convert_to_jax_rng_key(eta_key), loc.shape)
        total, loss = self.released_sum(svi_state, loc + scale * eta, mask, *batch)
        svi_state, noisy = self._perturb_and_reassemble_gradients(
            svi_state, noise_key, total / self._expected_batch, self._expected_batch)
        grads_constrained = {LOC: noisy, SCALE: noisy * eta - 1.0 / scale}
        _, pullback = jax.vjp(self.constrain_fn, params)
        (grads,) = pullback(grads_constrained)
        entropy = jnp.sum(jnp.log(scale))
        return self._apply_gradient(svi_state, grads), loss - entropy
