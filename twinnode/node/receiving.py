"""A receive loop that never dies: one per socket role, run by `node.core` until cancelled.

Each message goes to the node's handler; a socket error is logged, counted as `internal` and
followed by a short pause (never a hot loop). On the ROUTER, each catch-up request is
handled in a task of its own, at most `concurrent` at once (a requester that stops reading
fills only its own bounded reply queue); a message beyond that is dropped and counted as
`busy` (its sender asks again later).
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
Handle = Callable[[Sequence[bytes], str, Reply | None], Coroutine[Any, Any, None]]
PEERS_POLL = 2.0  # seconds between looks at node.toml and the peers file


async def receive_loop(channel: str, receive: Receive, handle: Handle, rejected: Counter[str],
                       *, serving: set[asyncio.Task[None]] | None = None,
                       concurrent: int = 0) -> None:
    """Receive on `channel` and `handle` each message until cancelled; with `concurrent` > 0,
    each in a task kept in `serving`, at most that many at once."""
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
        if not concurrent or serving is None:
            await handle(frames, channel, reply)
        elif len(serving) >= concurrent:
            rejected["busy"] += 1
            event(log, "busy", f"{concurrent} requests in progress; one dropped",
                  level=logging.DEBUG, channel=channel)
        else:
            task = asyncio.create_task(handle(frames, channel, reply))
            serving.add(task)
            task.add_done_callback(serving.discard)


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
