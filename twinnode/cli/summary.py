"""The analysis summary table at the console and as CSV (`twinnode analyze`, `ctl analyze`).

Formatting only: the numbers are the report's ``summary`` (`analysis.summary`). The CSV holds
each cell exactly as printed (same rounding), so reading it back gives the printed numbers.
Standard library only: `twinnode ctl` stays light.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

# (CSV column, the report's key, format); the console's column names follow from the level
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("term", "term", "s"), ("estimate", "estimate", ".4f"), ("se", "se", ".4f"),
    ("rate_ratio", "rate_ratio", ".4f"), ("p", "p", ".3g"), ("lower", "lower", ".4f"),
    ("upper", "upper", ".4f"), ("local_estimate", "local_estimate", ".4f"),
    ("local_lower", "local_lower", ".4f"), ("local_upper", "local_upper", ".4f"),
    ("agreement_p", "agreement_p", ".3g"), ("agrees", "agrees", "yn"))


def cell(value: Any, fmt: str) -> str:
    """One value as printed: NA when missing or not finite; yes / NO for agreement."""
    if fmt == "yn":
        return "-" if value is None else ("yes" if value else "NO")
    if fmt == "s":
        return str(value)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "NA"
    return format(float(value), fmt)


def rows(summary: Mapping[str, Any]) -> list[list[str]]:
    """The table's cells, one list per term, in COLUMNS order."""
    return [[cell(t.get(key), fmt) for _, key, fmt in COLUMNS] for t in summary["terms"]]


def column_names(level: float) -> list[str]:
    """The console's header: statsmodels-like, the bounds named by their quantiles."""
    lo, hi = f"[{(1 - level) / 2:.3g}", f"{1 - (1 - level) / 2:.3g}]"
    return ["term", "coef", "SE", "exp(coef)", "p", lo, hi, "local", lo, hi, "agree-p",
            "agree"]


def header_lines(h: Mapping[str, Any]) -> list[str]:
    """Rows, peers used, K, λ and its verdict, the rule (the table's header)."""
    peers = h["peers"]
    return [
        f"Poisson GLM of {h['outcome']}: local rows + twins of {len(peers)} peer(s)"
        + (f" ({', '.join(peers)})" if peers else "") + f", K = {h['k']}",
        "rows per fit: " + ", ".join(f"{k} {v}" for k, v in h["rows"].items()),
        f"twin weight λ = {float(h['weight']):g} ({h['weight_mode']}); does joining help? "
        f"{h['verdict']}",
        f"rule: {h['rule']}, {h['interval']} intervals at {100 * float(h['level']):g}%, "
        f"robust {h['cov_type']} errors; exp(coef) is the rate ratio"
        + (f"; agree: twins alone vs the local rows, Holm-adjusted p (NO below "
           f"{float(h['agreement_alpha']):g})" if h.get("agreement_alpha") else "")]


def table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """Columns right-aligned (the term left-aligned), two spaces apart."""
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                      for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in [header, *body]]


def render(summary: Mapping[str, Any]) -> str:
    """The header and the table, as printed."""
    h = summary["header"]
    lines = header_lines(h) + [""] + table(column_names(float(h["level"])), rows(summary))
    fell = [t["term"] for t in summary["terms"] if t.get("fallback")]
    if fell:
        lines.append(f"(the rule's total variance was not positive for {', '.join(fell)}: "
                     "the fallback's is used)")
    local = [t["term"] for t in summary["terms"] if t.get("local_only")]
    if local:
        lines.append(f"(local only: {', '.join(local)}: the twins disagree with the local rows, "
                     "so coef, SE and interval are the local fit's; on-disagreement local)")
    return "\n".join(lines)


def write_csv(summary: Mapping[str, Any], path: Path) -> None:
    """The table as CSV: one row per term, columns named as in COLUMNS, cells as printed."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow([name for name, _, _ in COLUMNS])
        out.writerows(rows(summary))
