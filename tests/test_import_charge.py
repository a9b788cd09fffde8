"""A release trained elsewhere counts against the publishing node's privacy budget."""
from __future__ import annotations

import pytest
from conftest import make_small_frame

from twinnode.data import frame_to_arrays
from twinnode.errors import BudgetExceeded, ControlError
from twinnode.generator.privacy import Ledger
from twinnode.node.jobs import charge_import
from twinnode.twins import Provenance, Release, Twin


def release(schema, sender="alice", rid="offline-1", epsilon=0.7) -> Release:
    prov = Provenance(sender=sender, schema_hash=schema.hash, epsilon=epsilon, delta=1e-3,
                      n=20, k=1, index=0, relation="add-remove", release=rid, created=1.0)
    twin = Twin(prov, frame_to_arrays(schema, make_small_frame(schema, n=20)))
    return Release(receipt={"sender": sender, "release": rid, "epsilon": epsilon,
                            "delta": 1e-3, "n": 20, "relation": "add-remove"}, twins=(twin,))


def test_an_offline_release_is_charged_once_when_first_published(tmp_path, small_schema):
    ledger = Ledger(tmp_path)
    charge_import(ledger, release(small_schema), "alice")
    charge_import(ledger, release(small_schema), "alice")  # published again: no new charge
    snap = ledger.snapshot()
    assert snap["spent_epsilon"] == pytest.approx(0.7)
    assert [e["kind"] for e in snap["entries"]] == ["import"]


def test_a_release_trained_with_this_ledger_is_not_charged_twice(tmp_path, small_schema):
    ledger = Ledger(tmp_path)
    run = ledger.charge(0.7, 1e-3)  # what `twinnode train --state <node state>` records
    charge_import(ledger, release(small_schema, rid=run["id"]), "alice")
    assert ledger.snapshot()["spent_epsilon"] == pytest.approx(0.7)


def test_an_import_past_the_cap_is_refused_and_charges_nothing(tmp_path, small_schema):
    ledger = Ledger(tmp_path, cap_epsilon=1.0)
    ledger.charge(0.5, 1e-3)
    with pytest.raises(BudgetExceeded, match="over the cap"):
        charge_import(ledger, release(small_schema), "alice")
    assert ledger.snapshot()["spent_epsilon"] == pytest.approx(0.5)


def test_another_partys_release_is_refused_before_any_charge(tmp_path, small_schema):
    ledger = Ledger(tmp_path)
    with pytest.raises(ControlError, match="from 'bob', not 'alice'"):
        charge_import(ledger, release(small_schema, sender="bob"), "alice")
    assert ledger.snapshot()["entries"] == []
