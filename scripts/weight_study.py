"""How each rule for choosing the twin weight λ does on fresh data: realised gain and losses.

Per scenario and repetition: party 0's rows and 4 peers' rows from the known model of
`twinnode.lab.simtwins` (or a wrong one), K simulated twins per peer (NOT DP; `--inflate`
mimics DP noise). The validation curve is computed once (`weighting.validation_scores`) and
each selection rule (guarded, one-se, best) picks its λ from it. The final combined fit at
every grid λ is scored on a large test set from the true model (plug-in log-likelihood per
record), so each rule's realised gain over local only is known, as are λ = 1's (the paper)
and the best grid λ's in hindsight (the oracle). Reported per rule: mean gain (nats/row),
the share of repetitions where it lost against local only (gain < 0) and its mean loss
there, and the mean λ.

    .venv/bin/python scripts/weight_study.py --reps 40
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Sequence

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from twinnode.analysis.fit import combined_fit, evaluate  # noqa: E402
from twinnode.analysis.options import DEFAULT_GRID, SELECTIONS  # noqa: E402
from twinnode.analysis.weighting import select, validation_scores  # noqa: E402
from twinnode.lab.simtwins import poison_frame, posterior_twins, simulate_small, small_schema  # noqa: E402

SCENARIOS = {
    # name: (local rows, peer rows, inflate, attack on every peer)
    "small-faithful": (100, 1000, 1.0, None),
    "mid-faithful": (300, 1000, 1.0, None),
    "large-faithful": (3000, 1000, 1.0, None),
    "mid-dp-like": (300, 1000, 4.0, None),
    "large-dp-like": (3000, 1000, 4.0, None),
    "mid-wrong": (300, 1000, 1.0, "outcome*1.3"),
}


def run_scenario(name: str, reps: int, k: int, peers: int = 4, seed: int = 0
                 ) -> dict[str, Any]:
    """Realised test gains of each selection rule, λ = 1 and the oracle over `reps`."""
    n_local, n_peer, inflate, attack = SCENARIOS[name]
    schema = small_schema()
    grid = DEFAULT_GRID
    test = simulate_small(schema, 20_000, 999_983 + seed)
    gains: dict[str, list[float]] = {r: [] for r in (*SELECTIONS, "paper", "oracle")}
    lams: dict[str, list[float]] = {r: [] for r in gains}
    for rep in range(reps):
        base = seed * 1_000_003 + rep * 101
        local = simulate_small(schema, n_local, base)
        twins = {}
        for i in range(peers):
            frame = simulate_small(schema, n_peer, base + 1 + i)
            if attack:
                frame = poison_frame(schema, frame, attack)
            twins[f"p{i}"] = posterior_twins(schema, frame, sender=f"p{i}", k=k,
                                             seed=base + 50 + i, inflate=inflate)
        scores, _, _ = validation_scores(schema, local, twins, grid=grid, folds=5, seed=base)
        test_ll = np.array([evaluate(combined_fit(schema, local, twins, weight=lam),
                                     schema, test, draws=1).plugin for lam in grid])
        gain = test_ll - test_ll[0]
        for rule in SELECTIONS:
            chosen, _ = select(grid, scores, rule)
            gains[rule].append(gain[chosen])
            lams[rule].append(grid[chosen])
        gains["paper"].append(gain[-1])
        lams["paper"].append(1.0)
        gains["oracle"].append(gain.max())
        lams["oracle"].append(grid[int(np.argmax(gain))])
        print(f"\r{name} {rep + 1}/{reps}", end="", file=sys.stderr)
    print(file=sys.stderr)
    out = {}
    for rule, g in gains.items():
        g = np.array(g)
        lost = g < -1e-12
        out[rule] = {"mean_gain": float(g.mean()), "se": float(g.std(ddof=1) / np.sqrt(reps)),
                     "share_lost": float(lost.mean()),
                     "mean_loss_when_lost": float(-g[lost].mean()) if lost.any() else 0.0,
                     "mean_weight": float(np.mean(lams[rule]))}
    return {"scenario": name, "n_local": n_local, "n_peer": n_peer, "inflate": inflate,
            "attack": attack, "reps": reps, "k": k, "rules": out}


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    results = [run_scenario(s, args.reps, args.k, seed=args.seed)
               for s in args.scenarios.split(",")]
    print(f"realised test gain over local only (plug-in log-likelihood per record, x1000), "
          f"{args.reps} repetitions, K = {args.k} ({time.perf_counter() - t0:.0f} s)")
    print(f"{'scenario':<16}{'rule':<9}{'gain':>8}{'±se':>7}{'lost':>7}{'loss':>8}{'mean λ':>8}")
    for r in results:
        for rule, v in r["rules"].items():
            print(f"{r['scenario']:<16}{rule:<9}{1000 * v['mean_gain']:>8.2f}"
                  f"{1000 * v['se']:>7.2f}{v['share_lost']:>7.2f}"
                  f"{1000 * v['mean_loss_when_lost']:>8.2f}{v['mean_weight']:>8.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
