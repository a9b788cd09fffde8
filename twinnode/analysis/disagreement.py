"""Terms where the twins disagree with the party's own rows: optionally report local only.

`agreement` names the terms whose twins-only estimate differs from the local-only one beyond
chance (Holm over the terms, at `AnalysisOptions.agreement_alpha`). On such a term the
combined estimate mixes the party's rows with twins that describe something else (a real
difference between the sites, or a generator that got this coefficient wrong), and the
between-release term, estimated from a handful of sites, need not widen T enough to cover
it. `AnalysisOptions.on_disagreement` says what the report gives for those terms:

- ``keep`` (the default): the combined estimate and interval, with the term named as
  disagreeing (the behaviour before this option);
- ``local``: the local-only estimate, SE, df and interval in place of the combined ones, and
  the term marked as replaced. Terms that agree keep the combined values.

The trade-off (docs/ANALYSIS.md, "When the twins disagree"): a replaced term loses what the
twins would have added (its interval is the local one: wider, but valid for the party's
own population), and the rule is a pre-test: when the twins are faithful it replaces a term
in about `agreement_alpha` of the analyses (Holm controls the chance of replacing any), and
when they are biased by less than the test can see the combined interval is kept. The
intervals of the terms kept are unchanged; the choice of which terms to replace is made on
the same data, which the reported intervals do not account for.

The pooled covariance matrix (what `fit.evaluate` draws from) keeps the combined matrix's
correlations, rescaled to the replaced terms' new variances: the local estimate's
correlations with the other (combined) estimates are not estimated, and rescaling keeps the
matrix positive semi-definite. Pure functions: arrays and fits in, fits out.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from twinnode.analysis.agreement import Agreement
from twinnode.analysis.arrays import BoolArray
from twinnode.analysis.fit import PooledFit
from twinnode.analysis.options import ON_DISAGREEMENT
from twinnode.analysis.pooling import Pooled
from twinnode.errors import AnalysisError

_PER_TERM = ("estimate", "u_bar", "u_part", "b", "total", "df", "lower", "upper", "fallback",
             "k_used")


def take_local(combined: Pooled, local: Pooled, where: BoolArray) -> Pooled:
    """`combined` with `local`'s per-term values (estimate, variance parts, df, interval) for
    the terms where `where` is true; its matrix rescaled to the new variances (module doc)."""
    where = np.asarray(where, bool)
    if where.shape != combined.estimate.shape or where.shape != local.estimate.shape:
        raise AnalysisError(f"take_local: {where.size} flags for {combined.estimate.size} "
                            f"combined and {local.estimate.size} local terms")
    if (combined.level, combined.interval) != (local.level, local.interval):
        raise AnalysisError("take_local: the combined and local fits have different "
                            "interval levels or references")
    if not where.any():
        return combined
    values: dict[str, Any] = {name: np.where(where, getattr(local, name),
                                             getattr(combined, name)) for name in _PER_TERM}
    with np.errstate(invalid="ignore", divide="ignore"):
        old = np.sqrt(np.diag(combined.covariance))
        scale = np.where(where & (old > 0), np.sqrt(values["total"]) / old, 1.0)
    covariance = combined.covariance * scale[:, None] * scale[None, :]
    return replace(combined, covariance=covariance, **values)


def local_where_disagreeing(fit: PooledFit, local: PooledFit, agreement: Agreement | None,
                            rule: str) -> tuple[PooledFit, tuple[str, ...]]:
    """`fit` with the local-only values for each term `agreement` flags, when `rule` is
    "local" (module doc), and the terms replaced; "keep" (or no agreement) returns `fit`."""
    if rule not in ON_DISAGREEMENT:
        raise AnalysisError(f"on_disagreement must be one of {', '.join(ON_DISAGREEMENT)}, "
                            f"got {rule!r}")
    if rule == "keep" or agreement is None or not agreement.disagree.any():
        return fit, ()
    if not fit.terms == local.terms == agreement.terms:
        raise AnalysisError("the combined fit, the local fit and the agreement test have "
                            "different terms")
    pooled = take_local(fit.pooled, local.pooled, agreement.disagree)
    return replace(fit, pooled=pooled), agreement.disagreeing
