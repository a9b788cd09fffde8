#!/usr/bin/env python3
"""How faithful are a party's twins to its own rows: before vs the new default vs MST.

Per cell (party size, epsilon, seed, method): train on a party of bundled randhie (real DP
training, `twinnode train`'s code path, a throwaway ledger), draw K twins, and measure them
against the party's rows with twinnode.lab.fidelity.release_fidelity: worst binary/level
rate error, continuous/count mean errors as a share of the public range, outcome mean
relative error, coefficient errors in real SEs, and release calibration (share of the real
coefficients inside the release's own pooled 95% interval, with its width against the real
interval's). Methods, side by side on the same rows:

- before: the generator as it was (public start, last iterate, twins share the DP noise);
- new:    the defaults (marginal anchoring, iterate averaging, noise-aware draws);
- mst:    smartnoise-synth's MST on columns cut on public bins (twinnode.lab.mst), run in
          the side venv `make mst-venv` builds (.venv-mst); skipped with a message without it.

Each cell is cached as JSON under --out/cells (rerunning skips what is there); the summary
(medians over seeds) goes to --out/summary.md and stdout.

    nice .venv/bin/python scripts/fidelity_study.py --rows 3000 300 --epsilon 0.5 1 4 \\
        --seeds 10 --twins 20
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")

METHODS = ("before", "new", "mst")
MEASURES = ("worst_rate_error", "worst_mean_error_range", "outcome_mean_rel_error",
            "worst_coef_error_se", "median_coef_error_se", "calibration", "width_vs_real",
            "train_seconds")


def party(rows: int, seed: int):  # -> (schema, frame)
    """A party of about `rows` rows: the demo's IID split of randhie (seeded), cut to size."""
    from twinnode.data import randhie, split_parties

    schema, frame = randhie()
    parts = split_parties(frame, parties=5, seed=seed).parties
    big = max(parts, key=len)
    return schema, big.iloc[:rows].reset_index(drop=True)


def run_cell(method: str, rows: int, epsilon: float, seed: int, k: int,
             average: float | None = None, overrides: dict | None = None) -> dict:
    from twinnode.generator.privacy import Ledger
    from twinnode.generator.release import draw_release, train_posterior
    from twinnode.generator.settings import GeneratorSettings, TrainPlan
    from twinnode.lab.fidelity import release_fidelity

    schema, real = party(rows, seed)
    if method == "mst":
        from twinnode.lab.mst import mst_twins  # runs smartnoise-synth in .venv-mst
        t0 = time.perf_counter()
        twins = mst_twins(schema, real, epsilon, k, seed)
        seconds = time.perf_counter() - t0
    else:
        plan = TrainPlan(epsilon=epsilon, marginal_share=0.0 if method == "before" else None)
        settings = (GeneratorSettings(average=0.0, noise_aware=False) if method == "before"
                    else GeneratorSettings(**(overrides or {})) if average is None
                    else GeneratorSettings(average=average, **(overrides or {})))
        with tempfile.TemporaryDirectory() as state:
            t0 = time.perf_counter()
            post = train_posterior(schema, real, plan, Ledger(state), settings, seed=seed + 1)
            seconds = time.perf_counter() - t0
            twins = list(draw_release(post, schema, k, "study", seed=seed + 1).twins)
    out = release_fidelity(schema, real, twins)
    out["median_coef_error_se"] = float(np.nanmedian(list(out["coef_error_se"].values())))
    out["width_vs_real"] = out.pop("width_se")
    out.update(method=method, rows=len(real), epsilon=epsilon, seed=seed, k=k,
               train_seconds=seconds)
    return out


def summarise(cells: list[dict]) -> str:
    lines = ["| rows | ε | method | seeds | " + " | ".join(MEASURES) + " |",
             "|---" * (len(MEASURES) + 4) + "|"]
    keys = sorted({(c["rows"], c["epsilon"], c["method"]) for c in cells},
                  key=lambda t: (t[0], t[1], t[2] not in METHODS,
                                 METHODS.index(t[2]) if t[2] in METHODS else t[2]))
    for rows, eps, method in keys:
        group = [c for c in cells if (c["rows"], c["epsilon"], c["method"]) == (rows, eps, method)]
        med = [float(np.nanmedian([c[m] for c in group])) for m in MEASURES]
        lines.append(f"| {rows} | {eps:g} | {method} | {len(group)} | "
                     + " | ".join(f"{v:.3g}" for v in med) + " |")
    return "\n".join(lines + ["", "Per term: |coefficient error| in real SEs, median over seeds "
                                   "(nan: not estimable in that release)", ""]
                     + per_term(cells, keys))


def per_term(cells: list[dict], keys: list[tuple]) -> list[str]:
    terms = cells[0]["terms"]
    lines = ["| rows | ε | method | " + " | ".join(terms) + " |", "|---" * (len(terms) + 3) + "|"]
    for rows, eps, method in keys:
        group = [c for c in cells if (c["rows"], c["epsilon"], c["method"]) == (rows, eps, method)]
        med = [float(np.nanmedian([c["coef_error_se"][t] for c in group])) for t in terms]
        lines.append(f"| {rows} | {eps:g} | {method} | " + " | ".join(f"{v:.2g}" for v in med)
                     + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[3000, 300])
    ap.add_argument("--epsilon", type=float, nargs="+", default=[0.5, 1.0, 4.0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--twins", type=int, default=20)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--out", type=Path, default=Path("docs/results/fidelity"))
    ap.add_argument("--new-average", type=float, default=None,
                    help="the new method with another averaged share of the steps (its cells "
                         "are labelled new-aA)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="the new method with a GeneratorSettings field changed (repeatable; "
                         "its cells are labelled new-KEY=VALUE)")
    ap.add_argument("--shard", default="0/1", metavar="I/N",
                    help="run only the seeds s with s %% N == I (several processes side by side)")
    args = ap.parse_args(argv)
    shard, shards = (int(x) for x in args.shard.split("/"))
    from studylib import parse_setting

    overrides = dict(parse_setting(text) for text in args.set)
    methods = list(args.methods)
    if "mst" in methods:
        from twinnode.lab import mst

        if not mst.available():
            print(f"mst: no side venv with smartnoise-synth at {mst.side_python()} (make "
                  f"mst-venv, or set {mst.PYTHON_ENV}); the mst column is skipped")
            methods.remove("mst")
    cells_dir = args.out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    cells = []
    for seed in range(shard, args.seeds, shards):
        for rows in args.rows:
            for eps in args.epsilon:
                for method in methods:
                    label = method
                    if method == "new" and args.new_average is not None:
                        label += f"-a{args.new_average:g}"
                    if method == "new" and args.set:
                        label += "-" + ",".join(args.set)
                    path = cells_dir / f"{label}-{rows}-{eps:g}-{seed}.json"
                    if path.exists():
                        cells.append(json.loads(path.read_text()))
                        continue
                    cell = run_cell(method, rows, eps, seed, args.twins, args.new_average,
                                    overrides if method == "new" else None)
                    cell["method"] = label
                    path.write_text(json.dumps(cell, indent=1))
                    cells.append(cell)
                    print(f"{method:6s} rows={rows} eps={eps:g} seed={seed}: "
                          + ", ".join(f"{m}={cell[m]:.3g}" for m in MEASURES), flush=True)
    # the summary shows every cached cell of these sizes and epsilons, whichever run made it
    cells = [c for c in (json.loads(f.read_text()) for f in sorted(cells_dir.glob("*.json")))
             if c["rows"] in args.rows and c["epsilon"] in args.epsilon and c["seed"] < args.seeds]
    table = summarise(cells)
    (args.out / "summary.md").write_text(
        "Medians over seeds. Made by:\n\n    " + " ".join(["scripts/fidelity_study.py",
                                                           *(argv or sys.argv[1:])])
        + "\n\n" + table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
