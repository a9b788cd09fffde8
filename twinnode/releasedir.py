"""A release on disk: a directory with `receipt.json` and `twin-000.csv` ... `twin-<K-1>.csv`.

`twinnode train --out DIR` writes it, `twinnode analyze --twins DIR` and a node's `publish`
read it back. The twins are CSV tables of the schema (`data.write_table`), so anyone can open
them; the receipt is written last, so a complete receipt means a complete release.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twinnode.atomic import write_json_atomic
from twinnode.data import arrays_to_frame, frame_to_arrays, read_table, write_table
from twinnode.errors import DataError, SchemaError
from twinnode.schema import Schema
from twinnode.twins import RECEIPT_FORMAT, Provenance, Release, Twin


def twin_filename(index: int) -> str:
    """The file of the twin with this index inside a release directory."""
    return f"twin-{index:03d}.csv"


def save_release(release: Release, out: str | Path, schema: Schema) -> Path:
    """Write twins as CSV files and the receipt last, so a complete receipt means a complete release."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for twin in release.twins:
        write_table(arrays_to_frame(schema, twin.arrays),
                    out / twin_filename(twin.provenance.index), schema)
    write_json_atomic(out / "receipt.json", release.receipt)
    return out


def load_release(directory: str | Path, schema: Schema) -> Release:
    """Read a release directory back; every twin is validated against `schema`."""
    directory = Path(directory)
    receipt_path = directory / "receipt.json"
    try:
        receipt = json.loads(receipt_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{directory}: no receipt.json (not a twinnode release directory)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{receipt_path}: unreadable receipt: {exc}") from None
    if not isinstance(receipt, dict) or receipt.get("format") != RECEIPT_FORMAT:
        raise DataError(f"{receipt_path}: not a {RECEIPT_FORMAT} receipt")
    if receipt.get("schema_hash") != schema.hash:
        raise SchemaError(f"{directory}: twins were made under schema "
                          f"{str(receipt.get('schema_hash'))[:12]}, not {schema.short_hash}")
    try:
        k, n = int(receipt["k"]), int(receipt["n"])
        base: dict[str, Any] = dict(sender=str(receipt.get("sender", directory.name)),
                    schema_hash=schema.hash, epsilon=float(receipt["epsilon"]),
                    delta=float(receipt["delta"]), n=n, k=k,
                    relation=str(receipt["relation"]), release=str(receipt["release"]),
                    created=float(receipt["created"]),
                    generator=dict(receipt.get("generator", {})))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{receipt_path}: missing or invalid field: {exc}") from None
    twins = []
    for index in range(k):
        path = directory / twin_filename(index)
        arrays = _plain_arrays(path, schema)
        if arrays is None:  # anything unusual: the full check, which names the problem
            arrays = frame_to_arrays(schema, read_table(path, schema))
        twins.append(Twin(Provenance(index=index, **base), arrays))
    return Release(receipt=receipt, twins=tuple(twins))


def _plain_arrays(path: Path, schema: Schema) -> dict[str, np.ndarray] | None:
    """A twin file's arrays when it is exactly as `save_release` writes it, else None.

    The fast path for a node's publish (a release of K = 100 twins took over a second of CPU
    in `read_table`'s cell-by-cell text checks): numbers parsed by the CSV reader itself,
    binary cells exactly "0" or "1", levels exactly as named, every value within the schema
    (`Schema.check_arrays`). It accepts only files `read_table` accepts, with the same
    values (tests/test_releasedir.py); the rest goes the full way."""
    numeric = {c.name: (np.float64 if c.type in ("count", "continuous") else str)
               for c in schema.columns}
    try:
        raw = pd.read_csv(path, dtype=numeric, keep_default_na=False, na_filter=False,
                          encoding="utf-8", float_precision="round_trip")
    except Exception:  # unreadable, a cell that is not a number, ...: the full check says
        return None
    if list(raw.columns) != schema.names or len(raw) == 0:
        return None
    arrays: dict[str, np.ndarray] = {}
    for col in schema.columns:
        values = raw[col.name].to_numpy()
        if col.type == "binary":
            ones, zeros = values == "1", values == "0"
            if not (ones | zeros).all():
                return None
            arrays[col.name] = ones.astype(np.int64)
        elif col.type == "categorical":
            codes = pd.Series(values).map({lvl: i for i, lvl in enumerate(col.levels)})
            if codes.isna().any():
                return None
            arrays[col.name] = codes.to_numpy(np.int64)
        elif col.type == "count":
            if not (np.isfinite(values).all() and (values == np.round(values)).all()):
                return None
            arrays[col.name] = values.astype(np.int64)
        else:
            arrays[col.name] = values.astype(np.float64)
    try:
        schema.check_arrays(arrays, source=str(path))
    except DataError:
        return None
    return arrays
