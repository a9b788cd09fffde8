"""Coverage of pooled intervals for the true coefficients of a simulated population.

Each repetition draws fresh party data from the known Poisson model of
`twinnode.lab.simtwins` (`SMALL_TRUE_COEFFICIENTS`), makes K twins of each peer with a twin
maker (default: `simtwins.posterior_twins`, NOT DP; `--twin-maker dp` trains the DP
generator per party, or pass any maker to `run_study`/`main`), and records whether each pooled interval contains the true value, for:

- twins only: one party's K twins pooled as fully synthetic data (the setting the
  Raghunathan–Reiter rule is derived for);
- combined: party 0's real rows ∪ twin k of every peer, twin rows weighted λ, for each λ
  of `--weights`: ``combined`` is λ = 1 (the paper's analysis), ``combined-auto`` the λ
  chosen by `weighting.choose_weight` on party 0's rows (seeded per repetition; the
  distribution of the chosen λ is reported), ``combined@W`` a fixed λ = W;
- local only: party 0's rows alone (a check of the HC1 intervals themselves),
- with `--on-disagreement local`, each combined scenario again as ``<scenario>+local``: the
  terms where all peers' twins alone disagree with party 0's rows (`agreement`, Holm at
  0.05) reported with the local-only interval (`disagreement`); `replaced_share` is the
  share of terms replaced,

under each pooling rule (reiter, rubin, mixed) and both interval references (t, normal).
`--inflate F` > 1 gives DP-like twins (each twin's posterior F times wider, the release's
centre moved once by the matching noise: calibrated, so the intervals should still cover).

    .venv/bin/python scripts/coverage_study.py --reps 200 --k 100
    .venv/bin/python scripts/coverage_study.py --reps 200 --k 100 --inflate 4
    .venv/bin/python scripts/coverage_study.py --reps 200 --n-local 2000 --weights 1,auto
    # real DP twins from cached posteriors (docs/results/coverage/README.md); the combined
    # fits get the between-release term as `analyze_party` adds it, [off] without it
    .venv/bin/python scripts/coverage_study.py --twin-maker dp --reps 10 --n-peer 3000 \
        --heterogeneity pmm,off --cache docs/results/coverage/posteriors [--noise-aware no]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from typing import Any, Callable, Sequence

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import twin_makers  # noqa: E402

from twinnode.analysis.fit import (  # noqa: E402
    AnalysisOptions,
    PooledFit,
    combined_fit,
    local_fit,
    repool,
    twins_fit,
)
from twinnode.analysis.options import (DEFAULT_HETEROGENEITY, DEFAULT_SELECTION,  # noqa: E402
                                       HETEROGENEITIES, SELECTIONS)
from twinnode.analysis.disagreement import local_where_disagreeing  # noqa: E402
from twinnode.analysis.sites import add_between_release, peer_fits, twins_agreement  # noqa: E402
from twinnode.analysis.usable import usable_peers  # noqa: E402
from twinnode.analysis.weighting import choose_weight  # noqa: E402
from twinnode.lab.simtwins import SMALL_TRUE_COEFFICIENTS, TwinMaker, simulate_small, small_schema  # noqa: E402

RULES = ("reiter", "rubin", "mixed")
INTERVALS = ("t", "normal")


def run_study(twin_maker: TwinMaker, reps: int = 200, k: int = 100, peers: int = 4,
              n_local: int = 300, n_peer: int = 1000, epsilon: float = 1.0, seed: int = 0,
              weights: Sequence[str | float] = (1.0,),
              heterogeneities: Sequence[str] = (DEFAULT_HETEROGENEITY,),
              progress: Callable[[int], None] | None = None,
              on_disagreement: Sequence[str] = ("keep",),
              selection: str = DEFAULT_SELECTION) -> dict[str, Any]:
    """Coverage per scenario, rule and interval reference, over `reps` repetitions
    (`selection`: how `auto` picks λ from the cross-validated curve, weighting.py)."""
    schema = small_schema()
    options = AnalysisOptions()
    truth = None
    hits: dict[str, list[np.ndarray]] = {}
    fallbacks: dict[str, list[int]] = {}
    widths: dict[str, list[np.ndarray]] = {}
    chosen: list[float] = []
    replaced: dict[str, list[int]] = {}
    for rep in range(reps):
        base = seed * 1_000_003 + rep * 101
        local = simulate_small(schema, n_local, base)
        twins = {f"peer{i}": twin_maker(schema, simulate_small(schema, n_peer, base + 1 + i),
                                        sender=f"peer{i}", k=k, epsilon=epsilon,
                                        seed=base + 50 + i)
                 for i in range(peers)}
        fits: dict[str, PooledFit] = {"twins-only": twins_fit(schema, twins["peer0"], options)}
        checked = usable_peers(schema, twins)
        singles = (peer_fits(schema, checked, options)  # each peer's twins alone: τ²'s sites
                   if any(h != "off" for h in heterogeneities) else {})
        for w in weights:
            if w == "auto":
                lam = choose_weight(schema, local, twins, seed=base, options=options,
                                    selection=selection).chosen
                chosen.append(lam)
                name = "combined-auto"
            else:
                lam = float(w)
                name = "combined" if lam == 1.0 else f"combined@{lam:g}"
            for het in heterogeneities:  # the between-release term, as `analyze_party` adds it
                label = name if het == DEFAULT_HETEROGENEITY else f"{name}[{het}]"
                opts = replace(options, heterogeneity=het)
                fits[label] = add_between_release(
                    combined_fit(schema, local, checked, weight=lam, options=opts),
                    local_fit(schema, local, opts), singles)
        fits["local-only"] = local_fit(schema, local, options)
        if truth is None:
            truth = np.array([SMALL_TRUE_COEFFICIENTS[t] for t in fits["local-only"].terms])
        agree = (twins_agreement(schema, fits["local-only"], checked, options)
                 if "local" in on_disagreement else None)
        for scenario, fit in fits.items():
            rules = ("single",) if scenario == "local-only" else RULES
            for rule in rules:
                for interval in INTERVALS:
                    f = (repool(fit, interval=interval) if rule == "single"
                         else repool(fit, rule=rule, interval=interval))
                    variants = [(scenario, f, ())]
                    if agree is not None and scenario.startswith("combined"):
                        alone = repool(fits["local-only"], interval=interval)
                        variants.append((f"{scenario}+local",
                                         *local_where_disagreeing(f, alone, agree, "local")))
                    for name, g, swapped in variants:
                        key = f"{name}/{rule}/{interval}"
                        p = g.pooled
                        hits.setdefault(key, []).append((p.lower <= truth) & (truth <= p.upper))
                        widths.setdefault(key, []).append(p.upper - p.lower)
                        fallbacks.setdefault(key, []).append(int(p.fallback.sum()))
                        replaced.setdefault(key, []).append(len(swapped))
        if progress:
            progress(rep + 1)
    terms = list(fits["local-only"].terms)
    results = {}
    for key, h in hits.items():
        arr = np.array(h, float)
        cov = arr.mean(axis=0)
        results[key] = {
            "coverage_mean": float(cov.mean()),
            "coverage": dict(zip(terms, map(float, cov))),
            "mc_se": float(np.sqrt(cov.mean() * (1 - cov.mean()) / reps)),  # per term
            "median_width": dict(zip(terms, map(float, np.median(np.array(widths[key]),
                                                                   axis=0)))),
            "fallback_share": float(np.sum(fallbacks[key]) / arr.size),
            "replaced_share": float(np.sum(replaced[key]) / arr.size)}
    out = {"reps": reps, "k": k, "peers": peers, "n_local": n_local, "n_peer": n_peer,
           "epsilon": epsilon, "seed": seed, "weights": [str(w) for w in weights],
           "heterogeneities": list(heterogeneities), "on_disagreement": list(on_disagreement),
           "selection": selection, "truth": dict(zip(terms, map(float, truth))), "results": results}
    if chosen:
        lam = np.array(chosen)
        values, counts = np.unique(lam, return_counts=True)
        out["chosen_weight"] = {"mean": float(lam.mean()), "median": float(np.median(lam)),
                                "share_zero": float(np.mean(lam == 0)),
                                "counts": {f"{v:g}": int(c) for v, c in zip(values, counts)}}
    return out


def main(argv: Sequence[str] | None = None,
         twin_maker: TwinMaker | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--peers", type=int, default=4)
    ap.add_argument("--n-local", type=int, default=300)
    ap.add_argument("--n-peer", type=int, default=1000)
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--inflate", type=float, default=1.0,
                    help="posterior variance factor of the simulated twins (1: no DP)")
    ap.add_argument("--twin-maker", choices=twin_makers.MAKERS, default="posterior",
                    help="posterior: simulated, not DP (default); dp: train the DP "
                         "generator per party (slow)")
    ap.add_argument("--epochs", type=float, default=None,
                    help="DP training epochs (default: the generator's)")
    ap.add_argument("--cache", help="dp maker: keep trained posteriors in this directory and "
                                    "reuse them (the same seeds give the same parties)")
    ap.add_argument("--noise-aware", choices=("unset", "yes", "no"), default="unset",
                    help="dp maker, no: twins of the same posteriors without their DP noise")
    ap.add_argument("--heterogeneity", default=DEFAULT_HETEROGENEITY,
                    help="comma list of between-release terms for the combined fits "
                         f"(of {','.join(HETEROGENEITIES)}; default {DEFAULT_HETEROGENEITY})")
    ap.add_argument("--on-disagreement", default="keep",
                    help="keep, or keep,local: also each combined scenario with the terms "
                         "whose twins disagree reported local only (+local)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", default="1,auto",
                    help="comma list of twin weights: numbers in [0, 1] and/or auto (1,auto)")
    ap.add_argument("--selection", choices=SELECTIONS, default=DEFAULT_SELECTION,
                    help="how `auto` picks λ from the cross-validated curve (weighting.py)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    if twin_maker is None:
        twin_maker = twin_makers.make(args.twin_maker, inflate=args.inflate,
                                      epochs=args.epochs, cache_dir=args.cache,
                                      noise_aware={"unset": None, "yes": True,
                                                   "no": False}[args.noise_aware])
    t0 = time.perf_counter()
    out = run_study(twin_maker, reps=args.reps, k=args.k, peers=args.peers,
                    n_local=args.n_local, n_peer=args.n_peer, epsilon=args.epsilon,
                    seed=args.seed, weights=_weights(args.weights),
                    heterogeneities=_heterogeneities(args.heterogeneity),
                    on_disagreement=[x.strip() for x in args.on_disagreement.split(",")],
                    selection=args.selection,
                    progress=lambda r: print(f"\r{r}/{args.reps}", end="", file=sys.stderr))
    print(file=sys.stderr)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"coverage of nominal 95% intervals, {out['reps']} repetitions, K = {out['k']}, "
          f"{out['peers']} peers x {out['n_peer']} rows, local {out['n_local']} rows, "
          f"maker {args.twin_maker}, inflate {args.inflate} ({out['seconds']} s)")
    print(f"{'scenario/rule/interval':<34}{'mean':>7}{'±mc':>7}{'fallback':>9}{'local':>7}"
          "   per term")
    for key, r in out["results"].items():
        per = " ".join(f"{v:.3f}" for v in r["coverage"].values())
        print(f"{key:<34}{r['coverage_mean']:>7.3f}{r['mc_se']:>7.3f}"
              f"{r['fallback_share']:>9.3f}{r['replaced_share']:>7.3f}   {per}")
    print("terms:", " ".join(out["truth"]))
    if "chosen_weight" in out:
        c = out["chosen_weight"]
        print(f"adaptive λ: mean {c['mean']:.3f}, median {c['median']:g}, "
              f"λ = 0 in {c['share_zero']:.1%}; counts {c['counts']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)
    return out


def _heterogeneities(text: str) -> list[str]:
    names = [h.strip() for h in text.split(",")]
    unknown = [h for h in names if h not in HETEROGENEITIES]
    if unknown:
        raise SystemExit(f"unknown heterogeneity {unknown}; expected some of {HETEROGENEITIES}")
    return names


def _weights(text: str) -> list[str | float]:
    out: list[str | float] = []
    for item in text.split(","):
        item = item.strip()
        out.append("auto" if item == "auto" else float(item))
    return out


if __name__ == "__main__":
    main()
