"""The node's control-socket commands: argument checks and the result shapes of docs/CONTROL.md.

Read-only commands (status, peers, twins, budget) answer from the node's state (`peers
reload=true` first pins what the config's files pin now); job commands
(train, publish, screen, analyze) start the node's one background job and answer at once, or
with `wait=true` when the job has ended (its error, if any, is the reply's error). Each is
`async fn(ctx, args) -> result`; they see the node through `node.context.NodeContext`.
"""
from __future__ import annotations

import asyncio
import math
import os
import time
from functools import partial
from typing import Any, Awaitable, Callable, Mapping

from twinnode.analysis.options import (
    HETEROGENEITIES,
    INTERVALS,
    ON_DISAGREEMENT,
    POLICIES,
    RULES,
)
from twinnode.errors import ControlError, PrivacyError
from twinnode.node import jobs
from twinnode.node.command_names import COMMANDS
from twinnode.node.context import NodeContext
from twinnode.node.control_protocol import Handler, check_args
from twinnode.node.slot import JobState
from twinnode.store.index import EntryMeta
from twinnode.trust.seqset import Holding

MAX_K = 1_000  # twins per release from a control command: 10x the paper's K = 100. The worker
               # holds all K twins of N rows in memory and pipes them back, so k = 10**8 would
               # exhaust memory; [twins] k in the config file (up to 100,000) is the operator's
               # own choice and is not capped here.

COUNTERS = ("accepted", "published", "served", "catchup_requests", "heartbeats",
            "twins_decoded", "serve_waits", "busy")  # in `status` even while zero, so a monitor sees every series

Command = Callable[[NodeContext, dict[str, Any]], Awaitable[Mapping[str, Any]]]


def handlers(ctx: NodeContext) -> dict[str, Handler]:
    """command name -> async handler, for ControlServer: every name in COMMANDS, bound to `ctx`."""
    if tuple(_COMMANDS) != COMMANDS:
        raise RuntimeError(f"node.commands implements {tuple(_COMMANDS)}, "
                           f"command_names says {COMMANDS}")
    return {name: partial(command, ctx) for name, command in _COMMANDS.items()}


# ---- read-only commands ---------------------------------------------------------------------

async def status(ctx: NodeContext, args: dict[str, Any]) -> Mapping[str, Any]:
    check_args("status", args, {})
    job = ctx.current_job()
    held = await asyncio.to_thread(ctx.require_store().counts)  # waits while a batch syncs
    return {"node": ctx.name, "pid": os.getpid(),
            "uptime": ctx.uptime(), "own_seq": ctx.own_latest(),
            "recovery": ctx.recovery.row(ctx.own_latest()),
            "peers": _peer_rows(ctx, held), "twins": held,
            "rejected": dict(sorted(ctx.rejected.items())),
            "budget": await _budget(ctx, entries=False),
            "job": job.to_dict() if job else None,
            "counters": dict(sorted(({name: 0 for name in COUNTERS}
                                     | dict(ctx.counters)).items())),
            "endpoints": ctx.endpoints()}


async def peers(ctx: NodeContext, args: dict[str, Any]) -> Mapping[str, Any]:
    args = check_args("peers", args, {"reload": bool})
    reload = await ctx.reload_peers() if args.get("reload") else None
    held = await asyncio.to_thread(ctx.require_store().counts)
    return {"peers": _peer_rows(ctx, held),
            **({"reload": reload} if reload is not None else {})}


async def twins(ctx: NodeContext, args: dict[str, Any]) -> Mapping[str, Any]:
    args = check_args("twins", args, {"detail": bool})
    entries = await asyncio.to_thread(ctx.require_store().list)
    by_sender: dict[str, list[EntryMeta]] = {}
    for e in entries:
        by_sender.setdefault(e.sender, []).append(e)
    return {"senders": [_sender_row(sender, es, bool(args.get("detail")))
                        for sender, es in by_sender.items()]}


def _sender_row(sender: str, es: list[EntryMeta], detail: bool) -> dict[str, Any]:
    held = Holding.of(e.seq for e in es)
    row: dict[str, Any] = {"sender": sender, "count": len(es), "watermark": held.watermark,
                           "ranges": [list(r) for r in held.ranges], "status": {}}
    for e in es:
        row["status"][e.status] = row["status"].get(e.status, 0) + 1
    if detail:
        row["entries"] = [{"seq": e.seq, "digest": e.digest, "k": e.k, "release": e.release,
                           "status": e.status, "received": e.received} for e in es]
    return row


async def budget(ctx: NodeContext, args: dict[str, Any]) -> Mapping[str, Any]:
    check_args("budget", args, {})
    return await _budget(ctx, entries=True)


# ---- job commands ---------------------------------------------------------------------------

async def train(ctx: NodeContext, args: dict[str, Any]) -> Mapping[str, Any]:
    args = check_args("train", args, {"epochs": float, "epsilon": float, "k": int,
                                      "publish": bool, "wait": bool, "again": bool,
                                      "accept_silent": bool})
    _positive("train", args, "epochs", "epsilon", "k")
    _bounded_k("train", args)
    epsilon = float(args.get("epsilon", ctx.config.privacy.epsilon))
    await asyncio.to_thread(ctx.ledger.check, epsilon)
    spend = await _spend_line(ctx, epsilon)
    if not args.pop("again", False):
        earlier = await asyncio.to_thread(jobs.earlier_release, ctx)
        if earlier is not None:
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(earlier.get("time", 0)))
            raise ControlError(
                f"train: these data were trained on already ({earlier.get('kind')} "
                f"{earlier.get('id')}, {when}, epsilon {earlier.get('epsilon', 0):g}); fresh "
                "twins from that posterior cost nothing: `ctl publish`. To train again "
                f"and {spend}, ask again with again=true")
    reply = await _job(ctx, "train", args, jobs.train_job)
    if "message" in reply and reply["message"] == "train started":
        reply["message"] = f"train started: it will {spend}"
    reply.setdefault("epsilon", epsilon)
    return reply


async def _spend_line(ctx: NodeContext, epsilon: float) -> str:
    """'spend epsilon=1 (total 2 of cap 3)': what a train request will charge."""
    snap = await asyncio.to_thread(ctx.ledger.snapshot)
    total, cap = snap["spent_epsilon"] + epsilon, snap["cap_epsilon"]
    return (f"spend epsilon={epsilon:g} (total {total:g}"
            + (f" of the cap {cap:g})" if cap is not None else ", no cap)"))


async def publish(ctx: NodeContext, args: dict[str, Any]) -> Mapping[str, Any]:
    args = check_args("publish", args, {"release": str, "k": int, "epochs": float,
                                        "epsilon": float, "wait": bool,
                                        "accept_silent": bool})
    _positive("publish", args, "k", "epochs", "epsilon")
    _bounded_k("publish", args)
    if "release" not in args and not jobs.posterior_path(ctx).exists():
        await asyncio.to_thread(ctx.ledger.check, args.get("epsilon",
                                                           ctx.config.privacy.epsilon))
    return await _job(ctx, "publish", args, jobs.publish_job)


async def screen(ctx: NodeContext, args: dict[str, Any]) -> Mapping[str, Any]:
    args = check_args("screen", args, {"policy": str, "threshold": float, "wait": bool})
    _screening_args("screen", args)
    return await _job(ctx, "screen", args, jobs.screen_job)


async def analyze(ctx: NodeContext, args: dict[str, Any]) -> Mapping[str, Any]:
    args = check_args("analyze", args, {"policy": str, "threshold": float,
                                        "weight": (float, str), "wait": bool,
                                        "test": str, "peers": list, "rule": str,
                                        "heterogeneity": str, "interval": str, "level": float,
                                        "agreement_alpha": float, "on_disagreement": str})
    _screening_args("analyze", args)
    _analysis_args("analyze", args)
    if "test" in args and not os.path.isabs(args["test"]):
        raise ControlError(f"analyze: test must be an absolute path to a CSV file, "
                           f"got {args['test']!r}")
    if "peers" in args and not all(isinstance(p, str) for p in args["peers"]):
        raise ControlError("analyze: peers must be a list of peer names")
    if "weight" in args and args["weight"] != "auto" and not (
            isinstance(args["weight"], float | int) and 0 <= args["weight"] <= 1):
        raise ControlError(f"analyze: weight must be auto or a number in [0, 1], "
                           f"got {args['weight']!r}")
    return await _job(ctx, "analyze", args, jobs.analyze_job)


async def shutdown(ctx: NodeContext, args: dict[str, Any]) -> Mapping[str, Any]:
    check_args("shutdown", args, {})
    ctx.request_stop("shutdown command")
    return {"message": "stopping"}


_COMMANDS: dict[str, Command] = {
    "status": status, "peers": peers, "twins": twins, "budget": budget, "train": train,
    "publish": publish, "screen": screen, "analyze": analyze, "shutdown": shutdown}


JobBody = Callable[[NodeContext, JobState, Mapping[str, Any]], Awaitable[dict[str, Any]]]


async def _job(ctx: NodeContext, name: str, args: dict[str, Any],
               body: JobBody) -> dict[str, Any]:
    wait = args.pop("wait", False)
    job = ctx.start_job(name, lambda j: body(ctx, j, args))
    if not wait:
        return {"message": f"{name} started", "job": job.to_dict()}
    job = await ctx.wait_job()
    if job.error is not None:
        raise job.error
    return {**job.result, "job": job.to_dict()}


def _peer_rows(ctx: NodeContext, held: Mapping[str, int]) -> list[dict[str, Any]]:
    """One row per peer; `held`: the store's counts, read in a thread (the store's lock is
    held while a batch is synced: reading them on the event loop stalled it)."""
    interval = ctx.config.network.heartbeat_interval
    now = time.monotonic()
    links = ctx.links.rows()
    return [{"name": p.name, "address": p.address, "connected": p.alive(interval, now),
             "last_heartbeat_age": None if p.last_heartbeat is None else now - p.last_heartbeat,
             "latest_seq": p.latest, "held": held.get(p.name, 0),
             "fingerprint": ctx.trust.get(p.name).sign_fingerprint if p.name in ctx.trust
             else None, "link": links.get(p.name), **ctx.agreed.row(p.name)}
            for p in ctx.peers.values()]


async def _budget(ctx: NodeContext, entries: bool) -> dict[str, Any]:
    try:
        snap = await asyncio.to_thread(ctx.ledger.snapshot)
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


def _analysis_args(cmd: str, args: Mapping[str, Any]) -> None:
    """The choices and (0, 1) numbers [analysis] in node.toml takes, checked alike."""
    for key, choices in (("rule", RULES), ("heterogeneity", HETEROGENEITIES),
                         ("interval", INTERVALS), ("on_disagreement", ON_DISAGREEMENT)):
        if key in args and args[key] not in choices:
            raise ControlError(f"{cmd}: {key} must be one of {', '.join(choices)}, "
                               f"got {args[key]!r}")
    for key in ("level", "agreement_alpha"):
        if key in args and not 0 < args[key] < 1:
            raise ControlError(f"{cmd}: {key} must be in (0, 1), got {args[key]}")


def _screening_args(cmd: str, args: Mapping[str, Any]) -> None:
    if "policy" in args and args["policy"] not in POLICIES:
        raise ControlError(f"{cmd}: policy must be one of {', '.join(POLICIES)}, "
                           f"got {args['policy']!r}")
    if "threshold" in args and not 0 < args["threshold"] < 1:
        raise ControlError(f"{cmd}: threshold must be in (0, 1), got {args['threshold']}")
