"""Shared fixtures: JAX on the CPU, small schemas and frames, seeded makers."""
from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from twinnode.data import arrays_to_frame  # noqa: E402
from twinnode.schema import Schema  # noqa: E402

SMALL_SCHEMA = """
name = "small"
outcome = "visits"

[columns.visits]
type = "count"
upper = 50

[columns.age]
type = "continuous"
lower = 18.0
upper = 90.0

[columns.smoker]
type = "binary"

[columns.region]
type = "categorical"
levels = ["north", "south", "east"]
"""


@pytest.fixture
def small_schema() -> Schema:
    return Schema.from_toml(SMALL_SCHEMA, "small.toml")


def make_small_frame(schema: Schema, n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Rows from a known Poisson model: log E[visits] = 0.2 + 0.8*smoker + 0.02*(age-50) + region."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(18, 90, n)
    smoker = rng.integers(0, 2, n)
    region = rng.integers(0, 3, n)
    rate = np.exp(0.2 + 0.8 * smoker + 0.02 * (age - 50) + np.array([0.0, 0.3, -0.3])[region])
    visits = np.minimum(rng.poisson(rate), 50)
    arrays = {"age": age, "smoker": smoker, "region": region, "visits": visits}
    return arrays_to_frame(schema, arrays)


@pytest.fixture
def small_frame(small_schema: Schema) -> pd.DataFrame:
    return make_small_frame(small_schema)


@pytest.fixture
def small_csv(tmp_path: Path, small_schema: Schema, small_frame: pd.DataFrame) -> Path:
    from twinnode.data import write_table

    path = tmp_path / "small.csv"
    write_table(small_frame, path, small_schema)
    return path


def load_script(name: str) -> ModuleType:
    """A study script from scripts/ as a module (they are not a package), for slow tests."""
    path = Path(__file__).parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
