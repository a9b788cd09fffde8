"""`twinnode demo`: the paper's experiment on real local nodes (what `make demo` runs)."""
from __future__ import annotations

import argparse
from pathlib import Path

from twinnode.cli.example import parse_fractions
from twinnode.data import SPLITS


def register(sub: argparse._SubParsersAction) -> None:
    from twinnode.lab.demo import DemoSettings

    d = DemoSettings()
    p = sub.add_parser(
        "demo", help="run M real nodes on 127.0.0.1 over the bundled data and report",
        description="Split the bundled randhie data into a test set and parties of different "
                    "sizes, start one real node per party on 127.0.0.1, let each train its DP "
                    "generator and publish twins, then print each party's local-only, "
                    "combined and oracle test log-likelihood, and write results.json and "
                    "figures.",
        epilog="example: twinnode demo --parties 3 --epochs 20 --out demo-out/")
    p.add_argument("--parties", type=int, default=d.parties, help=f"parties (default {d.parties})")
    p.add_argument("--epsilon", type=float, default=d.epsilon, help=f"DP epsilon ({d.epsilon:g})")
    p.add_argument("--epochs", type=float, default=d.epochs,
                   help=f"training epochs ({d.epochs:g}; the paper used 4000)")
    p.add_argument("--q", type=float, default=d.q, help=f"sampling rate per step ({d.q:g})")
    p.add_argument("--twins", type=int, default=d.twins, help=f"twins per party K ({d.twins})")
    p.add_argument("--split", choices=SPLITS, default=d.split, help="iid, or skewed: party0 "
                   "under-represents idp = 1")
    p.add_argument("--fraction", default=",".join(f"{f:g}" for f in d.fractions),
                   help="size of each party as a share of an equal split, a comma list "
                        "cycled over the parties (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="data split seed (0)")
    p.add_argument("--out", type=Path, default=d.out, help="report directory (demo-out)")
    p.add_argument("--malicious", type=int, default=0,
                   help="the last N parties publish twins with the outcome multiplied by "
                        "--shift, to show screening (0)")
    p.add_argument("--shift", type=float, default=d.shift, help="malicious outcome factor (2)")
    p.add_argument("--no-curve", action="store_true",
                   help="skip the join curves (Fig. 2): faster")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from twinnode.lab.demo import DemoSettings, run_demo

    settings = DemoSettings(parties=args.parties, epsilon=args.epsilon, epochs=args.epochs,
                            q=args.q, twins=args.twins, split=args.split,
                            fractions=tuple(parse_fractions(args.fraction)), seed=args.seed,
                            out=args.out, malicious=args.malicious, shift=args.shift,
                            curve=not args.no_curve)
    run_demo(settings, say=lambda line: print(line, flush=True))
    return 0
