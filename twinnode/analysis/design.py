"""The analysis model's design: terms fixed by the schema, and arrays -> (X, y).

The term list comes from the schema and the chosen covariates, never from the data, so the
K fits at one party and the fits at every party share the same columns. Continuous and count
covariates enter as they are, binary ones as 0/1, categorical ones as dummies of every level
but the reference (the first level unless chosen). A level that a data set lacks gives an
all-zero column there, which the fitter drops for that fit and the report counts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

from twinnode.analysis.arrays import BoolArray, Columns, FloatArray
from twinnode.data import frame_to_arrays
from twinnode.errors import AnalysisError, SchemaError
from twinnode.schema import Schema

INTERCEPT = "Intercept"


@dataclass(frozen=True)
class Design:
    """Which covariates, which reference levels, and the resulting term names."""

    outcome: str
    covariates: tuple[str, ...]
    reference: Mapping[str, str] = field(default_factory=dict)
    terms: tuple[str, ...] = ()
    _columns: tuple[tuple[str, str, int], ...] = field(default=(), repr=False)

    @property
    def p(self) -> int:
        return len(self.terms)

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "covariates": list(self.covariates),
                "reference": dict(self.reference), "terms": list(self.terms)}

    def matrix(self, arrays: Columns) -> tuple[FloatArray, FloatArray]:
        """Numeric arrays in the schema's layout (`Schema.check_arrays`) -> X (n, p), y (n,)."""
        Xt, y = self.columns(arrays)
        return np.ascontiguousarray(Xt.T), y

    def columns(self, arrays: Columns, out: FloatArray | None = None
                ) -> tuple[FloatArray, FloatArray]:
        """The same design transposed, X' (p, n) (the fitter's layout), and y (n,); written
        into `out` (p, n) when given, so a stack of replicates is filled without copies."""
        y = np.asarray(arrays[self.outcome], dtype=np.float64)
        Xt = np.empty((self.p, len(y))) if out is None else out
        if Xt.shape != (self.p, len(y)):
            raise AnalysisError(f"design columns need shape {(self.p, len(y))}, "
                                f"got {Xt.shape}")
        for j, (name, kind, code) in enumerate(self._columns):
            if kind == "intercept":
                Xt[j] = 1.0
            elif kind == "level":
                np.equal(arrays[name], code, out=Xt[j])
            else:
                Xt[j] = arrays[name]
        return Xt, y

    def frame_matrix(self, schema: Schema, frame: pd.DataFrame) -> tuple[FloatArray, FloatArray]:
        """A typed frame -> X, y (through `data.frame_to_arrays`, so levels map by name)."""
        return self.matrix(frame_to_arrays(schema, frame))


def make_design(schema: Schema, covariates: Sequence[str] | None = None,
                reference: Mapping[str, str] | None = None) -> Design:
    """The design for the schema's outcome on `covariates` (default: all other columns)."""
    outcome = schema.outcome_column().name
    names = [c.name for c in schema.covariates] if covariates is None else list(covariates)
    if len(set(names)) != len(names):
        raise AnalysisError(f"covariates listed twice: {names}")
    reference = dict(reference or {})
    columns: list[tuple[str, str, int]] = [(INTERCEPT, "intercept", -1)]
    terms = [INTERCEPT]
    refs: dict[str, str] = {}
    for name in names:
        try:
            col = schema.column(name)
        except SchemaError:
            raise AnalysisError(f"covariate {name!r} is not a column of the schema "
                                f"(columns: {', '.join(schema.names)})") from None
        if name == outcome:
            raise AnalysisError(f"the outcome {name!r} cannot also be a covariate")
        if col.type == "categorical":
            ref = reference.pop(name, col.levels[0])
            if ref not in col.levels:
                raise AnalysisError(f"reference level {ref!r} is not a level of {name!r} "
                                    f"(levels: {', '.join(col.levels)})")
            refs[name] = ref
            for code, level in enumerate(col.levels):
                if level != ref:
                    columns.append((name, "level", code))
                    terms.append(f"{name}[{level}]")
        else:
            columns.append((name, "value", -1))
            terms.append(name)
    if reference:
        raise AnalysisError(f"reference level given for non-categorical or unused column(s): "
                            f"{', '.join(sorted(reference))}")
    return Design(outcome=outcome, covariates=tuple(names), reference=refs,
                  terms=tuple(terms), _columns=tuple(columns))


# ------------------------------------------------------------ stacks of replicates
class Block(NamedTuple):
    """Rows of one data set in one replicate as a design: X' (p, n) (`Design.columns`),
    y (n,), their weight, synthetic?"""

    Xt: FloatArray
    y: FloatArray
    weight: float
    synthetic: bool


class Rows(NamedTuple):
    """Rows of one data set as numeric arrays (a twin's), written into the stack directly."""

    arrays: Columns
    weight: float
    synthetic: bool


class Stack(NamedTuple):
    """Replicates stacked for the fitter: X (K, p, n), y, weights and synthetic rows (K, n);
    a replicate shorter than the longest is padded with rows of weight 0."""

    X: FloatArray
    y: FloatArray
    w: FloatArray
    part: BoolArray


def stack_blocks(blocks: Sequence[Sequence[Block | Rows]], design: Design,
                 out: Stack | None = None) -> Stack:
    """Replicates of row blocks -> X (K, p, n), y, weights, part; short ones padded, w = 0.

    Each `Rows` block's design columns are written into the stack where they go. With
    `out` (a stack of as many rows and at least K replicates), the first K of its arrays
    are filled and returned, so chunks of replicates reuse one buffer (a fresh one is
    page-faulted in as it is written: a tenth of a fit's time, measured)."""
    sizes = [sum(_rows(b) for b in row) for row in blocks]
    K, n, p = len(blocks), max(sizes), design.p
    if out is not None and out.X.shape[0] >= K and out.X.shape[1:] == (p, n):
        X, y, w, part = out.X[:K], out.y[:K], out.w[:K], out.part[:K]
    else:
        X, y = np.empty((K, p, n)), np.empty((K, n))
        w, part = np.empty((K, n)), np.empty((K, n), bool)
    for i, row in enumerate(blocks):
        start = 0
        for block in row:
            stop = start + _rows(block)
            if isinstance(block, Rows):
                y[i, start:stop] = design.columns(block.arrays, out=X[i, :, start:stop])[1]
            else:
                X[i, :, start:stop], y[i, start:stop] = block.Xt, block.y
            w[i, start:stop], part[i, start:stop] = block.weight, block.synthetic
            start = stop
        X[i, :, start:], y[i, start:], w[i, start:], part[i, start:] = 0.0, 0.0, 0.0, False
    return Stack(X, y, w, part)


def _rows(block: Block | Rows) -> int:
    if isinstance(block, Rows):
        return len(next(iter(block.arrays.values())))
    return len(block.y)
