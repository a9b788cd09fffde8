"""Screening peers against the leave-one-out consensus of the others."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from conftest import make_small_frame

from twinnode.analysis.fit import combined_fit
from twinnode.analysis.party import analyze_party, screen
from twinnode.analysis.peerstats import peer_statistics
from twinnode.analysis.inflation import prior_inflation
from twinnode.analysis.screening import (
    PeerStatistics,
    judge,
    screening_report,
    screening_status,
)
from twinnode.atomic import jsonable
from twinnode.data import arrays_to_frame, frame_to_arrays
from twinnode.errors import AnalysisError
from twinnode.lab.simtwins import poison_frame, posterior_twins
from twinnode.twins import Twin


def _population(schema, honest=5, attack=None, n=800, k=15, seed=0, sizes=None):
    """`honest` peers from the known model, plus one from a shifted model if `attack`."""
    peers = {}
    total = honest + (attack is not None)
    for i in range(total):
        rows = sizes[i] if sizes else n
        frame = make_small_frame(schema, rows, seed=1000 * seed + i)
        name = f"honest{i}" if i < honest else "shifted"
        if i >= honest:
            frame = poison_frame(schema, frame, attack)
        peers[name] = posterior_twins(schema, frame, sender=name, k=k, seed=1000 * seed + 50 + i)
    return peers


@pytest.mark.parametrize("attack, statistic", [("flip:smoker", "coef:smoker"),
                                               ("outcome*2", "visits")])
def test_shifted_peer_is_flagged_and_honest_ones_are_not(small_schema, attack, statistic):
    # Prepare
    peers = _population(small_schema, attack=attack)
    # Execute
    report = screen(small_schema, peers, "flag", threshold=0.01)
    # Assert
    assert report.status == "screened" and report.flagged == ("shifted",)
    verdict = {p.peer: p for p in report.peers}["shifted"]
    assert statistic in verdict.reason and verdict.p_value < 1e-6
    assert all(p.p_value > 0.01 for p in report.peers if p.peer != "shifted")
    assert report.accepted == tuple(peers)  # flag only: everyone is still used


def test_exclude_policy_drops_the_flagged_peer_and_matches_the_honest_only_fit(small_schema):
    # Prepare
    peers = _population(small_schema, attack="flip:smoker", k=8)
    local = make_small_frame(small_schema, 200, seed=77)
    honest = {n: t for n, t in peers.items() if n != "shifted"}
    # Execute: the party analysis fits with and without the flagged (screening fits none)
    report = analyze_party(small_schema, local, peers, weight=1.0, policy="exclude",
                           replicates=2)
    # Assert: the chosen fit is the honest-only fit; with the shifted peer it is pulled away
    reference = combined_fit(small_schema, local, honest)
    assert report.screening.accepted == tuple(honest)
    assert report.combined is report.without_flagged
    np.testing.assert_allclose(report.combined.estimate, reference.estimate, atol=1e-12)
    j = reference.terms.index("smoker")
    assert abs(report.with_flagged.estimate[j] - reference.estimate[j]) > 0.1
    assert json.dumps(report.to_dict(), allow_nan=False)


def test_fewer_than_three_peers_says_insufficient_and_flags_none(small_schema):
    # Prepare: two peers, one of them shifted
    peers = _population(small_schema, honest=1, attack="flip:smoker", k=5)
    # Execute
    report = screen(small_schema, peers, "exclude")
    # Assert
    assert report.status == "insufficient-peers" and report.flagged == ()
    assert "at least 3 peers" in report.message and report.accepted == tuple(peers)


def test_policy_off_judges_nobody(small_schema):
    # Prepare
    peers = _population(small_schema, attack="flip:smoker", k=5)
    # Execute
    report = screen(small_schema, peers, "off")
    # Assert
    assert report.status == "off" and report.peers == () and report.flagged == ()


def test_a_small_peer_is_judged_with_its_larger_noise(small_schema):
    # Prepare: four peers of 1500 rows and one honest peer of 150
    peers = _population(small_schema, honest=5, sizes=[1500, 1500, 1500, 1500, 150], k=10)
    # Execute
    report = screen(small_schema, peers, "flag")
    # Assert: its scale is wider on every statistic (up to sqrt(10) times where its own
    # noise dominates; less where the others' spread does), and it is not flagged
    by = {p.peer: {c.name: c.scale for c in p.checks} for p in report.peers}
    ratios = np.array([by["honest4"][s] / by["honest0"][s] for s in by["honest0"]])
    assert (ratios > 1.2).all() and np.median(ratios) > 1.5
    assert report.flagged == ()


def test_peer_statistics_name_coefficients_and_marginals(small_schema):
    # Prepare
    twins = _population(small_schema, honest=1, k=4)["honest0"]
    # Execute
    st = peer_statistics(small_schema, twins)
    # Assert
    assert st.names[:5] == ("coef:Intercept", "coef:age", "coef:region[south]",
                            "coef:region[east]", "coef:smoker")
    assert set(st.names[5:]) == {"mean:age", "rate:region=north", "rate:region=south",
                                 "rate:region=east", "rate:smoker=1", "mean:visits"}
    assert (st.variances > 0).all() and st.k == 4 and st.n == 800


@pytest.mark.parametrize("policy, threshold", [("drop", 0.01), ("flag", 0.0), ("flag", 1.5)])
def test_bad_policy_or_threshold_is_an_analysis_error(small_schema, policy, threshold):
    with pytest.raises(AnalysisError):
        screen(small_schema, {}, policy, threshold)


def test_a_peer_whose_twins_are_noisier_is_judged_with_a_wider_scale(small_schema):
    # Prepare: six equal peers; one releases twins with 8.5 times the parameter variance
    # (what a much smaller ε does to a generator), and claims the same ε as the others
    peers = _population(small_schema, honest=6, k=15)
    frame = make_small_frame(small_schema, 800, seed=5)
    peers["honest5"] = posterior_twins(small_schema, frame, sender="honest5", k=15,
                                       inflate=8.5, seed=55)
    # Execute
    report = screen(small_schema, peers, "flag")
    # Assert: its measured noise widens the scale of its coefficients, so none of them is
    # off (its covariates are an honest resample, judged as any other peer's)
    by = {p.peer: {c.name: c.scale for c in p.checks} for p in report.peers}
    coefs = [s for s in by["honest0"] if s.startswith("coef:")]
    ratios = np.array([by["honest5"][s] / by["honest0"][s] for s in coefs])
    assert (ratios > 1.2).all() and np.median(ratios) > 1.8  # sqrt(8.5) = 2.9 at most
    noisy = {p.peer: p for p in report.peers}["honest5"]
    m = len(noisy.checks)
    assert all(c.p > 0.01 / m for c in noisy.checks if c.name.startswith("coef:"))
    assert "coef:" not in noisy.reason


@pytest.mark.parametrize("claim", [{"epsilon": 0.001}, {"n": 20}, {"epsilon": 0.001, "n": 20}])
def test_a_claimed_small_epsilon_or_n_buys_a_shifted_peer_no_tolerance(small_schema, claim):
    # Prepare: five honest peers and one with the smoker coding flipped, which also claims
    # a tiny ε and/or N in its provenance (the facts that would widen an honest scale)
    peers = _population(small_schema, attack="flip:smoker", k=8)
    honest_claim = screen(small_schema, peers, "flag")
    peers["shifted"] = [Twin(replace(t.provenance, **claim), t.arrays)
                        for t in peers["shifted"]]
    # Execute
    report = screen(small_schema, peers, "flag")
    # Assert: the same verdict and p-value as when it claimed what the others do
    verdict = {p.peer: p for p in report.peers}["shifted"]
    before = {p.peer: p for p in honest_claim.peers}["shifted"]
    assert report.flagged == ("shifted",) and verdict.p_value < 1e-6
    # (only the others' calibration moves a little: the claim enters their transfer)
    assert np.log(verdict.p_value) == pytest.approx(np.log(before.p_value), rel=0.05)
    assert verdict.judged_epsilon == pytest.approx(1.0) and verdict.rows == 800
    assert verdict.epsilon == claim.get("epsilon", 1.0)  # reported as claimed


def _overdispersed_frame(schema, n, seed):
    """The known model's rows with a gamma-mixed rate (variance about mu + 2 mu^2)."""
    frame = make_small_frame(schema, n, seed=seed)
    arrays = {k: np.array(v) for k, v in frame_to_arrays(schema, frame).items()}
    rng = np.random.default_rng(seed)
    rate = np.exp(0.2 + 0.8 * arrays["smoker"] + 0.02 * (arrays["age"] - 50)
                  + np.array([0.0, 0.3, -0.3])[arrays["region"]])
    arrays["visits"] = np.minimum(rng.poisson(rate * rng.gamma(0.5, 2.0, n)), 50)
    return arrays_to_frame(schema, arrays)


def test_noise_understated_by_every_peer_is_calibrated_away_but_a_shift_still_shows(
        small_schema):
    # Prepare: an overdispersed outcome, while the twins' noise is that of a Poisson model
    peers = {}
    for i in range(6):
        frame = _overdispersed_frame(small_schema, 800, seed=300 + i)
        if i == 5:
            frame = poison_frame(small_schema, frame, "flip:smoker")
        peers[f"p{i}"] = posterior_twins(small_schema, frame, sender=f"p{i}", k=10,
                                         seed=400 + i)
    # Execute
    honest = screen(small_schema, {n: t for n, t in peers.items() if n != "p5"}, "flag")
    report = screen(small_schema, peers, "flag")
    # Assert: the honest peers' spread beyond their noise is measured and flags nobody;
    # the shift is flagged, and among the others it widens the honest peers' tolerance
    assert honest.flagged == () and honest.dispersion["coefficients_inflation"] > 1.5
    assert all(c.inflation > 1.5 for p in honest.peers for c in p.checks
               if c.name == "coef:Intercept")
    assert report.flagged == ("p5",)
    verdict = {p.peer: p for p in report.peers}
    assert "coef:smoker" in verdict["p5"].reason
    smoker = [c for p in report.peers if p.peer != "p5" for c in p.checks
              if c.name == "coef:smoker"]
    assert min(c.inflation for c in smoker) > 5
    dispersion = json.loads(json.dumps(report.to_dict(), allow_nan=False))["dispersion"]
    assert dispersion == jsonable(report.dispersion)  # an infinite prior df -> null


@pytest.mark.parametrize("d0, s0", [(8.0, 4.0), (4.0, 2.0)])
def test_prior_inflation_recovers_a_scaled_inverse_chi2_prior(d0, s0):
    # Prepare: per-statistic inflations σ² ~ s0 d0 / χ²_d0, each seen through s² with 3 df
    rng = np.random.default_rng(7)
    sigma2 = s0 * d0 / rng.chisquare(d0, 4000)
    s2 = sigma2 * rng.chisquare(3, 4000) / 3
    # Execute
    d0_hat, s0_hat = prior_inflation(s2, np.full(4000, 3.0))
    # Assert
    assert d0_hat == pytest.approx(d0, rel=0.35) and s0_hat == pytest.approx(s0, rel=0.1)


def test_prior_inflation_is_infinite_df_when_every_statistic_inflates_alike():
    rng = np.random.default_rng(8)
    s2 = 3.0 * rng.chisquare(4, 4000) / 4   # one σ² = 3 for all
    d0, s0 = prior_inflation(s2, np.full(4000, 4.0))
    assert d0 > 200 and s0 == pytest.approx(3.0, rel=0.05)
    assert prior_inflation(np.array([]), np.array([])) == (float("inf"), 1.0)


def test_each_family_gets_its_own_inflation_so_a_shifted_marginal_still_shows():
    # Prepare: 8 peers, 10 coefficients whose release noise is 4x their own noise (sd) and
    # 10 marginals with none; the last peer's first marginal is 8 noise sds off
    rng = np.random.default_rng(11)
    names = tuple(f"coef:c{j}" for j in range(10)) + tuple(f"mean:m{j}" for j in range(10))
    families = ("coefficients",) * 10 + ("marginals",) * 10
    noise_sd = np.r_[np.full(10, 4.0), np.full(10, 1.0)]
    stats_ = {}
    for i in range(8):
        values = rng.normal(0.0, noise_sd)
        if i == 7:
            values[10] = 8.0
        stats_[f"p{i}"] = PeerStatistics(names=names, families=families, values=values,
                                         variances=np.ones(20), n=1000, epsilon=1.0, k=20,
                                         rows=1000)
    # Execute
    verdicts, dispersion = judge(stats_, 0.01)
    # Assert: each family's prior is its own, and the shifted marginal is flagged
    assert dispersion["coefficients_inflation"] > 8 and dispersion["marginals_inflation"] < 2
    flagged = [v.peer for v in verdicts if v.flagged]
    assert flagged == ["p7"] and "mean:m0" in verdicts[7].reason


@pytest.mark.parametrize("policy, peers, status", [
    ("off", 5, "off"), ("flag", 2, "insufficient-peers"), ("exclude", 2, "insufficient-peers"),
    ("flag", 3, "screened"), ("exclude", 6, "screened")])
def test_screening_status_says_when_peers_are_judged(policy, peers, status):
    assert screening_status(policy, 0.01, peers) == status


def test_screening_judges_given_statistics_and_the_policy_keeps_the_rest():
    # Prepare: statistics only, no twins: four peers agree, the fifth is far off
    names = ("coef:a", "mean:b")
    families = ("coefficients", "marginals")
    rng = np.random.default_rng(3)
    stats_ = {f"p{i}": PeerStatistics(names=names, families=families,
                                      values=rng.normal(0.0, 1.0, 2) + (40.0 if i == 4 else 0),
                                      variances=np.ones(2), n=500, epsilon=1.0, k=10, rows=500)
              for i in range(5)}
    # Execute
    flag = screening_report(tuple(stats_), stats_, "flag", 0.01, left_out={"q": "no twins"})
    exclude = screening_report(tuple(stats_), stats_, "exclude", 0.01, left_out={})
    # Assert
    assert flag.flagged == exclude.flagged == ("p4",)
    assert flag.accepted == tuple(stats_) and exclude.accepted == ("p0", "p1", "p2", "p3")
    assert flag.left_out == {"q": "no twins"} and "1 left out" in flag.message
    doc = flag.to_dict()
    assert doc["with_flagged"] is None and doc["without_flagged"] is None
