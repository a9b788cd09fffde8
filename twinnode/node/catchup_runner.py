"""The asyncio side of catch-up: the waits, requests and answers that carry out `node.catchup`'s
decisions with the node's sockets and store.

`node.catchup` decides (which peer to wake, whether a lack is still filling, whether an end
marker completes a request, whether to serve, what to send); this module runs it, as in
pyzmq's split of a protocol core from its asyncio adapter: our heartbeats, a worker per peer
that waits to be woken and asks (when it holds `Catchup.asking`'s turn), the periodic timer,
the grace periods of a recheck, one request at a time to a peer with its end marker awaited,
and the answer to a peer's request.
`node.core` composes it: it feeds it the heartbeats and end markers that ingest opened, spawns
its tasks while started, and passes in the transport, store and replay guard they use.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Callable, Iterable, Mapping, Sequence

from twinnode.errors import StoreError
from twinnode.eventlog import event
from twinnode.node.agreed import PeerLimits
from twinnode.node.catchup import CATCHUP_GAP, CATCHUP_TIMEOUT, Catchup
from twinnode.node.config import NetworkSection
from twinnode.node.receiving import Reply
from twinnode.node.transport import Transport
from twinnode.store.store import Store
from twinnode.trust.replay import Holding, ReplayGuard
from twinnode.wire import (
    CatchupEnd,
    CatchupRequest,
    Heartbeat,
    Signer,
    encode_catchup_end,
    encode_catchup_request,
    encode_heartbeat,
)

log = logging.getLogger("twinnode.node")
PLAIN_FOR = 600.0  # seconds a peer that did not answer a request with `tips` is asked without


class CatchupRunner:
    """Runs one node's catch-up: `wanted[peer]` wakes that peer's worker."""

    def __init__(self, catchup: Catchup, own: str, signer: Signer, network: NetworkSection,
                 counters: Counter[str], rejected: Counter[str],
                 limits: PeerLimits | None = None) -> None:
        self.catchup, self.own, self.signer, self.network = catchup, own, signer, network
        self.counters, self.rejected = counters, rejected
        self.limits = limits  # what each peer accepts (`node.agreed`): serve only that
        self.wanted = {name: asyncio.Event() for name in catchup.peers}
        self._ends: dict[bytes, asyncio.Future[CatchupEnd]] = {}
        self._turn_free = asyncio.Event()
        self.caught_up: Callable[[str], None] | None = None  # a peer sent all we lacked
        self._plain: dict[str, float] = {}  # peer -> until when it is asked without `tips`

    # ---- fed by the node's ingest ----

    def on_heartbeat(self, hb: Heartbeat, guard: ReplayGuard) -> None:
        """A peer's heartbeat (our own, forwarded, teaches nothing): count it, and wake the
        peer's worker when `Catchup.on_heartbeat` says so."""
        if hb.sender not in self.catchup.peers:
            return
        self.counters["heartbeats"] += 1
        if self.limits is not None:
            self.limits.on_heartbeat(hb)
        if self.catchup.on_heartbeat(hb, guard):
            self.wanted[hb.sender].set()

    def on_end(self, end: CatchupEnd, sender: str) -> None:
        """An end marker completes our pending request (MisaddressedMessage when it comes
        from a peer we did not ask)."""
        if self.catchup.end_marker(end.request_id, sender):
            future = self._ends.get(end.request_id)
            if future is not None and not future.done():
                future.set_result(end)

    def set_peers(self, peers: Iterable[tuple[str, str]], pinned: Sequence[str]) -> None:
        """A peers reload (`Catchup.set_peers`): a wake-up event per peer, old ones kept."""
        self.catchup.set_peers(peers, pinned)
        if self.limits is not None:
            self.limits.keep_only(self.catchup.peers)
        self.wanted = {name: self.wanted.get(name) or asyncio.Event()
                       for name in self.catchup.peers}

    def reset(self) -> None:
        """The node stopped: no request is pending any more."""
        self.catchup.pending.clear()
        self.catchup.asking.holder = None
        self._ends.clear()

    # ---- tasks ----

    async def heartbeats(self, transport: Transport, guard: ReplayGuard) -> None:
        """Publish our heartbeat (latest own seq, what we hold) every heartbeat interval."""
        while True:
            rows, frame = self.limits.advert() if self.limits else (None, None)
            hb = Heartbeat(self.own, guard.holding(self.own).latest, guard.holdings(),
                           max_rows=rows, max_frame=frame)
            await transport.publish(encode_heartbeat(hb, self.signer))
            await asyncio.sleep(self.network.heartbeat_interval)

    async def periodic(self) -> None:
        """Wake one live peer's catch-up per interval (`Catchup.periodic_pick`)."""
        while True:
            await asyncio.sleep(self.network.catchup_interval)
            name = self.catchup.periodic_pick()
            if name is not None:
                self.wanted[name].set()

    async def worker(self, name: str, transport: Transport, guard: ReplayGuard) -> None:
        """Each time `name` is wanted: recheck a heartbeat-shown lack, then ask; never dies."""
        wanted = self.wanted[name]
        while True:
            await wanted.wait()
            wanted.clear()
            if self.catchup.take_recheck(name) and not await self.still_lacking(name, guard):
                continue
            await self.my_turn(name)
            try:
                await self.catch_up(name, transport, guard)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.rejected["internal"] += 1
                log.exception("catch-up from %s failed", name)
            finally:
                self.catchup.asking.release(name)
                self._turn_free.set()
            await asyncio.sleep(CATCHUP_GAP)

    async def my_turn(self, name: str) -> None:
        """Wait until `name` holds the turn to ask (`catchup.Asking`): released by the
        worker that held it, or lapsed because that peer stalled."""
        while (wait := self.catchup.asking.take(name)) > 0:
            self._turn_free.clear()
            try:
                await asyncio.wait_for(self._turn_free.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def still_lacking(self, name: str, guard: ReplayGuard) -> bool:
        """After a heartbeat of `name` showed a lack: wait while live traffic is still
        filling it; True once it stalls (`catchup.Recheck`)."""
        check = self.catchup.recheck(name, guard)
        while True:
            await asyncio.sleep(check.grace)
            verdict = check.step(guard)
            if verdict is not None:
                return verdict

    async def catch_up(self, peer: str, transport: Transport, guard: ReplayGuard) -> int:
        """Ask `peer` for every stored envelope we lack, batch after batch; return how many
        new twins arrived (0 when it is not connected or does not answer)."""
        total = 0
        while True:
            tips = guard.tips() if self._plain.get(peer, 0.0) < time.monotonic() else None
            req = CatchupRequest(self.own, peer, self.catchup.have(guard), tips=tips)
            self.catchup.expect_end(peer, req.request_id)
            future = self._ends[req.request_id] = asyncio.get_running_loop().create_future()
            before = self.counters["accepted"]
            try:
                if not await transport.request(peer, encode_catchup_request(req, self.signer)):
                    event(log, "catchup.skipped", "peer not connected", peer=peer,
                          level=logging.DEBUG)
                    return total
                self.counters["catchup_requests"] += 1
                end = await asyncio.wait_for(future, CATCHUP_TIMEOUT)
            except asyncio.TimeoutError:
                event(log, "catchup.timeout", f"no end marker within {CATCHUP_TIMEOUT:g} s",
                      level=logging.WARNING, peer=peer)
                if tips:  # a node of an earlier release refuses `tips`: ask it without
                    self._plain[peer] = time.monotonic() + PLAIN_FOR
                return total
            finally:
                self.catchup.forget(req.request_id)
                self._ends.pop(req.request_id, None)
            new = self.counters["accepted"] - before
            total += new
            event(log, "catchup.done", peer=peer, sent=end.count, new=new,
                  level=logging.INFO if end.count else logging.DEBUG)
            if not self.catchup.again(end.count, new):
                if self.caught_up is not None:
                    self.caught_up(peer)
                return total
            await asyncio.sleep(CATCHUP_GAP)

    async def serve(self, req: CatchupRequest, reply: Reply | None, store: Store) -> None:
        """Answer a catch-up request: stored envelopes the requester lacks, then the end."""
        if reply is None:
            return
        if not self.catchup.may_serve(req.sender):
            self.rejected["throttled"] += 1
            await reply(encode_catchup_end(CatchupEnd(self.own, req.sender, req.request_id, 0),
                                           self.signer))
            return
        wanted = await asyncio.to_thread(self.missing_for, store, req.have,
                                         self.network.catchup_batch, req.sender)
        if req.tips:  # our copy of a seq it holds with other content: it sees both
            wanted = (await asyncio.to_thread(conflicts, store, req.tips, req.sender)
                      )[:self.network.catchup_batch] + wanted
        sent = 0
        for sender, seq in wanted:
            try:
                frames = await asyncio.to_thread(store.frames, sender, seq)
            except StoreError as exc:
                event(log, "store.unreadable", str(exc), level=logging.ERROR, peer=sender,
                      seq=seq)
                continue
            if self.limits is not None and not self.limits.fits(req.sender, sender, seq, frames):
                continue  # larger than the requester accepts (`node.agreed`)
            if not await reply(frames):
                return
            sent += 1
        await reply(encode_catchup_end(CatchupEnd(self.own, req.sender, req.request_id, sent),
                                       self.signer))
        self.counters["served"] += sent
        event(log, "catchup.served", peer=req.sender, sent=sent,
              level=logging.INFO if sent else logging.DEBUG)

    def missing_for(self, store: Store, have: Mapping[str, Holding],
                    limit: int, requester: str = "") -> list[tuple[str, int]]:
        """Up to `limit` (sender, seq) we hold and the requester lacks, of the senders it
        names in `have` (it names every sender it pins, so it never gets what it refuses),
        less those known to be larger than it accepts: the store says what each lacks,
        `Catchup.serve_plan` interleaves them."""
        unfit = self.limits.unfit(requester) if self.limits is not None else set()
        lacking = {sender: [q for q in store.missing(sender, have[sender], limit + len(unfit))
                            if (sender, q) not in unfit][:limit]
                   for sender in sorted(set(have) & set(store.counts()))}
        return self.catchup.serve_plan(lacking, limit)


def conflicts(store: Store, tips: Mapping[str, tuple[int, bytes]],
              requester: str) -> list[tuple[str, int]]:
    """The (sender, seq) of a request's `tips` that we hold with another digest: we send
    our copy (signed by its sender), so the requester refuses it as equivocation and logs
    both digests (rate-limited there); here only at DEBUG (a claim, not a proof)."""
    out = []
    for sender, (seq, digest) in sorted(tips.items()):
        entry = store.get(sender, seq)
        if entry is not None and entry.digest != digest.hex():
            out.append((sender, seq))
            event(log, "catchup.conflict", f"{requester} holds other content as {sender} seq "
                  f"{seq} than we do", level=logging.DEBUG, peer=requester, sender=sender,
                  seq=seq, ours=entry.digest, theirs=digest.hex())
    return out
