"""Run real twinnode nodes, each in its own network namespace, through network faults.

    sudo python scripts/netns_cluster.py [--parties 5] [--k 3] [--partition 60]
        [--flap 4x5/5] [--hold 20]
        [--scenarios baseline,partition,flap,delay,loss,harsh,netem]
        [--workdir DIR] [--record FILE.json] [--keep]

Builds a NetLab (twinnode.lab.netns: one namespace per node, a veth per pair, a fault relay in
front of every node), starts `twinnode run` in each namespace, waits until every node hears
every peer, then runs the scenarios one after another on the same nodes (each publishes a new
release of K simulated twins on every node, holds its fault, ends it):

- baseline   no fault
- partition  {first 2} | {the rest}: every link between the sides down for --partition seconds
- flap       the last node's links: CYCLES x (DOWN s down, UP s up), as --flap CYCLESxDOWN/UP
- delay      every relay: 200 ms ± 150 ms per chunk (streams overtake each other) for --hold s
- loss       every relay: 5% of chunks stalled 1.5 s, 2% cut the connection, 20% of new
             connections refused, for --hold s
- harsh      every relay: 300 ms ± 300 ms, 20% of chunks stalled 3 s, 10% cut, 50% of new
             connections refused, for --hold s
- netem      (only where the kernel has the netem qdisc) delay 100ms 50ms loss 5% reorder 25%

and prints, per scenario, the time every node took to hold every twin after the fault ended,
with what was refused (replay/duplicate are honest redundancy; anything else fails the run).
Needs root and iproute2; says why and exits 2 where namespaces cannot be made. Everything it
creates is removed on exit, also on ^C or failure (and a dead run's leftovers at the next).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

from twinnode.lab.netns import NetLab, unavailable
from twinnode.lab.netns_scenarios import (Outcome, Scenarios, digests_agree, make_world,
                                          netns_cluster)

NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")
DELAY = {"*": {"delay": 0.2, "jitter": 0.15}}
LOSS = {"*": {"stall": 0.05, "stall_s": 1.5, "cut": 0.02, "refuse": 0.2}}
HARSH = {"*": {"delay": 0.3, "jitter": 0.3, "stall": 0.2, "stall_s": 3.0, "cut": 0.1,
               "refuse": 0.5}}
NETEM = "delay 100ms 50ms loss 5% reorder 25%"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parties", type=int, default=5)
    ap.add_argument("--k", type=int, default=3, help="twins per release")
    ap.add_argument("--partition", type=float, default=60.0, help="seconds the sides are cut")
    ap.add_argument("--flap", default="4x5/5", help="CYCLESxDOWN/UP seconds")
    ap.add_argument("--hold", type=float, default=20.0, help="seconds delay/loss are on")
    ap.add_argument("--scenarios", default="baseline,partition,flap,delay,loss,harsh,netem")
    ap.add_argument("--workdir", type=Path, help="default: a new directory under /tmp")
    ap.add_argument("--record", type=Path, help="write the outcomes here (JSON)")
    args = ap.parse_args()
    # SIGTERM (a CI timeout) unwinds like ^C, so the `with` blocks below remove everything
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    reason = unavailable()
    if reason:
        print(f"netns_cluster: skipped: {reason}", file=sys.stderr)
        return 2
    names = list(NAMES[:args.parties])
    chosen = args.scenarios.split(",")
    root = args.workdir or Path(tempfile.mkdtemp(prefix="tnx", dir="/tmp"))
    schema, parties, release_of = make_world(root / "world", names, args.k, len(chosen))
    outcomes: list[Outcome] = []
    t0 = time.monotonic()
    with NetLab(names, root / "net") as lab:
        lab.up()
        netem = lab.netem_works()
        print(f"{root}: {len(names)} namespaces up; netem "
              f"{'available' if netem else 'not in this kernel: the relays make the faults'}")
        with netns_cluster(lab, root / "nodes", parties, schema, k=args.k) as c:
            c.start()
            c.wait_connected(180)
            print(f"{time.monotonic() - t0:6.1f} s  every node hears every peer")
            run = Scenarios(c, lab, release_of, args.k, timeout=300)
            for name in chosen:
                outcome = one(run, name, names, args, netem)
                if outcome is None:
                    print(f"  {name}: skipped (no netem qdisc in this kernel)")
                    continue
                outcomes.append(outcome)
                print(f"{time.monotonic() - t0:6.1f} s  {line(outcome)}")
            same = digests_agree(c, names)
    print(f"digests identical on every node: {same}")
    if args.record:
        args.record.write_text(json.dumps(
            {"command": "python " + " ".join(sys.argv), "parties": names, "k": args.k,
             "netem": netem, "digests_identical": same,
             "outcomes": [o.to_dict() for o in outcomes]}, indent=1) + "\n")
        print(f"outcomes in {args.record}")
    return 0 if same and all(o.ok and o.fault_seen is not False for o in outcomes) else 1


def one(run: Scenarios, name: str, names: list[str], args: argparse.Namespace,
        netem: bool) -> Outcome | None:
    if name == "baseline":
        return run.baseline()
    if name == "partition":
        return run.partition(names[:2], names[2:], args.partition)
    if name == "flap":
        cycles, times = args.flap.split("x")
        down, up = times.split("/")
        return run.flap(names[-1], int(cycles), float(down), float(up))
    if name == "delay":
        return run.relay("delay", DELAY, args.hold)
    if name == "loss":
        return run.relay("loss", LOSS, args.hold)
    if name == "harsh":
        return run.relay("harsh", HARSH, args.hold)
    if name == "netem":
        return run.netem(NETEM, args.hold) if netem else None
    raise SystemExit(f"unknown scenario {name!r}")


def line(o: Outcome) -> str:
    refused = {n: r for n, r in o.refused.items() if r}
    seen = "" if o.fault_seen is None else f" (the cut seen: {o.fault_seen})"
    if o.converge_after_link_up_s is not None:
        seen += f" (converged {o.converge_after_link_up_s:.1f} s after the links came back)"
    return (f"{o.scenario:<10} fault {o.fault_s:5.1f} s{seen}, converged "
            f"{o.converge_after_fault_s:5.1f} s after it ({o.converge_after_publish_s:.1f} s "
            f"after the publish), {o.twins_per_node} twins per node; refused wrongly: "
            f"{refused or 'nothing'}")


if __name__ == "__main__":
    sys.exit(main())
