"""Data frames that fit a schema: validating raw cells, converting to and from the schema's
arrays, reading and writing tables, and the bundled randhie example.

`read_table` is the only way private data enters the system: every cell is checked against
the schema (`validate_frame`), and a bad one is reported with its file, line and column. A
typed frame holds categorical columns as pandas categoricals with the schema's levels;
`frame_to_arrays` and `arrays_to_frame` convert between it and the numeric layout that
`Schema.check_arrays` defines and the generator, the wire and the analysis use. The example
split is deterministic in its seed so that anyone can reproduce an experiment.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from twinnode.atomic import atomic_open
from twinnode.errors import DataError, SchemaError
from twinnode.schema import Column, Schema
from twinnode.twins import Twin

SPLITS = ("iid", "skewed")
_TRUE = {"1", "1.0", "true"}
_FALSE = {"0", "0.0", "false"}
_ERRORS_SHOWN = 5


# --------------------------------------------------------------- frames and arrays
def validate_frame(schema: Schema, raw: pd.DataFrame, source: str = "<data>",
                   first_line: int = 2) -> pd.DataFrame:
    """Check every cell of a frame of raw strings; return the typed frame.

    `first_line` is the file line of the first data row (2 for a CSV with a header),
    so errors name the line a user sees in an editor.
    """
    header = [str(c) for c in raw.columns]
    missing = [n for n in schema.names if n not in header]
    extra = [n for n in header if n not in schema.names]
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing column(s): " + ", ".join(missing))
        if extra:
            parts.append("column(s) not in the schema: " + ", ".join(extra))
        raise DataError(f"{source}: " + "; ".join(parts))
    dupes = sorted({n for n in header if header.count(n) > 1})
    if dupes:
        raise DataError(f"{source}: duplicated column(s): {', '.join(dupes)}")
    if len(raw) == 0:
        raise DataError(f"{source}: no data rows")
    typed: dict[str, Any] = {}
    problems: list[tuple[int, str]] = []
    for col in schema.columns:
        values = raw[col.name].astype(str).str.strip()
        parsed, bad, rule = _parse_values(col, values)
        if bad.any():
            idx = np.flatnonzero(bad)
            for i in idx[:_ERRORS_SHOWN]:
                problems.append((int(i), f"line {int(i) + first_line}, column '{col.name}': "
                                         f"value {values.iloc[i]!r} {rule}"))
            if len(idx) > _ERRORS_SHOWN:
                problems.append((int(idx[_ERRORS_SHOWN]),
                                 f"... and {len(idx) - _ERRORS_SHOWN} more bad value(s) "
                                 f"in column '{col.name}'"))
        typed[col.name] = parsed
    if problems:
        problems.sort(key=lambda p: p[0])
        shown = [msg for _, msg in problems[: 2 * _ERRORS_SHOWN]]
        raise DataError(f"{source}: " + "\n  ".join(shown))
    return _typed_frame(schema, typed)


def frame_to_arrays(schema: Schema, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Typed frame -> numeric arrays (categorical as int codes), canonical order."""
    out = {}
    for col in schema.columns:
        s = frame[col.name]
        if col.type == "categorical":
            out[col.name] = np.asarray(pd.Categorical(s, categories=list(col.levels)).codes,
                                       dtype=np.int64)
        elif col.type == "continuous":
            out[col.name] = np.asarray(s, dtype=np.float64)
        else:
            out[col.name] = np.asarray(s, dtype=np.int64)
    return out


def arrays_to_frame(schema: Schema, arrays: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Numeric arrays (as `frame_to_arrays` gives) -> typed frame, after checking them."""
    schema.check_arrays(arrays)
    return _typed_frame(schema, arrays)


def twin_frame(twin: Twin, schema: Schema) -> pd.DataFrame:
    """A twin as a typed frame (checks it was made under `schema` first)."""
    prov = twin.provenance
    if schema.hash != prov.schema_hash:
        raise SchemaError(f"twin from {prov.sender} was made under schema "
                          f"{prov.schema_hash[:12]}, not {schema.short_hash}")
    return arrays_to_frame(schema, twin.arrays)


def _typed_frame(schema: Schema, typed: Mapping[str, np.ndarray]) -> pd.DataFrame:
    out = {}
    for col in schema.columns:
        v = typed[col.name]
        if col.type == "categorical":
            out[col.name] = pd.Categorical.from_codes(np.asarray(v, dtype=np.int64),
                                                      categories=list(col.levels))
        elif col.type == "binary":
            out[col.name] = np.asarray(v, dtype=np.int8)
        elif col.type == "count":
            out[col.name] = np.asarray(v, dtype=np.int64)
        else:
            out[col.name] = np.asarray(v, dtype=np.float64)
    return pd.DataFrame(out, columns=schema.names)


def _parse_values(col: Column, values: pd.Series) -> tuple[np.ndarray, np.ndarray, str]:
    """Parse one column of raw strings: (parsed values, bad-mask, the rule broken)."""
    missing = values.isin(["", "nan", "NaN", "NA", "None", "null"])
    if col.type == "categorical":
        lookup = {lvl: i for i, lvl in enumerate(col.levels)}
        codes = values.map(lookup)
        bad = codes.isna().to_numpy()
        shown = ", ".join(col.levels[:10]) + (", ..." if len(col.levels) > 10 else "")
        return (codes.fillna(0).to_numpy(np.int64), bad,
                f"is not a level of this categorical column (levels: {shown})")
    if col.type == "binary":
        low = values.str.lower()
        is_true, is_false = low.isin(_TRUE).to_numpy(), low.isin(_FALSE).to_numpy()
        return is_true.astype(np.int8), ~(is_true | is_false), "is not binary (0 or 1)"
    num = pd.to_numeric(values.where(~missing, None), errors="coerce").to_numpy(np.float64)
    nonnum = ~np.isfinite(num)
    lower, upper = col.bounds
    if col.type == "count":
        with np.errstate(invalid="ignore"):
            bad = nonnum | (num != np.round(num)) | (num < 0) | (num > upper)
        return (np.where(bad, 0, num).astype(np.int64), bad,
                f"is not a whole number in 0..{int(upper)} (count column)")
    with np.errstate(invalid="ignore"):
        bad = nonnum | (num < lower) | (num > upper)
    return (np.where(bad, lower, num), bad,
            f"is not a finite number in [{lower!r}, {upper!r}] (continuous column)")


# --------------------------------------------------------------- table files


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
        return validate_frame(schema, raw, str(path), first_line=1)
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
    return validate_frame(schema, raw, str(path))


def data_fingerprint(frame: pd.DataFrame) -> str:
    """A short content hash of validated rows, as the ledger keeps it for each training run
    (never sent); the node compares it with the ledger's to ask for again=true."""
    import hashlib

    values = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(values.tobytes()).hexdigest()[:16]


def write_table(frame: pd.DataFrame, path: str | Path, schema: Schema) -> None:
    """Write a typed frame as CSV, atomically (a reader never sees half a file)."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        _csv_frame(schema, frame).to_csv(fh, index=False, float_format="%.9g")


def _csv_frame(schema: Schema, frame: pd.DataFrame) -> pd.DataFrame:
    """A typed frame as it is written to CSV (levels as strings)."""
    out = frame[schema.names].copy()
    for col in schema.columns:
        if col.type == "categorical":
            out[col.name] = out[col.name].astype(str)
    return out


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
    return schema, validate_frame(schema, raw.astype(str), "statsmodels randhie")


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
