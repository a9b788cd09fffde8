"""Reading and writing tables that fit a schema, and the bundled randhie example.

`read_table` is the only way private data enters the system: every cell is checked against
the schema, and a bad one is reported with its file, line and column. The example split is
deterministic in its seed so that anyone can reproduce an experiment.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from twinnode.atomic import atomic_open
from twinnode.errors import DataError
from twinnode.schema import Schema

SPLITS = ("iid", "skewed")


def read_table(path: str | Path, schema: Schema) -> pd.DataFrame:
    """Load a CSV (or Parquet) file and validate every row against `schema`."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a CSV or Parquet file")
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            raw = pd.read_parquet(path)
        except ImportError:
            raise DataError(f"{path}: reading Parquet needs pyarrow "
                            "(pip install pyarrow), or convert the file to CSV") from None
        except Exception as exc:  # pyarrow raises its own types for corrupt files
            raise DataError(f"{path}: not a readable Parquet file: {exc}") from None
        raw = raw.astype(object).where(raw.notna(), "").astype(str)
        return schema.validate_frame(raw, str(path), first_line=1)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (expected a header line and data rows)")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False,
                          skipinitialspace=True, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty (expected a header line and data rows)") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: not a well-formed CSV file: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text: {exc}") from None
    return schema.validate_frame(raw, str(path))


def write_table(frame: pd.DataFrame, path: str | Path, schema: Schema) -> None:
    """Write a typed frame as CSV, atomically (a reader never sees half a file)."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        schema.to_csv_frame(frame).to_csv(fh, index=False, float_format="%.9g")


# --------------------------------------------------------------- the bundled example
def example_schema(name: str = "randhie") -> Schema:
    """The schema shipped with the package for an example data set."""
    text = resources.files("twinnode.examples").joinpath(f"{name}.toml").read_text("utf-8")
    return Schema.from_toml(text, source=f"twinnode/examples/{name}.toml")


def randhie() -> tuple[Schema, pd.DataFrame]:
    """The RAND Health Insurance Experiment data (statsmodels), validated by its schema."""
    from statsmodels.datasets import randhie as sm_randhie

    schema = example_schema("randhie")
    raw = sm_randhie.load_pandas().data
    return schema, schema.validate_frame(raw.astype(str), "statsmodels randhie")


@dataclass(frozen=True)
class Partition:
    """A held-out test set and the parties' local data sets."""

    test: pd.DataFrame
    parties: tuple[pd.DataFrame, ...]


def split_parties(frame: pd.DataFrame, parties: int = 5, split: str = "iid",
                  fractions: Sequence[float] = (1.0,), seed: int = 0,
                  test_fraction: float = 0.2, skew: tuple[str, int, float] = ("idp", 1, 0.1),
                  ) -> Partition:
    """Split rows into a test set and `parties` disjoint local data sets.

    Each party's share is an equal part of the non-test rows; `fractions` keeps only that
    fraction of it (one value: party 0 only, the party of interest; or one per party).
    With `split="skewed"`, party 0 holds rows with `skew[0] == skew[1]` at `skew[2]` times
    their share in the population (under-representation when below 1). Rows left over are
    unused, so the other parties do not change with party 0's fraction.
    """
    if parties < 1:
        raise DataError("need at least one party")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if not 0 < test_fraction < 1:
        raise DataError("test fraction must be in (0, 1)")
    fr = list(fractions)
    if len(fr) == 1:
        fr = fr + [1.0] * (parties - 1)
    if len(fr) != parties or not all(0 < f <= 1 for f in fr):
        raise DataError(f"need 1 or {parties} fractions, each in (0, 1]; got {list(fractions)}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    n_test = int(round(test_fraction * len(frame)))
    test_idx, pool = order[:n_test], order[n_test:]
    share = len(pool) // parties
    sizes = [max(1, int(round(f * share))) for f in fr]
    chosen: list[np.ndarray] = []
    if split == "skewed":
        col, value, factor = skew
        in_group = frame[col].to_numpy()[pool] == value
        group, rest = pool[in_group], pool[~in_group]
        n_group = min(len(group), int(round(sizes[0] * in_group.mean() * factor)))
        first = np.concatenate([group[:n_group], rest[: sizes[0] - n_group]])
        chosen.append(rng.permutation(first))
        pool = np.concatenate([group[n_group:], rest[sizes[0] - n_group:]])
        pool = rng.permutation(pool)
        start = 0
    else:
        chosen.append(pool[: sizes[0]])
        start = share
    for p in range(1, parties):
        chosen.append(pool[start: start + sizes[p]])
        start += share
    if any(len(c) < sizes[i] for i, c in enumerate(chosen)):
        raise DataError("not enough rows for these parties and fractions")
    take = lambda idx: frame.iloc[np.sort(idx)].reset_index(drop=True)  # noqa: E731
    return Partition(test=take(test_idx), parties=tuple(take(c) for c in chosen))
