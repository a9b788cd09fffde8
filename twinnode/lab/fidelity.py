"""How close a twin is to the real data: pure measures used by tests, scripts and reports.

Marginals: total variation distance per column, on the schema's own support (levels, counts
0..upper) or, for continuous columns, 20 equal bins over the public bounds.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from twinnode.data import frame_to_arrays
from twinnode.schema import Column, Schema
from twinnode.twins import Twin

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


def release_fidelity(schema: Schema, real: pd.DataFrame, twins: Sequence[Twin],
                     level: float = 0.95) -> dict[str, Any]:
    """One release's twins against the party's own rows: the measures of the fidelity study.

    Rates and means are of the K twins pooled; `range` means a share of the column's public
    range; coefficient errors are in the real fit's SEs (HC1); calibration is the share of
    real coefficients inside the release's own pooled interval (twins only, as a peer sees
    them), with the mean interval width in real SEs.
    """
    from twinnode.analysis.fit import AnalysisOptions, local_fit, twins_fit

    r = frame_to_arrays(schema, real)
    stacked = {c.name: np.concatenate([np.asarray(t.arrays[c.name]) for t in twins])
               for c in schema.columns}
    rate_err: dict[str, float] = {}
    mean_err: dict[str, float] = {}
    for col in schema.covariates:
        a, b = np.asarray(r[col.name], float), np.asarray(stacked[col.name], float)
        if col.type in ("binary", "categorical"):
            levels = col.cardinality
            diff = (np.bincount(b.astype(int), minlength=levels) / len(b)
                    - np.bincount(a.astype(int), minlength=levels) / len(a))
            rate_err[col.name] = float(np.abs(diff).max())
        else:
            lo, hi = col.bounds
            mean_err[col.name] = float(abs(b.mean() - a.mean()) / (hi - lo))
    out = schema.outcome_column().name
    y_real, y_twin = float(np.mean(r[out])), float(np.mean(stacked[out]))
    options = AnalysisOptions(level=level)
    real_fit, pooled = local_fit(schema, real, options), twins_fit(schema, twins, options)
    z = (pooled.estimate - real_fit.estimate) / real_fit.se
    p = pooled.pooled
    inside = (p.lower <= real_fit.estimate) & (real_fit.estimate <= p.upper)
    return {
        "worst_rate_error": max(rate_err.values(), default=0.0), "rate_error": rate_err,
        "worst_mean_error_range": max(mean_err.values(), default=0.0), "mean_error_range": mean_err,
        "outcome_mean_real": y_real, "outcome_mean_twins": y_twin,
        "outcome_mean_rel_error": abs(y_twin - y_real) / max(y_real, 1e-9),
        "terms": list(real_fit.terms), "coef_error_se": dict(zip(real_fit.terms, np.abs(z).tolist())),
        "worst_coef_error_se": float(np.nanmax(np.abs(z))),
        "calibration": float(np.mean(inside)),
        "width_se": float(np.median((p.upper - p.lower) / (2 * 1.959964 * real_fit.se))),
    }
