"""The DP generator: training really is private, posteriors round-trip, twins fit the schema."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from twinnode.data import frame_to_arrays
from twinnode.errors import BudgetExceeded, GeneratorError, SchemaError
from twinnode.generator.layout import Layout
from twinnode.generator.posterior import Posterior
from twinnode.generator.privacy import Calibration, Ledger
from twinnode.generator.release import draw_release
from twinnode.generator.sample import sample_twins
from twinnode.generator.settings import GeneratorSettings, TrainPlan
from twinnode.generator.train import binomial_thresholds, draw_batch_count, fit
from twinnode.generator.worker import Job, Worker
from twinnode.schema import Schema

SETTINGS = GeneratorSettings(components=3, learning_rate=1e-2, chunk=50)


def calibration(n: int, sigma: float, batching: str = "poisson", steps: int = 100) -> Calibration:
    """A hand-made calibration (the accountant is tested in test_privacy.py)."""
    batch = 20 if batching == "poisson" else 10
    return Calibration(batching=batching, relation="add-remove" if batching == "poisson"
                       else "substitute", epsilon=1.0, delta=1 / n, sigma=sigma,
                       epsilon_accountant=1.0, delta_accountant=1 / n, delta_overflow=0.0,
                       q=10 / n, steps=steps, n=n, batch_size=batch, expected_batch=10.0)


@pytest.fixture(scope="module")
def trained(request):
    from conftest import SMALL_SCHEMA, make_small_frame

    schema = Schema.from_toml(SMALL_SCHEMA)
    frame = make_small_frame(schema, n=200, seed=1)
    layout = Layout.from_schema(schema)
    data = layout.encode(frame_to_arrays(schema, frame))
    runs = {seed: fit(data, layout, calibration(200, 1.0), SETTINGS, seed=seed) for seed in (1, 2)}
    return schema, frame, layout, data, runs


def test_noise_seed_changes_the_released_parameters(trained):
    *_, runs = trained
    a, b = runs[1].params["auto_loc"], runs[2].params["auto_loc"]
    assert a.shape == b.shape and np.abs(a - b).max() > 1e-3


def test_same_seed_reproduces_the_run_exactly(trained):
    schema, frame, layout, data, runs = trained
    again = fit(data, layout, calibration(200, 1.0), SETTINGS, seed=1)
    np.testing.assert_array_equal(again.params["auto_loc"], runs[1].params["auto_loc"])


def test_masked_update_adds_noise_of_std_sigma_c_over_expected_batch(trained):
    # Prepare: SGD with step 1, so the parameter change is the released noisy gradient;
    # an all-zero mask leaves the gradient sum at 0, so what remains is the noise alone.
    import d3p.random as secure_rng
    import jax
    import jax.numpy as jnp
    import numpyro
    from numpyro.infer import Trace_ELBO

    from twinnode.generator.dpsvi import PoissonDPSVI
    from twinnode.generator.models import make_guide, make_model

    schema, frame, layout, data, runs = trained
    n, sigma, clip, expected = 200, 3.0, 2.0, 10.0
    model = make_model(layout, n, SETTINGS)
    svi = PoissonDPSVI(model, make_guide(model, layout, SETTINGS), numpyro.optim.SGD(1.0),
                       Trace_ELBO(), clipping_threshold=clip, dp_scale=sigma,
                       rng_suite=secure_rng, expected_batch=expected)
    batch = tuple(jnp.asarray(a[:20]) for a in data)
    state = svi.init(secure_rng.PRNGKey(0), *(a[:1] for a in batch))
    before = svi.optim.get_params(state.optim_state)["auto_loc"]
    # Execute: a few steps, each adding fresh noise
    update = jax.jit(svi.masked_update)
    steps = []
    for _ in range(10):
        state, _ = update(state, jnp.zeros(20, bool), *batch)
        after = svi.optim.get_params(state.optim_state)["auto_loc"]
        steps.append(np.asarray(after - before))
        before = after
    step = np.concatenate(steps)
    # Assert: std of the noise is sigma * C / (qN), scaled back by the N of the likelihood
    assert step.std() == pytest.approx(sigma * clip / expected * n, rel=0.15)
    assert abs(step.mean()) < 0.2 * step.std()


def test_fixed_batching_trains_too(trained):
    schema, frame, layout, data, runs = trained
    res = fit(data, layout, calibration(200, 1.0, "fixed"), SETTINGS, seed=3)
    assert np.isfinite(res.losses).all() and res.overflow_steps == 0


def test_wrong_row_count_for_the_calibration_is_refused(trained):
    schema, frame, layout, data, runs = trained
    with pytest.raises(GeneratorError, match="calibrated for 300 rows"):
        fit(data, layout, calibration(300, 1.0), SETTINGS)


def test_batch_counts_follow_the_binomial_and_overflow_is_marked():
    import d3p.random as rng
    import jax

    n, q, cap = 100, 0.1, 14
    hi, lo = binomial_thresholds(n, q, cap)
    keys = rng.split(rng.PRNGKey(7), 4000)
    counts = np.asarray(jax.vmap(lambda k: draw_batch_count(k, hi, lo))(keys))
    from scipy.stats import binom

    assert counts.max() == cap + 1  # overflow shows as cap + 1
    assert abs(counts.mean() - np.minimum(binom.rvs(n, q, size=200000, random_state=0),
                                          cap + 1).mean()) < 0.15
    assert abs((counts == 10).mean() - binom.pmf(10, n, q)) < 0.03


def test_twins_fit_the_schema_and_differ_between_draws(trained):
    schema, frame, layout, data, runs = trained
    twins = sample_twins(runs[1].params, layout, 200, 3, SETTINGS, seed=0)
    assert len(twins) == 3
    for t in twins:
        assert schema.check_arrays(t) == 200
    assert not np.array_equal(twins[0]["age"], twins[1]["age"])


def test_posterior_round_trips_and_refuses_another_schema(tmp_path, trained):
    schema, frame, layout, data, runs = trained
    post = Posterior(params=runs[1].params, schema_hash=schema.hash, n=200, settings=SETTINGS,
                     calibration=calibration(200, 1.0), release="r1", created=1.0)
    path = post.save(tmp_path / "p.npz")
    again = Posterior.load(path, schema)
    np.testing.assert_array_equal(again.params["auto_loc"], post.params["auto_loc"])
    assert again.calibration == post.calibration and again.settings == SETTINGS
    other = Schema.from_toml(schema.to_toml().replace("upper = 50", "upper = 60"))
    with pytest.raises(SchemaError, match="trained under schema"):
        Posterior.load(path, other)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(GeneratorError, match="not a readable posterior"):
        Posterior.load(tmp_path / "bad.npz", schema)


def test_release_carries_provenance_and_a_free_ledger_entry(tmp_path, trained):
    schema, frame, layout, data, runs = trained
    post = Posterior(params=runs[1].params, schema_hash=schema.hash, n=200, settings=SETTINGS,
                     calibration=calibration(200, 1.0), release="r1", created=1.0)
    ledger = Ledger(tmp_path)
    rel = draw_release(post, schema, 4, "alice", seed=0, ledger=ledger)
    assert [t.provenance.index for t in rel.twins] == [0, 1, 2, 3]
    p = rel.twins[2].provenance
    assert (p.sender, p.k, p.n, p.epsilon, p.relation) == ("alice", 4, 200, 1.0, "add-remove")
    for key in ("epsilon", "delta", "sigma", "steps", "n", "k", "schema_hash", "versions"):
        assert key in rel.receipt
    assert ledger.snapshot()["entries"][0]["epsilon"] == 0.0


def test_worker_trains_in_a_pinned_process_and_reports_progress(tmp_path, small_csv, small_schema):
    # Prepare: a tiny real job (calibration included) through a spawned worker
    job = Job(kind="train", schema_text=small_schema.to_toml(), state_dir=str(tmp_path),
              posterior_path=str(tmp_path / "posterior.npz"), k=2, sender="w",
              data_path=str(small_csv), plan=TrainPlan(epochs=2, q=0.05), settings=SETTINGS,
              cpus=(0,), seed=5)
    seen: list[tuple[int, int]] = []
    # Execute
    release = asyncio.run(Worker().run(job, lambda d, t, e: seen.append((d, t))))
    # Assert
    assert len(release.twins) == 2 and seen[-1] == (40, 40)
    ledger = json.loads((tmp_path / "ledger.json").read_text())
    assert [e["kind"] for e in ledger["entries"]] == ["train", "sample"]
    assert ledger["entries"][0]["status"] == "trained"
    # a sample job from the saved posterior costs nothing
    again = asyncio.run(Worker().run(Job(kind="sample", schema_text=small_schema.to_toml(),
                                         state_dir=str(tmp_path), k=3, sender="w",
                                         posterior_path=str(tmp_path / "posterior.npz"))))
    assert len(again.twins) == 3 and Ledger(tmp_path).snapshot()["spent_epsilon"] == 1.0


def test_worker_reports_budget_errors_as_themselves(tmp_path, small_csv, small_schema):
    Ledger(tmp_path, cap_epsilon=0.5).charge(0.4, 1e-5)
    job = Job(kind="train", schema_text=small_schema.to_toml(), state_dir=str(tmp_path),
              posterior_path=str(tmp_path / "p.npz"), k=1, sender="w", data_path=str(small_csv),
              plan=TrainPlan(epochs=1, q=0.05), settings=SETTINGS)
    with pytest.raises(BudgetExceeded, match="over the cap"):
        asyncio.run(Worker().run(job))
    assert not (tmp_path / "p.npz").exists()


def _aligned_svi(layout, settings, sigma=3.0, clip=2.0, expected=10.0, n=200, head_share=0.5):
    import d3p.random as secure_rng
    import numpyro
    from numpyro.infer import Trace_ELBO

    from twinnode.generator.dpsvi import AlignedDPSVI
    from twinnode.generator.models import make_guide, make_model

    model = make_model(layout, n, settings)
    return AlignedDPSVI(model, make_guide(model, layout, settings), numpyro.optim.SGD(1.0),
                        Trace_ELBO(), clipping_threshold=clip, dp_scale=sigma,
                        rng_suite=secure_rng, expected_batch=expected, head_share=head_share)


def test_aligned_update_releases_only_the_noisy_location_gradient(trained):
    # Prepare: an all-zero mask, so the released location gradient is the noise alone
    import d3p.random as secure_rng
    import jax
    import jax.numpy as jnp

    schema, frame, layout, data, runs = trained
    svi = _aligned_svi(layout, SETTINGS)
    batch = tuple(jnp.asarray(a[:20]) for a in data)
    state = svi.init(secure_rng.PRNGKey(0), *(a[:1] for a in batch))
    update = jax.jit(svi.masked_update)
    loc_steps, scale_checks = [], []
    for _ in range(10):
        before = svi.get_params(state)
        # Execute
        state, _ = update(state, jnp.zeros(20, bool), *batch)
        after = svi.get_params(state)
        loc_steps.append(np.asarray(after["auto_loc"] - before["auto_loc"]))
        scale_checks.append(np.asarray(after["auto_scale"]))
    step = np.concatenate(loc_steps)
    # Assert: std sigma * C / (qN) on the data scale N, as the accountant assumes
    assert step.std() == pytest.approx(3.0 * 2.0 / 10.0 * 200, rel=0.15)
    # and with no data, two different batches give the same update: nothing else leaks
    other = tuple(jnp.asarray(a[20:40]) for a in data)
    s0 = svi.init(secure_rng.PRNGKey(1), *(a[:1] for a in batch))
    a, _ = update(s0, jnp.zeros(20, bool), *batch)
    b, _ = update(s0, jnp.zeros(20, bool), *other)
    for key in ("auto_loc", "auto_scale"):
        np.testing.assert_array_equal(svi.get_params(a)[key], svi.get_params(b)[key])


@pytest.mark.parametrize("head_share", [0.0, 0.5])
def test_aligned_released_sum_changes_by_at_most_c_when_one_row_leaves(trained, head_share):
    import d3p.random as secure_rng
    import jax
    import jax.numpy as jnp

    schema, frame, layout, data, runs = trained
    svi = _aligned_svi(layout, SETTINGS, clip=2.0, head_share=head_share)
    batch = tuple(jnp.asarray(a[:40]) for a in data)
    state = svi.init(secure_rng.PRNGKey(0), *(a[:1] for a in batch))
    theta = jnp.asarray(runs[1].params["auto_loc"]) + 0.5  # away from the optimum: big gradients
    released = jax.jit(svi.released_sum)
    full, _ = released(state, theta, jnp.ones(40, bool), *batch)
    for i in range(0, 40, 7):
        without = jnp.ones(40, bool).at[i].set(False)
        less, _ = released(state, theta, without, *batch)
        assert float(jnp.linalg.norm(full - less)) <= 2.0 * (1 + 1e-5)
    if head_share:
        g = np.asarray(svi.clip_per_group(jnp.ones((3, theta.shape[0])) * 100.0))
        head = svi._head_mask
        assert np.linalg.norm(g[0, head]) == pytest.approx(2.0 * np.sqrt(0.5), rel=1e-5)
        assert np.linalg.norm(g[0, ~head]) == pytest.approx(2.0 * np.sqrt(0.5), rel=1e-5)


def test_the_node_and_its_worker_module_load_without_jax():
    # JAX starts threads and takes seconds to import: only the spawned worker may load it.
    import subprocess
    import sys

    code = ("import sys, twinnode.node.core, twinnode.generator.worker\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'jax', 'jaxlib', 'numpyro', 'd3p'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]"
