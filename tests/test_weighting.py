"""Choosing the twin weight λ by cross-validation, weighted sandwich errors, the party report."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import load_script, make_small_frame

from twinnode.analysis import pooling, weighting
from twinnode.analysis.design import make_design
from twinnode.analysis.fit import AnalysisOptions, combined_fit, local_fit
from twinnode.analysis.glm import fit_poisson_batch
from twinnode.analysis.party import analyze_party
from twinnode.analysis.weighting import (
    choose_weight,
    fixed_weight,
    parse_weight,
    select,
    stratified_folds,
    validation_scores,
)
from twinnode.errors import AnalysisError
from twinnode.lab.simtwins import poison_frame, posterior_twins


def _peers(schema, count=3, n=1000, k=8, seed=0, attack=None, inflate=1.0):
    peers = {}
    for i in range(count):
        frame = make_small_frame(schema, n, seed + 10 + i)
        if attack:
            frame = poison_frame(schema, frame, attack)
        peers[f"p{i}"] = posterior_twins(schema, frame, sender=f"p{i}", k=k, seed=seed + i,
                                         inflate=inflate)
    return peers


# ------------------------------------------------------------------ choosing λ
def test_twins_from_a_wrong_model_get_weight_zero(small_schema):
    # Prepare: peers' smoker coding flipped; the party has 600 rows of its own
    local = make_small_frame(small_schema, 600, seed=1)
    peers = _peers(small_schema, attack="flip:smoker")
    # Execute
    choice = choose_weight(small_schema, local, peers, seed=3)
    # Assert
    assert choice.chosen == 0.0 and choice.helps is False
    assert choice.verdict.startswith("no:")
    assert choice.gain[-1] < -5 * choice.gain_se[-1]  # λ = 1 clearly hurts


def test_faithful_twins_get_a_high_weight_for_a_small_party(small_schema):
    # Prepare: 80 local rows, three peers of 1000 rows from the same model
    local = make_small_frame(small_schema, 80, seed=2)
    peers = _peers(small_schema, seed=20)
    # Execute
    choice = choose_weight(small_schema, local, peers, seed=0)
    # Assert
    assert choice.chosen >= 0.5 and choice.helps is True
    assert choice.verdict.startswith(f"yes: λ = {choice.chosen:g} improves")
    assert choice.gain[list(choice.grid).index(choice.chosen)] > 0


def test_choice_is_reproducible_in_its_seed(small_schema):
    # Prepare
    local = make_small_frame(small_schema, 120, seed=4)
    peers = _peers(small_schema, k=4, n=400)
    # Execute
    a = choose_weight(small_schema, local, peers, seed=5, replicates=3)
    b = choose_weight(small_schema, local, peers, seed=5, replicates=3)
    c = choose_weight(small_schema, local, peers, seed=6, replicates=3)
    # Assert
    np.testing.assert_array_equal(a.mean, b.mean)
    assert not np.array_equal(a.mean, c.mean)
    assert a.replicates == 3 and a.folds == 5 and a.fold_means.shape == (5, len(a.grid))


def test_local_only_point_of_the_curve_is_the_local_fit_on_the_training_folds(small_schema):
    # Prepare
    local = make_small_frame(small_schema, 150, seed=7)
    peers = _peers(small_schema, count=2, k=3, n=300)
    design = make_design(small_schema)
    # Execute
    scores, fold, r = validation_scores(small_schema, local, peers, grid=(0.0, 0.5), folds=4,
                                        seed=9)
    # Assert: score of a held-out row at λ = 0 = its log-likelihood under the fold's local fit
    from scipy import stats
    for f in range(4):
        fit = local_fit(small_schema, local[fold != f].reset_index(drop=True))
        X, y = design.frame_matrix(small_schema, local[fold == f])
        expected = stats.poisson.logpmf(y, np.exp(X @ fit.estimate))
        np.testing.assert_allclose(scores[fold == f, 0], expected, rtol=1e-8)
    assert r == 3 and scores.shape == (150, 2)


def test_folds_are_balanced_and_span_the_outcome():
    # Prepare
    y = np.random.default_rng(0).poisson(2.0, size=103)
    # Execute
    fold = stratified_folds(y, 5, seed=1)
    # Assert: sizes within one; below any threshold, each fold has its share of rows +- 1
    sizes = np.bincount(fold, minlength=5)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 103
    for t in range(int(y.max()) + 1):
        below = np.bincount(fold[y <= t], minlength=5)
        assert below.max() - below.min() <= 1
    np.testing.assert_array_equal(fold, stratified_folds(y, 5, seed=1))
    assert not np.array_equal(fold, stratified_folds(y, 5, seed=2))


def _curve_scores(gains, noise_sd, n=400, seed=0):
    """Held-out scores (n, G) whose mean gains over column 0 are exactly `gains`."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, noise_sd, size=(n, len(gains)))
    noise -= noise.mean(axis=0)
    return rng.normal(-1.0, 0.5, size=(n, 1)) + np.asarray(gains) + noise


@pytest.mark.parametrize("selection, expected", [
    ("best", 3), ("guarded", 3), ("one-se", 1)])
def test_selection_rules_on_a_known_curve(selection, expected):
    # Prepare: λ = 0.1 within noise (paired SE ~0.0007) of the best, λ = 1; both far above 0
    scores = _curve_scores([0.0, 0.0495, 0.04, 0.05], noise_sd=0.01)
    # Execute
    chosen, best = select((0.0, 0.1, 0.5, 1.0), scores, selection)
    # Assert
    assert chosen == expected and best == 3


def test_guarded_rule_stays_local_when_the_gain_is_within_the_noise():
    # Prepare: the best λ gains 0.001 on rows whose paired differences have sd ~0.14
    scores = _curve_scores([0.0, 0.001], noise_sd=0.1, n=100, seed=1)
    # Execute
    chosen, best = select((0.0, 1.0), scores, "guarded")
    # Assert
    assert best == 1 and chosen == 0


def test_fixed_weight_is_kept_and_judged_against_local_only(small_schema):
    # Prepare
    local = make_small_frame(small_schema, 500, seed=3)
    peers = _peers(small_schema, k=4, attack="outcome*2")
    # Execute
    choice = fixed_weight(small_schema, local, peers, 1.0)
    # Assert
    assert choice.mode == "fixed" and choice.chosen == 1.0 and choice.grid == (0.0, 1.0)
    assert choice.helps is False and "lowers held-out log-likelihood" in choice.verdict


def test_no_peers_and_too_few_rows_are_decided_without_validation(small_schema):
    # Prepare
    local = make_small_frame(small_schema, 200)
    tiny = make_small_frame(small_schema, 3)
    peers = _peers(small_schema, count=1, k=2, n=200)
    # Execute
    none = choose_weight(small_schema, local, {})
    few = choose_weight(small_schema, tiny, peers)
    # Assert
    assert none.mode == "no-peers" and none.chosen == 0.0 and none.helps is None
    assert few.mode == "unvalidated" and few.chosen == 1.0 and "cannot judge" in few.verdict
    assert json.dumps(few.to_dict(), allow_nan=False)


@pytest.mark.parametrize("text, expected", [("auto", "auto"), (" AUTO ", "auto"),
                                            ("0.3", 0.3), ("1", 1.0), (0, 0.0)])
def test_weight_parses_auto_or_a_number(text, expected):
    assert parse_weight(text) == expected


@pytest.mark.parametrize("bad", ["half", "1.5", -0.1, "nan"])
def test_weight_outside_zero_one_is_an_analysis_error(bad):
    with pytest.raises(AnalysisError):
        parse_weight(bad)


def test_bad_grid_folds_or_selection_are_analysis_errors(small_schema):
    # Prepare
    local = make_small_frame(small_schema, 50)
    peers = _peers(small_schema, count=1, k=2, n=100)
    # Execute / Assert
    with pytest.raises(AnalysisError):
        choose_weight(small_schema, local, peers, grid=(0.0, 2.0))
    with pytest.raises(AnalysisError):
        choose_weight(small_schema, local, peers, folds=1)
    with pytest.raises(AnalysisError):
        choose_weight(small_schema, local, peers, selection="max")


# ------------------------------------------------------------------ weighted sandwich
def test_weighted_rows_enter_the_meat_squared_and_hc1_uses_the_effective_size(small_schema):
    # Prepare: one data set, half its rows weighted 0.2
    X, y = make_design(small_schema).frame_matrix(small_schema,
                                                  make_small_frame(small_schema, 400, seed=5))
    w = np.where(np.arange(400) < 200, 1.0, 0.2)
    # Execute
    hc0 = fit_poisson_batch(X, y, w, cov_type="HC0")
    hc1 = fit_poisson_batch(X, y, w, cov_type="HC1")
    # Assert: bread-meat-bread with w² in the meat, by hand; HC1 factor from Kish's n
    b = hc0.coef[0]
    mu = np.exp(X @ b)
    bread = np.linalg.inv(X.T @ (X * (w * mu)[:, None]))
    meat = X.T @ (X * ((w * (y - mu)) ** 2)[:, None])
    np.testing.assert_allclose(hc0.se[0], np.sqrt(np.diag(bread @ meat @ bread)), rtol=1e-8)
    n_eff = w.sum() ** 2 / (w ** 2).sum()
    np.testing.assert_allclose(hc1.se[0] ** 2, hc0.se[0] ** 2 * n_eff / (n_eff - 5), rtol=1e-8)


def test_a_vanishing_twin_weight_gives_the_local_fit_and_its_errors(small_schema):
    # Prepare
    local = make_small_frame(small_schema, 300, seed=6)
    peers = _peers(small_schema, count=2, k=4, n=500)
    # Execute
    alone = local_fit(small_schema, local)
    tiny = combined_fit(small_schema, local, peers, weight=1e-9)
    # Assert: continuous in λ at 0, small-sample factor included (it would jump with n = rows)
    np.testing.assert_allclose(tiny.estimate, alone.estimate, atol=1e-6)
    np.testing.assert_allclose(tiny.se, alone.se, rtol=1e-5)
    assert tiny.fallback_count == 0 and np.isinf(tiny.pooled.df).all()


def test_mixed_rule_at_a_partial_weight_adds_the_local_variance_reiter_subtracts(small_schema):
    # Prepare
    local = make_small_frame(small_schema, 400, seed=8)
    peers = _peers(small_schema, count=2, k=10, n=500, inflate=3.0)
    # Execute
    fit = combined_fit(small_schema, local, peers, weight=0.3,
                       options=AnalysisOptions(rule="mixed"))
    p = fit.pooled
    r = fit.replicates
    reiter = pooling.pool(r.coef, r.se, rule="reiter", var_part=r.var_part)
    # Assert: T_mixed - T_reiter = 2 ū_L (where reiter did not fall back)
    ok = ~reiter.fallback
    np.testing.assert_allclose((p.total - reiter.total)[ok], 2 * (p.u_bar - p.u_part)[ok],
                               rtol=1e-9)
    assert (p.u_part > 0).all() and (p.u_part < p.u_bar).all()


# ------------------------------------------------------------------ party report
def test_party_report_uses_the_chosen_weight_and_serialises(small_schema):
    # Prepare
    local = make_small_frame(small_schema, 100, seed=12)
    peers = _peers(small_schema, k=6, seed=30)
    test = make_small_frame(small_schema, 300, seed=13)
    # Execute
    report = analyze_party(small_schema, local, peers, test_frame=test, replicates=4,
                           draws=10)
    doc = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    # Assert
    assert report.combined.weight == report.weight.chosen == doc["weight"]["chosen"]
    assert {"chosen", "grid", "curve", "verdict", "folds"} <= set(doc["weight"])
    assert len(doc["weight"]["curve"]) == len(weighting.DEFAULT_GRID)
    assert {"schema", "design", "options", "coefficients", "pooling", "local_pooling",
            "screening", "evaluation", "ll_local", "ll_combined", "timing"} <= set(doc)
    assert doc["pooling"]["weight"] == doc["weight"]["chosen"]
    assert doc["options"]["rule"] == "mixed"


def test_exclude_policy_chooses_the_weight_without_the_flagged_peer(small_schema):
    # Prepare: four peers, the last one's smoker coding flipped; a small party
    local = make_small_frame(small_schema, 80, seed=15)
    peers = _peers(small_schema, count=3, k=6, seed=40)
    peers["bad"] = posterior_twins(small_schema, poison_frame(
        small_schema, make_small_frame(small_schema, 1000, 77), "flip:smoker"), sender="bad",
        k=6, seed=9)
    # Execute
    flag = analyze_party(small_schema, local, peers, policy="flag", replicates=4)
    exclude = analyze_party(small_schema, local, peers, policy="exclude", replicates=4)
    # Assert
    assert exclude.screening.flagged == ("bad",)
    assert exclude.combined.peers == ("p0", "p1", "p2")
    assert exclude.weight.chosen > flag.weight.chosen
    assert exclude.with_flagged.weight == exclude.weight.chosen


def test_fixed_weight_one_is_the_papers_concatenation(small_schema):
    # Prepare
    local = make_small_frame(small_schema, 150, seed=15)
    peers = _peers(small_schema, count=2, k=5, n=400)
    # Execute
    report = analyze_party(small_schema, local, peers, weight=1.0, replicates=2)
    plain = combined_fit(small_schema, local, peers)
    # Assert
    np.testing.assert_allclose(report.combined.estimate, plain.estimate, rtol=1e-12)
    assert report.weight.mode == "fixed" and report.weight.chosen == 1.0


@pytest.mark.slow
def test_pooled_intervals_at_the_adaptive_weight_cover_the_truth():
    # Prepare: the coverage study script, run small (60 repetitions, K = 40, DP-like twins)
    study = load_script("coverage_study")

    def maker(schema, frame, *, sender, k, epsilon, seed):
        return posterior_twins(schema, frame, sender=sender, k=k, epsilon=epsilon, seed=seed,
                               inflate=4.0)
    # Execute
    out = study.run_study(maker, reps=60, k=40, peers=3, n_local=300, n_peer=800,
                          weights=(1.0, "auto"))
    res = out["results"]
    # Assert: nominal 0.95; 60 x 5 intervals give a Monte Carlo SE of about 0.013
    assert 0.88 <= res["combined/mixed/t"]["coverage_mean"] <= 0.99
    assert 0.88 <= res["combined-auto/mixed/t"]["coverage_mean"] <= 0.99
    assert res["combined-auto/mixed/t"]["fallback_share"] == 0.0
    assert 0.0 < out["chosen_weight"]["mean"] < 1.0
