"""The averaged head's Newton step: the window's mean gradient recovered from Adam's first
moment, where the head sits in the flat latent vector, and a run stopped before the head
converged whose stepped head is much closer to the rows' own Poisson fit."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from twinnode.data import frame_to_arrays
from twinnode.generator.dpsvi import ADAM_B1, LOC
from twinnode.generator.headnoise import head_index, head_information
from twinnode.generator.layout import Layout
from twinnode.generator.models import row_features, set_up
from twinnode.generator.settings import GeneratorSettings
from twinnode.generator.trace import TraceTail
from twinnode.schema import Schema


def test_the_windows_mean_gradient_comes_back_exactly_from_adams_first_moment():
    # Setup: gradients with a drift, and Adam's m over them, fed to the tail in chunks
    rng = np.random.default_rng(1)
    total, chunk = 3000, 500
    g = rng.normal(0.0, 2.0, (total, 4)) + np.linspace(1.0, -1.0, total)[:, None]
    m = np.zeros_like(g)
    for t in range(total):
        m[t] = ADAM_B1 * (m[t - 1] if t else 0.0) + (1 - ADAM_B1) * g[t]
    tail = TraceTail(total, 0.5)

    # Execute
    for start in range(0, total, chunk):
        tail.add(start, {"m": m[start:start + chunk]})

    # Verify: the plain mean of m would miss by b1 / (1 - b1) times m's change / W
    np.testing.assert_allclose(tail.mean_gradient("m", ADAM_B1), g[tail.first:].mean(axis=0),
                               atol=1e-9)
    assert tail.mean_gradient("missing", ADAM_B1) is None


def test_a_window_over_every_step_starts_from_adams_zero_moment():
    g = np.arange(1.0, 11.0)[:, None]
    m = np.zeros_like(g)
    for t in range(10):
        m[t] = ADAM_B1 * (m[t - 1] if t else 0.0) + (1 - ADAM_B1) * g[t]
    tail = TraceTail(10, 0.99)  # rounds to a window of all 10 steps
    tail.add(0, {"m": m})
    assert tail.first == 0
    np.testing.assert_allclose(tail.mean_gradient("m", ADAM_B1), [5.5])


@pytest.fixture(scope="module")
def small():
    from conftest import SMALL_SCHEMA, make_small_frame

    schema = Schema.from_toml(SMALL_SCHEMA)
    frame = make_small_frame(schema, n=2000, seed=7)
    layout = Layout.from_schema(schema)
    return schema, layout, layout.encode(frame_to_arrays(schema, frame))


def test_the_head_index_points_at_coef_then_intercept(small):
    _, layout, _ = small
    settings = GeneratorSettings()
    guide = set_up(layout, 10, settings)[1]
    flat = np.arange(guide.latent_dim, dtype=np.float32)
    unpacked = guide._unpack_latent(flat)
    expected = np.r_[np.ravel(unpacked["coef"]), np.ravel(unpacked["intercept"])]
    np.testing.assert_array_equal(head_index(layout, settings), expected.astype(int))
    assert len(head_index(layout, settings)) == len(layout.feature_names) + 1


def test_a_head_stopped_short_is_stepped_to_the_rows_own_fit(small):
    # Setup: real DP training of a party with the noise scaled to 1% (not private: a check of
    # the step, not of privacy), stopped after 60 epochs, before the head has converged
    import statsmodels.api as sm

    from twinnode.generator.accounting import calibrate_split
    from twinnode.generator.headnoise import newton_head
    from twinnode.generator.train import fit

    schema, layout, data = small
    n = int(data.y.shape[0])
    cal = calibrate_split(1.0, 1.0 / n, n, 0.1, 600, "poisson", 0.0)
    cal = replace(cal, sigma=cal.sigma * 0.01)
    plain = GeneratorSettings()
    design = np.c_[row_features(data, layout, plain), np.ones(n)]
    own = sm.GLM(np.asarray(data.y), design, family=sm.families.Poisson()).fit().params

    # Execute
    result = fit(data, layout, cal, plain, seed=3)
    assert result.loc_gradient is not None
    stepped = newton_head(result.params, result.loc_gradient, layout, n, plain)

    # Verify: in the rows' own information metric (real SEs), the step removes most of the lag
    info = head_information(result.params, layout, n, plain)
    at = head_index(layout, plain)

    def distance(params: dict) -> float:
        gap = np.asarray(params[LOC], np.float64)[at] - own
        return float(np.sqrt(gap @ info @ gap))

    before, after = distance(result.params), distance(stepped)
    print(f"head off the rows' fit by {before:.2f} SEs averaged, {after:.2f} stepped")
    assert before > 1.0, f"the head had converged already ({before:.2f} SEs): no lag to remove"
    assert after < 0.4 * before, (before, after)
    # the mixture is untouched: only the head's coordinates moved
    moved = np.flatnonzero(np.asarray(result.params[LOC]) != np.asarray(stepped[LOC]))
    assert set(moved) <= set(at)
