"""The batched Poisson fitter against statsmodels, and its handling of bad replicates."""
from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
from conftest import make_small_frame

from twinnode.analysis.design import make_design
from twinnode.analysis.glm import estimable_columns, fit_poisson_batch

TOL = 1e-6


def _replicates(schema, sizes, seed=0):
    """Design matrices of data sets of different sizes from the known model, padded to stack."""
    design = make_design(schema)
    mats = [design.frame_matrix(schema, make_small_frame(schema, n, seed + i))
            for i, n in enumerate(sizes)]
    n_max = max(sizes)
    X = np.zeros((len(sizes), n_max, design.p))
    y = np.zeros((len(sizes), n_max))
    w = np.zeros((len(sizes), n_max))
    for i, (x, yy) in enumerate(mats):
        X[i, :len(yy)], y[i, :len(yy)], w[i, :len(yy)] = x, yy, 1.0
    return X, y, w, mats


def _statsmodels(x, y, cov_type, var_weights=None):
    model = sm.GLM(y, x, family=sm.families.Poisson(), var_weights=var_weights)
    return model.fit(cov_type=cov_type, tol=1e-12)


def test_batched_fit_matches_statsmodels_to_1e6_on_estimates_and_hc_errors(small_schema):
    # Prepare: five data sets of different sizes, stacked with zero-weight padding
    X, y, w, mats = _replicates(small_schema, [150, 400, 233, 800, 1000])
    # Execute
    hc1 = fit_poisson_batch(X, y, w, cov_type="HC1")
    hc0 = fit_poisson_batch(X, y, w, cov_type="HC0")
    # Assert: HC0 equals statsmodels' (which it calls "HC1"); HC1 adds n / (n - p)
    assert hc1.converged.all()
    for i, (x, yy) in enumerate(mats):
        ref = _statsmodels(x, yy, "HC0")
        n, p = x.shape
        np.testing.assert_allclose(hc1.coef[i], ref.params, rtol=0, atol=TOL)
        np.testing.assert_allclose(hc0.se[i], ref.bse, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(hc1.se[i], ref.bse * np.sqrt(n / (n - p)), rtol=TOL, atol=TOL)
        assert hc1.n[i] == n
        assert hc1.loglik[i] == pytest.approx(ref.llf, abs=1e-6)


def test_hc1_scales_hc0_by_kish_rows_over_rows_less_the_estimated_terms(small_schema):
    # Prepare: weights 0, 0.5 and 1 (padding and λ-weighted rows), and a replicate that
    # lacks the level region[east], so it estimates one term fewer
    X, y, w, _ = _replicates(small_schema, [300, 500])
    rng = np.random.default_rng(9)
    w = w * rng.choice([0.0, 0.5, 1.0], size=w.shape)
    east = make_design(small_schema).terms.index("region[east]")
    X[1, :, east] = 0.0
    # Execute
    hc0 = fit_poisson_batch(X, y, w, cov_type="HC0")
    hc1 = fit_poisson_batch(X, y, w, cov_type="HC1")
    # Assert: HC1 = HC0 * n / (n - p), n = (Σw)² / Σw² (Kish), p = the terms estimated
    assert hc1.dropped[1, east] and not hc1.dropped[0].any()
    for i, p in enumerate((5, 4)):
        n = w[i].sum() ** 2 / (w[i] ** 2).sum()
        kept = ~hc1.dropped[i]
        np.testing.assert_allclose(hc1.se[i, kept] ** 2, hc0.se[i, kept] ** 2 * n / (n - p),
                                   rtol=1e-10)
        np.testing.assert_allclose(hc1.coef[i], hc0.coef[i], rtol=0, atol=0)


def test_weighted_fit_matches_statsmodels_var_weights(small_schema):
    # Prepare: weights in (0, 1], as a λ on twin rows would give
    X, y, _, mats = _replicates(small_schema, [300, 300])
    rng = np.random.default_rng(5)
    w = rng.uniform(0.1, 1.0, size=y.shape)
    # Execute
    fit = fit_poisson_batch(X, y, w, cov_type="HC0")
    # Assert
    for i, (x, yy) in enumerate(mats):
        ref = _statsmodels(x, yy, "HC0", var_weights=w[i])
        np.testing.assert_allclose(fit.coef[i], ref.params, atol=TOL)
        np.testing.assert_allclose(fit.se[i], ref.bse, rtol=TOL, atol=TOL)


def test_zero_weight_rows_change_nothing(small_schema):
    # Prepare: the same data, once with 100 extra junk rows of weight 0
    X, y, w, _ = _replicates(small_schema, [300])
    junk = np.random.default_rng(1).normal(size=(1, 100, X.shape[2])) * 50
    X2 = np.concatenate([X, junk], axis=1)
    y2 = np.concatenate([y, np.full((1, 100), 7.0)], axis=1)
    w2 = np.concatenate([w, np.zeros((1, 100))], axis=1)
    # Execute
    a, b = fit_poisson_batch(X, y, w), fit_poisson_batch(X2, y2, w2)
    # Assert
    np.testing.assert_allclose(a.coef, b.coef, atol=1e-10)
    np.testing.assert_allclose(a.se, b.se, atol=1e-10)


def test_all_zero_and_collinear_columns_are_dropped_and_the_rest_matches_statsmodels(
        small_schema):
    # Prepare: replicate 0 has no 'east' rows (all-zero dummy); replicate 1 repeats 'age'
    design = make_design(small_schema)
    frame = make_small_frame(small_schema, 400, seed=3)
    x, y = design.frame_matrix(small_schema, frame)
    east = design.terms.index("region[east]")
    age = design.terms.index("age")
    no_east = x[:, east] == 0
    x0, y0 = x[no_east], y[no_east]
    x1 = np.column_stack([x, x[:, age] * 2.0])
    X = np.zeros((2, len(y), x1.shape[1]))
    X[0, :len(y0), :-1], X[1] = x0, x1
    Y = np.zeros((2, len(y)))
    Y[0, :len(y0)], Y[1] = y0, y
    W = np.zeros((2, len(y)))
    W[0, :len(y0)], W[1] = 1.0, 1.0
    # Execute
    fit = fit_poisson_batch(X, Y, W, cov_type="HC0")
    # Assert: dropped exactly those, NaN there, the others as statsmodels without them
    assert fit.converged.all()
    assert np.flatnonzero(fit.dropped[0]).tolist() == [east, x1.shape[1] - 1]
    assert np.flatnonzero(fit.dropped[1]).tolist() == [x1.shape[1] - 1]
    assert np.isnan(fit.coef[0, east]) and np.isnan(fit.se[1, -1])
    keep0 = [j for j in range(design.p) if j != east]
    ref0 = _statsmodels(x0[:, keep0], y0, "HC0")
    np.testing.assert_allclose(fit.coef[0, keep0], ref0.params, atol=TOL)
    np.testing.assert_allclose(fit.se[0, keep0], ref0.bse, rtol=TOL, atol=TOL)
    ref1 = _statsmodels(x, y, "HC0")
    np.testing.assert_allclose(fit.coef[1, :-1], ref1.params, atol=TOL)


def test_separated_replicate_is_marked_not_converged_and_the_others_still_fit(small_schema):
    # Prepare: in replicate 1 every smoker has zero visits (the MLE is -inf)
    X, y, w, _ = _replicates(small_schema, [300, 300, 300])
    smoker = make_design(small_schema).terms.index("smoker")
    y[1, X[1, :, smoker] == 1] = 0.0
    # Execute
    fit = fit_poisson_batch(X, y, w)
    # Assert
    assert fit.converged.tolist() == [True, False, True]
    assert np.isnan(fit.coef[1]).all() and np.isnan(fit.se[1]).all()
    assert np.isfinite(fit.coef[[0, 2]]).all()


def test_too_few_iterations_is_reported_as_not_converged(small_schema):
    # Prepare
    X, y, w, _ = _replicates(small_schema, [300])
    # Execute
    fit = fit_poisson_batch(X, y, w, max_iter=1)
    # Assert
    assert not fit.converged[0] and np.isnan(fit.coef).all()


def test_var_part_splits_the_sandwich_variance_between_row_groups(small_schema):
    # Prepare: mark the first 100 rows as one group
    X, y, w, _ = _replicates(small_schema, [400, 400])
    part = np.zeros_like(w, bool)
    part[:, :100] = True
    # Execute
    a = fit_poisson_batch(X, y, w, part=part)
    b = fit_poisson_batch(X, y, w, part=~part)
    # Assert: the two parts add up to the full variance, and each is a real share of it
    np.testing.assert_allclose(a.var_part + b.var_part, a.se ** 2, rtol=1e-10)
    assert (a.var_part > 0).all() and (a.var_part < a.se ** 2).all()


def test_rank_check_ignores_units_but_finds_exact_redundancy():
    # Prepare: an intercept, a column of large values that vary little (1000 ± 1: a Gram
    # pivot of 1e-6 relative), one with tiny values, and an exact combination of two
    rng = np.random.default_rng(0)
    n = 200
    big, tiny = rng.normal(1e3, 1.0, n), rng.normal(0, 1e-6, n)
    X = np.column_stack([np.ones(n), big, tiny, 3 * tiny + 2])[None]
    # Execute
    keep = estimable_columns(X, np.ones((1, n)))
    # Assert: only the last (= 2 + 3 * tiny) is redundant
    assert keep[0].tolist() == [True, True, True, False]
