"""A receive loop that never dies: one per SUB and DEALER socket, run by `node.core` until
cancelled (the ROUTER's is `node.serving`'s).

Each message goes to the node's handler; a socket error is logged, counted as `internal` and
followed by a short pause (never a hot loop); a handler's unexpected error is logged with its
traceback and counted as `internal`. After each message the loop yields to the event loop, so
a peer flooding one socket cannot starve the node's other tasks.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, Sequence

from twinnode.errors import TwinnodeError, WireError
from twinnode.eventlog import event
from twinnode.node.peersfile import Stamp
from twinnode.wire import Envelope, WireLimits, frame_limit

log = logging.getLogger("twinnode.node")

Reply = Callable[[Sequence[bytes]], Awaitable[bool]]  # send frames back; False: not sent
Receive = Callable[[], Awaitable[tuple[list[bytes], Reply | None]]]
Handle = Callable[[Sequence[bytes], str, Reply | None], Coroutine[Any, Any, Any]]
PEERS_POLL = 2.0  # seconds between looks at node.toml and the peers file


async def receive_loop(channel: str, receive: Receive, handle: Handle,
                       rejected: Counter[str]) -> None:
    """Receive on `channel` and `handle` each message until cancelled."""
    while True:
        try:
            frames, reply = await receive()
        except asyncio.CancelledError:
            raise
        except Exception:  # a socket error: log, count, go on (never a hot loop)
            rejected["internal"] += 1
            log.exception("receiving on %s failed", channel)
            await asyncio.sleep(0.1)
            continue
        try:
            await handle(frames, channel, reply)
        except asyncio.CancelledError:
            raise
        except Exception:
            rejected["internal"] += 1
            log.exception("internal error while handling a message on %s", channel,
                          extra={"event": "internal", "fields": {"channel": channel}})
        await asyncio.sleep(0)  # a message ready at once would otherwise never yield


def max_frame_bytes(limits: WireLimits) -> int:
    """The socket's MAXMSGSIZE: the largest frame the wire accepts, plus CURVE's framing."""
    return frame_limit(limits)


def tagged(exc: WireError, env: Envelope) -> WireError:
    """Attach sender and seq, as Verifier.open does, for `rejection_line`."""
    exc.sender, exc.seq = env.sender, env.seq  # type: ignore[attr-defined]
    return exc


async def watch_peers(paths: Sequence[Path | None], reload: Callable[[], Awaitable[Any]],
                      interval: float = PEERS_POLL) -> None:
    """Call `reload` when one of `paths` (node.toml, the peers file) changes on disk (polled
    every `interval` s, by content); a bad file is logged and the peers stay as they were."""
    def stamps() -> list[Stamp]:
        return [Stamp.of(p) for p in paths if p is not None]

    seen = await asyncio.to_thread(stamps)
    while True:
        await asyncio.sleep(interval)
        now = await asyncio.to_thread(stamps)
        if now == seen:
            continue
        seen = now
        try:
            await reload()
        except asyncio.CancelledError:
            raise
        except TwinnodeError as exc:
            event(log, "peers.reload_failed", f"{exc}; the peers stay as they were",
                  level=logging.WARNING)
