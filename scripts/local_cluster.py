"""Run M real twinnode nodes on this machine (randhie split into parties) and show them converge.

    python scripts/local_cluster.py [--parties 3] [--k 10] [--train --epochs 20]
                                    [--workdir DIR] [--keep-running]
                                    [--no-analysis] [--record FILE.json]
                                    [--heartbeat SECONDS] [--catchup-interval SECONDS]
                                    [--timeout SECONDS]

Writes keys and configs per party (twinnode.lab.harness.LocalCluster), starts `twinnode run` for
each, waits until every node hears every peer, has each party publish K twins, waits until
every node holds all M x K, then prints each node's holdings and the first party's combined
analysis (skipped with --no-analysis). --record writes the convergence figures (seconds from
the first publish to full holdings, each node's `catchup.timeout` lines, `busy` count, peak
RSS and CPU seconds; all nodes' CPU seconds from "all up" to the end, and the load average)
as JSON, for docs/results/scale/. Without --train the twins are simulated from each party's rows
(twinnode.lab.simtwins: fast, NOT differentially private); with --train every node trains the
DP generator itself.
"""
from __future__ import annotations

import argparse
import json
import os
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
    ap.add_argument("--no-analysis", action="store_true", help="stop once every node holds all")
    ap.add_argument("--record", type=Path, help="write the convergence figures here (JSON)")
    ap.add_argument("--heartbeat", type=float, default=0.25,
                    help="[network] heartbeat_interval (the harness's 0.25; a node's default 1)")
    ap.add_argument("--timeout", type=float, help="seconds to wait for full holdings "
                    "(default: 3600 with --train, else 600)")
    ap.add_argument("--catchup-interval", type=float, default=2.0,
                    help="[network] catchup_interval (the harness's 2; a node's default 10)")
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
                      privacy={"epsilon": 1.0, "epochs": args.epochs},
                      heartbeat_interval=args.heartbeat,
                      catchup_interval=args.catchup_interval) as c:
        c.start()
        c.wait_connected(120 + 10 * args.parties)
        t_up = time.monotonic()
        cpu_up = sum(cpu_seconds(c, n) for n in names)
        print(f"{t_up - t0:6.1f} s  all nodes up and hearing each other")
        for name in names:
            if args.train:
                c.ctl(name, "train")
            else:
                c.ctl(name, "publish", release=str(root / f"release-{name}"))
        what = "DP-trained" if args.train else "simulated (not DP)"
        t_pub = time.monotonic()
        done = wait_all(c, names, args.k, args.timeout or (3600 if args.train else 600))
        t_all = time.monotonic()
        print(f"{t_all - t0:6.1f} s  every node holds {args.parties} x {args.k} "
              f"{what} twins ({t_all - t_pub:.1f} s after the first publish)")
        if args.record:
            record = figures(c, names, args, up=t_up - t0, converged=t_all - t_pub)
            record["cpu_after_up_s"] = round(sum(cpu_seconds(c, n) for n in names) - cpu_up, 1)
            record["load_average"] = [round(x, 1) for x in os.getloadavg()]
            for name in names:
                record["nodes"][name]["converged_s"] = round(done[name] - t_pub, 1)
            args.record.write_text(json.dumps(record, indent=1) + "\n")
            print(f"figures in {args.record}: {record['summary']}")
        for name in names:
            st = c.status(name)
            print(f"  {name}: twins {st['twins']}, rejected {st['rejected'] or 'none'}, "
                  f"epsilon spent {st['budget'].get('spent')}")
        if args.no_analysis:
            return 0
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


def wait_all(c: LocalCluster, names: list[str], k: int, timeout: float) -> dict[str, float]:
    """Poll (every 0.25 s, only the nodes still short) until every node holds every party's
    K twins; when each got there (time.monotonic)."""
    done: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(names):
        for name in names:
            if name not in done and all(c.status(name)["twins"].get(s, 0) >= k for s in names):
                done[name] = time.monotonic()
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {sorted(set(names) - set(done))} short after "
                             f"{timeout:g} s")
        time.sleep(0.25)
    return done


def cpu_seconds(c: LocalCluster, name: str) -> float:
    """CPU seconds (user + system) the node's process has used so far."""
    stat = Path(f"/proc/{c.members[name].proc.pid}/stat").read_text()
    utime, stime = (int(x) for x in stat.split(")")[1].split()[11:13])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def figures(c: LocalCluster, names: list[str], args: argparse.Namespace, up: float,
            converged: float) -> dict:
    """Per node: `catchup.timeout` lines in its log, `busy`, peak RSS (MB), CPU seconds."""
    nodes = {}
    for name in names:
        st = c.status(name)
        pid = c.members[name].proc.pid
        proc = Path(f"/proc/{pid}")
        hwm = next(int(line.split()[1]) for line in (proc / "status").read_text().splitlines()
                   if line.startswith("VmHWM"))
        log = c.log_path(name).read_text(encoding="utf-8", errors="replace")
        nodes[name] = {"catchup_timeouts": log.count("event=catchup.timeout"),
                       "busy": st["counters"].get("busy", st["rejected"].get("busy", 0)),
                       "catchup_requests": st["counters"].get("catchup_requests", 0),
                       "served": st["counters"].get("served", 0),
                       "peak_rss_mb": round(hwm / 1024, 1),
                       "cpu_s": round(cpu_seconds(c, name), 1),
                       "rejected": st["rejected"]}
    timeouts = sum(n["catchup_timeouts"] for n in nodes.values())
    summary = (f"{args.parties} nodes x K={args.k}: converged {converged:.1f} s after the first "
               f"publish; catchup.timeout {timeouts} in all; busy "
               f"{sum(n['busy'] for n in nodes.values())}; peak RSS max "
               f"{max(n['peak_rss_mb'] for n in nodes.values())} MB")
    return {"command": "python " + " ".join(sys.argv), "parties": args.parties, "k": args.k,
            "heartbeat_interval": args.heartbeat, "catchup_interval": args.catchup_interval,
            "up_s": round(up, 1), "converged_s": round(converged, 1),
            "catchup_timeouts": timeouts, "summary": summary, "nodes": nodes}


def _f(x: float | None) -> str:
    return "NA" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    sys.exit(main())
