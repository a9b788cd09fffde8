"""The DP variational inference classes, on d3p 0.2.0's `DPSVI`, and the choice between them.

Per-example gradients are clipped to norm C and the batch's gradient sum gets Gaussian noise
of std sigma * C from d3p's secure ChaCha20 PRNG. Three classes:

- d3p's `DPSVI` as it is (`variant = "dpsvi"`, fixed-size batches);
- `PoissonDPSVI`: Poisson subsampling (add/remove relation) on top of d3p, which has none: a
  batch of fixed maximum size with a validity mask, so shapes stay static under jit; the
  clipped gradients of the valid rows are summed, noised and divided by the expected batch
  size qN, a public constant, as in Opacus and TF Privacy;
- `AlignedDPSVI`: aligned DPVI (DPVIm; Jälkö, Prediger, Honkela, Kaski 2022), which
  privatises the guide locations' gradient alone.

Aligned DPVI: for a diagonal Normal guide with the reparametrisation theta = mu + s * eta, the
gradient of the ELBO with respect to the scale s is the gradient with respect to mu times eta,
plus the entropy term -1/s, which does not touch the data. So when every example in a step
shares one draw eta, only the mu-gradient needs privatising: clip each example's gradient of
the potential at theta, sum, add N(0, (sigma C)^2), and derive the scale's update from that
noisy sum. The released vector has half the dimension of d3p's (loc and scale) for the same
noise, and the accountant's sigma and epsilon describe exactly it.

Its clipping is per group (McMahan et al. 2018): the outcome head's coordinates are clipped to
C * sqrt(share) and the covariate model's to C * sqrt(1 - share), so the sum still has norm
at most C per example. Jointly clipped, the head got a few percent of the norm: on randhie the
Normal components' location gradients are ~15x larger than the head's, and the head, which the
analysis depends on, drowned in the noise.
"""
from __future__ import annotations

from typing import Any, Callable

import d3p.random as secure_rng
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from d3p.svi import DPSVI
from numpyro.infer import Trace_ELBO
from numpyro.infer.autoguide import AutoDiagonalNormal
from numpyro.infer.util import potential_energy

from twinnode.generator.settings import GeneratorSettings

LOC, SCALE = "auto_loc", "auto_scale"
ADAM_B1 = 0.9  # Adam's first-moment decay (numpyro's default), which trace.py relies on
HEAD_SITES = ("coef", "intercept", "concentration")


def make_dpsvi(model: Callable[..., None], guide: AutoDiagonalNormal,
               settings: GeneratorSettings, batching: str, sigma: float, size: int,
               expected_batch: float, head: np.ndarray | None = None) -> DPSVI:
    """The inference object for a variant and batching, clipping at C, noise sigma * C.

    `size` is the padded maximum (poisson) or the exact batch size (fixed); the noisy sum is
    divided by `expected_batch` (= qN) under Poisson batching, by `size` otherwise. `head`
    (the head's coordinates in the flat latent vector) gets `head_learning_rate`.
    """
    common = dict(model=model, guide=guide,
                  optim=numpyro.optim.Adam(step_sizes(settings, head), b1=ADAM_B1),
                  per_example_loss=Trace_ELBO(), clipping_threshold=settings.clip,
                  dp_scale=sigma, rng_suite=secure_rng)
    if settings.variant == "aligned":
        return AlignedDPSVI(expected_batch=expected_batch if batching == "poisson" else size,
                            head_share=settings.head_share, head_weight=settings.head_weight,
                            **common)
    if batching == "poisson":
        return PoissonDPSVI(expected_batch=expected_batch, **common)
    return DPSVI(**common)


def step_sizes(settings: GeneratorSettings, head: np.ndarray | None) -> Any:
    """Adam's step: one number, or per coordinate when the head has its own (a schedule that
    returns the vector; the guide's locations and scales are both flat latent vectors).

    Under DP noise Adam's step is about lr / (noise sd) times the gradient, so the head's
    slow directions (a continuous covariate's slope) take hundreds of steps to converge and
    the averaged head can lag toward its start. A larger step on the head removes the lag
    but adds its own bias; off by default (docs/GENERATOR.md, "The head under DP noise").
    """
    if head is None or settings.head_learning_rate is None:
        return settings.learning_rate
    rates = jnp.where(jnp.asarray(head), settings.head_learning_rate, settings.learning_rate)
    return lambda _: rates


def latent_index(guide: AutoDiagonalNormal) -> dict[str, np.ndarray]:
    """Per sample site of a set-up guide, the positions of its values in the flat latent
    vector (unpacking the vector 0, 1, 2, ...)."""
    index = guide._unpack_latent(np.arange(guide.latent_dim, dtype=np.float32))
    return {name: np.asarray(v).astype(int).ravel() for name, v in index.items()}


def head_mask(guide: AutoDiagonalNormal) -> np.ndarray:
    """Which coordinates of a set-up guide's flat latent vector are the outcome head's."""
    index = latent_index(guide)
    mask = np.zeros(guide.latent_dim, bool)
    for name in HEAD_SITES:
        if name in index:
            mask[index[name]] = True
    return mask


class PoissonDPSVI(DPSVI):
    """DPSVI with Poisson subsampling: a masked, padded batch and a fixed divisor.

    `masked_update` sums the clipped per-example gradients of the rows with mask 1, adds
    N(0, (sigma C)^2) noise and divides by `expected_batch` (= qN). Under add/remove the sum
    changes by at most C between neighbours, which is what the accountant assumes.
    """

    def __init__(self, *args: Any, expected_batch: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._expected_batch = float(expected_batch)

    def masked_update(self, svi_state: Any, mask: jax.Array,
                      *batch: jax.Array) -> tuple[Any, jax.Array]:
        """One step on the rows of `batch` whose `mask` is true; returns (state, mean loss)."""
        svi_state, (grad_key, noise_key) = self._split_rng_key(svi_state, 2)
        svi_state, px_loss, px_grads, _ = self._compute_per_example_gradients(
            svi_state, grad_key, *batch)
        svi_state, px_clipped = self._clip_gradients(svi_state, px_grads)
        # A row counts if it is in the batch and its gradient is finite; a non-finite one
        # contributes 0, which keeps the sensitivity at C (and one bad row from poisoning all).
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g.reshape(g.shape[0], -1)), axis=1)
                                    for g in jax.tree_util.tree_leaves(px_clipped)]), axis=0)
        keep = mask & finite

        def masked_mean(g: jax.Array) -> jax.Array:
            k = keep.reshape((-1,) + (1,) * (g.ndim - 1))
            return jnp.sum(jnp.where(k, g, 0.0), axis=0) / self._expected_batch

        grads = jax.tree_util.tree_map(masked_mean, px_clipped)
        loss = (jnp.sum(jnp.where(keep, px_loss, 0.0))
                / jnp.maximum(jnp.sum(keep.astype(jnp.float32)), 1.0))
        svi_state, noisy = self._perturb_and_reassemble_gradients(
            svi_state, noise_key, grads, self._expected_batch)
        return self._apply_gradient(svi_state, noisy), loss


class AlignedDPSVI(PoissonDPSVI):
    """DPSVI whose privatised gradient is the guide locations' alone.

    `masked_update(state, mask, *batch)` serves both batchings: Poisson (a padded batch,
    `expected_batch` = qN) and fixed-size (mask all true, `expected_batch` = the batch size).
    `head_share` is the share of C^2 that the outcome head's group is clipped to (0: one
    joint clipping, as d3p does).
    """

    def __init__(self, *args: Any, head_share: float = 0.5, head_weight: float = 1.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not 0 <= head_share < 1:
            raise ValueError(f"head_share must be in [0, 1), got {head_share}")
        if not head_weight > 0:
            raise ValueError(f"head_weight must be positive, got {head_weight}")
        self._head_share = head_share
        self._head_weight = head_weight
        self._head_mask: np.ndarray | None = None

    def init(self, rng_key: Any, *args: Any, **kwargs: Any) -> Any:
        """d3p's init, then which coordinates of the flat latent vector are the head's."""
        state = super().init(rng_key, *args, **kwargs)
        self._head_mask = head_mask(self.guide)
        return state

    def clip_per_group(self, px_grad: jax.Array) -> jax.Array:
        """Clip each example's head part to C sqrt(share), the rest to C sqrt(1 - share)."""
        head = jnp.asarray(self._head_mask)
        bounds = self._clipping_threshold * jnp.sqrt(
            jnp.where(head, self._head_share, 1.0 - self._head_share))

        def clip_one(g: jax.Array) -> jax.Array:
            nh = jnp.linalg.norm(jnp.where(head, g, 0.0))
            nr = jnp.linalg.norm(jnp.where(head, 0.0, g))
            norms = jnp.where(head, nh, nr)
            return g / jnp.maximum(1.0, norms / bounds)

        return jax.vmap(clip_one)(px_grad)

    def _weights(self) -> jax.Array:
        """Per-coordinate gradient weights: `head_weight` on the head, 1 elsewhere.

        Weighting before clipping and unweighting after the noise is DP as before (the
        weighted gradient is what is clipped to C and noised) and moves noise off the head:
        its coordinates get noise sigma C / head_weight, at the price of the rows' other
        coordinates being clipped harder when the head's weighted gradient is large.
        """
        return jnp.where(jnp.asarray(self._head_mask), self._head_weight, 1.0)

    def _potential_per_row(self, theta: jax.Array, row: tuple[jax.Array, ...]) -> jax.Array:
        """-log p(x_i | theta) - (log prior + log|J|)(theta) / N for one example."""
        args = tuple(jnp.expand_dims(a, 0) for a in row)
        unpacked = self.guide._unpack_latent(theta)
        return potential_energy(self.model, args, {}, unpacked)

    def released_sum(self, svi_state: Any, theta: jax.Array, mask: jax.Array,
                     *batch: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Sum of clipped per-example mu-gradients (what the noise protects), and the losses."""
        scale = svi_state.observation_scale
        px_value, px_grad = jax.vmap(jax.value_and_grad(
            lambda th, *row: self._potential_per_row(th, row) / scale),
            in_axes=(None,) + (0,) * len(batch))(theta, *batch)
        px_grad = px_grad * self._weights()
        if self._head_share > 0:
            clipped = self.clip_per_group(px_grad)
        else:
            _, clipped = self._clip_gradients(svi_state, px_grad)
        keep = mask & jnp.all(jnp.isfinite(clipped), axis=1)
        total = jnp.sum(jnp.where(keep[:, None], clipped, 0.0), axis=0)
        loss = jnp.sum(jnp.where(keep, px_value, 0.0)) / jnp.maximum(jnp.sum(keep), 1)
        return total, loss * scale

    def masked_update(self, svi_state: Any, mask: jax.Array,
                      *batch: jax.Array) -> tuple[Any, jax.Array]:
        """One aligned step: noise the location gradient, derive the scales' from it."""
        svi_state, (eta_key, noise_key) = self._split_rng_key(svi_state, 2)
        params = self.optim.get_params(svi_state.optim_state)
        constrained = self.constrain_fn(params)
        loc, scale = constrained[LOC], constrained[SCALE]
        eta = jax.random.normal(self._rng_suite.convert_to_jax_rng_key(eta_key), loc.shape)
        total, loss = self.released_sum(svi_state, loc + scale * eta, mask, *batch)
        svi_state, noisy = self._perturb_and_reassemble_gradients(
            svi_state, noise_key, total / self._expected_batch, self._expected_batch)
        noisy = noisy / self._weights()  # the head's share of the noise shrinks by its weight
        grads_constrained = {LOC: noisy, SCALE: noisy * eta - 1.0 / scale}
        _, pullback = jax.vjp(self.constrain_fn, params)
        (grads,) = pullback(grads_constrained)
        entropy = jnp.sum(jnp.log(scale))
        return self._apply_gradient(svi_state, grads), loss - entropy
