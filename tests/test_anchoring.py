"""Marginal anchoring, iterate averaging and noise-aware draws: accounting, measurement,
starting values, the trace's average and its noise, the posterior file, the receipt."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from twinnode.data import frame_to_arrays
from twinnode.errors import AccountingError, PrivacyError
from twinnode.generator.accounting import calibrate_split, composed_epsilon, gaussian_epsilon
from twinnode.generator.anchor import anchored_start
from twinnode.generator.layout import Layout
from twinnode.generator.marginals import (binary_rates, binned_mean, columns, count_edges,
                                          histograms, measure, quantiles)
from twinnode.generator.posterior import Posterior
from twinnode.generator.privacy import Ledger, calibrate
from twinnode.generator.settings import GeneratorSettings, TrainPlan
from twinnode.generator.trace import TraceTail
from twinnode.schema import Schema


@pytest.fixture(scope="module")
def small():
    from conftest import SMALL_SCHEMA, make_small_frame

    schema = Schema.from_toml(SMALL_SCHEMA)
    frame = make_small_frame(schema, n=400, seed=3)
    layout = Layout.from_schema(schema)
    return schema, frame, layout, layout.encode(frame_to_arrays(schema, frame))


# ---- accounting -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def splits():
    """Calibrations by share (each takes seconds: the Fourier accountant runs first)."""
    return {share: calibrate_split(1.0, 1e-3, 1000, 0.1, 500, "poisson", share)
            for share in (0.0, 0.05, 0.3)}


def test_share_zero_is_the_plain_calibration(splits):
    assert splits[0.0] == calibrate(1.0, 1e-3, 1000, 0.1, 500, "poisson")


@pytest.mark.parametrize("share", [0.05, 0.3])
def test_split_meets_the_target_in_one_accountant_and_no_more(share, splits):
    # Execute
    cal, base = splits[share], splits[0.0]
    # Assert: the pair is within the target, and not needlessly below it
    eps = composed_epsilon(cal.sigma, cal.marginal_multiplier, cal.q, cal.steps,
                           cal.delta_accountant)
    assert 0.99 <= eps <= 1.0
    assert cal.sigma > base.sigma  # DPVI gives up part of its budget
    # each part alone is cheaper than the whole, and the marginals' part grows with the share
    assert cal.epsilon_dpvi_alone < 1.0 and cal.epsilon_marginals_alone < 1.0
    assert gaussian_epsilon(cal.marginal_multiplier, cal.delta_accountant) == \
        pytest.approx(cal.epsilon_marginals_alone)
    assert cal.marginal_share == share and "PLD" in cal.accountant


def test_bigger_share_means_less_noise_on_the_marginals(splits):
    a, b = splits[0.05], splits[0.3]
    assert b.marginal_multiplier < a.marginal_multiplier and b.sigma > a.sigma


@pytest.mark.parametrize("share", [-0.1, 1.0, 1.5, math.nan])
def test_a_share_outside_zero_one_is_refused(share):
    with pytest.raises(PrivacyError, match="marginal share must be in"):
        calibrate_split(1.0, 1e-3, 1000, 0.1, 500, "poisson", share)
    with pytest.raises(PrivacyError, match="marginal share must be in"):
        TrainPlan(marginal_share=share)


def test_marginals_need_poisson_batching():
    with pytest.raises(PrivacyError, match="Poisson"):
        TrainPlan(marginal_share=0.1, batching="fixed")
    with pytest.raises(PrivacyError, match="Poisson"):
        calibrate_split(1.0, 1e-3, 1000, 0.1, 50, "fixed", 0.1)


def test_bad_split_is_refused_before_anything_is_charged(tmp_path, small):
    from twinnode.generator.release import train_posterior

    schema, frame, *_ = small
    ledger = Ledger(tmp_path)
    # an epsilon the accountant cannot meet at this delta: refused before the charge
    plan = TrainPlan(epsilon=1e-6, epochs=5, marginal_share=0.1)
    with pytest.raises(AccountingError):
        train_posterior(schema, frame, plan, ledger, GeneratorSettings(components=2))
    assert ledger.snapshot()["entries"] == []


# ---- the marginals ----------------------------------------------------------------------------

def test_histograms_count_every_row_once_per_column(small):
    schema, frame, layout, data = small
    h = histograms(data, layout)
    n = len(frame)
    for counts in [*h.categorical, *h.count, *h.continuous, h.outcome]:
        assert counts.sum() == n
    np.testing.assert_array_equal(h.binary, np.asarray(data.xb).sum(axis=0))


def test_measure_adds_noise_of_multiplier_times_root_d(small):
    schema, frame, layout, data = small
    exact = histograms(data, layout)
    flat = lambda m: np.concatenate([m.binary, *m.categorical, *m.count, *m.continuous,  # noqa: E731
                                     m.outcome])
    noise = np.concatenate([flat(measure(data, layout, 2.0, seed=s)) - flat(exact)
                            for s in range(30)])
    assert noise.std() == pytest.approx(2.0 * math.sqrt(columns(layout)), rel=0.1)
    assert abs(noise.mean()) < 0.2 * noise.std()


def test_summaries_read_back_what_the_histograms_hold():
    edges = count_edges(40)
    assert edges[0] == 0 and edges[-1] == 41 and list(edges[:17]) == list(range(17))
    values = np.r_[np.zeros(50), np.ones(30), np.full(20, 5)]
    counts = np.histogram(values, bins=edges)[0].astype(float)
    assert binned_mean(counts, edges, 100) == pytest.approx(values.mean())
    u = np.linspace(0, 1, 16, endpoint=False) + 1 / 32
    assert quantiles(np.ones(16), np.array([0.5]), 16)[0] == pytest.approx(0.5)
    assert quantiles(np.r_[np.ones(8) * 10, np.zeros(8)], np.array([0.5]), 80)[0] == \
        pytest.approx(0.25) and len(u) == 16


def test_anchored_start_puts_every_component_near_the_marginal(small):
    schema, frame, layout, data = small
    settings = GeneratorSettings(components=6)
    m = measure(data, layout, 1e-6, seed=0)  # almost no noise: the start shows the rows
    start = anchored_start(layout, settings, m)
    rates = np.asarray(data.xb).mean(axis=0)
    assert start["p_bin"].shape == (6, len(layout.binary))
    np.testing.assert_allclose(np.median(start["p_bin"], axis=0), rates, atol=0.08)
    assert float(np.exp(start["intercept"])) == pytest.approx(float(np.mean(data.y)), rel=0.15)
    np.testing.assert_allclose(binary_rates(m), rates, atol=1e-3)
    for j, p in enumerate(m.categorical):
        assert start[f"p_cat_{j}"].shape[0] == 6
        np.testing.assert_allclose(start[f"p_cat_{j}"].mean(axis=0), p / p.sum(), atol=0.1)


# ---- the trace --------------------------------------------------------------------------------

def test_trace_tail_averages_the_window_and_estimates_its_noise():
    rng = np.random.default_rng(0)
    total, chunk = 4000, 500
    values = rng.normal(3.0, 2.0, (total, 5))
    tail = TraceTail(total, 0.5)
    for start in range(0, total, chunk):
        tail.add(start, {"x": values[start:start + chunk]})
    np.testing.assert_allclose(tail.mean()["x"], values[2000:].mean(axis=0), rtol=1e-5)
    # iid noise: the mean of 2,000 draws has sd 2 / sqrt(2000)
    assert np.median(tail.mean_sd()["x"]) == pytest.approx(2.0 / math.sqrt(2000), rel=0.4)


def test_trace_tail_ignores_steps_past_the_total_and_zero_share():
    tail = TraceTail(100, 0.5)
    tail.add(0, {"x": np.ones((120, 1))})  # a last chunk that runs past the step count
    tail.add(100, {"x": np.full((20, 1), 1e9)})
    assert tail.steps == 40 or tail.steps == 50
    np.testing.assert_allclose(tail.mean()["x"], [1.0])
    assert TraceTail(100, 0.0).steps == 0


# ---- posterior files --------------------------------------------------------------------------

def test_a_version_1_posterior_still_loads_marked_not_noise_aware(tmp_path, small):
    import io
    import json

    schema, *_ = small
    cal = calibrate_split(1.0, 1e-3, 400, 0.1, 50, "poisson", 0.1)
    post = Posterior(params={"auto_loc": np.zeros(3, np.float32)}, schema_hash=schema.hash,
                     n=400, settings=GeneratorSettings(), calibration=cal, release="r1",
                     created=1.0, loc_noise_sd=np.ones(3, np.float32))
    post.save(tmp_path / "new.npz")
    again = Posterior.load(tmp_path / "new.npz", schema)
    assert again.noise_aware and again.loc_noise_sd is not None
    # the format before noise-awareness: no noise entry, the old calibration fields only
    meta = post.metadata() | {"format": "twinnode-posterior/1"}
    meta["calibration"] = {k: v for k, v in meta["calibration"].items()
                           if k not in dataclasses.asdict(cal) or k in
                           {f.name for f in dataclasses.fields(cal)
                            if f.default is dataclasses.MISSING}}
    del meta["marginals"]
    buf = io.BytesIO()
    np.savez(buf, __metadata__=np.array(json.dumps(meta)), **{"param:auto_loc": np.zeros(3)})
    (tmp_path / "old.npz").write_bytes(buf.getvalue())
    old = Posterior.load(tmp_path / "old.npz", schema)
    assert not old.noise_aware and old.calibration.marginal_share == 0.0
    assert old.calibration.sigma == cal.sigma


# ---- post-processing: norm-sub, calibration, the head's DP error -------------------------------

def test_norm_sub_removes_the_noise_of_empty_cells():
    from twinnode.generator.marginals import shares

    rng = np.random.default_rng(1)
    truth = np.r_[2500.0, np.zeros(14), 500.0]
    noisy = truth + rng.normal(0, 30, truth.shape)
    p = shares(noisy, 3000)
    assert p.sum() == pytest.approx(1.0)
    assert p[1:15].sum() < 0.02  # clipping alone keeps ~0.06 of spurious mass here
    assert np.clip(noisy, 0, None)[1:15].sum() / np.clip(noisy, 0, None).sum() > p[1:15].sum()


def test_map_to_shares_hits_the_target_keeps_ranks_and_point_masses():
    from twinnode.generator.calibrate import map_to_shares
    from twinnode.generator.marginals import continuous_edges

    rng = np.random.default_rng(2)
    x = np.clip(rng.normal(0.3, 0.2, 5000), 0, 1)  # a Normal component's twin column
    x[:1000] = 0.0                                  # with a point mass at the lower bound
    target = np.r_[0.6, np.full(14, 0.02), 0.12]
    edges = continuous_edges()
    y = map_to_shares(x, edges, target, rng)
    hist = np.histogram(y, edges)[0] / len(y)
    np.testing.assert_allclose(hist, target, atol=2e-3)
    assert (y == 0.0).mean() >= 0.19  # the rows at 0 stay at 0 (they are in the first bin)
    ordered = np.argsort(x, kind="stable")
    assert np.mean(np.diff(y[ordered]) >= -1 / 16) > 0.99  # rank order kept up to a bin


def test_calibrated_twins_keep_the_heads_outcome_model():
    from twinnode.generator.calibrate import draw_outcome

    rng = np.random.default_rng(3)
    f = rng.random((20000, 2))
    y = draw_outcome(f, np.array([0.5, -1.0]), 1.0, "poisson", None, rng)
    import statsmodels.api as sm

    fit = sm.GLM(y, sm.add_constant(f), family=sm.families.Poisson()).fit()
    np.testing.assert_allclose(fit.params, [1.0, 0.5, -1.0], atol=0.05)


def test_head_noise_covariance_scales_as_the_averaging_theory_says():
    from twinnode.generator.headnoise import head_noise_cov

    info = np.array([[400.0, 50.0], [50.0, 900.0]])
    cov = head_noise_cov(info, sigma=20.0, clip=30.0, q=0.1, head_weight=1.0, window=2000)
    inv = np.linalg.inv(info)
    np.testing.assert_allclose(cov, (20 * 30 / 0.1) ** 2 / 2000 * inv @ inv)
    # twice the head weight: half the noise sd; four times the window: half again
    half = head_noise_cov(info, 20.0, 30.0, 0.1, 2.0, 2000)
    np.testing.assert_allclose(half, cov / 4)
    np.testing.assert_allclose(head_noise_cov(info, 20.0, 30.0, 0.1, 1.0, 8000), cov / 4)


def test_match_levels_moves_the_fewest_rows_to_hit_the_target_counts():
    from twinnode.generator.calibrate import match_levels

    rng = np.random.default_rng(4)
    codes = rng.choice(3, 1000, p=[0.5, 0.3, 0.2])
    out = match_levels(codes, np.array([0.2, 0.3, 0.5]), rng)
    assert list(np.bincount(out, minlength=3)) == [200, 300, 500]
    moved = int(np.sum(out != codes))
    need = int(np.abs(np.bincount(codes, minlength=3) - [200, 300, 500]).sum() // 2)
    assert moved == need  # only surplus rows moved, each once


def test_calibrating_more_rows_than_the_party_keeps_its_rates(small):
    """headnoise's design has 20,000 rows for a party of N: rates are shares of N, not counts."""
    from twinnode.generator.calibrate import calibrate_covariates

    schema, frame, layout, data = small
    exact = histograms(data, layout)
    m = dataclasses.replace(exact, noise_sd=1e-9)
    big = data._replace(**{k: np.tile(np.asarray(getattr(data, k)), (10,) + (1,) * (
        np.asarray(getattr(data, k)).ndim - 1)) for k in ("xb", "xc", "xr", "xn", "y")})
    rng = np.random.default_rng(0)
    shuffled = big._replace(xb=rng.permutation(np.asarray(big.xb)),
                            xc=np.zeros_like(np.asarray(big.xc)))
    out = calibrate_covariates(shuffled, layout, m, rng)
    np.testing.assert_allclose(np.asarray(out.xb).mean(axis=0), exact.binary / m.n, atol=1e-3)
    for j, counts in enumerate(exact.categorical):
        share = np.bincount(np.asarray(out.xc)[:, j], minlength=len(counts)) / len(out.y)
        np.testing.assert_allclose(share, counts / m.n, atol=1e-3)


def test_a_rare_binary_keeps_a_row_of_each_value_in_fewer_rows_than_the_party(small):
    """A design of fewer rows than N still has both values of a 1-in-a-million binary, so
    the head's information along it is not singular (headnoise.py)."""
    from twinnode.generator.calibrate import calibrate_covariates

    schema, frame, layout, data = small
    m = dataclasses.replace(histograms(data, layout), n=10 ** 6, noise_sd=1e-9)
    m = dataclasses.replace(m, binary=np.ones_like(m.binary))
    out = np.asarray(calibrate_covariates(data, layout, m, np.random.default_rng(1)).xb)
    assert out.shape[1] > 0 and (out.sum(axis=0) == 1).all()
