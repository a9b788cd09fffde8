"""Noise calibration against an independent accountant, overflow accounting, the ledger."""
from __future__ import annotations

import json

import pytest
from dp_accounting import (
    GaussianDpEvent,
    NeighboringRelation,
    PoissonSampledDpEvent,
    SampledWithoutReplacementDpEvent,
    SelfComposedDpEvent,
    TruncatedSubsampledGaussianDpEvent,
)
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from twinnode.errors import BudgetExceeded, PrivacyError
from twinnode.generator.privacy import (
    Ledger,
    calibrate,
    epsilon_for,
    overflow_bound,
    poisson_max_batch,
)


def pld_epsilon(event, delta: float) -> float:
    acc = PLDAccountant(NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=1e-4)
    return acc.compose(event).get_epsilon(delta)


@pytest.mark.parametrize("q, steps, sigma", [(0.01, 10000, 2.0), (0.02, 10000, 5.81),
                                             (0.05, 2000, 3.0), (0.1, 500, 1.5)])
def test_d3p_add_remove_epsilon_is_within_5_percent_of_dp_accounting_pld(q, steps, sigma):
    delta = 1 / 3000
    ours = epsilon_for(sigma, delta, q, steps, "add-remove")
    event = SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps)
    theirs = pld_epsilon(event, delta)
    assert abs(ours - theirs) / theirs < 0.05, (ours, theirs)


@pytest.mark.parametrize("n, batch, steps, sigma", [(3000, 60, 10000, 11.57), (3000, 30, 5000, 6.0)])
def test_d3p_substitute_epsilon_is_below_dp_accounting_rdp_bound(n, batch, steps, sigma):
    delta = 1 / n
    ours = epsilon_for(sigma, delta, batch / n, steps, "substitute")
    acc = RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    acc.compose(SelfComposedDpEvent(
        SampledWithoutReplacementDpEvent(n, batch, GaussianDpEvent(sigma)), steps))
    bound = acc.get_epsilon(delta)
    assert ours <= bound and ours > 0.8 * bound, (ours, bound)


@pytest.mark.slow
def test_design_doc_figure_sigma_for_epsilon_one_is_reproduced():
    cal = calibrate(1.0, 1 / 3000, 3000, 0.02, 10000, "poisson")
    assert cal.relation == "add-remove"
    assert cal.sigma == pytest.approx(5.81, abs=0.02)
    assert cal.epsilon_accountant <= 1.0


def test_poisson_batch_truncation_is_accounted_and_checked_by_the_truncated_pld():
    # Prepare: our calibration for a small party, where the padded batch is tight
    n, q, steps = 400, 0.02, 4000
    cal = calibrate(1.0, 1 / n, n, q, steps, "poisson")
    # Assert: the overflow term is within its share of delta and the total adds up
    assert 0 < cal.delta_overflow <= 0.01 * cal.delta
    assert cal.delta_accountant + cal.delta_overflow == pytest.approx(cal.delta)
    assert cal.delta_overflow == pytest.approx(overflow_bound(n, q, steps, 1.0, cal.batch_size))
    # Assert: dp-accounting's exact analysis of truncated Poisson sampling agrees
    event = SelfComposedDpEvent(TruncatedSubsampledGaussianDpEvent(
        dataset_size=n, sampling_probability=q, truncated_batch_size=cal.batch_size,
        noise_multiplier=cal.sigma), steps)
    assert pld_epsilon(event, cal.delta) <= 1.0 * 1.05


def test_max_batch_is_the_smallest_that_fits_the_overflow_share():
    n, q, steps, eps, delta = 3000, 0.01, 10000, 1.0, 1 / 3000
    b = poisson_max_batch(n, q, steps, eps, delta)
    assert overflow_bound(n, q, steps, eps, b) <= 0.01 * delta
    assert overflow_bound(n, q, steps, eps, b - 1) > 0.01 * delta


@pytest.mark.slow
def test_fixed_batching_uses_the_substitute_relation_and_needs_more_noise():
    fixed = calibrate(1.0, 1 / 3000, 3000, 0.02, 10000, "fixed")
    poisson = calibrate(1.0, 1 / 3000, 3000, 0.02, 10000, "poisson")
    assert fixed.relation == "substitute" and fixed.batch_size == 60
    assert fixed.delta_overflow == 0
    assert fixed.sigma > 1.8 * poisson.sigma


@pytest.mark.parametrize("kwargs, message", [
    (dict(epsilon=0.0), "epsilon"), (dict(epsilon=float("inf")), "epsilon"),
    (dict(delta=1.5), "delta"), (dict(q=0.0), "q"), (dict(batching="weird"), "batching")])
def test_bad_privacy_parameters_are_privacy_errors(kwargs, message):
    args = dict(epsilon=1.0, delta=1e-4, n=1000, q=0.01, steps=100, batching="poisson") | kwargs
    with pytest.raises(PrivacyError, match=message):
        calibrate(**args)


def test_ledger_refuses_a_run_past_the_cap_and_writes_nothing(tmp_path):
    # Prepare
    ledger = Ledger(tmp_path, cap_epsilon=1.5)
    ledger.charge(1.0, 1e-4, n=100)
    before = (tmp_path / "ledger.json").read_bytes()
    # Execute / Assert
    with pytest.raises(BudgetExceeded, match="over the cap of 1.5"):
        ledger.charge(1.0, 1e-4, n=100)
    assert (tmp_path / "ledger.json").read_bytes() == before
    snap = Ledger(tmp_path).snapshot()  # the cap persists without being passed again
    assert snap["spent_epsilon"] == 1.0 and snap["left_epsilon"] == 0.5
    with pytest.raises(BudgetExceeded):
        Ledger(tmp_path).check(0.6)


def test_sampling_is_recorded_as_free(tmp_path):
    ledger = Ledger(tmp_path)
    entry = ledger.charge(1.0, 1e-4)
    ledger.record_free("sample", release=entry["id"], k=100)
    doc = json.loads((tmp_path / "ledger.json").read_text())
    assert [e["epsilon"] for e in doc["entries"]] == [1.0, 0.0]
    assert "post-processing" in doc["entries"][1]["status"]
    assert ledger.snapshot()["spent_epsilon"] == 1.0


def test_corrupt_ledger_stops_training_rather_than_resetting_the_budget(tmp_path):
    (tmp_path / "ledger.json").write_text("{not json")
    with pytest.raises(PrivacyError, match="unreadable"):
        Ledger(tmp_path).charge(0.1, 1e-5)


def test_a_lost_ledger_beside_earlier_training_is_refused_not_reset(tmp_path):
    # Prepare: a state dir that trained before (a posterior), whose ledger is gone
    (tmp_path / "posterior.npz").write_bytes(b"x")
    # Execute / Assert
    with pytest.raises(PrivacyError, match="no ledger.json, but .*posterior.npz"):
        Ledger(tmp_path).charge(0.5, 1e-5)
    release = tmp_path / "other"
    release.mkdir()
    (release / "receipt.json").write_text("{}")
    (tmp_path / "posterior.npz").unlink()
    with pytest.raises(PrivacyError, match="receipt.json"):
        Ledger(tmp_path).snapshot()


def test_has_release_finds_charged_runs_and_imports_only(tmp_path):
    ledger = Ledger(tmp_path)
    run = ledger.charge(1.0, 1e-4)
    ledger.charge(0.5, 1e-4, kind="import", release="abc")
    ledger.record_free("sample", release="zzz")
    assert ledger.has_release(run["id"]) and ledger.has_release("abc")
    assert not ledger.has_release("zzz") and not ledger.has_release("nope")
