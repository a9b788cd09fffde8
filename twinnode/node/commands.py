"""The node's control-socket commands: argument checks and the result shapes of docs/CONTROL.md.

Read-only commands (status, peers, twins, budget) answer from the node's state; job commands
(train, publish, screen, analyze) start the node's one background job and answer at once, or
with `wait=true` when the job has ended (its error, if any, is the reply's error).
"""
from __future__ import annotations

import asyncio
import math
import os
import time
from typing import TYPE_CHECKING, Any, Mapping

from twinnode.errors import ControlError, PrivacyError
from twinnode.node.config import POLICIES
from twinnode.node.control import Handler, check_args
from twinnode.trust.seqset import Holding

if TYPE_CHECKING:
    from twinnode.node.core import Node
    from twinnode.node.slot import JobState

MAX_K = 1_000  # twins per release from a control command: 10x the paper's K = 100. The worker
               # holds all K twins of N rows in memory and pipes them back, so k = 10**8 would
               # exhaust memory; [twins] k in the config file (up to 100,000) is the operator's
               # own choice and is not capped here.
COMMANDS = ("status", "peers", "twins", "budget", "train", "publish", "screen", "analyze",
            "shutdown")


def handlers(node: "Node") -> dict[str, Handler]:
    """command name -> async handler, for ControlServer."""
    from twinnode.node import jobs as nodework

    async def status(args: dict[str, Any]) -> Mapping[str, Any]:
        check_args("status", args, {})
        return {"node": node.name, "pid": os.getpid(),
                "uptime": node.uptime(), "own_seq": node.own_latest(),
                "peers": _peer_rows(node), "twins": _store(node).counts(),
                "rejected": dict(sorted(node.rejected.items())),
                "budget": await _budget(node, entries=False),
                "job": node.jobs.current.to_dict() if node.jobs.current else None,
                "counters": dict(sorted(node.counters.items())),
                "endpoints": dict(node.transport.endpoints) if node.transport else {}}

    async def peers(args: dict[str, Any]) -> Mapping[str, Any]:
        check_args("peers", args, {})
        return {"peers": _peer_rows(node)}

    async def twins(args: dict[str, Any]) -> Mapping[str, Any]:
        args = check_args("twins", args, {"detail": bool})
        entries = await asyncio.to_thread(_store(node).list)
        by_sender: dict[str, list] = {}
        for e in entries:
            by_sender.setdefault(e.sender, []).append(e)
        senders = []
        for sender, es in by_sender.items():
            held = Holding.of(e.seq for e in es)
            row: dict[str, Any] = {"sender": sender, "count": len(es),
                                   "watermark": held.watermark,
                                   "ranges": [list(r) for r in held.ranges], "status": {}}
            for e in es:
                row["status"][e.status] = row["status"].get(e.status, 0) + 1
            if args.get("detail"):
                row["entries"] = [{"seq": e.seq, "digest": e.digest, "k": e.k,
                                   "release": e.release, "status": e.status,
                                   "received": e.received} for e in es]
            senders.append(row)
        return {"senders": senders}

    async def budget(args: dict[str, Any]) -> Mapping[str, Any]:
        check_args("budget", args, {})
        return await _budget(node, entries=True)

    async def train(args: dict[str, Any]) -> Mapping[str, Any]:
        args = check_args("train", args, {"epochs": float, "epsilon": float, "k": int,
                                          "publish": bool, "wait": bool})
        _positive("train", args, "epochs", "epsilon", "k")
        _bounded_k("train", args)
        await asyncio.to_thread(node.ledger.check, args.get("epsilon",
                                                            node.config.privacy.epsilon))
        return await _job(node, "train", args, nodework.train_job)

    async def publish(args: dict[str, Any]) -> Mapping[str, Any]:
        args = check_args("publish", args, {"release": str, "k": int, "epochs": float,
                                            "epsilon": float, "wait": bool})
        _positive("publish", args, "k", "epochs", "epsilon")
        _bounded_k("publish", args)
        if "release" not in args and not nodework.posterior_path(node).exists():
            await asyncio.to_thread(node.ledger.check, args.get("epsilon",
                                                                node.config.privacy.epsilon))
        return await _job(node, "publish", args, nodework.publish_job)

    async def screen(args: dict[str, Any]) -> Mapping[str, Any]:
        args = check_args("screen", args, {"policy": str, "threshold": float, "wait": bool})
        _screening_args("screen", args)
        return await _job(node, "screen", args, nodework.screen_job)

    async def analyze(args: dict[str, Any]) -> Mapping[str, Any]:
        args = check_args("analyze", args, {"policy": str, "threshold": float,
                                            "weight": (float, str), "wait": bool,
                                            "test": str, "peers": list})
        _screening_args("analyze", args)
        if "test" in args and not os.path.isabs(args["test"]):
            raise ControlError(f"analyze: test must be an absolute path to a CSV file, "
                               f"got {args['test']!r}")
        if "peers" in args and not all(isinstance(p, str) for p in args["peers"]):
            raise ControlError("analyze: peers must be a list of peer names")
        if "weight" in args and args["weight"] != "auto" and not (
                isinstance(args["weight"], float | int) and 0 <= args["weight"] <= 1):
            raise ControlError(f"analyze: weight must be auto or a number in [0, 1], "
                               f"got {args['weight']!r}")
        return await _job(node, "analyze", args, nodework.analyze_job)

    async def shutdown(args: dict[str, Any]) -> Mapping[str, Any]:
        check_args("shutdown", args, {})
        node.request_stop("shutdown command")
        return {"message": "stopping"}

    table = {"status": status, "peers": peers, "twins": twins, "budget": budget,
             "train": train, "publish": publish, "screen": screen, "analyze": analyze,
             "shutdown": shutdown}
    assert tuple(table) == COMMANDS
    return table


async def _job(node: "Node", name: str, args: dict[str, Any], body: Any) -> dict[str, Any]:
    wait = args.pop("wait", False)
    job: JobState = node.start_job(name, lambda j: body(node, j, args))
    if not wait:
        return {"message": f"{name} started", "job": job.to_dict()}
    job = await node.wait_job()
    if job.error is not None:
        raise job.error
    return {**job.result, "job": job.to_dict()}


def _store(node: "Node") -> Any:
    if node.store is None:
        raise ControlError("the node's store is not open")
    return node.store


def _peer_rows(node: "Node") -> list[dict[str, Any]]:
    interval = node.config.network.heartbeat_interval
    held = _store(node).counts()
    now = time.monotonic()
    return [{"name": p.name, "address": p.address, "connected": p.alive(interval),
             "last_heartbeat_age": None if p.last_heartbeat is None else now - p.last_heartbeat,
             "latest_seq": p.latest, "held": held.get(p.name, 0)}
            for p in node.peers.values()]


async def _budget(node: "Node", entries: bool) -> dict[str, Any]:
    try:
        snap = await asyncio.to_thread(node.ledger.snapshot)
    except PrivacyError as exc:
        return {"error": str(exc)}
    out: dict[str, Any] = {"spent": snap["spent_epsilon"], "cap": snap["cap_epsilon"],
                           "left": snap["left_epsilon"], "delta": snap["spent_delta"]}
    if entries:
        out["entries"] = [{"time": e.get("time"), "epsilon": e.get("epsilon"),
                           "delta": e.get("delta"),
                           "note": f"{e.get('kind', '?')}: {e.get('status', '')}"}
                          for e in snap["entries"]]
    return out


def _positive(cmd: str, args: Mapping[str, Any], *names: str) -> None:
    for name in names:
        if name in args and not (args[name] > 0 and math.isfinite(args[name])):
            raise ControlError(f"{cmd}: argument {name} must be positive, got {args[name]}")


def _bounded_k(cmd: str, args: Mapping[str, Any]) -> None:
    if "k" in args and args["k"] > MAX_K:
        raise ControlError(f"{cmd}: argument k must be at most {MAX_K} (twins per release; "
                           f"the paper uses 100), got {args['k']}")


def _screening_args(cmd: str, args: Mapping[str, Any]) -> None:
    if "policy" in args and args["policy"] not in POLICIES:
        raise ControlError(f"{cmd}: policy must be one of {', '.join(POLICIES)}, "
                           f"got {args['policy']!r}")
    if "threshold" in args and not 0 < args["threshold"] < 1:
        raise ControlError(f"{cmd}: threshold must be in (0, 1), got {args['threshold']}")
