"""A synthetic twin data set with its provenance, and the on-disk form of a release.

A *release* is what one training run produces: K twins, each the size of the local data,
plus a receipt (the privacy facts). On disk it is a directory with `receipt.json` and
`twin-000.csv` ... `twin-<K-1>.csv`, which `twinnode analyze --twins DIR` reads back.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from twinnode.atomic import write_json_atomic
from twinnode.data import read_table, write_table
from twinnode.errors import DataError, SchemaError
from twinnode.schema import Schema

RECEIPT_FORMAT = "twinnode-receipt/1"
RELATIONS = ("add-remove", "substitute")


@dataclass(frozen=True)
class Provenance:
    """Where a twin comes from: who, under which schema, at what privacy cost."""

    sender: str
    schema_hash: str
    epsilon: float
    delta: float
    n: int
    k: int
    index: int
    relation: str
    release: str
    created: float
    generator: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (0 <= self.index < self.k):
            raise DataError(f"twin index {self.index} outside 0..{self.k - 1}")
        if self.relation not in RELATIONS:
            raise DataError(f"unknown neighbouring relation {self.relation!r}")
        if not (self.epsilon > 0 and 0 <= self.delta < 1 and self.n > 0):
            raise DataError(f"invalid privacy facts: epsilon={self.epsilon}, "
                            f"delta={self.delta}, n={self.n}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"generator": dict(self.generator)}


@dataclass(frozen=True)
class Twin:
    """One synthetic data set: numeric arrays in the schema's layout (`Schema.to_arrays`)."""

    provenance: Provenance
    arrays: Mapping[str, np.ndarray]

    @property
    def rows(self) -> int:
        return len(next(iter(self.arrays.values())))

    def frame(self, schema: Schema) -> pd.DataFrame:
        """The twin as a typed frame (checks it against `schema` first)."""
        if schema.hash != self.provenance.schema_hash:
            raise SchemaError(f"twin from {self.provenance.sender} was made under schema "
                              f"{self.provenance.schema_hash[:12]}, not {schema.short_hash}")
        return schema.from_arrays(self.arrays)


@dataclass(frozen=True)
class Release:
    """K twins from one training run, and the receipt that describes them."""

    receipt: Mapping[str, Any]
    twins: tuple[Twin, ...]

    @property
    def sender(self) -> str:
        return str(self.receipt.get("sender", ""))


def twin_filename(index: int) -> str:
    return f"twin-{index:03d}.csv"


def save_release(release: Release, out: str | Path, schema: Schema) -> Path:
    """Write twins as CSV files and the receipt last, so a complete receipt means a complete release."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for twin in release.twins:
        write_table(schema.from_arrays(twin.arrays), out / twin_filename(twin.provenance.index),
                    schema)
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
        base = dict(sender=str(receipt.get("sender", directory.name)),
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
        twins.append(Twin(Provenance(index=index, **base), schema.to_arrays(frame)))
    return Release(receipt=receipt, twins=tuple(twins))
