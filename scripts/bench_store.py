"""Store throughput by batch size (group commit: one fsync per batch), measured side by side.

Why: `Store.put_many` appends a whole batch to the journal and syncs it once; `put` is a
batch of one. This shows what batching buys on this machine's disk, and what the old path
(file + directory + WAL fsync per envelope, kept here as `per-envelope fsync`) cost.
Usage: python scripts/bench_store.py [--puts 200] [--size 70000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import hashlib
import tempfile
import time

from twinnode.atomic import write_bytes_atomic
from twinnode.store.container import pack_envelope
from twinnode.store.store import Put, Store

BATCHES = (1, 8, 32)


def frames_of(seq: int, payload: bytes) -> list[bytes]:
    return [b"twin", seq.to_bytes(8, "big"), payload]


def run_once(batch: int, puts: int, size: int) -> float:
    """Seconds for `puts` fresh envelopes of `size` bytes into a new store, `batch` at a time
    (0: the pre-journal path, one durable file write per envelope plus a FULL commit)."""
    payload = bytes(size)
    with tempfile.TemporaryDirectory() as tmp, Store.open(tmp) as store:
        items = [Put("alice", s, hashlib.sha256(b"".join(frames_of(s, payload))).digest(),
                     frames_of(s, payload)) for s in range(1, puts + 1)]
        start = time.perf_counter()
        if batch == 0:
            db = store._conn()
            for p in items:
                write_bytes_atomic(f"{tmp}/{p.seq}.env", pack_envelope({"seq": p.seq}, p.frames))
                db.execute("INSERT INTO counters(name, value) VALUES(?, 1)", (str(p.seq),))
        else:
            for i in range(0, puts, batch):
                store.put_many(items[i:i + batch])
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--puts", type=int, default=200)
    parser.add_argument("--size", type=int, default=70_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    totals = dict.fromkeys((0, *BATCHES), 0.0)
    for _ in range(args.rounds):  # interleaved so every mode sees the same machine load
        for batch in totals:
            totals[batch] += run_once(batch, args.puts, args.size)
    n = args.puts * args.rounds
    for batch, secs in totals.items():
        label = "per-envelope fsync (old)" if batch == 0 else f"put_many, batch {batch}"
        print(f"{label:26s}: {n / secs:8.1f} puts/s ({1000 * secs / n:.3f} ms/put)")


if __name__ == "__main__":
    main()
