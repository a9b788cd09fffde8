"""Where a twin's milliseconds go: one node publishes K twins, another ingests their frames,
in this process (no sockets, no CURVE), with a timer around each stage.

    python scripts/profile_node.py [--k 100] [--parties 5] [--rounds 2]

Each stage is a named function wrapped with `time.perf_counter` and `time.thread_time` (so
stages run in a thread, as the store's writes, count their own CPU); the table is ms per twin
(wall / CPU of the thread it ran on) and calls, per side and round. Stages nest (encode_twin
holds Identity.sign; Store.put_packed holds Journal.append holds os.fdatasync). The sender's
`published_before` runs before its first twin is stored (outside bench_node's window); the
receiver is fed the sender's frames one by one as its receive loop would (`wait=False`, then
the group commit drained). Run it against another checkout with PYTHONPATH=<its root>: a stage
that checkout lacks is left out.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

STAGES = [  # (module, qualified name, modules that imported the name itself)
    ("twinnode.node.own_releases", "published_before", ["twinnode.node.core"]),
    ("twinnode.wire.codec", "encode_twin", ["twinnode.node.core", "twinnode.wire"]),
    ("twinnode.wire.columnar", "encode_columns", ["twinnode.wire.codec"]),
    ("twinnode.schema", "Schema.check_arrays", []),
    ("twinnode.trust.identity", "Identity.sign", []),
    ("twinnode.wire.verify", "Verifier.open", []),
    ("twinnode.trust.identity", "verify", ["twinnode.wire.verify"]),
    ("twinnode.wire.checks", "check_header", ["twinnode.wire.verify"]),
    ("twinnode.wire.codec", "read_message", ["twinnode.wire.verify"]),
    ("twinnode.wire.columnar", "unpack_columns", ["twinnode.wire.codec"]),
    ("twinnode.wire.columnar", "decode_columns", ["twinnode.wire.codec"]),
    ("twinnode.store.names", "pack_put", ["twinnode.store.store", "twinnode.node.groupcommit"]),
    ("twinnode.store.store", "Store.put_many", []),
    ("twinnode.store.store", "Store.put_packed", []),
    ("twinnode.store.journal", "Journal.append", []),
    ("twinnode.store.index", "Index.insert_many", []),
    ("os", "fdatasync", []),
]
TIMES: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
_LOCK = threading.Lock()


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
            with _LOCK:
                row = TIMES[name]
                row[0], row[1], row[2] = row[0] + 1, row[1] + wall, row[2] + cpu
    return run


def instrument() -> None:
    for modname, qual, importers in STAGES:
        owner: Any = importlib.import_module(modname)
        *path, attr = qual.split(".")
        for part in path:
            owner = getattr(owner, part)
        if not hasattr(owner, attr):
            continue  # a checkout without this stage
        original = getattr(owner, attr)
        wrapped = timed(qual, original)
        setattr(owner, attr, wrapped)
        for other in importers:
            mod = importlib.import_module(other)
            if getattr(mod, attr, None) is original:
                setattr(mod, attr, wrapped)


def table(title: str, k: int) -> None:
    print(f"  {title} (ms per twin: wall / CPU; calls)")
    for name, (n, wall, cpu) in sorted(TIMES.items(), key=lambda kv: -kv[1][1]):
        print(f"    {name:<28}{wall / k * 1e3:8.3f}{cpu / k * 1e3:8.3f}{n:7d}")
    TIMES.clear()


class Capture:
    """A transport that keeps what the node publishes."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []

    async def publish(self, frames: Any) -> None:
        self.sent.append(list(frames))

    def close(self) -> None:
        pass


async def run(root: Path, k: int, parties: int, rounds: int) -> None:
    from twinnode.data import randhie, split_parties, write_table
    from twinnode.lab.harness import LocalCluster, PartySpec
    from twinnode.lab.simtwins import as_release, posterior_twins
    from twinnode.node.config import load_config
    from twinnode.node.core import Node

    schema, frame = randhie()
    part = split_parties(frame, parties=parties, seed=0)
    (root / "schema.toml").write_text(schema.to_toml())
    for i, df in enumerate(part.parties[:2]):
        write_table(df, root / f"n{i}.csv", schema)
    cluster = LocalCluster(root / "c", [PartySpec(f"n{i}", root / f"n{i}.csv") for i in range(2)],
                           root / "schema.toml", k=k)
    sender, receiver = (Node(load_config(cluster.members[f"n{i}"].config)) for i in range(2))
    await sender.open()
    await receiver.open()
    sender.transport = capture = Capture()  # type: ignore[assignment]
    print(f"{k} twins of {len(part.parties[0])} rows per round")
    try:
        for r in range(rounds):
            twins = posterior_twins(schema, part.parties[0], sender="n0", k=k, seed=1 + r)
            capture.sent = []
            c0, t0 = time.process_time(), time.perf_counter()
            await sender.publish_release(as_release(twins))
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            print(f"round {r + 1} sender: {wall / k * 1e3:.2f} ms per twin wall, "
                  f"{cpu / k * 1e3:.2f} ms CPU (all threads), published_before included")
            table("sender", k)
            c0, t0 = time.process_time(), time.perf_counter()
            for frames in capture.sent:
                await receiver.handle_frames(frames, "sub", wait=False)
                await asyncio.sleep(0)
            await receiver.commits.drain()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            print(f"round {r + 1} receiver: {wall / k * 1e3:.2f} ms per twin wall, "
                  f"{cpu / k * 1e3:.2f} ms CPU (all threads); accepted "
                  f"{receiver.counters['accepted']}")
            table("receiver", k)
    finally:
        sender.transport = None
        await sender.stop()
        await receiver.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--parties", type=int, default=5, help="randhie split: 5 -> 3,230 rows")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    instrument()
    root = Path(tempfile.mkdtemp(prefix="tnprof", dir="/tmp"))
    try:
        asyncio.run(run(root, args.k, args.parties, args.rounds))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
