"""How close a twin is to the real data: pure measures used by tests, scripts and reports.

Marginals: total variation distance per column, on the schema's own support (levels, counts
0..upper) or, for continuous columns, 20 equal bins over the public bounds.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from twinnode.data import frame_to_arrays
from twinnode.schema import Column, Schema

CONTINUOUS_BINS = 20
COUNT_BINS = 30


def _histogram(col: Column, values: np.ndarray) -> np.ndarray:
    """Shares of `values` per bin: 20 over a continuous column's bounds, counts coarsened
    beyond COUNT_BINS // 2, every value of a binary, categorical or small count column."""
    if col.type == "continuous" and col.lower is not None and col.upper is not None:
        edges = np.linspace(col.lower, col.upper, CONTINUOUS_BINS + 1)
    elif col.type == "count" and col.cardinality - 1 > COUNT_BINS:
        # fine at the low end where counts live, coarse beyond
        edges = np.unique(np.concatenate([np.arange(0, COUNT_BINS // 2 + 1),
                                          np.geomspace(COUNT_BINS // 2 + 1, col.cardinality,
                                                       COUNT_BINS // 2)]))
    else:
        return np.bincount(np.asarray(values, np.int64), minlength=col.cardinality) / len(values)
    hist, _ = np.histogram(np.asarray(values, np.float64), bins=edges)
    return hist / max(len(values), 1)


def marginal_tvd(schema: Schema, real: pd.DataFrame, twin: pd.DataFrame) -> dict[str, float]:
    """Total variation distance between real and twin marginals, per column (0 = equal)."""
    r, t = frame_to_arrays(schema, real), frame_to_arrays(schema, twin)
    return {c.name: 0.5 * float(np.abs(_histogram(c, r[c.name]) - _histogram(c, t[c.name])).sum())
            for c in schema.columns}
