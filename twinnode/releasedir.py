"""A release on disk: a directory with `receipt.json` and `twin-000.csv` ... `twin-<K-1>.csv`.

`twinnode train --out DIR` writes it, `twinnode analyze --twins DIR` and a node's `publish`
read it back. The twins are CSV tables of the schema (`data.write_table`), so anyone can open
them; the receipt is written last, so a complete receipt means a complete release.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
        frame = read_table(directory / twin_filename(index), schema)
        twins.append(Twin(Provenance(index=index, **base), frame_to_arrays(schema, frame)))
    return Release(receipt=receipt, twins=tuple(twins))
