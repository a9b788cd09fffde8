"""Simulated (non-DP) twins used by tests and studies, and the coverage study (slow)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import load_script, make_small_frame

from twinnode.analysis.design import make_design
from twinnode.analysis.glm import fit_poisson_batch
from twinnode.errors import AnalysisError
from twinnode.lab.simtwins import (
    SMALL_TRUE_COEFFICIENTS,
    as_release,
    poison_frame,
    posterior_twins,
    simulate_small,
)
from twinnode.releasedir import load_release, save_release


def test_posterior_twins_have_the_release_facts_and_the_source_size(small_schema):
    # Prepare
    frame = make_small_frame(small_schema, 250)
    # Execute
    twins = posterior_twins(small_schema, frame, sender="a", k=4, epsilon=2.0, seed=1)
    # Assert
    assert [t.provenance.index for t in twins] == [0, 1, 2, 3]
    assert {t.provenance.release for t in twins} == {"a-sim-1"}
    assert all(t.rows == 250 and t.provenance.epsilon == 2.0 for t in twins)
    assert twins[0].provenance.generator["dp"] is False
    small_schema.check_arrays(twins[0].arrays)


def test_inflated_posterior_spreads_twins_wider(small_schema):
    # Prepare
    frame = make_small_frame(small_schema, 400, seed=2)

    def spread(inflate):
        twins = posterior_twins(small_schema, frame, sender="a", k=30, seed=3, inflate=inflate)
        return np.std([np.mean(t.arrays["visits"]) for t in twins])
    # Execute / Assert
    assert spread(9.0) > 1.5 * spread(1.0)


def test_simulated_population_follows_its_stated_true_coefficients(small_schema):
    # Prepare: a large sample from the small schema's known model
    frame = simulate_small(small_schema, 20_000, seed=4)
    design = make_design(small_schema)
    # Execute
    fit = fit_poisson_batch(*design.frame_matrix(small_schema, frame))
    # Assert: each stated coefficient within 4 standard errors of the fitted one
    truth = np.array([SMALL_TRUE_COEFFICIENTS[t] for t in design.terms])
    assert sorted(design.terms) == sorted(SMALL_TRUE_COEFFICIENTS)
    assert np.all(np.abs(fit.coef[0] - truth) < 4 * fit.se[0]), (fit.coef[0], truth)


def test_poisoning_scales_the_outcome_or_flips_a_binary_column(small_schema):
    # Prepare
    frame = make_small_frame(small_schema, 300)
    # Execute
    scaled = poison_frame(small_schema, frame, "outcome*3")
    flipped = poison_frame(small_schema, frame, "flip:smoker")
    # Assert
    assert scaled["visits"].sum() == pytest.approx(3 * frame["visits"].sum(), rel=0.01)
    assert (flipped["smoker"] == 1 - frame["smoker"]).all()
    with pytest.raises(AnalysisError):
        poison_frame(small_schema, frame, "flip:age")


def test_release_of_simulated_twins_round_trips_through_a_directory(small_schema, tmp_path):
    # Prepare
    twins = posterior_twins(small_schema, make_small_frame(small_schema, 80), sender="h",
                            k=3, seed=0)
    # Execute
    save_release(as_release(twins), tmp_path / "r", small_schema)
    back = load_release(tmp_path / "r", small_schema)
    # Assert
    assert back.sender == "h" and len(back.twins) == 3
    np.testing.assert_allclose(back.twins[2].arrays["age"], twins[2].arrays["age"], rtol=1e-8)


@pytest.mark.slow
def test_pooled_intervals_cover_the_true_coefficients_at_about_the_nominal_rate():
    # Prepare: the study script, run small (60 repetitions, K = 40)
    study = load_script("coverage_study")

    def maker(schema, frame, *, sender, k, epsilon, seed):
        return posterior_twins(schema, frame, sender=sender, k=k, epsilon=epsilon, seed=seed)
    # Execute
    out = study.run_study(maker, reps=60, k=40, peers=3, n_local=300, n_peer=800)
    res = out["results"]
    # Assert: nominal 0.95; 60 x 5 intervals give a Monte Carlo SE of about 0.013
    assert 0.88 <= res["twins-only/reiter/t"]["coverage_mean"] <= 0.995
    assert 0.88 <= res["combined/mixed/normal"]["coverage_mean"] <= 0.995
    assert 0.88 <= res["local-only/single/normal"]["coverage_mean"] <= 0.995
    assert res["combined/rubin/normal"]["coverage_mean"] >= res["combined/reiter/normal"][
        "coverage_mean"]
