"""Run M real twinnode nodes on this machine (randhie split into parties) and show them converge.

    python scripts/local_cluster.py [--parties 3] [--k 10] [--train --epochs 20]
                                    [--workdir DIR] [--keep-running]

Writes keys and configs per party (twinnode.lab.harness.LocalCluster), starts `twinnode run` for
each, waits until every node hears every peer, has each party publish K twins, waits until
every node holds all M x K, then prints each node's holdings and the first party's combined
analysis. Without --train the twins are simulated from each party's rows (twinnode.lab.simtwins:
fast, NOT differentially private); with --train every node trains the DP generator itself.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from twinnode.data import randhie, split_parties, write_table
from twinnode.lab.harness import LocalCluster, PartySpec
from twinnode.lab.simtwins import as_release, posterior_twins
from twinnode.releasedir import save_release


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parties", type=int, default=3)
    ap.add_argument("--k", type=int, default=10, help="twins per party")
    ap.add_argument("--train", action="store_true", help="train the DP generator in each node")
    ap.add_argument("--epochs", type=float, default=20.0, help="with --train (paper: 4000)")
    ap.add_argument("--workdir", type=Path, help="default: a new directory under /tmp")
    ap.add_argument("--keep-running", action="store_true", help="leave the nodes up until ^C")
    args = ap.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="tnc", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)

    schema, frame = randhie()
    part = split_parties(frame, parties=args.parties, seed=0)
    (root / "schema.toml").write_text(schema.to_toml())
    names = [f"party{i}" for i in range(args.parties)]
    parties = []
    for name, df in zip(names, part.parties):
        write_table(df, root / f"{name}.csv", schema)
        parties.append(PartySpec(name, root / f"{name}.csv"))
        if not args.train:
            twins = posterior_twins(schema, df, sender=name, k=args.k, seed=len(parties))
            save_release(as_release(twins), root / f"release-{name}", schema)
    print(f"work directory {root}: {args.parties} parties of randhie "
          f"({', '.join(str(len(df)) for df in part.parties)} rows)")

    t0 = time.monotonic()
    with LocalCluster(root / "nodes", parties, root / "schema.toml", k=args.k,
                      privacy={"epsilon": 1.0, "epochs": args.epochs}) as c:
        c.start()
        c.wait_connected(120)
        print(f"{time.monotonic() - t0:6.1f} s  all nodes up and hearing each other")
        for name in names:
            if args.train:
                c.ctl(name, "train")
            else:
                c.ctl(name, "publish", release=str(root / f"release-{name}"))
        what = "DP-trained" if args.train else "simulated (not DP)"
        c.wait_holdings({n: args.k for n in names}, 3600 if args.train else 300)
        print(f"{time.monotonic() - t0:6.1f} s  every node holds {args.parties} x {args.k} "
              f"{what} twins")
        for name in names:
            st = c.status(name)
            print(f"  {name}: twins {st['twins']}, rejected {st['rejected'] or 'none'}, "
                  f"epsilon spent {st['budget'].get('spent')}")
        report = c.ctl(names[0], "analyze", wait=True, timeout=600)
        print(f"\n{names[0]}: {report['message']}\n  {report['verdict']}\n"
              f"  {'term':<16}{'combined':>10}{'se':>8}{'local':>10}{'se':>8}")
        for term, v in report["coefficients"].items():
            print(f"  {term:<16}{_f(v['estimate']):>10}{_f(v['se']):>8}"
                  f"{_f(v['local_estimate']):>10}{_f(v['local_se']):>8}")
        print(f"  full report: {report['report']}")
        if args.keep_running:
            print(f"\nnodes running; try: twinnode ctl --state {c.state_dir(names[0])} status"
                  "\n^C to stop them")
            try:
                while all(c.running(n) for n in names):
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    print(f"{time.monotonic() - t0:6.1f} s  stopped; logs in {root / 'nodes'}/<party>/node.log")
    return 0


def _f(x: float | None) -> str:
    return "NA" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    sys.exit(main())
