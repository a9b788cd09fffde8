"""Poisoning: how often screening flags a shifted peer, and how often an honest one.

Per seed: a local party, 5 honest peers and 1 peer that publishes twins of a shifted model
(its rows are changed before its twins are made: 'outcome*F' scales the outcome, 'flip:COL'
swaps a binary column's coding). Each peer's twins come from a twin maker (default:
`simtwins.posterior_twins`, NOT DP; `--twin-maker dp` trains the DP generator per party
for the real study, or pass any maker to `run_study`/`main`). Screening runs with the exclude policy, against the local party's rows and the
consensus of the others (`--no-anchor`: the consensus only, as before issue 12); we record
whether the shifted peer is flagged (and by which test's p-value), how many honest peers are flagged, and how far the
estimates with the shifted peer, and with the flagged peers excluded, are from the
honest-only estimates (in honest-only standard errors, the largest over terms).
A 'none' attack (6 honest peers) measures false flags alone.

    .venv/bin/python scripts/screening_study.py --seeds 20 --data small
    .venv/bin/python scripts/screening_study.py --seeds 20 --data randhie \
        --attacks none,outcome*1.5,outcome*2,flip:idp --inflate 8          # 12 min
    # DP twins: 72 trainings of ~2.7 min; split over 2 processes, then re-screen from cache
    .venv/bin/python scripts/screening_study.py --data randhie --twin-maker dp --k 50 \
        --attacks none,outcome*1.5,outcome*2,flip:idp --cache dpcache --first-seed 0 --seeds 4
    .venv/bin/python scripts/screening_study.py ... --first-seed 4 --seeds 4
    .venv/bin/python scripts/screening_study.py ... --seeds 8 --json dp.json  # from cache
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Sequence

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import twin_makers  # noqa: E402

from twinnode.analysis.fit import AnalysisOptions, combined_fit  # noqa: E402
from twinnode.analysis.party import screen  # noqa: E402
from twinnode.lab.simtwins import TwinMaker, poison_frame, simulate_small, small_schema  # noqa: E402
from twinnode.schema import Schema  # noqa: E402

HONEST = 5
Parties = Callable[[int], tuple[Schema, pd.DataFrame, list[pd.DataFrame]]]


def small_parties(n_local: int, n_peer: int) -> Parties:
    """Local + 6 peer data sets from the known model of `simtwins`."""
    schema = small_schema()

    def make(seed: int):
        base = 7919 * seed
        return (schema, simulate_small(schema, n_local, base),
                [simulate_small(schema, n_peer, base + 1 + i) for i in range(HONEST + 1)])
    return make


def randhie_parties(n_local: int) -> Parties:
    """randhie split into 7 parts per seed: a local party (n_local rows drawn at random from
    the first part; its first rows would be a biased sample, as a part keeps randhie's order,
    which is by plan) + 6 peers."""
    from twinnode.data import randhie, split_parties
    schema, frame = randhie()

    def make(seed: int):
        part = split_parties(frame, parties=HONEST + 2, seed=seed)
        local = part.parties[0].sample(n=n_local, random_state=seed).reset_index(drop=True)
        return schema, local, list(part.parties[1:])
    return make


def run_study(twin_maker: TwinMaker, parties: Parties, attacks: Sequence[str], seeds: int,
              k: int = 50, epsilon: float = 1.0, threshold: float = 0.01, first_seed: int = 0,
              progress: Callable[[str], None] | None = None, anchor: bool = True
              ) -> dict[str, Any]:
    """Flag rates and estimate distances per attack over `seeds` seeds."""
    out: dict[str, Any] = {}
    for attack in attacks:
        rows = []
        for seed in range(first_seed, first_seed + seeds):
            schema, local, frames = parties(seed)
            peers = {}
            for i, frame in enumerate(frames):
                shifted = attack != "none" and i == HONEST
                name = "shifted" if shifted else f"honest{i}"
                if shifted:
                    frame = poison_frame(schema, frame, attack)
                peers[name] = twin_maker(schema, frame, sender=name, k=k, epsilon=epsilon,
                                         seed=104729 * seed + i)
            report = screen(schema, peers, "exclude", threshold, options=AnalysisOptions(),
                            local_frame=local if anchor else None)
            shifted_verdict = next((p for p in report.peers if p.peer == "shifted"), None)
            with_all = combined_fit(schema, local, peers)
            excluded = with_all if not report.flagged else combined_fit(
                schema, local, {n: t for n, t in peers.items() if n not in report.flagged})
            honest = {n: t for n, t in peers.items() if n.startswith("honest")}
            reference = combined_fit(schema, local, honest)
            se = reference.se

            def dist(fit):
                return float(np.nanmax(np.abs(fit.estimate - reference.estimate) / se))
            rows.append({"seed": seed,
                         "shifted_flagged": "shifted" in report.flagged,
                         "honest_flagged": sum(n.startswith("honest") for n in report.flagged),
                         "honest_judged": len(honest),
                         "with_all_se": dist(with_all),
                         "excluded_se": dist(excluded),
                         "shifted_p": getattr(shifted_verdict, "p_value", None),
                         "shifted_p_local": getattr(shifted_verdict, "p_local", None),
                         "shifted_p_consensus": getattr(shifted_verdict, "p_consensus", None),
                         "reason": next((p.reason for p in report.peers
                                         if p.peer == "shifted"), "")})
            if progress:
                progress(f"{attack} seed {seed}")
        judged = sum(r["honest_judged"] for r in rows)
        out[attack] = {
            "seeds": seeds,
            "shifted_flag_rate": (None if attack == "none" else
                                  float(np.mean([r["shifted_flagged"] for r in rows]))),
            "honest_flag_rate": sum(r["honest_flagged"] for r in rows) / judged,
            "honest_judged": judged,
            "median_with_all_se": float(np.median([r["with_all_se"] for r in rows])),
            "median_excluded_se": float(np.median([r["excluded_se"] for r in rows])),
            "max_excluded_se": float(np.max([r["excluded_se"] for r in rows])),
            "rows": rows}
    return out


def main(argv: Sequence[str] | None = None,
         twin_maker: TwinMaker | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--data", choices=("small", "randhie"), default="small")
    ap.add_argument("--n-local", type=int, default=300)
    ap.add_argument("--n-peer", type=int, default=1000, help="peer rows (small data only)")
    ap.add_argument("--attacks", default="none,outcome*1.2,outcome*1.5,outcome*2,flip:smoker",
                    help="comma list: none, outcome*F, flip:COL")
    ap.add_argument("--threshold", type=float, default=0.01)
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--inflate", type=float, default=1.0,
                    help="posterior variance factor of the simulated twins (1: no DP)")
    ap.add_argument("--noise-aware", choices=("unset", "yes", "no"), default="unset",
                    help="posterior maker: mark the releases noise-aware (yes) or not (no: "
                         "their twins also do not show the release noise); unset: as before")
    ap.add_argument("--no-anchor", action="store_true",
                    help="screen against the consensus only (not the local rows)")
    ap.add_argument("--twin-maker", choices=twin_makers.MAKERS, default="posterior",
                    help="posterior: simulated, not DP (default); dp: train the DP "
                         "generator per party (slow)")
    ap.add_argument("--epochs", type=float, default=None,
                    help="DP training epochs (default: the generator's)")
    ap.add_argument("--cache", help="dp maker: keep trained posteriors in this directory and "
                    "reuse them (re-screen without training again)")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds run from here (split a long dp study over processes)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    if twin_maker is None:
        twin_maker = twin_makers.make(args.twin_maker, inflate=args.inflate,
                                      epochs=args.epochs, cache_dir=args.cache,
                                      noise_aware={"unset": None, "yes": True,
                                                   "no": False}[args.noise_aware])
    parties = (small_parties(args.n_local, args.n_peer) if args.data == "small"
               else randhie_parties(args.n_local))
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    t0 = time.perf_counter()
    out = run_study(twin_maker, parties, attacks, args.seeds, k=args.k, epsilon=args.epsilon,
                    threshold=args.threshold, first_seed=args.first_seed,
                    anchor=not args.no_anchor, progress=lambda s: print(f"\r{s:<40}", end="", file=sys.stderr))
    print(file=sys.stderr)
    print(f"screening study: data {args.data}, {HONEST} honest peers + 1 shifted, K = {args.k}, "
          f"threshold p < {args.threshold}, maker {args.twin_maker}, inflate {args.inflate}, "
          f"noise-aware {args.noise_aware}, {'consensus only' if args.no_anchor else 'anchored'}, "
          f"{args.seeds} seeds "
          f"({time.perf_counter() - t0:.0f} s)")
    print(f"{'attack':<14}{'shifted flagged':>16}{'honest flagged':>16}"
          f"{'|with - honest|':>17}{'|excl - honest|':>17}{'max excl':>10}")
    for attack, r in out.items():
        rate = "-" if r["shifted_flag_rate"] is None else f"{r['shifted_flag_rate']:.2f}"
        print(f"{attack:<14}{rate:>16}{r['honest_flag_rate']:>10.3f} of {r['honest_judged']:<4}"
              f"{r['median_with_all_se']:>14.2f} SE{r['median_excluded_se']:>14.2f} SE"
              f"{r['max_excluded_se']:>7.2f} SE")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
