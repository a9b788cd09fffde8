"""Terms where the twins disagree: reported with the local-only values when asked, else kept."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import make_small_frame

from twinnode.analysis.agreement import agreement
from twinnode.analysis.disagreement import local_where_disagreeing, take_local
from twinnode.analysis.fit import AnalysisOptions
from twinnode.analysis.party import analyze_party
from twinnode.analysis.pooling import pool
from twinnode.errors import AnalysisError
from twinnode.lab.simtwins import poison_frame, posterior_twins

def _pooled(seed: int, k: int):
    """A pooled result of k replicates of 3 correlated coefficients (k = 1: a local fit)."""
    rng = np.random.default_rng(seed)
    coef = rng.normal([0.5, -1.0, 2.0], 0.1, size=(k, 3))
    se = np.full((k, 3), [0.05, 0.2, 0.1])
    cov = np.einsum("ki,kj->kij", se, se) * np.array([[1, 0.5, 0.2], [0.5, 1, -0.3],
                                                      [0.2, -0.3, 1]])
    return pool(coef, se, cov=cov, var_part=se ** 2 / 2 if k > 1 else None,
                cov_part=cov / 2 if k > 1 else None)


def test_a_disagreeing_term_gets_exactly_the_local_values_and_the_others_are_untouched():
    # Prepare: a combined result over 10 replicates, a local one; only term b flagged
    combined, local = _pooled(0, 10), _pooled(1, 1)
    flags = np.array([False, True, False])
    # Execute
    out = take_local(combined, local, flags)
    # Assert: b is the local fit's, a and c the combined fit's, bit for bit
    for name in ("estimate", "total", "df", "lower", "upper", "u_bar", "b", "k_used"):
        got, comb, loc = getattr(out, name), getattr(combined, name), getattr(local, name)
        assert got[1] == loc[1], name
        assert got[0] == comb[0] and got[2] == comb[2], name
    assert out.se[1] == local.se[1] and np.isinf(out.df[1])
    # the matrix: the new variances on its diagonal, the combined correlations kept
    assert np.diag(out.covariance) == pytest.approx(out.total)
    corr = lambda m: m / np.sqrt(np.outer(np.diag(m), np.diag(m)))  # noqa: E731
    assert corr(out.covariance) == pytest.approx(corr(combined.covariance))
    assert np.linalg.eigvalsh(out.covariance).min() > 0
    assert out.covariance[0, 2] == combined.covariance[0, 2]


def test_nothing_flagged_returns_the_combined_result_itself():
    combined, local = _pooled(0, 10), _pooled(1, 1)
    assert take_local(combined, local, np.zeros(3, bool)) is combined
    with pytest.raises(AnalysisError, match="2 flags for 3"):
        take_local(combined, local, np.array([True, False]))


def test_the_rule_keep_and_a_test_without_disagreement_change_nothing(small_schema):
    # Prepare: real fits, and agreement tests built to flag every term or none
    local = make_small_frame(small_schema, 300, 3)
    peers = {f"p{i}": posterior_twins(small_schema, make_small_frame(small_schema, 400, 20 + i),
                                      sender=f"p{i}", k=6, seed=i) for i in range(2)}
    report = analyze_party(small_schema, local, peers, weight=1.0, policy="off", folds=2)
    fit, alone = report.combined, report.local
    terms = fit.terms
    v = np.full(len(terms), 1e-4)
    split = agreement(terms, alone.estimate + 1.0, v, alone.estimate, v)
    agree = agreement(terms, alone.estimate, v, alone.estimate, v)
    # Execute / Assert
    for test, rule in ((split, "keep"), (agree, "local"), (None, "local")):
        same, names = local_where_disagreeing(fit, alone, test, rule)
        assert same is fit and names == ()
    replaced, names = local_where_disagreeing(fit, alone, split, "local")
    assert names == terms and np.array_equal(replaced.estimate, alone.estimate)
    with pytest.raises(AnalysisError, match="on_disagreement must be one of keep, local"):
        local_where_disagreeing(fit, alone, split, "drop")


def _shifted_peers(schema):
    """Four peers; two code smoker the other way round (the twins disagree on smoker)."""
    out = {}
    for i in range(4):
        frame = make_small_frame(schema, 800, 70 + i)
        if i < 2:
            frame = poison_frame(schema, frame, "flip:smoker")
        out[f"p{i}"] = posterior_twins(schema, frame, sender=f"p{i}", k=10, seed=80 + i)
    return out


def test_on_disagreement_local_reports_the_local_fit_for_the_flagged_term_only(small_schema):
    # Prepare
    local = make_small_frame(small_schema, 400, 5)
    peers = _shifted_peers(small_schema)
    # Execute: the default, keep explicitly, and local
    default = analyze_party(small_schema, local, peers, weight=1.0, policy="off", folds=2)
    keep = analyze_party(small_schema, local, peers, weight=1.0, policy="off", folds=2,
                         options=AnalysisOptions(on_disagreement="keep"))
    swap = analyze_party(small_schema, local, peers, weight=1.0, policy="off", folds=2,
                         options=AnalysisOptions(on_disagreement="local"))
    d, k, s = default.to_dict(), keep.to_dict(), swap.to_dict()
    # Assert: off by default, and keep is the default exactly
    assert d["options"]["on_disagreement"] == "keep" and d["replaced_by_local"] == []
    assert d["coefficients"] == k["coefficients"]
    flagged = d["agreement"]["disagreeing"]
    assert "smoker" in flagged and s["agreement"]["disagreeing"] == flagged
    assert len(flagged) < len(d["coefficients"])  # some term agrees
    # the flagged terms: the local fit's estimate, SE and interval; marked in report and table
    for term in flagged:
        row = s["coefficients"][term]
        assert (row["estimate"], row["se"], row["lower"], row["upper"]) == \
            (row["local_estimate"], row["local_se"], row["local_lower"], row["local_upper"])
        assert row["local_only"] is True and row["between_variance"] is None
        assert d["coefficients"][term]["estimate"] != row["estimate"]
    assert s["replaced_by_local"] == flagged
    # screening's with / without comparison stays on the fits as fitted
    assert s["screening"]["with_flagged"] == d["screening"]["with_flagged"]
    assert [t["term"] for t in s["summary"]["terms"] if t["local_only"]] == flagged
    assert s["summary"]["header"]["on_disagreement"] == "local"
    # every term that agrees exactly as the default reports it
    for term, row in s["coefficients"].items():
        if term not in flagged:
            assert row == d["coefficients"][term] and row["local_only"] is False, term
