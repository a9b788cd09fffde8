"""Options for the outcome head's training under DP noise: features centred at the noisy
marginal means, its own Adam step, and the settings that carry both into the posterior file."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from twinnode.data import frame_to_arrays
from twinnode.errors import GeneratorError
from twinnode.generator.anchor import head_center
from twinnode.generator.dpsvi import head_mask, step_sizes
from twinnode.generator.layout import Layout
from twinnode.generator.marginals import measure
from twinnode.generator.models import row_features, set_up
from twinnode.generator.settings import GeneratorSettings
from twinnode.schema import Schema


@pytest.fixture(scope="module")
def small():
    from conftest import SMALL_SCHEMA, make_small_frame

    schema = Schema.from_toml(SMALL_SCHEMA)
    frame = make_small_frame(schema, n=2000, seed=5)
    layout = Layout.from_schema(schema)
    return layout, layout.encode(frame_to_arrays(schema, frame))


def test_center_from_exact_marginals_is_the_features_mean(small):
    # Setup: marginals without noise (multiplier 0)
    layout, data = small
    exact = measure(data, layout, 0.0, seed=1)

    # Execute
    center = np.array(head_center(layout, exact))

    # Verify: binaries and levels exactly; a continuous column's mean is read off 16 bins
    mean = row_features(data, layout, GeneratorSettings()).mean(axis=0)
    assert center.shape == mean.shape
    assert np.abs(center - mean).max() < 1 / 32
    discrete = [i for i, name in enumerate(layout.feature_names) if name != "age"]
    np.testing.assert_allclose(center[discrete], mean[discrete], atol=1e-9)


def test_centred_features_average_to_zero_and_keep_their_differences(small):
    layout, data = small
    center = tuple(row_features(data, layout, GeneratorSettings()).mean(axis=0))

    plain = row_features(data, layout, GeneratorSettings())
    centred = row_features(data, layout, GeneratorSettings(head_center=center))

    np.testing.assert_allclose(centred.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(plain - centred, np.broadcast_to(center, plain.shape), atol=1e-6)


def test_settings_with_a_center_survive_the_posterior_files_json():
    settings = GeneratorSettings(head_center=(0.25, 0.5), head_learning_rate=0.1)

    back = GeneratorSettings(**json.loads(json.dumps(dataclasses.asdict(settings))))

    assert back == settings
    assert isinstance(back.head_center, tuple)
    hash(back)  # the compiled-step cache is keyed by the settings


@pytest.mark.parametrize("bad", [
    {"head_learning_rate": 0.0}, {"head_learning_rate": float("nan")},
    {"head_center": (0.1, float("inf"))}])
def test_bad_head_settings_are_refused(bad):
    with pytest.raises(GeneratorError, match="head_"):
        GeneratorSettings(**bad)


def test_the_head_gets_its_own_step_and_everything_else_the_common_one(small):
    layout, _ = small
    settings = GeneratorSettings(learning_rate=0.01, head_learning_rate=0.1)
    mask = head_mask(set_up(layout, 100, settings)[1])

    rates = np.asarray(step_sizes(settings, mask)(0))

    assert mask.sum() == len(layout.feature_names) + 1  # the coefficients and the intercept
    np.testing.assert_allclose(rates[mask], 0.1)
    np.testing.assert_allclose(rates[~mask], 0.01)
    assert step_sizes(GeneratorSettings(), mask) == GeneratorSettings().learning_rate



@pytest.mark.slow
def test_a_centred_head_is_trained_saved_and_drawn_from_with_its_center(tmp_path):
    """center_head: the centre comes from the release's noisy marginals, travels in the
    posterior file, and the twins' outcome follows the centred head."""
    from conftest import SMALL_SCHEMA, make_small_frame

    from twinnode.generator.posterior import Posterior
    from twinnode.generator.privacy import Ledger
    from twinnode.generator.release import draw_release, train_posterior
    from twinnode.generator.settings import TrainPlan

    # Setup
    schema = Schema.from_toml(SMALL_SCHEMA)
    frame = make_small_frame(schema, n=400, seed=2)
    plan = TrainPlan(epsilon=4.0, epochs=5, marginal_share=0.2)

    # Execute
    post = train_posterior(schema, frame, plan, Ledger(tmp_path / "state"),
                           GeneratorSettings(components=2, center_head=True), seed=3)
    post.save(tmp_path / "p.npz")
    again = Posterior.load(tmp_path / "p.npz", schema)
    twins = draw_release(again, schema, 2, "a", seed=1).twins

    # Verify: one centre per feature, each inside its feature's range, read back unchanged
    layout = Layout.from_schema(schema)
    center = again.settings.head_center
    assert len(center) == len(layout.feature_names) and again.settings == post.settings
    assert all(0.0 < c < 1.0 for c in center)
    assert [t.rows for t in twins] == [400, 400]
