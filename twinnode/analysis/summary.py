"""The summary table of one party's analysis, statsmodels style: the numbers, per term.

Built from the JSON report (`party.PartyReport.to_dict`), so what the console shows, the CSV
holds and the report keeps are the same numbers. Per term: the combined estimate, its SE,
the rate ratio exp(estimate) and its interval, the two-sided p-value of estimate = 0 under
the interval's own reference distribution (t with the term's df, normal when df is infinite,
so p < 1 - level exactly when the interval excludes 0), the local-only estimate and interval,
the twins-vs-local agreement (`agreement`: Holm-adjusted p, disagree), and whether the row
holds the local-only values because the twins disagree (`disagreement`). The header: rows
per fit, peers used, K, the twin weight λ and its verdict, the pooling rule, the level.
Formatting is the CLI's (`cli/summary.py`). Pure: dicts and numbers in and out.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from scipy import stats


def p_value(estimate: float | None, se: float | None, df: float | None) -> float | None:
    """Two-sided p of estimate = 0: t with `df`, normal when df is None or infinite (the
    report writes inf as null); None when the estimate or SE is missing or SE is 0."""
    if estimate is None or se is None or not se > 0 or not math.isfinite(estimate):
        return None
    z = abs(estimate) / se
    if df is None or math.isinf(df):
        return float(2.0 * stats.norm.sf(z))
    return float(2.0 * stats.t.sf(z, df))


def _exp(x: float | None) -> float | None:
    if x is None or not math.isfinite(x) or x > 700:
        return None
    return math.exp(x)


def summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """{"header": {...}, "terms": [one dict per term]} from a party report (module doc)."""
    pooling, weight = report["pooling"], report["weight"]
    agreement = report.get("agreement") or {}
    tested = agreement.get("terms", {})
    terms = []
    for term, c in report["coefficients"].items():
        est = c["estimate"]
        df = c["df"] if c["df"] is not None or est is None else math.inf
        a = tested.get(term, {})
        terms.append({
            "term": term, "estimate": est, "se": c["se"],
            "rate_ratio": _exp(est), "rate_ratio_lower": _exp(c["lower"]),
            "rate_ratio_upper": _exp(c["upper"]), "p": p_value(est, c["se"], df),
            "lower": c["lower"], "upper": c["upper"], "fallback": c["fallback"],
            "local_estimate": c["local_estimate"], "local_lower": c["local_lower"],
            "local_upper": c["local_upper"],
            "agreement_p": a.get("p_holm"),
            "agrees": None if a.get("p_holm") is None else not a.get("disagree", False),
            "local_only": bool(c.get("local_only", False))})
    header = {"outcome": report["design"]["outcome"], "rows": dict(pooling["rows"]),
              "peers": list(pooling["peers"]), "k": pooling["k"], "weight": weight["chosen"],
              "weight_mode": weight["mode"], "verdict": weight["verdict"],
              "rule": pooling["rule"], "interval": pooling["interval"],
              "level": pooling["level"], "cov_type": pooling["cov_type"],
              "agreement_alpha": agreement.get("alpha"),
              "on_disagreement": report.get("options", {}).get("on_disagreement"),
              "screening": report["screening"]["message"]}
    return {"header": header, "terms": terms}
