"""Training the twin model with DP: the plan's steps as jitted chunks, and the public start.

`fit` runs the steps of a calibration (privacy.py) with one of the inference classes of
dpsvi.py: it draws each step's batch from d3p's secure PRNG (Poisson: a batch size drawn
exactly from Binomial(N, q), then that many rows padded to the calibrated maximum; fixed:
d3p's batchifier), runs the steps as jitted `lax.scan` chunks, and stops on divergence.

Progress is reported by time, not only per chunk: every TICK_EVERY steps the compiled chunk
calls back to the host (`jax.debug.callback` under a `lax.cond`, a few microseconds), and the
host passes the step and the chunk's running mean loss on at most every `PROGRESS_EVERY`
seconds. A chunk of 500 steps on a large batch can take many seconds; the callback keeps the
reports under a second apart without shrinking the chunks (which would cost per-chunk work).
"""
from __future__ import annotations

import threading
import time
from functools import lru_cache
from typing import Any, Callable, Mapping, NamedTuple

import d3p.random as secure_rng
import jax
import jax.numpy as jnp
import numpy as np
from jax.example_libraries.optimizers import unpack_optimizer_state
from d3p.minibatch import subsample_batchify_data
from d3p.util import sample_from_array

from twinnode.errors import GeneratorError
from twinnode.generator.dpsvi import ADAM_B1, LOC, PoissonDPSVI, head_mask, make_dpsvi
from twinnode.generator.layout import Layout, ModelData
from twinnode.generator.models import initial_latent, make_guide, make_model, set_up
from twinnode.generator.privacy import Calibration
from twinnode.generator.settings import GeneratorSettings
from twinnode.generator.trace import TraceTail

ProgressFn = Callable[[int, int, float], None]  # (steps done, total steps, ELBO per row)
Arrays = tuple[jax.Array, ...]
MOMENT = "adam_m"        # the trace's series of Adam's first moment of the locations
TICK_EVERY = 8          # steps between the compiled chunk's host callbacks
PROGRESS_EVERY = 0.5    # seconds: at most this often a report inside a chunk


class _Reporter:
    """Passes (done, total, ELBO/row) on at chunk ends, and inside a chunk at most every
    PROGRESS_EVERY seconds; the ticks come from XLA's thread, hence the lock."""

    def __init__(self, progress: ProgressFn, total: int, n: int) -> None:
        self.progress, self.total, self.n = progress, total, n
        self.lock, self.last = threading.Lock(), time.monotonic()

    def tick(self, step: int, loss: float) -> None:
        with self.lock:
            now = time.monotonic()
            if now - self.last >= PROGRESS_EVERY and step < self.total:
                self.last = now
                self.progress(step, self.total, -loss / self.n)

    def chunk_end(self, done: int, loss: float) -> None:
        with self.lock:
            self.last = time.monotonic()
            self.progress(done, self.total, -loss / self.n)


_reporters: list[_Reporter] = []  # the running fit's, read by the compiled chunk's callback


def _tick(step: Any, loss: Any) -> None:
    """Host side of the in-chunk callback (a module function: the compiled chunk is cached)."""
    if _reporters:
        _reporters[-1].tick(int(step), float(loss))


class TrainResult(NamedTuple):
    """What training releases: the guide's parameters, and how it went."""

    params: dict[str, np.ndarray]  # averaged over the trace's tail when settings.average > 0
    losses: np.ndarray         # mean negative ELBO per row, one per chunk
    overflow_steps: int        # Poisson batches that were truncated (almost always 0)
    seconds: float
    loc_noise_sd: np.ndarray | None = None  # DP noise in the averaged locations (trace.py)
    loc_gradient: np.ndarray | None = None  # the window's mean noisy gradient, per row



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


def draw_batch_count(key: jax.Array, hi: jax.Array, lo: jax.Array) -> jax.Array:
    """min(Bin(n, q), max_batch + 1) from the secure PRNG, via the thresholds above."""
    bits = secure_rng.random_bits(key, 32, (2,))
    at_or_above = (bits[0] > hi) | ((bits[0] == hi) & (bits[1] >= lo))
    return jnp.sum(at_or_above.astype(jnp.int32))


def fit(data: ModelData, layout: Layout, calibration: Calibration,
        settings: GeneratorSettings = GeneratorSettings(), seed: int | None = None,
        progress: ProgressFn | None = None,
        start: Mapping[str, np.ndarray] | None = None) -> TrainResult:
    """Train the twin model on `data` with DP as calibrated; return the guide parameters.

    `seed=None` (the default for real releases) draws the ChaCha20 key from the OS; a fixed
    seed makes the run reproducible, and anyone who knows it can remove the noise. `start`
    replaces the public starting values (anchor.py: from the noisy marginals).
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
    if start is not None:
        svi_state = _restart(svi, svi_state, initial_latent(layout, n, settings, start))
    total = calibration.steps
    tail = TraceTail(total, settings.average)
    reporter = None if progress is None else _Reporter(progress, total, n)
    if reporter is not None:
        reporter.chunk_end(0, float("nan"))  # about to step (the first chunk compiles)
        _reporters.append(reporter)
    try:
        svi_state, overflow, losses = _steps(svi, run_chunk, svi_state, batch_key, arrays,
                                             thresholds, total, settings.chunk, tail, reporter)
    finally:
        if reporter is not None:
            _reporters.remove(reporter)
    gradient = None
    if tail.steps:  # iterate averaging (free: post-processing of the released trace)
        params = {k: np.asarray(v) for k, v in svi.constrain_fn(
            {k: jnp.asarray(v) for k, v in tail.mean().items() if k != MOMENT}).items()}
        noise = tail.mean_sd()[LOC]
        gradient = tail.mean_gradient(MOMENT, ADAM_B1)
        if gradient is not None:  # d3p scales the step's gradient up to the N rows
            gradient = gradient / float(svi_state.observation_scale)
    else:
        params = {k: np.asarray(v) for k, v in svi.get_params(svi_state).items()}
        noise = None
    return TrainResult(params=params, losses=np.asarray(losses), overflow_steps=overflow,
                       seconds=time.perf_counter() - t0, loc_noise_sd=noise,
                       loc_gradient=gradient)


def _steps(svi: Any, run_chunk: Callable[..., Any], svi_state: Any, batch_key: jax.Array,
           arrays: Arrays, thresholds: Arrays, total: int, chunk: int, tail: TraceTail,
           reporter: _Reporter | None) -> tuple[Any, int, list[float]]:
    """Run the `total` steps chunk by chunk; (final state, overflowed batches, loss/row per
    chunk). Raises GeneratorError when the parameters stop being finite."""
    n = int(arrays[0].shape[0])
    done, overflow, losses = 0, 0, []
    while done < total:
        svi_state, over, loss, trace = run_chunk(svi_state, batch_key, jnp.uint32(done),
                                                 jnp.uint32(total), arrays, thresholds)
        tail.add(done, {k: np.asarray(v) for k, v in trace.items()})
        done = min(done + chunk, total)
        overflow += int(over)
        # Divergence is judged on the parameters (post-processing of the noisy releases),
        # never on the loss, which is computed from the data outside the accountant.
        if not all(bool(jnp.all(jnp.isfinite(v))) for v in svi.get_params(svi_state).values()):
            raise GeneratorError(f"training diverged at step {done} (parameters not finite); "
                                 "try a smaller learning rate")
        losses.append(float(loss) / n)  # shown locally only (progress), never released
        if reporter is not None:
            reporter.chunk_end(done, float(loss))
    return svi_state, overflow, losses


def _restart(svi: Any, svi_state: Any, latent: np.ndarray) -> Any:
    """The state with the guide's locations moved to `latent` (Adam's moments still zero)."""
    params = dict(svi.optim.get_params(svi_state.optim_state))
    params[LOC] = jnp.asarray(latent, params[LOC].dtype)
    return svi_state._replace(optim_state=svi.optim.init(params))


def _trace_row(svi: Any, svi_state: Any) -> dict[str, jax.Array]:
    """What the trace keeps of a step: the parameters, and Adam's first moment of the
    locations (the noisy gradients' running mean, from which trace.py recovers the window's
    mean gradient for the head's Newton step, headnoise.py)."""
    row = dict(svi.optim.get_params(svi_state.optim_state))
    row[MOMENT] = unpack_optimizer_state(svi_state.optim_state[1])[LOC].subtree[1]
    return row


@lru_cache(maxsize=4)
def _compiled(layout: Layout, n: int, settings: GeneratorSettings, batching: str, sigma: float,
              size: int, expected_batch: float) -> tuple[Any, Callable[..., Any]]:
    """The DPSVI object and its jitted chunk of steps, reused by runs of the same shape.

    Data, keys and the step counter are arguments, not constants, so a second run with the
    same settings (a retrain, or a test) skips tracing and compiling.
    """
    model = make_model(layout, n, settings)
    head = (None if settings.head_learning_rate is None
            else head_mask(set_up(layout, n, settings)[1]))
    svi = make_dpsvi(model, make_guide(model, layout, settings), settings, batching, sigma,
                     size, expected_batch, head)

    if batching == "poisson":
        def update(svi_state: Any, batch_key: jax.Array, i: jax.Array, arrays: Arrays,
                   thresholds: Arrays) -> tuple[Any, jax.Array, jax.Array]:
            count_key, pick_key = secure_rng.split(secure_rng.fold_in(batch_key, i), 2)
            m = draw_batch_count(count_key, *thresholds)  # size + 1 means: truncated
            idx = sample_from_array(pick_key, jnp.arange(n), size, 0, rng_suite=secure_rng)
            batch = tuple(jnp.take(a, idx, axis=0) for a in arrays)
            svi_state, loss = svi.masked_update(svi_state, jnp.arange(size) < m, *batch)
            return svi_state, loss, (m > size).astype(jnp.int32)
    else:
        def update(svi_state: Any, batch_key: jax.Array, i: jax.Array, arrays: Arrays,
                   thresholds: Arrays) -> tuple[Any, jax.Array, jax.Array]:
            _, get_batch = subsample_batchify_data(arrays, batch_size=size, rng_suite=secure_rng)
            batch = get_batch(i, batch_key)
            if isinstance(svi, PoissonDPSVI):  # the aligned update, every row in the batch
                svi_state, loss = svi.masked_update(svi_state, jnp.ones(size, bool), *batch)
            else:
                svi_state, loss = svi.update(svi_state, *batch)
            return svi_state, loss, jnp.int32(0)

    @jax.jit
    def run_chunk(svi_state: Any, batch_key: jax.Array, start: jax.Array, total: jax.Array,
                  arrays: Arrays, thresholds: Arrays) -> tuple[Any, jax.Array, jax.Array, Any]:
        def step(carry: tuple[Any, jax.Array, jax.Array], i: jax.Array) -> tuple[Any, Any]:
            svi_state, overflow, loss_sum = carry
            new_state, loss, over = update(svi_state, batch_key, i, arrays, thresholds)
            active = i < total  # the last chunk may run past the step count: no-ops
            svi_state = jax.tree_util.tree_map(lambda a, b: jnp.where(active, a, b),
                                               new_state, svi_state)
            loss_sum = loss_sum + jnp.where(active, loss, 0.0)
            jax.lax.cond(active & ((i + 1) % TICK_EVERY == 0),  # progress by time: _tick
                         lambda: jax.debug.callback(_tick, i + 1, loss_sum / (i + 1 - start)),
                         lambda: None)
            return ((svi_state, overflow + jnp.where(active, over, 0), loss_sum),
                    _trace_row(svi, svi_state))

        steps = start + jnp.arange(settings.chunk, dtype=jnp.uint32)
        (svi_state, overflow, loss_sum), trace = jax.lax.scan(
            step, (svi_state, jnp.int32(0), jnp.float32(0.0)), steps)
        ran = jnp.maximum(jnp.minimum(total - start, settings.chunk), 1).astype(jnp.float32)
        return svi_state, overflow, loss_sum / ran, trace

    return svi, run_chunk
