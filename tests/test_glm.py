"""The batched Poisson fitter against statsmodels, and its handling of bad replicates."""
from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
from conftest import make_small_frame

from twinnode.analysis.design import make_design
from twinnode.analysis.glm import _sandwich, estimable_columns, fit_poisson_batch

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


# ------------------------------------------------------------- the fast paths (issue 16)
def _combined_reference(schema, local, peers, design, k):
    """statsmodels on each D_k of a combined fit: estimates, HC0 SEs, and the twin rows'
    share of the HC0 variance (the sandwich with the local rows' meat left out)."""
    from twinnode.data import frame_to_arrays
    local_arrays = frame_to_arrays(schema, local)
    out = []
    for i in range(k):
        arrays = {c: np.concatenate([local_arrays[c]] +
                                    [np.asarray(peers[p][i].arrays[c]) for p in peers])
                  for c in schema.names}
        x, y = design.matrix(arrays)
        ref = _statsmodels(x, y, "HC0")
        mu = ref.mu
        bread = np.linalg.inv(x.T @ (x * mu[:, None]))
        r2 = ((y - mu) ** 2)[len(local):]
        twin = x[len(local):]
        part = bread @ (twin.T @ (twin * r2[:, None])) @ bread
        out.append((ref.params, ref.bse, np.diag(part), len(y)))
    return out


def test_combined_fit_on_randhie_twins_equals_statsmodels_to_1e6():
    # Prepare: randhie's first party (300 rows) and K = 6 simulated twins of four others
    from twinnode.analysis.fit import AnalysisOptions, combined_fit
    from twinnode.data import randhie, split_parties
    from twinnode.lab.simtwins import posterior_twins
    schema, frame = randhie()
    parts = split_parties(frame, parties=5, seed=0).parties
    local = parts[0].iloc[:300].reset_index(drop=True)
    peers = {f"peer{i}": posterior_twins(schema, f, sender=f"peer{i}", k=6, seed=i)
             for i, f in enumerate(parts[1:])}
    options = AnalysisOptions(rule="reiter", cov_type="HC0")
    # Execute
    fit = combined_fit(schema, local, peers, options=options)
    # Assert: every replicate's estimates, HC0 SEs and the twins' share of the variance
    r = fit.replicates
    for i, (coef, se, part, _) in enumerate(_combined_reference(
            schema, local, peers, options.design(schema), 6)):
        np.testing.assert_allclose(r.coef[i], coef, rtol=0, atol=TOL)
        np.testing.assert_allclose(r.se[i], se, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(r.var_part[i], part, rtol=TOL, atol=TOL ** 2)
    assert fit.failed == 0 and not fit.dropped


def test_column_constant_within_one_replicate_is_dropped_there_only(small_schema):
    # Prepare: replicate 1's smokers only (the smoker column is all 1 there: collinear
    # with the intercept, which the final Hessian cannot certify), replicate 0 as it is
    X, y, w, mats = _replicates(small_schema, [400, 400])
    smoker = make_design(small_schema).terms.index("smoker")
    x1, y1 = mats[1]
    only = x1[:, smoker] == 1
    X[1], y[1], w[1] = 0.0, 0.0, 0.0
    X[1, :only.sum()], y[1, :only.sum()], w[1, :only.sum()] = x1[only], y1[only], 1.0
    # Execute
    fit = fit_poisson_batch(X, y, w, cov_type="HC0")
    # Assert: dropped only there; the rest equals statsmodels without that column
    assert fit.converged.all()
    assert fit.dropped[1].tolist() == [j == smoker for j in range(X.shape[2])]
    assert not fit.dropped[0].any()
    kept = [j for j in range(X.shape[2]) if j != smoker]
    ref = _statsmodels(x1[only][:, kept], y1[only], "HC0")
    np.testing.assert_allclose(fit.coef[1, kept], ref.params, atol=TOL)
    np.testing.assert_allclose(fit.se[1, kept], ref.bse, rtol=TOL, atol=TOL)
    ref0 = _statsmodels(*mats[0], "HC0")
    np.testing.assert_allclose(fit.coef[0], ref0.params, atol=TOL)


def test_nearly_collinear_column_the_certificate_cannot_prove_is_kept_and_matches(
        small_schema):
    # Prepare: a column equal to 'age' plus a small perturbation (its rank-check pivot is
    # about 1e-6: far above the 1e-9 rule, far below what the final Hessian can certify)
    x, y = make_design(small_schema).frame_matrix(
        small_schema, make_small_frame(small_schema, 600, seed=11))
    age = make_design(small_schema).terms.index("age")
    noise = np.random.default_rng(4).normal(0, 1e-3 * x[:, age].std(), len(y))
    x2 = np.column_stack([x, x[:, age] + noise])
    # Execute
    fit = fit_poisson_batch(x2, y, cov_type="HC0")
    # Assert: kept, and equal to statsmodels
    assert fit.converged.all() and not fit.dropped.any()
    ref = _statsmodels(x2, y, "HC0")
    np.testing.assert_allclose(fit.coef[0], ref.params, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(fit.se[0], ref.bse, rtol=1e-5)


def test_many_zero_counts_and_a_zero_count_replicate(small_schema):
    # Prepare: replicate 0 with 90% of its counts set to 0, replicate 1 all zero (its
    # intercept runs off to -inf: not converged), replicate 2 as it is
    X, y, w, mats = _replicates(small_schema, [500, 500, 500])
    rng = np.random.default_rng(2)
    y[0] = np.where(rng.random(y.shape[1]) < 0.9, 0.0, y[0])
    y[1] = 0.0
    # Execute
    fit = fit_poisson_batch(X, y, w, cov_type="HC0")
    # Assert
    assert fit.converged.tolist() == [True, False, True]
    for i in (0, 2):
        ref = _statsmodels(mats[i][0], y[i, :500], "HC0")
        np.testing.assert_allclose(fit.coef[i], ref.params, atol=TOL)
        np.testing.assert_allclose(fit.se[i], ref.bse, rtol=TOL, atol=TOL)


def test_chord_steps_and_reused_bread_give_the_plain_newton_results(small_schema,
                                                                    monkeypatch):
    # Prepare: weighted replicates of different sizes from a cold start
    import twinnode.analysis.glm as glm
    import twinnode.analysis.newton as newton
    X, y, _, _ = _replicates(small_schema, [300, 700, 500, 900])
    w = np.random.default_rng(6).uniform(0.2, 1.0, size=y.shape) * (X[:, :, 0] > 0)
    start = np.zeros(X.shape[2]) + 0.01
    # Execute: as the fitter does (chord steps), plain Newton reusing the last step's
    # Hessian as the bread, and plain Newton with the bread formed at the estimate
    chords = fit_poisson_batch(X, y, w, start=start)
    monkeypatch.setattr(newton, "CHORD", 0.0)
    sandwiches = []
    monkeypatch.setattr(glm, "_sandwich", lambda *a: sandwiches.append(a[3].fresh) or
                        _sandwich(*a))
    reused = fit_poisson_batch(X, y, w, start=start)
    monkeypatch.setattr(newton, "REUSE", -1.0)
    formed = fit_poisson_batch(X, y, w, start=start)
    # Assert: the bread was reused, and all three agree: SEs to a relative 1e-8 (REUSE's
    # bound), estimates to 1e-10
    assert sandwiches[0].all() and not sandwiches[1].any()
    for fit in (chords, reused):
        np.testing.assert_allclose(fit.se, formed.se, rtol=1e-8)
        np.testing.assert_allclose(fit.coef, formed.coef, rtol=0, atol=1e-10)


def test_log_factorial_table_equals_gammaln():
    from scipy.special import gammaln

    from twinnode.analysis.glm import log_factorial
    counts = np.array([[0.0, 1.0, 5.0, 100.0], [3.0, 0.0, 17.0, 2.0]])
    assert np.array_equal(log_factorial(counts), gammaln(counts + 1.0))
    odd = np.array([0.5, 2.0, 1e6])  # not all whole, or beyond the table: gammaln itself
    assert np.array_equal(log_factorial(odd), gammaln(odd + 1.0))


def test_spd_inverse_matches_numpy_and_marks_non_positive_definite_matrices():
    from twinnode.analysis.spd import gram, spd_inverse
    rng = np.random.default_rng(3)
    X = rng.normal(size=(5, 4, 50))
    v = rng.uniform(0.5, 2.0, size=(5, 50))
    H = gram(X, v)
    np.testing.assert_allclose(H, np.einsum("kpn,kn,kqn->kpq", X, v, X), rtol=1e-12)
    H[2] = -np.eye(4)
    inv = spd_inverse(H)
    good = [0, 1, 3, 4]
    np.testing.assert_allclose(inv[good], np.linalg.inv(H[good]), rtol=1e-10, atol=1e-12)
    assert np.isnan(inv[2]).all()


def test_a_replicate_fits_the_same_alone_as_after_another_in_its_batch(small_schema):
    # Prepare: replicates of different sizes, one lacking a level (a dropped column, so
    # the batch's shared first Hessian does not fit its columns), weighted rows
    X, y, _, _ = _replicates(small_schema, [300, 700, 500, 900])
    w = np.random.default_rng(8).uniform(0.2, 1.0, size=y.shape) * (X[:, :, 0] > 0)
    east = make_design(small_schema).terms.index("region[east]")
    X[2, :, east] = 0.0
    start = np.zeros(X.shape[2]) + 0.01
    # Execute: the batch (the others' first step uses the first's Hessian) and each alone
    batch = fit_poisson_batch(X, y, w, start=start)
    alone = [fit_poisson_batch(X[i:i + 1], y[i:i + 1], w[i:i + 1], start=start)
             for i in range(len(X))]
    # Assert: the same estimates and SEs, whatever came before a replicate in its batch
    assert batch.converged.all() and batch.dropped[2, east] and batch.dropped.sum() == 1
    for i, one in enumerate(alone):
        np.testing.assert_allclose(batch.coef[i], one.coef[0], rtol=0, atol=1e-10)
        np.testing.assert_allclose(batch.se[i], one.se[0], rtol=1e-8)


@pytest.mark.parametrize("warm", [False, True])
def test_a_first_replicate_lacking_a_level_leaves_the_others_fitted_as_statsmodels(
        small_schema, warm):
    # Prepare: the batch's first replicate lacks region[east], so the Hessian it would share
    # with the others is singular; with and without a warm start (as fit.py passes one)
    X, y, w, mats = _replicates(small_schema, [300, 500, 400, 600])
    east = make_design(small_schema).terms.index("region[east]")
    X[0, :, east] = 0.0
    start = np.zeros(X.shape[2]) + 0.05 if warm else None
    # Execute
    fit = fit_poisson_batch(X, y, w, cov_type="HC0", start=start)
    # Assert: the first drops the column; every other replicate is statsmodels' fit, not
    # its start (a NaN shared inverse once zeroed their steps and "converged" them there)
    assert fit.converged.all() and fit.dropped[0, east] and fit.dropped.sum() == 1
    for i in range(1, len(X)):
        ref = _statsmodels(*mats[i], "HC0")
        np.testing.assert_allclose(fit.coef[i], ref.params, rtol=0, atol=TOL)
        np.testing.assert_allclose(fit.se[i], ref.bse, rtol=TOL, atol=TOL)


def test_small_steps_update_the_mean_by_taylor_polynomial_exact_to_rounding():
    from twinnode.analysis.newton import TAYLOR, _exp_step, taylor_degree
    rng = np.random.default_rng(4)
    mu = np.exp(rng.normal(size=1000))
    for bound in (TAYLOR, 1e-5, 1e-9):
        d = rng.uniform(-bound, bound, size=1000)
        for t in (1.0, 0.5):
            out = np.empty(1000)
            _exp_step(mu, d, t, bound * t, out=out)
            np.testing.assert_allclose(out, mu * np.exp(t * d), rtol=4e-16, atol=0)
    assert [taylor_degree(b) for b in (1e-3, 1e-5, 1e-9)] == [4, 3, 1]


def test_spd_inverse_per_matrix_and_stacked_agree_beyond_the_lapack_size():
    from twinnode.analysis.spd import LAPACK_P, spd_inverse, stacked_inverse
    rng = np.random.default_rng(5)
    for p in (3, LAPACK_P + 8):
        A = rng.normal(size=(4, 3 * p, p))
        H = np.einsum("knp,knq->kpq", A, A)
        H[1] = -np.eye(p)
        for inv in (spd_inverse(H), stacked_inverse(H)):
            np.testing.assert_allclose(inv[[0, 2, 3]], np.linalg.inv(H[[0, 2, 3]]),
                                       rtol=1e-9, atol=1e-12)
            assert np.isnan(inv[1]).all()
