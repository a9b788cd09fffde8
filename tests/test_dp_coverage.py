"""Coverage on real DP twins: the default generator trained at ε = 1 on a small population.

The full study (10 seeds, K = 100, docs/results/coverage/) takes hours on 2 cores; this runs
its code on one repetition of two peers, so a change that hides the release's DP error from
the twins' spread, or widens intervals without bound, fails here on real d3p training.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import load_script

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study_runs(tmp_path_factory):
    study = load_script("coverage_study")
    makers = load_script("twin_makers")
    cache = str(tmp_path_factory.mktemp("posteriors"))
    ledgers = str(tmp_path_factory.mktemp("ledgers"))
    runs = {}
    for aware in (True, False):  # the second draws from the first's cached posteriors
        maker = makers.make("dp", cache_dir=cache, ledger_root=ledgers, noise_aware=aware)
        runs[aware] = study.run_study(maker, reps=1, k=40, peers=2, n_local=300, n_peer=2000,
                                      seed=7, weights=(1.0,), heterogeneities=("pmm", "off"))
    return runs


def _widths(run, key):
    return np.array(list(run["results"][key]["median_width"].values()))


def test_noise_aware_twins_widen_the_twins_only_interval_on_every_term(study_runs):
    aware, plain = study_runs[True], study_runs[False]
    # The same trained posterior: only the draw of the head's and mixture's DP error differs
    assert np.all(_widths(aware, "twins-only/reiter/t") > _widths(plain, "twins-only/reiter/t"))


def test_a_noise_aware_release_covers_the_true_coefficients(study_runs):
    aware = study_runs[True]["results"]
    # One release, five terms: its own interval holds at least four (the study: 0.94)
    assert aware["twins-only/reiter/t"]["coverage_mean"] >= 0.8
    # ... and is no wider than 3x the local-only interval (the twins still inform)
    ratio = _widths(study_runs[True], "combined/mixed/t") / _widths(study_runs[True],
                                                                    "local-only/single/t")
    assert np.all(ratio <= 3.0), ratio


def test_the_between_release_term_never_narrows_an_interval(study_runs):
    for run in study_runs.values():
        assert np.all(_widths(run, "combined/mixed/t")
                      >= _widths(run, "combined[off]/mixed/t") - 1e-12)
