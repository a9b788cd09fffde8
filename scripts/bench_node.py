"""Node delivery benchmark: twins between real node processes vs raw pyzmq PUB/SUB, one run.

1. Throughput, two nodes: A publishes K twins (sign, store, PUB over CURVE); B receives
   (verify, store). Timed from A's first stored twin to B's last stored twin (the stores'
   own receive times, same clock), so loading the release is not counted. Beside it, the
   same envelope bytes over plain pyzmq PUB -> SUB between two processes (no CURVE, no
   signature, no store), from the first send to the last receive. `--rounds` releases, each raw run right before its node run (the
   machine is shared: each pair sees the same load); every pair's ratio and the median.
2. Fan-out: M nodes; A publishes K twins; time until every node holds all of them.

    python scripts/bench_node.py [--k 100] [--nodes 5] [--rows 0 (party size)] [--rounds 3]
                                 [--keep DIR]

Twins are simulated from randhie party data (twinnode.lab.simtwins; not DP) so that no JAX
training is timed here; their size on the wire is what a DP release of the same N has.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twinnode.data import randhie, split_parties, write_table
from twinnode.lab.harness import LocalCluster, PartySpec, free_ports
from twinnode.lab.simtwins import as_release, posterior_twins
from twinnode.releasedir import save_release
from twinnode.trust.identity import Identity
from twinnode.wire import Signer, encode_twin

RAW_SUB = r"""
import sys, time, zmq
ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
sub.setsockopt(zmq.RCVHWM, 100000)
sub.setsockopt(zmq.SUBSCRIBE, b"")
sub.bind(sys.argv[1])
expected = int(sys.argv[2])
n, nbytes, t0 = 0, 0, None
while True:
    frames = sub.recv_multipart()
    if frames[0] == b"ping":
        print("ready", flush=True)
        continue
    if t0 is None:
        t0 = time.perf_counter()
    if frames[0] == b"end":
        break
    n += 1
    nbytes += sum(len(f) for f in frames)
print(f"{n} {nbytes} {time.perf_counter() - t0} {time.perf_counter()}", flush=True)
"""


def make_world(root: Path, parties: int, k: int, rows: int, rounds: int = 1):
    schema, frame = randhie()
    part = split_parties(frame, parties=parties, seed=0)
    (root / "schema.toml").write_text(schema.to_toml())
    names = [f"n{i}" for i in range(parties)]
    for name, df in zip(names, part.parties):
        write_table(df, root / f"{name}.csv", schema)
    local = part.parties[0] if not rows else part.parties[0].sample(
        n=rows, replace=True, random_state=0).reset_index(drop=True)
    releases = [posterior_twins(schema, local, sender="n0", k=k, seed=1 + r) for r in range(rounds)]
    for r, twins in enumerate(releases):
        save_release(as_release(twins), root / f"release-n0-{r}", schema)
    return schema, names, releases


def raw_pubsub(frames_list: list[list[bytes]]) -> tuple[int, int, float]:
    """The same frames over plain PUB -> SUB (subscriber in another process): seconds from
    the first send to the last receive, as the node's window runs from the sender's first
    twin (timed at the subscriber alone, a loaded machine let the publisher fill the queue
    before the subscriber ran and timed only the drain: 4-77 ms for the same bytes)."""
    import zmq

    endpoint = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    proc = subprocess.Popen([sys.executable, "-c", RAW_SUB, endpoint, str(len(frames_list))],
                            stdout=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 100000)
    pub.connect(endpoint)
    try:
        import select
        while True:  # slow joiner: ping until the subscriber hears us
            pub.send_multipart([b"ping"])
            if select.select([proc.stdout], [], [], 0.05)[0]:
                assert proc.stdout.readline().strip() == "ready"
                break
        first_send = time.perf_counter()  # CLOCK_MONOTONIC: the same clock in both processes
        for frames in frames_list:
            pub.send_multipart(frames)
        pub.send_multipart([b"end"])
        n, nbytes, _, last = proc.stdout.readline().split()
        proc.wait(30)
        return int(n), int(nbytes), float(last) - first_send
    finally:
        pub.close(linger=0)
        ctx.term()
        if proc.poll() is None:
            proc.kill()


def delivery_window(c: LocalCluster, sender: str, receivers: list[str],
                    release: str | None = None) -> float:
    """Seconds from the sender storing its first twin (of `release`) to the last receiver
    storing its last."""
    def entries(node: str) -> list[dict]:
        senders = c.ctl(node, "twins", detail=True)["senders"]
        return [e for s in senders if s["sender"] == sender for e in s["entries"]
                if release is None or e["release"] == release]

    start = min(e["received"] for e in entries(sender))
    return max(max(e["received"] for e in entries(r)) for r in receivers) - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--rows", type=int, default=0, help="rows per twin (0: party size)")
    ap.add_argument("--rounds", type=int, default=3, help="releases timed, each beside raw")
    ap.add_argument("--keep", type=Path, help="keep the work directory here")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tnb", dir="/tmp")) if args.keep is None else args.keep
    root.mkdir(parents=True, exist_ok=True)
    try:
        schema, names, releases = make_world(root, args.nodes, args.k, args.rows, args.rounds)
        signer = Signer(Identity.generate("n0"))
        framed = [[encode_twin(t, schema, i + 1, signer) for i, t in enumerate(twins)]
                  for twins in releases]
        size = sum(len(f) for fr in framed[0] for f in fr)
        print(f"{args.k} twins of {releases[0][0].rows} rows (randhie schema), "
              f"{size / args.k / 1e3:.1f} kB per envelope on the wire")

        parties = [PartySpec(name, root / f"{name}.csv") for name in names]
        pairs = []
        with LocalCluster(root / "pair", parties[:2], root / "schema.toml", k=args.k,
                          heartbeat_interval=0.5) as c:
            c.start()
            c.wait_connected(120)
            for r, frames in enumerate(framed):
                n, nbytes, raw_s = raw_pubsub(frames)
                assert n == args.k and nbytes == sum(len(f) for fr in frames for f in fr)
                c.ctl("n0", "publish", release=str(root / f"release-n0-{r}"))
                c.wait_holdings({"n0": args.k * (r + 1)}, 300)
                pairs.append((raw_s, delivery_window(c, "n0", ["n1"],
                                                     releases[r][0].provenance.release)))
        print(f"\nthroughput, one publisher -> one subscriber ({args.k} twins, "
              f"{args.rounds} rounds):")
        for r, (raw_s, node_s) in enumerate(pairs):
            for label, seconds in (("raw pyzmq PUB/SUB", raw_s),
                                   ("node: CURVE + sign + store + verify + store", node_s)):
                print(f"  {label:<44}{seconds * 1e3:9.1f} ms {args.k / seconds:8.0f} twins/s "
                      f"{size / seconds / 1e6:8.1f} MB/s")
            print(f"  {f'round {r + 1}: ratio node / raw':<44}{raw_s / node_s:9.4f}    "
                  f"({node_s / args.k * 1e3:.1f} ms per twin end to end)")
        ratios = sorted(raw_s / node_s for raw_s, node_s in pairs)
        print(f"  {'median ratio node / raw':<44}{ratios[len(ratios) // 2]:9.4f}")

        with LocalCluster(root / "fan", parties, root / "schema.toml", k=args.k,
                          heartbeat_interval=0.5) as c:
            c.start()
            c.wait_connected(180)
            t0 = time.perf_counter()
            c.ctl("n0", "publish", release=str(root / "release-n0-0"))
            c.wait_holdings({"n0": args.k}, 300)
            polled = time.perf_counter() - t0
            window = delivery_window(c, "n0", names[1:])
            served = sum(c.status(n)["counters"].get("served", 0) for n in names)
            rejected = {n: c.status(n)["rejected"] for n in names}
        print(f"\nfan-out: n0 publishes {args.k} twins, {args.nodes} nodes hold them all "
              f"{window:.2f} s after n0 stored its first ({polled:.2f} s from the publish "
              f"command, release loading included); {served} envelopes served by catch-up")
        print(f"  refusals: {rejected}")
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
