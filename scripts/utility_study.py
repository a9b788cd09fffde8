#!/usr/bin/env python3
"""Utility under DP: does a party's combined analysis beat its own, at every party size?

The protocol of issue 7 on randhie, in-process (no sockets) through the product's generator
and analysis code. Per seed: 20% of the rows are the test set; 4 peers get 3,000 rows each;
party 0 gets n0 rows of the rest, IID or skewed (idp = 1 at a tenth of its share). Each peer
trains the DP generator once per (seed, epsilon, generator) and publishes K twins; every n0
and split reuses them. Party 0 is then scored on the test set (mean Poisson log-likelihood
per record, Monte Carlo over w ~ N(q̄, T)) for:

  local     its own rows only
  paper     local rows + every peer's twins, plain concatenation (λ = 1), Raghunathan-Reiter
  adaptive  the product's default analysis (`combine.analyze_party`: λ by cross-validation
            on the local rows, the mixed pooling rule)
  oracle    all five parties' real rows pooled (the upper reference; no real party has it)

and "gap closed" = (method - local) / (oracle - local). Generators: "before" is the
prototype the issue measured (d3p's DPSVI, fixed-size batches with the substitute relation,
q = 0.02, lr 1e-3, the outcome head's features centred at the midpoint of their bounds);
"after" is the product's default generator. Peers train two at a time, each pinned to a core.

    .venv/bin/python scripts/utility_study.py                       # the defaults (~1 hour)
    .venv/bin/python scripts/utility_study.py --seeds 1 --n0 200 --epsilons 1 --generators after
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

PEERS, PEER_ROWS, TEST_SHARE = 4, 3000, 0.2
TOLERANCE = 0.002  # "combined >= local" allows this many nats per row


OVERRIDES: dict[str, Any] = {}  # --set key=value for the "after" generator (tuning runs)


def generator_config(name: str) -> dict[str, Any]:
    """TrainPlan and GeneratorSettings overrides of a named generator."""
    if name == "after" and OVERRIDES:
        from twinnode.generator.settings import TrainPlan

        plan_keys = set(TrainPlan.__dataclass_fields__)
        return {"plan": {k: v for k, v in OVERRIDES.items() if k in plan_keys},
                "settings": {k: v for k, v in OVERRIDES.items() if k not in plan_keys}}
    if name == "before":
        return {"plan": {"batching": "fixed", "q": 0.02, "epochs": 200.0},
                "settings": {"variant": "dpsvi", "learning_rate": 1e-3,
                             "head_origin": "midpoint"}}
    if name == "after":
        return {"plan": {}, "settings": {}}
    raise ValueError(f"unknown generator {name!r}")


def split(frame: pd.DataFrame, seed: int, n0: int, skewed: bool) -> tuple[pd.DataFrame, ...]:
    """(test, party 0, peer 1..4): peers do not depend on n0 or the split."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    n_test = int(round(TEST_SHARE * len(frame)))
    test, rest = order[:n_test], order[n_test:]
    peers = [rest[i * PEER_ROWS:(i + 1) * PEER_ROWS] for i in range(PEERS)]
    pool = rest[PEERS * PEER_ROWS:]
    if skewed:
        group = frame["idp"].to_numpy()[pool] == 1
        n_group = int(round(n0 * group.mean() * 0.1))
        own = np.concatenate([pool[group][:n_group], pool[~group][:n0 - n_group]])
    else:
        own = pool[:n0]
    take = lambda idx: frame.iloc[np.sort(idx)].reset_index(drop=True)  # noqa: E731
    return (take(test), take(own), *[take(p) for p in peers])


def train_peer(task: tuple) -> dict[str, Any]:
    """Train one peer's generator in this (pinned) worker; its twins as arrays."""
    seed, epsilon, gen, peer, k, epochs, overrides = task
    OVERRIDES.update(overrides)
    import tempfile

    from twinnode.data import randhie
    from twinnode.generator.privacy import Ledger
    from twinnode.generator.release import draw_release, train_posterior
    from twinnode.generator.settings import GeneratorSettings, TrainPlan

    schema, frame = randhie()
    rows = split(frame, seed, 0, False)[2 + peer]
    cfg = generator_config(gen)
    plan = TrainPlan(epsilon=epsilon, **cfg["plan"])
    if epochs is not None:
        plan = replace(plan, epochs=epochs)
    settings = GeneratorSettings(**cfg["settings"])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as state:
        post = train_posterior(schema, rows, plan, Ledger(state), settings, seed=None)
    release = draw_release(post, schema, k, f"peer{peer}", seed=seed * 100 + peer)
    return {"key": (seed, epsilon, gen, peer), "seconds": time.perf_counter() - t0,
            "sigma": post.calibration.sigma, "twins": [dict(t.arrays) for t in release.twins],
            "provenance": [t.provenance for t in release.twins]}


def _pin(cores: list[int], counter: Any) -> None:
    with counter.get_lock():
        core = cores[counter.value % len(cores)]
        counter.value += 1
    os.sched_setaffinity(0, {core})


def score_cell(schema, test, own, peers_twins, oracle_rows, k: int) -> dict[str, float]:
    """local, paper, adaptive and oracle test log-likelihoods for one cell."""
    from twinnode.analysis import AnalysisOptions, combined_fit, evaluate, local_fit, oracle_fit
    from twinnode.combine import analyze_party

    local = evaluate(local_fit(schema, own), schema, test).mean
    paper = evaluate(combined_fit(schema, own, peers_twins, weight=1.0,
                                  options=AnalysisOptions(rule="reiter")), schema, test).mean
    party = analyze_party(schema, own, peers_twins, test_frame=test, policy="off")
    oracle = evaluate(oracle_fit(schema, oracle_rows), schema, test).mean
    return {"local": float(local), "paper": float(paper),
            "adaptive": float(party.evaluation["combined"].mean),
            "weight": float(party.weight.chosen), "oracle": float(oracle)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n0", default="200,1000,4000")
    ap.add_argument("--splits", default="iid,skewed")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epsilons", default="1,4")
    ap.add_argument("--generators", default="before,after")
    ap.add_argument("--twins", type=int, default=20)
    ap.add_argument("--epochs", type=float, default=None, help="override every generator's")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a TrainPlan/GeneratorSettings field of 'after' (tuning)")
    ap.add_argument("--out", type=Path, default=Path("docs/results/utility"))
    args = ap.parse_args(argv)

    from twinnode.data import randhie
    from twinnode.twins import Twin

    for item in args.set:
        key, _, value = item.partition("=")
        OVERRIDES[key] = json.loads(value) if value[:1] in "0123456789-[{" else value
    n0s = [int(x) for x in args.n0.split(",")]
    splits = args.splits.split(",")
    epsilons = [float(x) for x in args.epsilons.split(",")]
    gens = args.generators.split(",")
    seeds = list(range(args.seeds))
    schema, frame = randhie()
    t0 = time.perf_counter()

    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    counter = ctx.Value("i", 0)
    cores = sorted(os.sched_getaffinity(0))
    tasks = [(s, e, g, p, args.twins, args.epochs, OVERRIDES) for s in seeds for e in epsilons
             for g in gens for p in range(PEERS)]
    trained: dict[tuple, dict[str, Any]] = {}
    with ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_pin,
                             initargs=(cores, counter)) as pool:
        for i, res in enumerate(pool.map(train_peer, tasks), 1):
            trained[res["key"]] = res
            print(f"[{time.perf_counter() - t0:7.0f}s] trained {i}/{len(tasks)}: seed "
                  f"{res['key'][0]} eps {res['key'][1]:g} {res['key'][2]} peer{res['key'][3]} "
                  f"(sigma {res['sigma']:.2f}, {res['seconds']:.0f}s)", flush=True)

    rows = []
    for s in seeds:
        for e in epsilons:
            for g in gens:
                peers = {f"peer{p}": [Twin(pr, arr) for pr, arr in
                                      zip(trained[(s, e, g, p)]["provenance"],
                                          trained[(s, e, g, p)]["twins"])]
                         for p in range(PEERS)}
                for sp in splits:
                    for n0 in n0s:
                        test, own, *peer_rows = split(frame, s, n0, sp == "skewed")
                        cell = score_cell(schema, test, own, peers, [own, *peer_rows],
                                          args.twins)
                        gap = cell["oracle"] - cell["local"]
                        row = {"seed": s, "epsilon": e, "generator": g, "split": sp, "n0": n0,
                               **cell, **{f"closed_{m}": (cell[m] - cell["local"]) / gap
                                          for m in ("paper", "adaptive")}}
                        rows.append(row)
                        print(f"[{time.perf_counter() - t0:7.0f}s] {g:6s} eps {e:g} {sp:6s} "
                              f"n0 {n0:5d} seed {s}: local {cell['local']:.4f} paper "
                              f"{cell['paper']:.4f} adaptive {cell['adaptive']:.4f} "
                              f"(λ {cell['weight']:.2f}) oracle {cell['oracle']:.4f}",
                              flush=True)
    report(rows, args, time.perf_counter() - t0)
    return 0


def report(rows: list[dict[str, Any]], args: argparse.Namespace, seconds: float) -> None:
    """Medians of the gap closed, and the share of cells where combined >= local."""
    df = pd.DataFrame(rows)
    df["paper_ok"] = df["paper"] >= df["local"] - TOLERANCE
    df["adaptive_ok"] = df["adaptive"] >= df["local"] - TOLERANCE
    keys = ["generator", "epsilon", "n0", "split"]
    table = df.groupby(keys).agg(
        cells=("seed", "count"), paper_closed=("closed_paper", "median"),
        adaptive_closed=("closed_adaptive", "median"), weight=("weight", "median"),
        paper_ok=("paper_ok", "mean"), adaptive_ok=("adaptive_ok", "mean")).reset_index()
    summary = df.groupby(["generator", "epsilon"]).agg(
        paper_ok=("paper_ok", "mean"), adaptive_ok=("adaptive_ok", "mean")).reset_index()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cells.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [f"# Utility study ({len(df)} cells, {seconds / 60:.0f} min)", "",
             "Command: `.venv/bin/python scripts/utility_study.py "
             + " ".join(a for a in sys.argv[1:]) + "`", "",
             "Median share of the local -> oracle gap closed; ok = share of cells where the "
             f"method's test log-likelihood is >= local - {TOLERANCE}.", "",
             markdown(table), "", markdown(summary), ""]
    (args.out / "README.md").write_text("\n".join(lines))
    print("\n".join(lines))


def markdown(df: pd.DataFrame) -> str:
    """A DataFrame as a GitHub table (floats to 2 decimals)."""
    cell = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    head = "| " + " | ".join(df.columns) + " |"
    rule = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


if __name__ == "__main__":
    sys.exit(main())
