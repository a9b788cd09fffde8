"""A fault-injecting TCP relay: the netem stand-in the netns harness puts in front of a node.

    python -m twinnode.lab.relay --policy FILE --me NAME --peer NAME=IP ... \\
        --forward LISTEN_IP:PORT=TARGET_IP:PORT ...

It runs inside one node's network namespace, listens on the node's public address and forwards
each connection to the node's private one (127.0.0.1). Every peer's connection to that node
crosses it, and it knows the peer by the source address (`--peer`). What it does to the bytes
comes from the policy file (JSON, read again whenever it changes), one rule per `src>dst` pair
or `*>dst` / `src>*` / `*`:

    {"rules": {"alice>carol": {"delay": 0.2, "jitter": 0.15, "stall": 0.02, "stall_s": 2,
                               "cut": 0.01, "refuse": 0.2}}}

- `delay` ± `jitter` (seconds) per chunk read. A TCP stream cannot be reordered without breaking
  it, so each stream stays in order; the jitter is drawn per chunk and per connection, so a
  node's PUB and ROUTER streams and different peers' streams overtake one another (reordering
  between messages, as a node sees it).
- `stall`: the share of chunks held `stall_s` seconds more (a lost segment's retransmission
  timeouts, seen from above TCP).
- `cut`: the share of chunks after which the connection is closed both ways (a reset).
- `refuse`: the share of new connections closed at once.

Bytes are never altered or dropped from inside a stream: TCP would retransmit them, so above TCP
loss shows up as delay, stalls and resets, which is what this makes. Standard library only.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

CHUNK = 65536
RELOAD = 0.2  # seconds between two looks at the policy file


class Policy:
    """The fault rules from a JSON file, reloaded when its mtime changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mtime = -1.0
        self.rules: dict[str, dict[str, float]] = {}

    def reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
            if mtime != self.mtime:
                self.rules = json.loads(self.path.read_text()).get("rules", {})
                self.mtime = mtime
        except (OSError, ValueError):
            pass  # a file being replaced: keep the last good rules

    def rule(self, src: str, dst: str) -> dict[str, float]:
        """The most specific rule for this pair ({} if none)."""
        for key in (f"{src}>{dst}", f"{src}>*", f"*>{dst}", "*"):
            if key in self.rules:
                return self.rules[key]
        return {}


class Relay:
    """Forwards connections to one node, applying the policy of (peer, node)."""

    def __init__(self, me: str, peers: dict[str, str], policy: Policy, seed: int) -> None:
        self.me = me
        self.by_ip = {ip: name for name, ip in peers.items()}
        self.policy = policy
        self.rng = random.Random(seed)
        self.stats = {"connections": 0, "refused": 0, "cut": 0, "stalled": 0}

    async def handle(self, target: tuple[str, int], reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        src = self.by_ip.get(writer.get_extra_info("peername")[0], "?")
        self.stats["connections"] += 1
        if self.rng.random() < self.policy.rule(src, self.me).get("refuse", 0.0):
            self.stats["refused"] += 1
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        stop = asyncio.Event()
        pipes = [asyncio.create_task(self.pipe(src, reader, up_writer, stop)),
                 asyncio.create_task(self.pipe(src, up_reader, writer, stop))]
        await stop.wait()
        for task in pipes:
            task.cancel()
        for w in (writer, up_writer):
            w.close()

    async def pipe(self, src: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   stop: asyncio.Event) -> None:
        """Copy one direction, each chunk released at its time, in order."""
        released = 0.0
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                rule = self.policy.rule(src, self.me)
                due = time.monotonic() + rule.get("delay", 0.0) + self.rng.uniform(
                    -rule.get("jitter", 0.0), rule.get("jitter", 0.0))
                if self.rng.random() < rule.get("stall", 0.0):
                    self.stats["stalled"] += 1
                    due += rule.get("stall_s", 1.0)
                released = max(released, due)
                await asyncio.sleep(max(0.0, released - time.monotonic()))
                writer.write(data)
                await writer.drain()
                if self.rng.random() < rule.get("cut", 0.0):
                    self.stats["cut"] += 1
                    break
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            stop.set()


async def serve(args: argparse.Namespace) -> None:
    """Listen on every --forward address until killed; write stats to --stats each second."""
    policy = Policy(args.policy)
    relay = Relay(args.me, dict(p.split("=", 1) for p in args.peer), policy, args.seed)
    servers = []
    for spec in args.forward:
        listen, target = (_hostport(x) for x in spec.split("=", 1))
        servers.append(await asyncio.start_server(partial(relay.handle, target), *listen))
    print(f"relay {args.me}: listening on {', '.join(args.forward)}", flush=True)
    while True:
        policy.reload()
        if args.stats:
            _write_json(args.stats, relay.stats)
        await asyncio.sleep(RELOAD)


def _hostport(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", type=Path, required=True)
    ap.add_argument("--me", required=True, help="the node this relay fronts")
    ap.add_argument("--peer", action="append", default=[], help="NAME=IP, one per peer")
    ap.add_argument("--forward", action="append", default=[], help="LISTEN:PORT=TARGET:PORT")
    ap.add_argument("--stats", type=Path, help="write the relay's counts here (JSON)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
