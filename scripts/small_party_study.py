"""Does a small party gain from its peers' twins? randhie, 5 parties, per seed.

Per seed: randhie is split into a test set and 5 parties; party 0 keeps only `--local-rows`
rows (a small hospital). The 4 other parties publish K twins each, made by a twin maker
(default: `simtwins.posterior_twins`, NOT DP; `--twin-maker dp --epsilon 1` trains the DP
generator per party for the real study, or pass any maker to `run_study`/`main`). We report the mean test log-likelihood per record
(Monte Carlo over w ~ N(q̄, T), 100 draws) of party 0's local-only fit, of its combined fit,
and of the oracle (all parties' real rows pooled), and the share of the local -> oracle gap
that the combined fit closes: (combined - local) / (oracle - local).

    .venv/bin/python scripts/small_party_study.py --seeds 10 --local-rows 300
    .venv/bin/python scripts/small_party_study.py --seeds 10 --twin-maker dp --epochs 200
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Sequence

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import twin_makers  # noqa: E402

import numpy as np  # noqa: E402

from twinnode.analysis import (AnalysisOptions, combined_fit, evaluate, local_fit,  # noqa: E402
                               oracle_fit)
from twinnode.data import randhie, split_parties  # noqa: E402
from twinnode.simtwins import TwinMaker  # noqa: E402


def run_study(twin_maker: TwinMaker, seeds: int = 10, parties: int = 5, local_rows: int = 300,
              k: int = 100, epsilon: float = 1.0, rule: str = "reiter") -> dict[str, Any]:
    """Per-seed local / combined / oracle test log-likelihoods and the gap closed."""
    schema, frame = randhie()
    options = AnalysisOptions(rule=rule)
    rows = []
    for seed in range(seeds):
        part = split_parties(frame, parties=parties, seed=seed)
        local = part.parties[0].iloc[:local_rows].reset_index(drop=True)
        others = part.parties[1:]
        peers = {f"party{i + 1}": twin_maker(schema, f, sender=f"party{i + 1}", k=k,
                                             epsilon=epsilon, seed=1000 * seed + i)
                 for i, f in enumerate(others)}
        fits = {"local": local_fit(schema, local, options),
                "combined": combined_fit(schema, local, peers, options=options),
                "oracle": oracle_fit(schema, [local, *others], options)}
        ll = {name: evaluate(fit, schema, part.test, draws=100, seed=seed).mean
              for name, fit in fits.items()}
        gap = ll["oracle"] - ll["local"]
        rows.append(ll | {"seed": seed, "gain": ll["combined"] - ll["local"],
                          "gap_closed": (ll["combined"] - ll["local"]) / gap if gap > 0
                          else float("nan"),
                          "failed": fits["combined"].failed,
                          "fallbacks": fits["combined"].fallback_count})
        print(f"\rseed {seed}", end="", file=sys.stderr)
    print(file=sys.stderr)
    wins = sum(r["combined"] > r["local"] for r in rows)
    return {"seeds": seeds, "local_rows": local_rows, "k": k, "epsilon": epsilon,
            "rule": rule, "wins": wins, "median_gap_closed":
            float(np.nanmedian([r["gap_closed"] for r in rows])), "rows": rows}


def main(argv: Sequence[str] | None = None,
         twin_maker: TwinMaker | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--local-rows", type=int, default=300)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--rule", choices=("reiter", "rubin", "mixed"), default="reiter")
    ap.add_argument("--inflate", type=float, default=1.0,
                    help="posterior variance factor of the simulated twins (1: no DP)")
    ap.add_argument("--twin-maker", choices=twin_makers.MAKERS, default="posterior",
                    help="posterior: simulated, not DP (default); dp: train the DP "
                         "generator per party (slow)")
    ap.add_argument("--epochs", type=float, default=200.0, help="DP training epochs")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    if twin_maker is None:
        twin_maker = twin_makers.make(args.twin_maker, inflate=args.inflate,
                                      epochs=args.epochs)
    t0 = time.perf_counter()
    out = run_study(twin_maker, seeds=args.seeds, local_rows=args.local_rows, k=args.k,
                    epsilon=args.epsilon, rule=args.rule)
    print(f"randhie, party 0 with {args.local_rows} rows + 4 peers' twins (K = {args.k}, "
          f"maker {args.twin_maker}, inflate {args.inflate}, rule {args.rule}); mean test "
          f"log-likelihood per record "
          f"({time.perf_counter() - t0:.0f} s)")
    print(f"{'seed':>4}{'local':>10}{'combined':>10}{'oracle':>10}{'gain':>9}{'gap closed':>12}")
    for r in out["rows"]:
        print(f"{r['seed']:>4}{r['local']:>10.4f}{r['combined']:>10.4f}{r['oracle']:>10.4f}"
              f"{r['gain']:>9.4f}{r['gap_closed']:>12.2f}")
    print(f"combined > local in {out['wins']} of {out['seeds']} seeds; median share of the "
          f"local -> oracle gap closed: {out['median_gap_closed']:.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
