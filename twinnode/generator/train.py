"""DP variational inference of the twin model with d3p (DPSVI).

Per-example gradients are clipped to norm C and the batch's noisy gradient gets Gaussian
noise of std sigma * C from d3p's secure ChaCha20 PRNG. Poisson batching (add/remove) is
built here on top of d3p: a batch of fixed maximum size with a validity mask; the clipped
gradients of the valid rows are summed, noised and divided by the expected batch size q*N,
a public constant, as in Opacus and TF Privacy. The loop runs as jitted `lax.scan` chunks.
"""
from __future__ import annotations

import math
import time
from functools import lru_cache, partial
from typing import Any, Callable, NamedTuple

import d3p.random as secure_rng
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from d3p.minibatch import subsample_batchify_data
from d3p.svi import DPSVI
from d3p.util import sample_from_array
from numpyro.infer import Trace_ELBO
from numpyro.infer.autoguide import AutoDiagonalNormal
from numpyro.infer.initialization import init_to_value

from twinnode.errors import GeneratorError
from twinnode.generator.layout import Layout, ModelData
from twinnode.generator.models import twin_model
from twinnode.generator.privacy import Calibration
from twinnode.generator.settings import GeneratorSettings

ProgressFn = Callable[[int, int, float], None]  # (steps done, total steps, ELBO per row)


class TrainResult(NamedTuple):
    """What training releases: the guide's parameters, and how it went."""

    params: dict[str, np.ndarray]
    losses: np.ndarray         # mean negative ELBO per row, one per chunk
    overflow_steps: int        # Poisson batches that were truncated (almost always 0)
    seconds: float


def make_model(layout: Layout, n: int, settings: GeneratorSettings) -> Callable:
    return partial(twin_model, layout=layout, num_rows=n, components=settings.components,
                   outcome=settings.outcome, head_origin=settings.head_origin)


def public_init(layout: Layout, settings: GeneratorSettings) -> dict[str, np.ndarray]:
    """Starting values drawn from a fixed public seed (never from the data).

    Components start spread over the public range (continuous means uniform in [0, 1],
    binary rates in [0.2, 0.8]) with equal weights, and the outcome head at zero, so no
    component starts where no data can reach it.
    """
    k = settings.components
    rng = np.random.default_rng(20230405)
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


def make_guide(model: Callable, layout: Layout, settings: GeneratorSettings) -> AutoDiagonalNormal:
    """Diagonal Normal guide (init_scale 0.1) around the public starting values."""
    values = {k: jnp.asarray(v) for k, v in public_init(layout, settings).items()}
    return AutoDiagonalNormal(model, init_scale=settings.init_scale,
                              init_loc_fn=init_to_value(values=values))


class PoissonDPSVI(DPSVI):
    """DPSVI with Poisson subsampling: a masked, padded batch and a fixed divisor.

    `masked_update` sums the clipped per-example gradients of the rows with mask 1, adds
    N(0, (sigma C)^2) noise and divides by `expected_batch` (= qN). Under add/remove the sum
    changes by at most C between neighbours, which is what the accountant assumes.
    """

    def __init__(self, *args: Any, expected_batch: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._expected_batch = float(expected_batch)

    def masked_update(self, svi_state, mask, *batch):
        svi_state, (grad_key, noise_key) = self._split_rng_key(svi_state, 2)
        svi_state, px_loss, px_grads, _ = self._compute_per_example_gradients(
            svi_state, grad_key, *batch)
        svi_state, px_clipped = self._clip_gradients(svi_state, px_grads)
        # A row counts if it is in the batch and its gradient is finite; a non-finite one
        # contributes 0, which keeps the sensitivity at C (and one bad row from poisoning all).
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g.reshape(g.shape[0], -1)), axis=1)
                                    for g in jax.tree_util.tree_leaves(px_clipped)]), axis=0)
        keep = mask & finite

        def masked_mean(g):
            k = keep.reshape((-1,) + (1,) * (g.ndim - 1))
            return jnp.sum(jnp.where(k, g, 0.0), axis=0) / self._expected_batch

        grads = jax.tree_util.tree_map(masked_mean, px_clipped)
        loss = (jnp.sum(jnp.where(keep, px_loss, 0.0))
                / jnp.maximum(jnp.sum(keep.astype(jnp.float32)), 1.0))
        svi_state, noisy = self._perturb_and_reassemble_gradients(
            svi_state, noise_key, grads, self._expected_batch)
        return self._apply_gradient(svi_state, noisy), loss


def binomial_thresholds(n: int, q: float, max_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """CDF of Bin(n, q) at 0..max_batch as 64-bit fixed point, split into (hi, lo) words.

    Counting the thresholds a 64-bit uniform reaches gives an exact draw of
    min(Bin(n, q), max_batch + 1), without the float32 rounding that would distort the tail
    the overflow accounting relies on; max_batch + 1 means the batch overflowed.
    """
    from scipy.stats import binom

    sf = binom.sf(np.arange(max_batch + 1), n, q)  # P[X > k]; accurate in the upper tail
    words = [(1 << 64) - int(round(float(s) * 2.0**64)) for s in sf]
    words = [min(max(w, 0), (1 << 64) - 1) for w in words]
    return (np.array([w >> 32 for w in words], np.uint32),
            np.array([w & 0xFFFFFFFF for w in words], np.uint32))


def draw_batch_count(key, hi: jnp.ndarray, lo: jnp.ndarray) -> jnp.ndarray:
    """min(Bin(n, q), max_batch + 1) from the secure PRNG, via the thresholds above."""
    bits = secure_rng.random_bits(key, 32, (2,))
    at_or_above = (bits[0] > hi) | ((bits[0] == hi) & (bits[1] >= lo))
    return jnp.sum(at_or_above.astype(jnp.int32))


def fit(data: ModelData, layout: Layout, calibration: Calibration,
        settings: GeneratorSettings = GeneratorSettings(), seed: int | None = None,
        progress: ProgressFn | None = None) -> TrainResult:
    """Train the twin model on `data` with DP as calibrated; return the guide parameters.

    `seed=None` (the default for real releases) draws the ChaCha20 key from the OS; a fixed
    seed makes the run reproducible, and anyone who knows it can remove the noise.
    """
    n = int(data.y.shape[0])
    if n != calibration.n:
        raise GeneratorError(f"calibrated for {calibration.n} rows but given {n}")
    t0 = time.perf_counter()
    svi, run_chunk = _compiled(layout, n, settings, calibration.batching, calibration.sigma,
                               calibration.batch_size, calibration.expected_batch)
    init_key, batch_key = secure_rng.split(secure_rng.PRNGKey(seed), 2)
    arrays = tuple(jnp.asarray(a) for a in data)
    thresholds = tuple(jnp.asarray(a) for a in
                       binomial_thresholds(n, calibration.q, calibration.batch_size))
    svi_state = svi.init(init_key, *(a[:1] for a in arrays))
    total, done, overflow, losses = calibration.steps, 0, 0, []
    while done < total:
        svi_state, over, loss = run_chunk(svi_state, batch_key, jnp.uint32(done),
                                          jnp.uint32(total), arrays, thresholds)
        done = min(done + settings.chunk, total)
        overflow += int(over)
        # Divergence is judged on the parameters (post-processing of the noisy releases),
        # never on the loss, which is computed from the data outside the accountant.
        if not all(bool(jnp.all(jnp.isfinite(v))) for v in svi.get_params(svi_state).values()):
            raise GeneratorError(f"training diverged at step {done} (parameters not finite); "
                                 "try a smaller learning rate")
        per_row = float(loss) / n  # shown locally only (progress), never released
        losses.append(per_row)
        if progress is not None:
            progress(done, total, -per_row)
    params = {k: np.asarray(v) for k, v in svi.get_params(svi_state).items()}
    return TrainResult(params=params, losses=np.asarray(losses), overflow_steps=overflow,
                       seconds=time.perf_counter() - t0)


@lru_cache(maxsize=4)
def _compiled(layout: Layout, n: int, settings: GeneratorSettings, batching: str, sigma: float,
              size: int, expected_batch: float):
    """The DPSVI object and its jitted chunk of steps, reused by runs of the same shape.

    Data, keys and the step counter are arguments, not constants, so a second run with the
    same settings (a retrain, or a test) skips tracing and compiling.
    """
    model = make_model(layout, n, settings)
    common = dict(model=model, guide=make_guide(model, layout, settings),
                  optim=numpyro.optim.Adam(settings.learning_rate), per_example_loss=Trace_ELBO(),
                  clipping_threshold=settings.clip, dp_scale=sigma, rng_suite=secure_rng)
    if settings.variant == "aligned":
        from twinnode.generator.aligned import AlignedDPSVI

        svi = AlignedDPSVI(expected_batch=expected_batch if batching == "poisson" else size,
                           head_share=settings.head_share, **common)
    elif batching == "poisson":
        svi = PoissonDPSVI(expected_batch=expected_batch, **common)
    else:
        svi = DPSVI(**common)

    if batching == "poisson":
        def update(svi_state, batch_key, i, arrays, thresholds):
            count_key, pick_key = secure_rng.split(secure_rng.fold_in(batch_key, i), 2)
            m = draw_batch_count(count_key, *thresholds)  # size + 1 means: truncated
            idx = sample_from_array(pick_key, jnp.arange(n), size, 0, rng_suite=secure_rng)
            batch = tuple(jnp.take(a, idx, axis=0) for a in arrays)
            svi_state, loss = svi.masked_update(svi_state, jnp.arange(size) < m, *batch)
            return svi_state, loss, (m > size).astype(jnp.int32)
    else:
        def update(svi_state, batch_key, i, arrays, thresholds):
            _, get_batch = subsample_batchify_data(arrays, batch_size=size, rng_suite=secure_rng)
            batch = get_batch(i, batch_key)
            if isinstance(svi, PoissonDPSVI):  # the aligned update, every row in the batch
                svi_state, loss = svi.masked_update(svi_state, jnp.ones(size, bool), *batch)
            else:
                svi_state, loss = svi.update(svi_state, *batch)
            return svi_state, loss, jnp.int32(0)

    @jax.jit
    def run_chunk(svi_state, batch_key, start, total, arrays, thresholds):
        def step(carry, i):
            svi_state, overflow, loss_sum = carry
            new_state, loss, over = update(svi_state, batch_key, i, arrays, thresholds)
            active = i < total  # the last chunk may run past the step count: no-ops
            svi_state = jax.tree_util.tree_map(lambda a, b: jnp.where(active, a, b),
                                               new_state, svi_state)
            return (svi_state, overflow + jnp.where(active, over, 0),
                    loss_sum + jnp.where(active, loss, 0.0)), None

        steps = start + jnp.arange(settings.chunk, dtype=jnp.uint32)
        (svi_state, overflow, loss_sum), _ = jax.lax.scan(
            step, (svi_state, jnp.int32(0), jnp.float32(0.0)), steps)
        ran = jnp.maximum(jnp.minimum(total - start, settings.chunk), 1).astype(jnp.float32)
        return svi_state, overflow, loss_sum / ran

    return svi, run_chunk
