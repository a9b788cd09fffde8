#!/usr/bin/env python3
"""The paper's experiments on randhie, in-process, through the product's generator and analysis.

Prediger et al. (2023) studied a party of interest that combines its own data with its peers'
DP twins. Per seed, 20% of randhie is the test set, 4 peers hold 3,230 rows each (an equal
fifth of the rest), and the party of interest holds a fraction of such a share. Peers train
the DP generator once per (seed, epsilon), two at a time on pinned cores. Four experiments:

  fraction  local data fraction 0.1 ... 1 at epsilon = 1: local, combined (the product's
            adaptive weight) and plain concatenation (λ = 1), against the oracle  (Fig. 1)
  join      the party (fraction 0.1) adds peers one at a time, in random orders   (Fig. 2)
  epsilon   epsilon in {0.5, 1, 2, 4}, fraction 0.1
  skewed    the party under-represents idp = 1 (a tenth of its share) and is scored on the
            idp = 1 rows of the test set, where its own data is thinnest

What it cuts from the paper's protocol, to finish within an hour on 2 cores: K = 20 twins
(paper: 100), the generator's default epochs (paper: 4,000), 3 seeds, 4 peers, 3 random
join orders per seed. Results go to docs/results/experiment/ (README.md, results.json,
figures); the project README shows them.

    .venv/bin/python scripts/experiment.py                 # defaults (~1 hour)
    .venv/bin/python scripts/experiment.py --seeds 1 --epsilons 1 --orders 1   # a quick look
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import studylib

PEERS = 4
FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def scores(schema, test, own, peers, weight) -> dict[str, Any]:
    """Test log-likelihood (MC mean) of local only and of the combined fit at `weight`."""
    from twinnode.analysis.fit import AnalysisOptions, combined_fit, evaluate, local_fit
    from twinnode.analysis.party import analyze_party

    local = evaluate(local_fit(schema, own), schema, test)
    if weight == "auto":
        party = analyze_party(schema, own, peers, test_frame=test, policy="off")
        comb, lam = party.evaluation["combined"], party.weight.chosen
    else:
        comb = evaluate(combined_fit(schema, own, peers, weight=weight,
                                     options=AnalysisOptions(rule="reiter")), schema, test)
        lam = weight
    return {"local": float(local.mean), "combined": float(comb.mean), "weight": float(lam)}


def oracle_ll(schema, test, frames) -> float:
    from twinnode.analysis.fit import evaluate, oracle_fit

    return float(evaluate(oracle_fit(schema, frames), schema, test).mean)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epsilons", default="0.5,1,2,4")
    ap.add_argument("--orders", type=int, default=3, help="random join orders per seed")
    ap.add_argument("--twins", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("docs/results/experiment"))
    ap.add_argument("--replot", action="store_true",
                    help="only redraw the figures from OUT/results.json")
    args = ap.parse_args(argv)
    if args.replot:
        figures(pd.DataFrame(json.loads((args.out / "results.json").read_text())), args.out)
        return 0

    from twinnode.data import randhie

    schema, frame = randhie()
    epsilons = [float(x) for x in args.epsilons.split(",")]
    seeds = list(range(args.seeds))
    share = int((len(frame) - round(studylib.TEST_SHARE * len(frame))) // (PEERS + 1))
    t0 = time.perf_counter()
    say = lambda line: print(line, flush=True)  # noqa: E731
    tasks = [studylib.PeerTask(seed=s, epsilon=e, peer=p, rows=share, k=args.twins)
             for s in seeds for e in epsilons for p in range(PEERS)]
    trained = studylib.train_all(tasks, PEERS, args.workers, say)
    rows: list[dict[str, Any]] = []

    def record(**row: Any) -> None:
        rows.append(row)
        say(f"[{time.perf_counter() - t0:6.0f}s] " + " ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            if not isinstance(v, list)))

    base_eps = 1.0 if 1.0 in epsilons else epsilons[0]
    for s in seeds:
        peers = studylib.peers_of(trained, s, base_eps, "after", range(PEERS))
        for f in FRACTIONS:
            test, own, peer_rows = studylib.split(frame, s, PEERS, share, int(f * share))
            oracle = oracle_ll(schema, test, [own, *peer_rows])
            for weight in ("auto", 1.0):
                record(experiment="fraction", seed=s, epsilon=base_eps, fraction=f,
                       rows=len(own), method="adaptive" if weight == "auto" else "paper",
                       oracle=oracle, **scores(schema, test, own, peers, weight))
        test, own, peer_rows = studylib.split(frame, s, PEERS, share, int(0.1 * share))
        oracle = oracle_ll(schema, test, [own, *peer_rows])
        rng = np.random.default_rng(1000 + s)
        for o in range(args.orders):
            order = [f"peer{p}" for p in rng.permutation(PEERS)]
            curve = [scores(schema, test, own, {}, 1.0)["local"]]
            for m in range(1, PEERS + 1):
                curve.append(scores(schema, test, own, {n: peers[n] for n in order[:m]},
                                    1.0)["combined"])
            record(experiment="join", seed=s, epsilon=base_eps, order=o, peers=order,
                   curve=curve, oracle=oracle)
        for e in epsilons:
            eps_peers = studylib.peers_of(trained, s, e, "after", range(PEERS))
            record(experiment="epsilon", seed=s, epsilon=e, fraction=0.1, oracle=oracle,
                   **scores(schema, test, own, eps_peers, "auto"))
        test, own, peer_rows = studylib.split(frame, s, PEERS, share, int(0.1 * share),
                                              skewed=True)
        group = test[test["idp"] == 1].reset_index(drop=True)
        record(experiment="skewed", seed=s, epsilon=base_eps, rows=len(own),
               own_group_rows=int((own["idp"] == 1).sum()), test_rows=len(group),
               oracle=oracle_ll(schema, group, [own, *peer_rows]),
               **scores(schema, group, own, peers, "auto"))
    write(rows, args, time.perf_counter() - t0)
    return 0


def write(rows: list[dict[str, Any]], args: argparse.Namespace, seconds: float) -> None:
    """results.json, README.md (tables) and four figures in `args.out`."""
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    df = pd.DataFrame(rows)
    for col in ("combined", "local", "oracle"):
        if col in df:
            df[col] = df[col].astype(float)
    df["gap_closed"] = (df["combined"] - df["local"]) / (df["oracle"] - df["local"])
    frac = (df[df.experiment == "fraction"].groupby(["fraction", "method"])
            .agg(rows=("rows", "median"), local=("local", "mean"),
                 combined=("combined", "mean"), oracle=("oracle", "mean"),
                 gap_closed=("gap_closed", "median"), weight=("weight", "median"))
            .reset_index())
    eps = (df[df.experiment == "epsilon"].groupby("epsilon")
           .agg(local=("local", "mean"), combined=("combined", "mean"),
                oracle=("oracle", "mean"), gap_closed=("gap_closed", "median"),
                weight=("weight", "median")).reset_index())
    skew = (df[df.experiment == "skewed"]
            .agg({"local": "mean", "combined": "mean", "oracle": "mean", "gap_closed": "median",
                  "weight": "median"}).to_frame().T)
    lines = [f"# Experiments on randhie ({seconds / 60:.0f} min on 2 cores)", "",
             "Command: `" + " ".join([".venv/bin/python scripts/experiment.py", *sys.argv[1:]])
             + "`" + ("" if len(sys.argv) > 1 else " (the defaults)"),
             "", f"Seeds: {args.seeds}; K = {args.twins}; mean test log-likelihood per record "
             "(Monte Carlo over the pooled posterior); gap closed = (combined - local) / "
             "(oracle - local), median over seeds.", "",
             "## Local data fraction (Fig. 1)", "", studylib.markdown(frac), "",
             "## Privacy level (fraction 0.1, adaptive weight)", "", studylib.markdown(eps), "",
             "## Skewed party, scored on the group it under-represents (idp = 1)", "",
             studylib.markdown(skew), "", "Figures: fig_fraction.png, fig_join.png, "
             "fig_epsilon.png.", ""]
    (out / "README.md").write_text("\n".join(lines))
    figures(df, out)
    print("\n".join(lines))


def figures(df: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fr = df[df.experiment == "fraction"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, style in (("adaptive", "-o"), ("paper", "--s")):
        g = fr[fr.method == method].groupby("fraction")
        ax.plot(g["combined"].mean().index, g["combined"].mean(), style,
                label=f"combined ({'adaptive λ' if method == 'adaptive' else 'λ = 1'})")
    g = fr[fr.method == "adaptive"].groupby("fraction")
    ax.plot(g["local"].mean().index, g["local"].mean(), ":^", color="grey", label="local only")
    ax.plot(g["oracle"].mean().index, g["oracle"].mean(), color="#d62728", lw=1,
            label="pooled real data")
    ax.set_xlabel("local data fraction of the party of interest")
    ax.set_ylabel("test log-likelihood per record")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "fig_fraction.png", dpi=120)
    plt.close(fig)

    jn = df[df.experiment == "join"]
    fig, ax = plt.subplots(figsize=(6, 4))
    # each seed has its own test set, so log-likelihoods are compared within a seed: the
    # share of that seed's local -> oracle gap closed
    curves = np.array(jn["curve"].tolist(), dtype=float)
    start = curves[:, :1]
    closed = (curves - start) / (jn["oracle"].to_numpy(float)[:, None] - start)
    for c in closed:
        ax.plot(range(len(c)), c, color="#1f77b4", alpha=0.3)
    ax.plot(range(closed.shape[1]), np.median(closed, 0), "-o", color="#1f77b4",
            label="median over seeds and orders")
    ax.axhline(1.0, color="#d62728", lw=1, label="pooled real data")
    ax.axhline(0.0, color="grey", lw=1, ls=":", label="local only")
    ax.set_xlabel("peers whose twins are added (random orders, λ = 1)")
    ax.set_ylabel("share of the local -> oracle gap closed")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "fig_join.png", dpi=120)
    plt.close(fig)

    ep = df[df.experiment == "epsilon"].groupby("epsilon")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ep["combined"].mean().index, ep["combined"].mean(), "-o", label="combined")
    ax.plot(ep["local"].mean().index, ep["local"].mean(), ":^", color="grey", label="local only")
    ax.plot(ep["oracle"].mean().index, ep["oracle"].mean(), color="#d62728", lw=1,
            label="pooled real data")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("epsilon of every peer's twins")
    ax.set_ylabel("test log-likelihood per record")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "fig_epsilon.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
