"""Design, pooling rules, combined/local/oracle fits and evaluation."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

from conftest import make_small_frame
from twinnode.analysis import (AnalysisOptions, combined_fit, evaluate, local_fit,
                               oracle_fit, repool, twins_fit)
from twinnode.design import make_design
from twinnode.errors import AnalysisError, SchemaError
from twinnode.pooling import pool
from twinnode.simtwins import posterior_twins
from twinnode.twins import Twin


def _peers(schema, count=3, n=400, k=10, seed=0):
    return {f"p{i}": posterior_twins(schema, make_small_frame(schema, n, seed + 10 + i),
                                     sender=f"p{i}", k=k, seed=seed + i) for i in range(count)}


# ------------------------------------------------------------------------ design
def test_terms_come_from_the_schema_with_the_first_level_as_reference(small_schema):
    # Execute
    design = make_design(small_schema)
    # Assert
    assert design.terms == ("Intercept", "age", "region[south]", "region[east]", "smoker")


def test_a_chosen_reference_level_and_covariate_subset_change_the_terms(small_schema):
    # Execute
    design = make_design(small_schema, ["smoker", "region"], {"region": "east"})
    # Assert
    assert design.terms == ("Intercept", "smoker", "region[north]", "region[south]")


@pytest.mark.parametrize("covariates, reference", [
    (["height"], {}), (["visits"], {}), (["region"], {"region": "west"}),
    (["age"], {"age": "x"})])
def test_bad_covariates_or_references_are_analysis_errors(small_schema, covariates, reference):
    with pytest.raises(AnalysisError):
        make_design(small_schema, covariates, reference)


def test_a_level_absent_from_the_data_gives_an_all_zero_column(small_schema):
    # Prepare
    frame = make_small_frame(small_schema, 200)
    frame = frame[frame["region"] != "east"]
    # Execute
    X, _ = make_design(small_schema).frame_matrix(small_schema, frame)
    # Assert
    assert X.shape[1] == 5 and (X[:, 3] == 0).all()


# ------------------------------------------------------------------------ pooling
def test_pooling_rules_match_hand_computation():
    # Prepare: K = 3 estimates 1, 2, 4 with SE 0.5: q = 7/3, b = 7/3, u = 1/4
    coef = np.array([[1.0], [2.0], [4.0]])
    se = np.full((3, 1), 0.5)
    infl = 4 / 3 * 7 / 3
    # Execute
    rr = pool(coef, se, rule="reiter")
    rb = pool(coef, se, rule="rubin")
    mx = pool(coef, se, rule="mixed", var_part=np.full((3, 1), 0.1))
    # Assert
    assert rr.estimate[0] == pytest.approx(7 / 3) and rr.b[0] == pytest.approx(7 / 3)
    assert rr.u_bar[0] == pytest.approx(0.25)
    assert rr.total[0] == pytest.approx(infl - 0.25)
    assert rr.df[0] == pytest.approx(2 * (1 - 0.25 / infl) ** 2)
    half = stats.t.ppf(0.975, rr.df[0]) * np.sqrt(infl - 0.25)
    assert rr.lower[0] == pytest.approx(7 / 3 - half) and rr.upper[0] == pytest.approx(7 / 3 + half)
    assert rb.total[0] == pytest.approx(infl + 0.25)
    assert rb.df[0] == pytest.approx(2 * (1 + 0.25 / infl) ** 2)
    assert mx.total[0] == pytest.approx(infl - 0.1 + 0.15)
    assert not (rr.fallback.any() or rb.fallback.any() or mx.fallback.any())


def test_reiter_falls_back_when_the_total_variance_is_not_positive():
    # Prepare: identical estimates (b = 0) in column 0, spread ones in column 1
    coef = np.array([[1.0, 1.0], [1.0, 3.0], [1.0, 5.0]])
    se = np.full((3, 2), 0.5)
    # Execute
    rubin_fb = pool(coef, se, rule="reiter", fallback="rubin")
    within_fb = pool(coef, se, rule="reiter", fallback="within", interval="normal")
    # Assert: counted per coefficient, T = u + (1 + 1/K) b = u here (b = 0)
    assert rubin_fb.fallback.tolist() == [True, False]
    assert rubin_fb.total[0] == pytest.approx(0.25) and np.isinf(rubin_fb.df[0])
    assert within_fb.total[0] == pytest.approx(0.25)
    assert within_fb.upper[0] - within_fb.lower[0] == pytest.approx(2 * 1.959964 * 0.5, rel=1e-6)


def test_pooling_leaves_out_nan_replicates_and_a_single_fit_is_its_own_variance():
    # Prepare
    coef = np.array([[1.0, np.nan], [2.0, np.nan], [np.nan, 0.3]])
    se = np.array([[0.1, np.nan], [0.1, np.nan], [np.nan, 0.2]])
    # Execute
    p = pool(coef, se, rule="rubin")
    # Assert
    assert p.k_used.tolist() == [2, 1]
    assert p.estimate[0] == pytest.approx(1.5) and p.b[0] == pytest.approx(0.5)
    assert p.total[1] == pytest.approx(0.04) and np.isinf(p.df[1])


def test_unknown_rule_is_an_analysis_error():
    with pytest.raises(AnalysisError):
        pool(np.ones((2, 1)), np.ones((2, 1)), rule="average")


# ------------------------------------------------------------------------ fits
def test_combined_fit_pools_the_same_numbers_as_a_statsmodels_loop(small_schema):
    # Prepare
    local = make_small_frame(small_schema, 150, seed=1)
    peers = _peers(small_schema, count=2, k=6)
    design = make_design(small_schema)
    # Execute
    fit = combined_fit(small_schema, local, peers,
                       options=AnalysisOptions(rule="reiter", cov_type="HC0"))
    # Assert: each D_k fitted by statsmodels and pooled by hand gives the same numbers
    coefs, ses = [], []
    for k in range(6):
        frames = [local] + [peers[p][k].frame(small_schema) for p in peers]
        x, y = design.frame_matrix(small_schema, pd.concat(frames, ignore_index=True))
        r = sm.GLM(y, x, family=sm.families.Poisson()).fit(cov_type="HC1", tol=1e-12)
        coefs.append(r.params)
        ses.append(r.bse)
    coefs, ses = np.array(coefs), np.array(ses)
    q = coefs.mean(axis=0)
    total = (1 + 1 / 6) * coefs.var(axis=0, ddof=1) - (ses ** 2).mean(axis=0)
    np.testing.assert_allclose(fit.estimate, q, atol=1e-6)
    expected = np.where(total > 0, total,
                        (1 + 1 / 6) * coefs.var(axis=0, ddof=1) + (ses ** 2).mean(axis=0))
    np.testing.assert_allclose(fit.pooled.total, expected, rtol=1e-6)
    assert fit.k == 6 and fit.rows == {"local": 150, "p0": 400, "p1": 400}
    assert fit.fallback_count == int((total <= 0).sum())


def test_twin_weight_zero_is_the_local_fit_and_mixed_rule_gives_its_variance(small_schema):
    # Prepare
    local = make_small_frame(small_schema, 300, seed=2)
    peers = _peers(small_schema, count=2, k=5)
    # Execute
    alone = local_fit(small_schema, local)
    zero = combined_fit(small_schema, local, peers, weight=0.0,
                        options=AnalysisOptions(rule="mixed"))
    # Assert
    np.testing.assert_allclose(zero.estimate, alone.estimate, atol=1e-9)
    np.testing.assert_allclose(zero.se, alone.se, rtol=1e-9)
    assert zero.pooled.b.max() < 1e-20


def test_mixed_rule_without_local_rows_is_the_reiter_rule(small_schema):
    # Prepare
    twins = _peers(small_schema, count=1, k=8)["p0"]
    # Execute
    a = twins_fit(small_schema, twins)
    b = repool(a, rule="mixed")
    # Assert
    assert a.kind == "twins"
    np.testing.assert_allclose(a.pooled.total, b.pooled.total, rtol=1e-12)


def test_oracle_fit_is_the_local_fit_of_all_rows(small_schema):
    # Prepare
    frames = [make_small_frame(small_schema, 200, seed=s) for s in range(3)]
    # Execute
    oracle = oracle_fit(small_schema, frames)
    alone = local_fit(small_schema, pd.concat(frames, ignore_index=True))
    # Assert
    assert oracle.kind == "oracle" and alone.kind == "local"
    np.testing.assert_allclose(oracle.estimate, alone.estimate)


def test_level_unseen_locally_is_dropped_there_and_estimated_with_twins(small_schema):
    # Prepare: the local party has no 'east' rows; the peers do
    local = make_small_frame(small_schema, 300, seed=4)
    local = local[local["region"] != "east"].reset_index(drop=True)
    peers = _peers(small_schema, count=2, k=5)
    test = make_small_frame(small_schema, 300, seed=99)
    # Execute
    alone = local_fit(small_schema, local)
    comb = combined_fit(small_schema, local, peers)
    ev = evaluate(alone, small_schema, test, draws=20)
    # Assert: no crash; reported as missing with a warning, and handled in evaluation
    j = alone.terms.index("region[east]")
    assert np.isnan(alone.estimate[j]) and alone.dropped == {"region[east]": 1}
    assert any("region[east]" in w for w in alone.warnings)
    assert np.isfinite(comb.estimate).all() and comb.dropped == {}
    assert ev.unestimated == ("region[east]",) and np.isfinite(ev.samples).all()
    assert json.dumps(alone.to_dict(), allow_nan=False)


def test_level_missing_from_one_twin_is_pooled_over_the_other_replicates(small_schema):
    # Prepare: twin 0 of the only peer has no 'east' rows, and there are no local rows
    twins = _peers(small_schema, count=1, k=6)["p0"]
    t0 = twins[0]
    keep = np.asarray(t0.arrays["region"]) != 2
    twins[0] = Twin(t0.provenance, {c: np.asarray(a)[keep] for c, a in t0.arrays.items()})
    # Execute
    fit = twins_fit(small_schema, twins)
    # Assert
    j = fit.terms.index("region[east]")
    assert fit.dropped == {"region[east]": 1}
    assert fit.pooled.k_used[j] == 5 and fit.pooled.k_used[0] == 6
    assert fit.coefficient("region[east]")["dropped_in"] == 1


def test_non_converged_replicate_is_excluded_and_counted(small_schema):
    # Prepare: in twin 2, every smoker has zero visits (separation)
    twins = _peers(small_schema, count=1, k=5)["p0"]
    t2 = twins[2]
    visits = np.asarray(t2.arrays["visits"]).copy()
    visits[np.asarray(t2.arrays["smoker"]) == 1] = 0
    twins[2] = Twin(t2.provenance, dict(t2.arrays) | {"visits": visits})
    # Execute
    fit = twins_fit(small_schema, twins)
    # Assert
    assert fit.failed == 1 and (fit.pooled.k_used == 4).all()
    assert any("did not converge" in w for w in fit.warnings)
    assert np.isfinite(fit.estimate).all()


def test_peers_with_different_k_are_cut_to_the_smallest_and_it_is_said(small_schema):
    # Prepare
    peers = _peers(small_schema, count=2, k=6)
    peers["p1"] = peers["p1"][:4]
    # Execute
    fit = combined_fit(small_schema, make_small_frame(small_schema, 100), peers)
    # Assert
    assert fit.k == 4 and any("different K" in w for w in fit.warnings)


def test_twins_of_two_releases_or_another_schema_are_refused(small_schema):
    # Prepare
    a = _peers(small_schema, count=1, k=3, seed=0)["p0"]
    b = _peers(small_schema, count=1, k=3, seed=7)["p0"]
    other = replace(a[0].provenance, schema_hash="0" * 64)
    local = make_small_frame(small_schema, 100)
    # Execute / Assert
    with pytest.raises(AnalysisError, match="releases"):
        combined_fit(small_schema, local, {"p0": [a[0], b[1]]})
    with pytest.raises(SchemaError):
        combined_fit(small_schema, local, {"p0": [Twin(other, a[0].arrays)]})


def test_no_peers_gives_the_local_fit_with_a_warning(small_schema):
    # Prepare
    local = make_small_frame(small_schema, 200)
    # Execute
    fit = combined_fit(small_schema, local, {})
    # Assert
    np.testing.assert_allclose(fit.estimate, local_fit(small_schema, local).estimate)
    assert fit.k == 1 and any("no peer twins" in w for w in fit.warnings)


# ------------------------------------------------------------------------ evaluation
def test_evaluation_plugin_is_the_poisson_log_likelihood_at_the_estimate(small_schema):
    # Prepare
    local = make_small_frame(small_schema, 300, seed=1)
    test = make_small_frame(small_schema, 500, seed=2)
    fit = local_fit(small_schema, local)
    X, y = fit.design.frame_matrix(small_schema, test)
    # Execute
    ev = evaluate(fit, small_schema, test, draws=50, seed=3)
    # Assert
    expected = stats.poisson.logpmf(y, np.exp(X @ fit.estimate)).mean()
    assert ev.plugin == pytest.approx(expected, rel=1e-12)
    assert ev.samples.shape == (50,) and ev.n_test == 500
    assert ev.mean < ev.plugin  # log-likelihood is concave in w: Jensen
    assert ev.mean == pytest.approx(float(np.mean(ev.samples)))


def test_evaluation_is_reproducible_in_its_seed_and_varies_across_seeds(small_schema):
    # Prepare
    fit = local_fit(small_schema, make_small_frame(small_schema, 200))
    test = make_small_frame(small_schema, 200, seed=5)
    # Execute
    a, b, c = (evaluate(fit, small_schema, test, seed=s) for s in (1, 1, 2))
    # Assert
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.array_equal(a.samples, c.samples) and len(a.samples) == 100


def test_evaluation_with_zero_variance_gives_the_plugin_in_every_draw(small_schema):
    # Prepare
    fit = local_fit(small_schema, make_small_frame(small_schema, 200))
    p = fit.pooled
    fixed = replace(fit, pooled=replace(p, total=np.zeros_like(p.total)))
    # Execute
    ev = evaluate(fixed, small_schema, make_small_frame(small_schema, 100, seed=8), draws=5)
    # Assert
    np.testing.assert_allclose(ev.samples, ev.plugin)
    assert json.dumps(ev.to_dict(), allow_nan=False)


def test_combined_fit_beats_a_small_local_fit_on_test_likelihood(small_schema):
    # Prepare: 60 local rows, three peers of 1000 rows from the same model
    local = make_small_frame(small_schema, 60, seed=11)
    peers = _peers(small_schema, count=3, n=1000, k=20, seed=20)
    test = make_small_frame(small_schema, 2000, seed=12)
    # Execute
    ll_local = evaluate(local_fit(small_schema, local), small_schema, test).mean
    ll_comb = evaluate(combined_fit(small_schema, local, peers), small_schema, test).mean
    # Assert
    assert ll_comb > ll_local
