#!/usr/bin/env python3
"""One table from several coverage_study.py --json files: coverage per term family and width.

Per file and scenario (the mixed rule, t reference unless --rule/--interval say otherwise):
the share of nominal 95% intervals that hold the true coefficient, overall and per term
family (the intercept, and each column kind of the simulated schema: continuous, binary,
categorical), and the median interval width relative to the local-only interval's.

    .venv/bin/python scripts/coverage_summary.py docs/results/coverage/dp-*.json \\
        > docs/results/coverage/summary.md
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from twinnode.lab.simtwins import small_schema  # noqa: E402

SCENARIOS = ("twins-only", "combined", "combined+local", "combined[off]", "combined-auto",
             "combined-auto+local", "combined-auto[off]")


def families(terms: Sequence[str]) -> dict[str, list[str]]:
    """Term -> family: 'intercept' or the kind of the schema column the term belongs to."""
    kinds = {c.name: c.type for c in small_schema().columns}
    out: dict[str, list[str]] = {}
    for term in terms:
        kind = "intercept" if term == "Intercept" else kinds[term.split("[", 1)[0]]
        out.setdefault(kind, []).append(term)
    return out


def rows_of(path: Path, rule: str, interval: str) -> list[dict[str, Any]]:
    run = json.loads(path.read_text())
    results = run["results"]
    local = results[f"local-only/single/{interval}"]
    fam = families(list(run["truth"]))
    rows = []
    for scenario in SCENARIOS:
        key = f"{scenario}/{rule}/{interval}"
        if key not in results:
            continue
        r = results[key]
        widths = [r["median_width"][t] / local["median_width"][t] for t in run["truth"]]
        rows.append({
            "file": path.stem, "local rows": run["n_local"], "scenario": scenario,
            "coverage": r["coverage_mean"],
            **{f: sum(r["coverage"][t] for t in ts) / len(ts) for f, ts in fam.items()},
            "width vs local": sorted(widths)[len(widths) // 2],
            **({"replaced": r["replaced_share"]} if "+local" in scenario else {}),
            "λ mean": run.get("chosen_weight", {}).get("mean") if "auto" in scenario
            else (1.0 if scenario.startswith("combined") else None)})
    local_row = {"file": path.stem, "local rows": run["n_local"], "scenario": "local-only",
                 "coverage": local["coverage_mean"],
                 **{f: sum(local["coverage"][t] for t in ts) / len(ts) for f, ts in fam.items()},
                 "width vs local": 1.0, "λ mean": 0.0}
    return rows + [local_row]


def markdown(rows: list[dict[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: "" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--rule", default="mixed")
    ap.add_argument("--interval", default="t")
    args = ap.parse_args(argv)
    rows = [row for f in args.files for row in rows_of(f, args.rule, args.interval)]
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
