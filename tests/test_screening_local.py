"""Screening against the party's own rows (the local anchor) and the noise-aware inflation."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_small_frame

from twinnode.analysis import inflation
from twinnode.analysis.party import screen
from twinnode.analysis.screening import LocalStatistics, PeerStatistics, judge
from twinnode.lab.simtwins import poison_frame, posterior_twins

INFLATE = 4.0  # the release noise's variance is 3 times the posterior's (DP-like)


def _peers(schema, honest, attack=None, seed=0, noise_aware=True, inflate=INFLATE, k=10):
    """`honest` peers of 800 rows from the known model, plus one from a shifted model."""
    peers = {}
    for i in range(honest + (attack is not None)):
        frame = make_small_frame(schema, 800, seed=1000 * seed + i)
        name = f"honest{i}" if i < honest else "shifted"
        if i >= honest:
            frame = poison_frame(schema, frame, attack)
        peers[name] = posterior_twins(schema, frame, sender=name, k=k, inflate=inflate,
                                      seed=1000 * seed + 50 + i, noise_aware=noise_aware)
    return peers


def _local(schema, seed=0, rows=300):
    return make_small_frame(schema, rows, seed=999 + 7 * seed)


def test_with_two_peers_an_outcome_doubled_peer_is_flagged_by_the_local_rows(small_schema):
    # Prepare: one honest and one doubled-outcome peer, both noise-aware: no consensus
    peers = _peers(small_schema, honest=1, attack="outcome*2")
    # Execute
    report = screen(small_schema, peers, "flag", 0.01, local_frame=_local(small_schema))
    # Assert: judged against the local rows alone; the doubled outcome is far from them
    by = {p.peer: p for p in report.peers}
    assert report.status == "screened" and report.references == ("local",)
    assert report.flagged == ("shifted",) and "local rows only" in report.message
    assert by["shifted"].p_local < 1e-4 and np.isnan(by["shifted"].p_consensus)
    assert by["shifted"].p_value == by["shifted"].p_local
    assert "mean:visits" in by["shifted"].reason and "vs local" in by["shifted"].reason
    assert by["honest0"].p_local > 0.01 and not by["honest0"].flagged
    doc = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert doc["peers"][1]["p_consensus"] is None and doc["peers"][1]["local_checks"]


def test_without_local_rows_two_peers_are_still_too_few(small_schema):
    peers = _peers(small_schema, honest=1, attack="outcome*2", k=4)
    report = screen(small_schema, peers, "flag", 0.01)
    assert report.status == "insufficient-peers" and report.flagged == ()


@pytest.mark.parametrize("attack", ["outcome*2", "flip:smoker"])
def test_one_peer_alone_is_judged_against_the_local_rows(small_schema, attack):
    honest = screen(small_schema, _peers(small_schema, honest=1), "flag", 0.01,
                    local_frame=_local(small_schema))
    shifted = screen(small_schema, _peers(small_schema, honest=0, attack=attack), "flag",
                     0.01, local_frame=_local(small_schema))
    assert honest.flagged == () and honest.peers[0].p_local > 0.01
    assert shifted.flagged == ("shifted",)


def test_old_releases_with_fewer_than_three_peers_are_not_judged(small_schema):
    # Prepare: releases whose twins share their release noise (not noise-aware)
    peers = _peers(small_schema, honest=1, attack="outcome*2", noise_aware=False)
    # Execute
    report = screen(small_schema, peers, "exclude", 0.01, local_frame=_local(small_schema))
    # Assert: nothing estimates their release noise, so nobody is judged (nor excluded)
    assert report.flagged == () and report.accepted == tuple(peers)
    assert all(np.isnan(p.p_local) and "not noise-aware" in p.reason for p in report.peers)
    assert "2 not judged" in report.message


@pytest.mark.parametrize("attack", ["outcome*1.5", "outcome*2", "flip:smoker"])
def test_with_four_peers_the_combined_rule_flags_a_shifted_peer(small_schema, attack):
    # Prepare
    peers = _peers(small_schema, honest=3, attack=attack)
    # Execute
    report = screen(small_schema, peers, "flag", 0.01, local_frame=_local(small_schema))
    # Assert: both references ran; the peer's p-value is Bonferroni over the two
    assert report.references == ("local", "consensus") and report.flagged == ("shifted",)
    for p in report.peers:
        assert p.p_value == pytest.approx(min(1.0, 2 * min(p.p_local, p.p_consensus)))
        assert p.noise_aware and all(c.df >= inflation.NOISE_AWARE_PRIOR_DF
                                     for c in p.checks + p.local_checks)
    assert report.dispersion["noise_aware_prior_df"] == inflation.NOISE_AWARE_PRIOR_DF


def test_honest_peers_are_rarely_flagged_by_the_combined_rule(small_schema):
    # Prepare / Execute: 20 seeded cases of 4 honest noise-aware peers and a 300-row party
    flags, judged = 0, 0
    for seed in range(20):
        report = screen(small_schema, _peers(small_schema, honest=4, seed=seed, k=8),
                        "flag", 0.01, local_frame=_local(small_schema, seed))
        flags += len(report.flagged)
        judged += sum(np.isfinite(p.p_local) and np.isfinite(p.p_consensus)
                      for p in report.peers)
    # Assert
    assert judged == 80 and flags <= 1


def test_old_releases_keep_the_fitted_inflation_and_the_local_test_uses_it(small_schema):
    # Prepare: five honest releases whose twins do not show their release noise (8x)
    peers = _peers(small_schema, honest=5, noise_aware=False, inflate=8.0)
    # Execute
    report = screen(small_schema, peers, "flag", 0.01, local_frame=_local(small_schema))
    # Assert: the others' spread measures it; the inflation carries to the local test too,
    # so the shared noise does not make the peers look far from the local rows
    assert all(p.p_local > 0.01 and not p.noise_aware for p in report.peers)
    intercept = [c for p in report.peers for c in p.checks + p.local_checks
                 if c.name == "coef:Intercept"]
    assert np.median([c.inflation for c in intercept]) > 2.0
    assert "noise_aware_prior_df" not in report.dispersion


def test_noise_aware_inflation_shrinks_the_others_spread_toward_one():
    # s² of the others with 3 df: below 1, 1, 4, 25; and one without others (d = 0)
    s2, d = np.array([0.5, 1.0, 4.0, 25.0, np.nan]), np.array([3.0, 3.0, 3.0, 3.0, 0.0])
    post, df = inflation.noise_aware(s2, d)
    np.testing.assert_allclose(post, [1.0, 1.0, 22 / 13, 85 / 13, 1.0])
    np.testing.assert_allclose(df, [13.0, 13.0, 13.0, 13.0, 10.0])


def _stats(values, variances, aware):
    names = ("coef:a", "coef:b", "mean:c")
    return PeerStatistics(names=names, families=("coefficients",) * 2 + ("marginals",),
                          values=np.asarray(values, float),
                          variances=np.asarray(variances, float), n=1000, epsilon=1.0,
                          k=20, rows=1000, noise_aware=aware)


@pytest.mark.parametrize("aware", [True, False])
def test_a_noise_aware_peer_is_judged_with_the_prior_where_the_fitted_rule_sees_spread(aware):
    # Prepare: 4 peers whose coefficients scatter 3 sd of their noise; p3 is 5 sd off on c
    rng = np.random.default_rng(4)
    stats_ = {f"p{i}": _stats(rng.normal(0, [3.0, 3.0, 1.0]) + (i == 3) * np.r_[0, 0, 5],
                              np.ones(3), aware) for i in range(4)}
    local = LocalStatistics(names=stats_["p0"].names, values=np.zeros(3),
                            variances=np.full(3, 0.01), rows=500)
    # Execute
    verdicts, _ = judge(stats_, 0.01, local=local)
    # Assert: the noise-aware rule moves the inflation only part of the way to the others'
    # spread (10 prior df against 2), the fitted rule all the way
    coef = [c.inflation for v in verdicts for c in v.checks if c.name.startswith("coef:")]
    assert (np.median(coef) < 3.0) if aware else (np.median(coef) > 3.0)
    p3 = verdicts[3]
    assert p3.flagged == aware and ("mean:c" in p3.reason) == aware
