"""Scale study (issue 16): cost against rows N, and convergence against the number of nodes.

Two parts, each writing JSON (with the command that made it) to docs/results/scale/:

``rows``: for each N, a simulated population (`simtwins.simulate_small`, the coverage
study's known Poisson model) of N rows per party, and the party's costs at the product's
defaults (ε = 1, TrainPlan's 400 epochs at q = 0.1, i.e. 4,000 DP steps of batches of 0.1 N):

- DP training (`generator.release.train_posterior`): seconds to set up (accountant
  calibration, noisy marginals), to compile and run the first chunk, and per step after it.
  With ``--steps S`` for an N (``--steps 300000=1000``) only S steps are run, and the
  default's 4,000 are extrapolated from the measured steady rate, said so in the output;
- drawing the K twins (`draw_release`);
- the combined analysis at K (`analysis.fit.combined_fit`: the party's N rows plus twin k
  of ``--peers`` peers, each N rows; the peers' twins are drawn from the same trained
  posterior with other seeds, as the fit's cost does not depend on whose they are).

Run it pinned to one core and niced (unpinned JAX on this 2-core machine is 3-5x slower):

    taskset -c 1 nice -n 10 .venv/bin/python scripts/scale_study.py rows \\
        --n 3000,30000,300000 --steps 300000=1000 --out docs/results/scale/rows.json

``fits``: the combined analysis alone against N (K = 100; 1 and 4 peers), with simulated
twins (`simtwins.posterior_twins`, not DP: the fit's cost does not depend on the maker),
pinned likewise:

    taskset -c 1 nice -n 10 .venv/bin/python scripts/scale_study.py fits \
        --n 3000,30000,300000 --peers 1,4 --out docs/results/scale/fits.json

``nodes``: `scripts/local_cluster.py --no-analysis --record` once per node count (real
`twinnode run` processes on 127.0.0.1, simulated twins, K each), one after another, and a
summary of convergence time, catch-up timeouts, peak RSS and CPU per node. Each run's record
is nodes-M.json beside --out (nodes-M-hbH.json at another heartbeat); a failed run keeps its
work directory (node logs) and names it in the summary:

    nice -n 10 .venv/bin/python scripts/scale_study.py nodes --nodes 5,10,20,50 --k 100 \\
        --heartbeat 1 --out docs/results/scale/nodes.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")

HERE = Path(__file__).resolve().parent
DEFAULT_STEPS = 4000  # TrainPlan(): 400 epochs / q 0.1


def train_cost(schema: Any, frame: Any, steps: int | None, seed: int) -> tuple[Any, dict]:
    """Train at the defaults (or `steps` of them) and time the phases from progress ticks."""
    from twinnode.generator.privacy import Ledger
    from twinnode.generator.release import train_posterior
    from twinnode.generator.settings import TrainPlan

    plan = TrainPlan(epsilon=1.0)
    if steps is not None:
        plan = TrainPlan(epsilon=1.0, epochs=steps * plan.q)
    ends: list[tuple[int, float]] = []

    def progress(done: int, total: int, elbo: float) -> None:
        ends.append((done, time.perf_counter()))

    with tempfile.TemporaryDirectory() as state:
        t0 = time.perf_counter()
        post = train_posterior(schema, frame, plan, Ledger(state), seed=seed, progress=progress)
        total = time.perf_counter() - t0
    chunk = post.settings.chunk
    marks = [(d, t) for d, t in ends if d % chunk == 0 or d == plan.steps()]
    # keep the last tick per step count (a chunk end repeats its count)
    by_step = dict(marks)
    order = sorted(by_step)
    setup = by_step[0] - t0
    first = by_step[order[1]] - by_step[0] if len(order) > 1 else float("nan")
    later = [(order[i] - order[i - 1], by_step[order[i]] - by_step[order[i - 1]])
             for i in range(2, len(order))]
    steady = sum(t for _, t in later) / sum(s for s, _ in later) if later else float("nan")
    run = plan.steps()
    out = {"steps_run": run, "batch_expected": round(plan.q * len(frame)),
           "seconds_total": round(total, 2), "seconds_setup": round(setup, 2),
           "seconds_first_chunk": round(first, 2), "ms_per_step_after": round(1e3 * steady, 3),
           "sigma": post.calibration.sigma}
    if run != DEFAULT_STEPS:
        out["extrapolated_default_seconds"] = round(
            setup + first + steady * (DEFAULT_STEPS - min(run, chunk)), 1)
        out["note"] = (f"{run} of the default {DEFAULT_STEPS} steps run; the default's time "
                       "is extrapolated: setup + first chunk + the steady per-step time for "
                       "the rest")
    return post, out


def rows_point(n: int, steps: int | None, k: int, peers: int, seed: int) -> dict:
    """One N: training, drawing and analysis costs."""
    import numpy as np

    from twinnode.analysis.fit import AnalysisOptions, combined_fit
    from twinnode.generator.release import draw_release
    from twinnode.lab.simtwins import simulate_small, small_schema

    schema = small_schema()
    frame = simulate_small(schema, n, seed)
    post, train = train_cost(schema, frame, steps, seed)
    t = time.perf_counter()
    twins = {f"peer{i}": list(draw_release(post, schema, k, f"peer{i}", seed=seed + i).twins)
             for i in range(peers)}
    draw = (time.perf_counter() - t) / peers
    local = simulate_small(schema, n, seed + 1000)
    options = AnalysisOptions()
    times = []
    for _ in range(2):
        t = time.perf_counter()
        fit = combined_fit(schema, local, twins, options=options)
        times.append(time.perf_counter() - t)
    return {"n": n, "train": train, "draw_k_seconds": round(draw, 2),
            "analysis": {"k": k, "peers": peers, "rows_per_fit": n * (1 + peers),
                         "terms": len(fit.terms), "seconds": [round(x, 3) for x in times],
                         "ms_per_fit": round(1e3 * min(times) / k, 2),
                         "failed": fit.failed, "estimate": dict(zip(
                             fit.terms, np.round(fit.estimate, 4).tolist()))}}


def cmd_rows(args: argparse.Namespace) -> dict:
    steps = dict((int(a), int(b)) for a, b in (s.split("=") for s in args.steps if s))
    points = []
    for n in args.n:
        t = time.perf_counter()
        point = rows_point(n, steps.get(n), args.k, args.peers, args.seed)
        point["wall_seconds"] = round(time.perf_counter() - t, 1)
        print(json.dumps(point), flush=True)
        points.append(point)
        _write(args, {"points": points})
    return {"points": points}


def cmd_fits(args: argparse.Namespace) -> dict:
    """The combined analysis alone against N, with simulated twins (`simtwins`, not DP:
    the fit's cost does not depend on how the twins were made), for each peer count."""
    from twinnode.analysis.fit import AnalysisOptions, combined_fit
    from twinnode.lab.simtwins import posterior_twins, simulate_small, small_schema

    schema, points = small_schema(), []
    for n in args.n:
        for peers in args.peers:
            if n * (1 + peers) > args.max_rows:
                continue
            local = simulate_small(schema, n, args.seed)
            twins = {f"peer{i}": posterior_twins(schema, simulate_small(schema, n, 1 + i),
                                                 sender=f"peer{i}", k=args.k, seed=i)
                     for i in range(peers)}
            times, cpu = [], []
            for _ in range(args.repeat):
                t, c = time.perf_counter(), time.process_time()
                fit = combined_fit(schema, local, twins)
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            point = {"n": n, "peers": peers, "k": args.k, "rows_per_fit": n * (1 + peers),
                     "terms": len(fit.terms), "seconds": [round(x, 3) for x in times],
                     "cpu_seconds": [round(x, 3) for x in cpu],
                     "ms_per_fit": round(1e3 * min(times) / args.k, 2),
                     "us_per_row_and_fit": round(1e6 * min(times) / args.k / (n * (1 + peers)),
                                                 3), "failed": fit.failed}
            print(json.dumps(point), flush=True)
            points.append(point)
            del twins
            _write(args, {"points": points})
    return {"points": points}


def cmd_nodes(args: argparse.Namespace) -> dict:
    runs = []
    for m in args.nodes:
        tag = "" if args.heartbeat == 1.0 else f"-hb{args.heartbeat:g}"
        record = Path(args.out).with_name(f"nodes-{m}{tag}.json")
        work = tempfile.mkdtemp(prefix=f"tnscale{m}-", dir="/tmp")
        cmd = [sys.executable, str(HERE / "local_cluster.py"), "--parties", str(m), "--k",
               str(args.k), "--no-analysis", "--record", str(record), "--workdir", work,
               "--heartbeat", str(args.heartbeat), "--timeout", str(args.timeout)]
        print(" ".join(cmd), flush=True)
        t = time.perf_counter()
        done = subprocess.run(cmd, check=False)
        if done.returncode == 0:  # M x M x K twins on disk; kept (with the logs) on failure
            shutil.rmtree(work, ignore_errors=True)
        row: dict[str, Any] = {"nodes": m, "k": args.k, "exit": done.returncode,
                               "wall_seconds": round(time.perf_counter() - t, 1),
                               "record": record.name, "workdir": None if done.returncode == 0
                               else work}
        if done.returncode == 0 and record.exists():
            rec = json.loads(record.read_text())
            per = rec["nodes"].values()
            row |= {"converged_s": rec["converged_s"], "up_s": rec["up_s"],
                    "catchup_timeouts": rec["catchup_timeouts"],
                    "peak_rss_mb_max": max(x["peak_rss_mb"] for x in per),
                    "peak_rss_mb_mean": round(sum(x["peak_rss_mb"] for x in per) / m, 1),
                    "cpu_s_all": round(sum(x["cpu_s"] for x in per), 1),
                    "twins_per_node": m * args.k}
        print(json.dumps(row), flush=True)
        runs.append(row)
        _write(args, {"runs": runs})
    return {"runs": runs}


def _write(args: argparse.Namespace, body: dict) -> None:
    head = {"command": "python " + " ".join(sys.argv), "commit": _commit(),
            "main_commit": _commit("main"),
            "cpus": sorted(os.sched_getaffinity(0)), "started": args.started}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(head | body, indent=1) + "\n")


def _commit(base: str | None = None) -> str:
    """HEAD's commit, or with `base` the commit HEAD shares with that branch."""
    cmd = ["rev-parse", "HEAD"] if base is None else ["merge-base", "HEAD", base]
    try:
        return subprocess.run(["git", "-C", str(HERE), *cmd], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="part", required=True)
    rows = sub.add_parser("rows", help="training, drawing and analysis cost against N")
    rows.add_argument("--n", type=_ints, default=[3000, 30000, 300000])
    rows.add_argument("--steps", type=lambda s: s.split(","), default=[],
                      help="N=S: run only S training steps at that N and extrapolate")
    rows.add_argument("--k", type=int, default=100)
    rows.add_argument("--peers", type=int, default=1)
    rows.add_argument("--seed", type=int, default=0)
    rows.add_argument("--out", default="docs/results/scale/rows.json")
    fits = sub.add_parser("fits", help="the combined analysis alone against N")
    fits.add_argument("--n", type=_ints, default=[3000, 30000, 300000])
    fits.add_argument("--peers", type=_ints, default=[1, 4])
    fits.add_argument("--k", type=int, default=100)
    fits.add_argument("--repeat", type=int, default=2)
    fits.add_argument("--max-rows", type=int, default=1_500_000,
                      help="skip points with more rows per fit (memory: K x rows twins)")
    fits.add_argument("--seed", type=int, default=0)
    fits.add_argument("--out", default="docs/results/scale/fits.json")
    nodes = sub.add_parser("nodes", help="local clusters of M nodes x K twins")
    nodes.add_argument("--nodes", type=_ints, default=[5, 10, 20])
    nodes.add_argument("--k", type=int, default=100)
    nodes.add_argument("--heartbeat", type=float, default=1.0,
                       help="[network] heartbeat_interval (the node's default 1 s)")
    nodes.add_argument("--timeout", type=float, default=1500.0)
    nodes.add_argument("--out", default="docs/results/scale/nodes.json")
    args = ap.parse_args(argv)
    args.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    {"rows": cmd_rows, "fits": cmd_fits, "nodes": cmd_nodes}[args.part](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
