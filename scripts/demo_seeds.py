#!/usr/bin/env python3
"""Issue 12's two demo measures over several `twinnode demo --seed S` runs' results.json.

Per run and overall: for the parties whose twin weight λ was above 0, how many of their
(party, term) combined 95% intervals hold the oracle's coefficient (the fit on all honest
parties' real rows pooled); the same for the local-only intervals; and whether any party
flagged an honest peer in screening. Also the plug-in and Monte Carlo gap closed per party.

    for s in 1 2 3 4 5; do twinnode demo --seed $s --out demo-s$s; done
    .venv/bin/python scripts/demo_seeds.py demo-s*/results.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def run_summary(path: Path) -> dict:
    r = json.loads(path.read_text())
    oracle = r["oracle"]["coefficients"]
    oracle = {t: (v["estimate"] if isinstance(v, dict) else v) for t, v in oracle.items()}
    honest = {p["name"] for p in r["parties"] if not p["malicious"]}
    held = local_held = pairs = 0
    flagged_honest, gaps = [], []
    for p in r["parties"]:
        flagged_honest += [(p["name"], f) for f in p.get("flagged_peers", []) if f in honest]
        gaps.append((p["name"], p["weight"], p["gap_closed_plugin"], p["gap_closed"]))
        if p["malicious"] or not p["weight"]:
            continue
        for term, c in p["coefficients"].items():
            if term not in oracle:
                continue
            pairs += 1
            held += c["lower"] <= oracle[term] <= c["upper"]
            local_held += c["local_lower"] <= oracle[term] <= c["local_upper"]
    used = [p for p in r["parties"] if p["weight"] and not p["malicious"]]
    worse = sum(p["gain_plugin"] < 0 for p in used)
    return {"seed": r["settings"].get("seed"), "pairs": pairs, "held": held, "used": len(used),
            "worse": worse,
            "local_held": local_held, "flagged_honest": flagged_honest, "gaps": gaps}


def _signed(value: float | None) -> str:
    """A gap closed, or '-' where the party's local fit already matched the oracle's."""
    return "-" if value is None else f"{value:+.2f}"


def main(argv: list[str]) -> int:
    runs = [run_summary(Path(a)) for a in argv]
    total = sum(r["pairs"] for r in runs)
    for r in runs:
        share = r["held"] / r["pairs"] if r["pairs"] else float("nan")
        print(f"seed {r['seed']}: combined holds the oracle in {r['held']}/{r['pairs']} "
              f"({share:.0%}) of (party, term) pairs with λ > 0; local-only "
              f"{r['local_held']}/{r['pairs']}; honest peers flagged: "
              f"{r['flagged_honest'] or 'none'}")
        for name, weight, plug, mc in r["gaps"]:
            print(f"    {name}: λ {weight:g}, gap closed plug-in {_signed(plug)} "
                  f"(MC {_signed(mc)})")
    if total:
        print(f"all {len(runs)} runs: {sum(r['held'] for r in runs)}/{total} "
              f"({sum(r['held'] for r in runs) / total:.0%}) combined, "
              f"{sum(r['local_held'] for r in runs)}/{total} local-only; runs flagging an "
              f"honest peer: {sum(bool(r['flagged_honest']) for r in runs)} of {len(runs)}; "
              f"parties with λ > 0 below local-only by the plug-in score: "
              f"{sum(r['worse'] for r in runs)} of {sum(r['used'] for r in runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
