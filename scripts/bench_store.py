"""Store.put throughput with the index at synchronous=FULL vs NORMAL, measured side by side.

Why: the store chooses FULL (every commit fsyncs the WAL) so that acknowledgements and reserved
sequence numbers survive a power loss, not only a SIGKILL; this shows what that costs.
Usage: python scripts/bench_store.py [--puts 200] [--size 20000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import hashlib
import tempfile
import time

from twinnode.store import index as index_mod
from twinnode.store.store import Store


def run_once(mode: str, puts: int, size: int) -> float:
    """Seconds for `puts` fresh envelopes of `size` bytes into a new store at `mode`."""
    index_mod.SYNCHRONOUS = mode
    with tempfile.TemporaryDirectory() as tmp, Store.open(tmp) as store:
        payload = bytes(size)
        start = time.perf_counter()
        for seq in range(1, puts + 1):
            frames = [b"twin", seq.to_bytes(8, "big"), payload]
            store.put("alice", seq, hashlib.sha256(b"".join(frames)).digest(), frames)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--puts", type=int, default=200)
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    totals = {"FULL": 0.0, "NORMAL": 0.0}
    for _ in range(args.rounds):  # interleaved so both modes see the same machine load
        for mode in totals:
            totals[mode] += run_once(mode, args.puts, args.size)
    n = args.puts * args.rounds
    for mode, secs in totals.items():
        print(f"synchronous={mode:6s}: {n / secs:7.1f} puts/s ({1000 * secs / n:.2f} ms/put)")
    print(f"FULL / NORMAL time per put: {totals['FULL'] / totals['NORMAL']:.2f}x")


if __name__ == "__main__":
    main()
