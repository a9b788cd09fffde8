"""Shared fixtures: JAX on the CPU, small schemas and frames, seeded makers."""
from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from twinnode.lab.simtwins import SMALL_SCHEMA_TOML, simulate_small  # noqa: E402
from twinnode.schema import Schema  # noqa: E402

# The small test schema and its known generating model live once, in the lab (studies use
# them too); the tests know them by these names.
SMALL_SCHEMA = SMALL_SCHEMA_TOML
make_small_frame = simulate_small


@pytest.fixture
def small_schema() -> Schema:
    return Schema.from_toml(SMALL_SCHEMA, "small.toml")


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
