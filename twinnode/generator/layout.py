"""How a schema's columns map onto the generator's arrays, both ways.

The model sees five arrays: binary columns (0/1), categorical codes, count covariates,
continuous columns scaled to [0, 1] by the schema's public bounds, and the outcome. Scaling
uses only the schema, never the data, so it costs no privacy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np

from twinnode.errors import SchemaError
from twinnode.schema import Column, Schema


class ModelData(NamedTuple):
    """The arrays the model reads; every array has the rows on its first axis."""

    xb: np.ndarray  # (n, n_binary) float32 in {0, 1}
    xc: np.ndarray  # (n, n_categorical) int32 codes
    xn: np.ndarray  # (n, n_count) float32 non-negative integers
    xr: np.ndarray  # (n, n_continuous) float32 in [0, 1]
    y: np.ndarray   # (n,) float32 outcome counts


@dataclass(frozen=True)
class Layout:
    """Column groups of a schema, in canonical order, with their public bounds."""

    binary: tuple[str, ...]
    categorical: tuple[tuple[str, int], ...]
    count: tuple[tuple[str, int], ...]
    continuous: tuple[tuple[str, float, float], ...]
    outcome: str
    outcome_upper: int

    @classmethod
    def from_schema(cls, schema: Schema) -> "Layout":
        out = schema.outcome_column()
        cov = schema.covariates
        return cls(
            binary=tuple(c.name for c in cov if c.type == "binary"),
            categorical=tuple((c.name, len(c.levels)) for c in cov if c.type == "categorical"),
            count=tuple((c.name, c.cardinality - 1) for c in cov if c.type == "count"),
            continuous=tuple((c.name, *_bounds(c)) for c in cov if c.type == "continuous"),
            outcome=out.name,
            outcome_upper=out.cardinality - 1,
        )

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the outcome head's features, in the order of its coefficients."""
        names = list(self.binary)
        for name, levels in self.categorical:
            names += [f"{name}[{i}]" for i in range(1, levels)]
        names += [n for n, _ in self.count] + [n for n, _, _ in self.continuous]
        return tuple(names)

    def encode(self, arrays: Mapping[str, np.ndarray]) -> ModelData:
        """Schema arrays (`Schema.check_arrays` layout) -> model arrays."""
        n = len(arrays[self.outcome])
        return ModelData(
            xb=_stack([arrays[c] for c in self.binary], n, np.float32),
            xc=_stack([arrays[c] for c, _ in self.categorical], n, np.int32),
            xn=_stack([arrays[c] for c, _ in self.count], n, np.float32),
            xr=_stack([(np.asarray(arrays[c], np.float64) - lo) / (hi - lo)
                       for c, lo, hi in self.continuous], n, np.float32),
            y=np.asarray(arrays[self.outcome], np.float32),
        )

    def decode(self, data: ModelData) -> dict[str, np.ndarray]:
        """Model arrays (as sampled) -> schema arrays, clipped into the schema's bounds."""
        out: dict[str, np.ndarray] = {}
        for j, c in enumerate(self.binary):
            out[c] = (np.asarray(data.xb[:, j]) > 0.5).astype(np.int64)
        for j, (c, levels) in enumerate(self.categorical):
            out[c] = np.clip(np.asarray(data.xc[:, j]).astype(np.int64), 0, levels - 1)
        for j, (c, upper) in enumerate(self.count):
            out[c] = np.clip(np.rint(np.asarray(data.xn[:, j], np.float64)), 0, upper).astype(np.int64)
        for j, (c, lo, hi) in enumerate(self.continuous):
            u = np.clip(np.asarray(data.xr[:, j], np.float64), 0.0, 1.0)
            out[c] = np.clip(lo + u * (hi - lo), lo, hi)
        y = np.nan_to_num(np.asarray(data.y, np.float64), nan=0.0, posinf=self.outcome_upper)
        out[self.outcome] = np.clip(np.rint(y), 0, self.outcome_upper).astype(np.int64)
        return out

    def dummy(self) -> ModelData:
        """One harmless row (all zeros) to trace the model with, without any private data."""
        return ModelData(np.zeros((1, len(self.binary)), np.float32),
                         np.zeros((1, len(self.categorical)), np.int32),
                         np.zeros((1, len(self.count)), np.float32),
                         np.zeros((1, len(self.continuous)), np.float32),
                         np.zeros((1,), np.float32))


def _bounds(col: Column) -> tuple[float, float]:
    """A continuous column's public (lower, upper); a valid schema always has both."""
    if col.lower is None or col.upper is None:
        raise SchemaError(f"continuous column {col.name!r} has no public bounds")
    return float(col.lower), float(col.upper)


def _stack(columns: list[np.ndarray], n: int, dtype: type) -> np.ndarray:
    if not columns:
        return np.zeros((n, 0), dtype)
    return np.stack([np.asarray(c) for c in columns], axis=1).astype(dtype)
