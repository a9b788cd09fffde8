"""Fair serving of catch-up requests: cheap checks first, one slot per peer, a bounded line.

Every message on the ROUTER is opened in the receive loop itself, before it can take anything:
`Verifier.open` with the router's families checks size, shape (a catch-up request, no
payload), pinned sender, signature and freshness (a replayed nonce, a stale or misaddressed
request). Garbage, oversized or misrouted frames, forgeries and replays are refused there,
counted and logged (`node.rejections`: once per reason and peer a minute) and never wait
for a slot.

A request that passes is its verified sender's. `FairSlots` (loop-free) decides: `slots`
requests are answered at once; each peer holds at most one of them and has at most one
request waiting; a newer request replaces that peer's waiting one (`busy`: the requester gave
up on the older); a freed slot goes to the peer that has waited longest. So when every node
asks every peer together (a cluster's start-up), requests wait their turn instead of being
dropped, and a pinned peer flooding requests holds one slot and one place in the line, never
another peer's. What the line can hold is one request per pinned peer.

`CatchupServer` is the asyncio side: the receive loop (which yields to the event loop after
every message, so a flood cannot starve the node's other tasks) and the serving tasks.
What is served, and to whom it is throttled, is `node.catchup_runner.CatchupRunner.serve`'s.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from typing import Any, Callable, Coroutine, Generic, Sequence, TypeVar

from twinnode.errors import WireError
from twinnode.eventlog import event
from twinnode.node.receiving import Receive, Reply
from twinnode.node.rejections import RejectionLog
from twinnode.wire import REQUEST, CatchupRequest, Verifier

log = logging.getLogger("twinnode.node")

SLOTS = 4  # catch-up requests answered at once (one per peer at most)


def open_request(verifier: Verifier, refusals: RejectionLog,
                 frames: Sequence[bytes]) -> CatchupRequest | None:
    """A ROUTER message opened at once, before any slot (a request touches no replay state,
    so no lock), or None: refused, counted and logged."""
    try:
        env = verifier.open(frames, expect=(REQUEST,), channel="router")
    except WireError as exc:
        refusals.refused(exc, "router")
        return None
    return env.message if isinstance(env.message, CatchupRequest) else None

T = TypeVar("T")
OpenRequest = Callable[[Sequence[bytes]], CatchupRequest | None]  # None: refused (counted)
Serve = Callable[[CatchupRequest, Reply], Coroutine[Any, Any, None]]


class FairSlots(Generic[T]):
    """`slots` at once, at most one per peer; at most one waiting item per peer, served in
    the order the peers began to wait."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.active: set[str] = set()
        self.waiting: OrderedDict[str, T] = OrderedDict()

    def offer(self, peer: str, item: T) -> tuple[bool, T | None]:
        """(True, None): start `item` now; (False, replaced): it waits, in place of
        `replaced` (that peer's previous waiting item, dropped), or of nothing."""
        if peer not in self.active and len(self.active) < self.slots:
            self.active.add(peer)
            return True, None
        replaced = self.waiting.get(peer)
        self.waiting[peer] = item  # a replacing item keeps the peer's place in the line
        return False, replaced

    def done(self, peer: str) -> list[tuple[str, T]]:
        """`peer`'s item ended: the waiting items to start now (longest waiting peer first)."""
        self.active.discard(peer)
        start: list[tuple[str, T]] = []
        for name in list(self.waiting):
            if len(self.active) >= self.slots:
                break
            if name not in self.active:
                start.append((name, self.waiting.pop(name)))
                self.active.add(name)
        return start

    def clear(self) -> None:
        self.active.clear()
        self.waiting.clear()


class CatchupServer:
    """The ROUTER's receive loop and its serving tasks (`FairSlots` of requests)."""

    def __init__(self, counters: Counter[str], rejected: Counter[str],
                 slots: int = SLOTS) -> None:
        self.counters, self.rejected = counters, rejected
        self.fair: FairSlots[tuple[CatchupRequest, Reply]] = FairSlots(slots)
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self, receive: Receive, open_request: OpenRequest, serve: Serve) -> None:
        """Receive on the ROUTER until cancelled: open each message at once, then answer the
        requests that pass, fairly (module docstring)."""
        while True:
            try:
                frames, reply = await receive()
                req = open_request(frames)
            except asyncio.CancelledError:
                raise
            except Exception:  # a socket error or a bug: log, count, go on (never a hot loop)
                self.rejected["internal"] += 1
                log.exception("receiving on router failed")
                await asyncio.sleep(0.1)
                continue
            if req is not None and reply is not None:
                self.offer(req, reply, serve)
            await asyncio.sleep(0)  # let heartbeats, live twins and replies run

    def offer(self, req: CatchupRequest, reply: Reply, serve: Serve) -> None:
        """Start answering `req` now, or let it wait for its sender's turn."""
        now, replaced = self.fair.offer(req.sender, (req, reply))
        if now:
            self._start(req.sender, req, reply, serve)
            return
        self.counters["serve_waits"] += 1
        if replaced is not None:
            self.counters["busy"] += 1
            event(log, "catchup.busy", "a newer request replaced the one waiting",
                  level=logging.DEBUG, peer=req.sender)

    def _start(self, peer: str, req: CatchupRequest, reply: Reply, serve: Serve) -> None:
        task = asyncio.create_task(self._serve_one(req, reply, serve))
        self.tasks.add(task)

        def finished(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            if not t.cancelled():
                for name, (r, rep) in self.fair.done(peer):
                    self._start(name, r, rep, serve)
        task.add_done_callback(finished)

    async def _serve_one(self, req: CatchupRequest, reply: Reply, serve: Serve) -> None:
        try:
            await serve(req, reply)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.rejected["internal"] += 1
            log.exception("answering a catch-up request of %s failed", req.sender)

    async def stop(self) -> None:
        """Cancel every answer in progress and forget the line (the node stopped)."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()
        self.fair.clear()

