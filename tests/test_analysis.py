"""Design, pooling rules, combined/local/oracle fits and evaluation."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from conftest import make_small_frame
from scipy import stats

from twinnode.analysis import usable
from twinnode.analysis.design import make_design
from twinnode.analysis.fit import (
    AnalysisOptions,
    combined_fit,
    evaluate,
    local_fit,
    oracle_fit,
    repool,
    twins_fit,
)
from twinnode.analysis.party import analyze_party
from twinnode.analysis.pooling import pool
from twinnode.data import twin_frame
from twinnode.errors import AnalysisError
from twinnode.lab.simtwins import poison_frame, posterior_twins
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


def test_pooled_covariance_is_the_rule_applied_to_the_matrices():
    # Prepare: K = 3 estimate vectors, each with the same sandwich covariance
    coef = np.array([[1.0, 0.0], [2.0, 1.0], [4.0, 1.0]])
    cov = np.broadcast_to(np.array([[0.25, 0.05], [0.05, 0.1]]), (3, 2, 2))
    se = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    B = np.cov(coef.T, ddof=1)
    # Execute
    rr = pool(coef, se, cov=cov, rule="reiter")
    rb = pool(coef, se, cov=cov, rule="rubin")
    # Assert: T = (1 + 1/K) B -/+ U matrix-wise; its diagonal is the per-term T
    np.testing.assert_allclose(rr.covariance, 4 / 3 * B - cov[0], rtol=1e-12)
    np.testing.assert_allclose(rb.covariance, 4 / 3 * B + cov[0], rtol=1e-12)
    np.testing.assert_allclose(np.diag(rr.covariance), rr.total, rtol=1e-12)
    assert not rr.covariance_fallback and not rb.covariance_fallback


def test_pooled_covariance_keeps_the_reported_variances_when_a_term_falls_back():
    # Prepare: the second term barely varies between replicates: reiter's T < 0 there
    coef = np.array([[1.0, 0.50], [2.0, 0.51], [4.0, 0.49]])
    cov = np.broadcast_to(np.array([[0.25, 0.1], [0.1, 0.1]]), (3, 2, 2))
    se = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    rubin = pool(coef, se, cov=cov, rule="rubin").covariance
    # Execute
    rr = pool(coef, se, cov=cov, rule="reiter", fallback="rubin")
    # Assert: the diagonal is the reported T (the rule's, or the fallback's where it fell
    # back), the correlation is the fallback matrix's, and the matrix is a covariance
    assert rr.fallback.tolist() == [False, True] and rr.covariance_fallback
    np.testing.assert_allclose(np.diag(rr.covariance), rr.total, rtol=1e-12)
    corr = rr.covariance[0, 1] / np.sqrt(rr.total[0] * rr.total[1])
    assert corr == pytest.approx(rubin[0, 1] / np.sqrt(rubin[0, 0] * rubin[1, 1]))
    assert np.linalg.eigvalsh(rr.covariance).min() > -1e-12


def test_a_term_in_fewer_replicates_than_min_k_is_missing():
    # Prepare
    coef = np.array([[1.0, np.nan], [2.0, 0.3], [3.0, np.nan]])
    se = np.full((3, 2), 0.1)
    # Execute
    p = pool(coef, se, rule="mixed", min_k=2)
    # Assert: one replicate gives no between-twin variance: not pooled as T = u
    assert np.isnan(p.estimate[1]) and np.isnan(p.total[1]) and p.k_used.tolist() == [3, 0]
    assert np.isfinite(p.covariance[0, 0]) and np.isnan(p.covariance[1]).all()


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
        frames = [local] + [twin_frame(peers[p][k], small_schema) for p in peers]
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
    # Prepare: two complete releases, K = 6 and K = 4
    peers = _peers(small_schema, count=2, k=6)
    peers["p1"] = posterior_twins(small_schema, make_small_frame(small_schema, 400, 11),
                                  sender="p1", k=4, seed=1)
    # Execute
    fit = combined_fit(small_schema, make_small_frame(small_schema, 100), peers)
    # Assert
    assert fit.k == 4 and fit.peers == ("p0", "p1")
    assert any("different K" in w for w in fit.warnings)


def test_twins_of_two_releases_or_another_schema_leave_that_peer_out(small_schema):
    # Prepare
    a = _peers(small_schema, count=1, k=3, seed=0)["p0"]
    b = _peers(small_schema, count=1, k=3, seed=7)["p0"]
    other = [Twin(replace(t.provenance, schema_hash="0" * 64), t.arrays) for t in b]
    local = make_small_frame(small_schema, 100)
    # Execute
    fit = combined_fit(small_schema, local, {"mixed": [a[0], b[1], a[2]], "other": other,
                                             "good": a})
    # Assert: the analysis runs on the good peer, and says why the others are out
    assert fit.peers == ("good",) and fit.k == 3
    assert any("'mixed' left out" in w and "releases" in w for w in fit.warnings)
    assert any("'other' left out" in w and "schema" in w for w in fit.warnings)


def test_a_term_estimated_in_only_one_twin_is_missing_not_pooled_without_b(small_schema):
    # Prepare: only twin 0 of the only peer has 'east' rows
    twins = _peers(small_schema, count=1, k=5)["p0"]
    for i in range(1, 5):
        t = twins[i]
        keep = np.asarray(t.arrays["region"]) != 2
        twins[i] = Twin(t.provenance, {c: np.asarray(a)[keep] for c, a in t.arrays.items()})
    # Execute
    fit = twins_fit(small_schema, twins)
    # Assert
    j = fit.terms.index("region[east]")
    assert np.isnan(fit.estimate[j]) and np.isnan(fit.se[j])
    assert any("only 1 of 5" in w for w in fit.warnings)
    assert np.isfinite(np.delete(fit.estimate, j)).all()


def test_a_single_twin_cannot_be_pooled_as_synthetic_data(small_schema):
    # Prepare
    twins = posterior_twins(small_schema, make_small_frame(small_schema, 300), sender="p0",
                            k=1, seed=0)
    # Execute / Assert
    with pytest.raises(AnalysisError, match="at least 2"):
        twins_fit(small_schema, twins)


def _party_peers(schema, k=10):
    """Four honest peers, K twins each."""
    return {f"h{i}": posterior_twins(schema, make_small_frame(schema, 400, 30 + i),
                                     sender=f"h{i}", k=k, seed=40 + i) for i in range(4)}


def _smoker(report):
    c = report.to_dict()["coefficients"]["smoker"]
    return report.combined.k, c["se"], c["df"]


def test_a_flagged_excluded_peer_with_one_twin_changes_no_partys_fit(small_schema):
    # Prepare: four honest peers at K = 10, and a flipped-coding peer that sends K = 1
    local = make_small_frame(small_schema, 300, seed=1)
    honest = _party_peers(small_schema)
    bad = poison_frame(small_schema, make_small_frame(small_schema, 400, 50), "flip:smoker")
    peers = honest | {"bad": posterior_twins(small_schema, bad, sender="bad", k=1, seed=9)}
    # Execute
    alone = analyze_party(small_schema, local, honest, weight=1.0, policy="exclude",
                          replicates=2)
    joined = analyze_party(small_schema, local, peers, weight=1.0, policy="exclude",
                           replicates=2)
    # Assert: K, SE and df are the honest peers' (before: K = 1, df = inf, smaller SE)
    assert _smoker(joined) == pytest.approx(_smoker(alone), rel=1e-12)
    assert joined.combined.k == 10 and joined.screening.left_out.keys() == {"bad"}
    assert joined.to_dict()["screening"]["left_out"]["bad"].startswith("K = 1")


def test_analyze_party_checks_each_peers_twins_once(small_schema, monkeypatch):
    # Prepare: four honest peers (one re-sends a twin), a flipped one, one with K = 1
    local = make_small_frame(small_schema, 300, seed=1)
    test = make_small_frame(small_schema, 200, seed=2)
    peers = _party_peers(small_schema, k=6)
    peers["h0"] = peers["h0"] + [peers["h0"][1]]
    flipped = poison_frame(small_schema, make_small_frame(small_schema, 400, 50), "flip:smoker")
    peers["bad"] = posterior_twins(small_schema, flipped, sender="bad", k=6, seed=9)
    peers["one"] = posterior_twins(small_schema, make_small_frame(small_schema, 400, 51),
                                   sender="one", k=1, seed=10)
    checked = []
    check = usable._check

    def counting(schema, twins):
        checked.append(twins[0].provenance.sender)
        return check(schema, twins)
    monkeypatch.setattr(usable, "_check", counting)
    # Execute: screening, the weight's validation, fits with and without the flagged
    report = analyze_party(small_schema, local, peers, policy="exclude", replicates=2,
                           test_frame=test, draws=5)
    # Assert
    assert report.screening.flagged == ("bad",) and "one" in report.screening.left_out
    assert sorted(checked) == sorted(peers)


@pytest.mark.parametrize("same", [True, False])
def test_a_peer_sending_one_index_twice_does_not_stop_the_analysis(small_schema, same):
    # Prepare: h3 sends twin 2 a second time, the same or with other rows
    local = make_small_frame(small_schema, 300, seed=1)
    peers = _party_peers(small_schema)
    twins = peers["h3"]
    again = twins[2] if same else Twin(twins[2].provenance, twins[5].arrays)
    peers["h3"] = twins + [again]
    # Execute
    report = analyze_party(small_schema, local, peers, weight=1.0, replicates=2)
    # Assert: a copy is ignored; two different twins for one index leave h3 out
    assert report.combined.k == 10
    if same:
        assert "h3" in report.combined.peers and report.screening.left_out == {}
        assert any("re-sent" in w for w in report.combined.warnings)
    else:
        assert report.combined.peers == ("h0", "h1", "h2")
        assert "two different twins with index 2" in report.screening.left_out["h3"]


def test_an_incomplete_release_is_left_out_until_complete(small_schema):
    # Prepare: 6 of h3's 10 twins have arrived
    local = make_small_frame(small_schema, 300, seed=1)
    peers = _party_peers(small_schema)
    peers["h3"] = peers["h3"][:6]
    # Execute
    fit = combined_fit(small_schema, local, peers)
    # Assert
    assert fit.k == 10 and fit.peers == ("h0", "h1", "h2")
    assert any("'h3' left out: incomplete release: 6 of its 10" in w for w in fit.warnings)


def test_a_peer_with_k_far_below_the_others_is_left_out_not_shrinking_k(small_schema):
    # Prepare: a complete release of K = 3 among K = 10
    local = make_small_frame(small_schema, 300, seed=1)
    peers = _party_peers(small_schema)
    peers["few"] = posterior_twins(small_schema, make_small_frame(small_schema, 400, 60),
                                   sender="few", k=3, seed=61)
    # Execute
    fit = combined_fit(small_schema, local, peers)
    # Assert
    assert fit.k == 10 and "few" not in fit.peers
    assert any("'few' left out: K = 3" in w for w in fit.warnings)


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


def test_monte_carlo_penalty_is_the_full_covariance_one_not_the_diagonal_one(small_schema):
    # Prepare: intercept and age (18..90, not centred) are strongly correlated
    fit = local_fit(small_schema, make_small_frame(small_schema, 200, seed=3))
    test = make_small_frame(small_schema, 2000, seed=103)
    X, y = fit.design.frame_matrix(small_schema, test)
    mu = np.exp(X @ fit.estimate)
    J = (X * mu[:, None]).T @ X / len(y)  # Fisher information per test row at q
    T = fit.pooled.covariance
    full, diagonal = -0.5 * np.trace(T @ J), -0.5 * np.sum(np.diag(T) * np.diag(J))
    # Execute
    ev = evaluate(fit, small_schema, test, draws=2000, seed=3)
    # Assert: E ll(w) - ll(q) = -tr(T J) / 2 to second order, with T the full matrix
    np.testing.assert_allclose(np.diag(T), fit.pooled.total, rtol=1e-12)
    assert ev.mean - ev.plugin == pytest.approx(full, rel=0.15)
    assert diagonal < 4 * full  # what independent draws would have cost: several times more


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
    fixed = replace(fit, pooled=replace(p, total=np.zeros_like(p.total),
                                        covariance=np.zeros_like(p.covariance)))
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


def test_the_report_says_which_peers_releases_are_noise_aware(small_schema):
    import dataclasses

    from twinnode.analysis.party import analyze_party

    peers = _party_peers(small_schema, k=4)
    marked = tuple(dataclasses.replace(t, provenance=dataclasses.replace(
        t.provenance, generator={**t.provenance.generator, "noise_aware": True}))
        for t in peers["h0"])
    peers["h0"] = marked
    local = make_small_frame(small_schema, 300, 7)
    report = analyze_party(small_schema, local, peers, weight=1.0, folds=2)
    assert report.to_dict()["noise_aware"] == {"h0": True, "h1": False, "h2": False,
                                               "h3": False}
