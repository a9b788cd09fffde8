"""MST twins (twinnode.lab.mst): public bins, the side venv, and twins that keep the data's
marginals and its strongest two-way dependence."""
from __future__ import annotations

import numpy as np
import pytest

from twinnode.data import frame_to_arrays, randhie
from twinnode.errors import GeneratorError
from twinnode.lab import mst
from twinnode.lab.simtwins import simulate_small, small_schema


def test_values_come_back_inside_their_public_bin_and_small_counts_exactly():
    schema, frame = randhie()
    arrays = frame_to_arrays(schema, frame.iloc[:2000])
    codes = mst.discretise(schema, arrays)
    back = mst.undiscretise(schema, codes, np.random.default_rng(0))
    schema.check_arrays(back)
    again = mst.discretise(schema, back)
    for name in schema.names:
        np.testing.assert_array_equal(again[name], codes[name], err_msg=name)
    small = arrays["mdvis"] <= mst.COUNT_FINE
    np.testing.assert_array_equal(back["mdvis"][small], arrays["mdvis"][small])
    assert not np.array_equal(back["mdvis"][~small], arrays["mdvis"][~small])


def test_bins_are_public_facts_of_the_schema():
    schema, _ = randhie()
    cards = mst.cardinalities(schema)
    assert cards["mdvis"] == mst.COUNT_FINE + mst.COUNT_COARSE
    assert cards["disea"] == mst.CONTINUOUS_BINS and cards["idp"] == 2
    edges = mst.bin_edges(schema.column("mdvis"))
    assert edges is not None and edges[-1] == 101 and list(edges[:4]) == [0, 1, 2, 3]
    top = mst.discretise(schema, {n: np.array([schema.column(n).bounds[1]
                                               if schema.column(n).type != "binary" else 1])
                                  for n in schema.names})
    assert top["disea"][0] == mst.CONTINUOUS_BINS - 1  # the upper bound is in the last bin


def test_missing_side_venv_is_a_generator_error_that_says_make_mst_venv(tmp_path, monkeypatch):
    monkeypatch.setenv(mst.PYTHON_ENV, str(tmp_path / "no-such-python"))
    schema = small_schema()
    assert not mst.available()
    with pytest.raises(GeneratorError, match="make mst-venv"):
        mst.mst_twins(schema, simulate_small(schema, 50), 1.0, 2, 0)


@pytest.mark.slow
@pytest.mark.skipif(not mst.available(),
                    reason=f"no MST side venv at {mst.side_python()}: run `make mst-venv`")
def test_mst_twins_keep_marginals_and_the_smoker_effect_on_visits():
    schema = small_schema()
    frame = simulate_small(schema, n=1000, seed=3)
    twins = mst.mst_twins(schema, frame, epsilon=10.0, k=2, seed=3, sender="a")
    real = frame_to_arrays(schema, frame)
    assert [t.provenance.index for t in twins] == [0, 1]
    for twin in twins:
        schema.check_arrays(twin.arrays)
        p = twin.provenance
        assert (twin.rows, p.n, p.k, p.delta, p.epsilon) == (1000, 1000, 2, 1e-3, 10.0)
        assert p.generator["kind"] == "mst" and p.generator["smartnoise-synth"]
        t = twin.arrays
        assert abs(t["smoker"].mean() - real["smoker"].mean()) < 0.06
        shares = np.bincount(t["region"], minlength=3) / 1000
        assert np.abs(shares - np.bincount(real["region"], minlength=3) / 1000).max() < 0.06
        assert abs(t["age"].mean() - real["age"].mean()) < 4.0
        ratio = t["visits"][t["smoker"] == 1].mean() / t["visits"][t["smoker"] == 0].mean()
        assert 1.5 < ratio < 3.5  # the real model's exp(0.8) = 2.2
    assert not np.array_equal(twins[0].arrays["age"], twins[1].arrays["age"])
