"""The asyncio node: one long-lived process per party that composes store, wire and transport.

    start()   open the store (lock, crash recovery) and rebuild the replay guard from it;
              bind PUB + ROUTER behind the ZAP allow-list, subscribe to every peer; serve the
              control socket; then run the tasks below (and, with [training] auto, a first
              publish job when nothing of ours was published yet)
    tasks     SUB loop (twins, heartbeats) - ROUTER loop (catch-up requests, each answered
              in a task of its own, at most MAX_SERVING at once) - one DEALER loop and one
              catch-up worker per peer - heartbeat - periodic catch-up
    stop()    cancel the job (a training worker is terminated, its ledger charge stays),
              cancel the tasks, close the control socket, the sockets (linger 0), the store

Every inbound message goes through `handle_frames`: `Verifier.open` (in a thread for a large
payload, so hashing and decoding never stall the loop; one message at a time under the ingest
lock, so a twin's replay check and its `accept` cannot interleave with another's), a check that
the family belongs on the channel it came in on, then for a twin: store (durable) and only then
`Verifier.accept`. A refusal is a `REJECTED (<reason>)` log line and a counter, never an
exception out of a loop. The replay guard is rebuilt from the store's index at start, not
saved beside it: the index is what was acknowledged, so the two cannot disagree after a crash,
and an envelope the store quarantined can be fetched again.

Catch-up (the ZeroMQ Guide's Clone pattern): a peer's first heartbeat, a heartbeat showing
seqs we lack (once live traffic stops filling the lack), and a periodic timer (one live peer
per `catchup_interval`, round robin, unless twins are arriving live) wake that peer's
catch-up worker, which sends a signed request with what we `have` of every sender
we pin (watermark 0 for none) and waits for the end marker; the server answers with up to
`catchup_batch` stored original envelopes of the senders named in `have` (any of them, not
only its own) and a signed end, which completes the request only if it comes from the peer
that was asked; the worker asks again while new twins arrive.

Publishing takes an own seq per twin as it is stored (`Store.next_own_seq`), skipping the
twins of the release that an earlier publish of it stored: a publish cut short or refused
leaves no gap in our seqs, and publishing the same release again completes it.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Awaitable, Callable, Sequence

from twinnode.errors import (
    ControlError,
    DuplicateMessage,
    MalformedMessage,
    MisaddressedMessage,
    StoreError,
    WireError,
)
from twinnode.eventlog import event
from twinnode.generator.privacy import Ledger
from twinnode.node.config import NodeConfig
from twinnode.node.control import ControlServer, socket_path
from twinnode.node.slot import Body, JobSlot, JobState
from twinnode.node.transport import Transport
from twinnode.schema import Schema
from twinnode.store.store import Store
from twinnode.trust.certs import curve_raw
from twinnode.trust.identity import Identity, TrustStore, fingerprint
from twinnode.twins import Release
from twinnode.wire import (
    END,
    HEARTBEAT,
    REQUEST,
    TWIN,
    CatchupEnd,
    CatchupRequest,
    Envelope,
    Heartbeat,
    ReplayGuard,
    Signer,
    Verifier,
    WireLimits,
    encode_catchup_end,
    encode_catchup_request,
    encode_heartbeat,
    encode_twin,
    limits_for,
    rejection_line,
    twin_digest,
)

log = logging.getLogger("twinnode.node")

CHANNELS = {"sub": (TWIN, HEARTBEAT), "router": (REQUEST,), "dealer": (TWIN, END),
            "local": (TWIN,)}
CATCHUP_GAP = 0.2        # seconds between two requests of ours to one peer
CATCHUP_TIMEOUT = 15.0   # seconds to wait for a peer's end marker
SERVE_GAP = 0.1          # a peer asking more often than this gets an empty reply
MAX_SERVING = 4          # catch-up requests answered at once; more are dropped (`busy`)
OFFLOAD_BYTES = 64 * 1024  # messages with a larger payload are verified in a thread
RECHECKS = 20            # grace periods a heartbeat-shown lack may wait on live traffic
QUIET_REASONS = ("replay", "duplicate")  # expected when catch-up overlaps live traffic

Reply = Callable[[Sequence[bytes]], Awaitable[bool]]


@dataclass
class PeerState:
    """What this node knows of one pinned peer, from its heartbeats and our requests."""

    name: str
    address: str
    last_heartbeat: float | None = None    # time.monotonic()
    latest: int | None = None
    holdings: dict[str, int] = field(default_factory=dict)
    asked: Any = None                      # the heartbeat state that last woke catch-up
    recheck: bool = False                  # woken by a lack: check again after a grace
    last_served: float = -math.inf
    wanted: asyncio.Event = field(default_factory=asyncio.Event)

    def alive(self, interval: float) -> bool:
        return (self.last_heartbeat is not None
                and time.monotonic() - self.last_heartbeat < 3 * interval + 1.0)


class Node:
    """One party's node. `start()`/`stop()` are symmetric; `stop()` is safe twice."""

    def __init__(self, config: NodeConfig, limits: WireLimits = WireLimits()) -> None:
        self.config = config
        self.name = config.name
        self.state_dir = config.state_dir
        self.schema = Schema.load(config.data.schema)
        self.limits = limits_for(self.schema, config.network.max_rows, limits)
        self.identity = Identity.load(config.keys_dir, self.name)
        me = self.identity.peer(config.network.pub, config.network.router)
        self.trust = TrustStore([me, *config.peers])  # pinned: our twins come back via peers
        self.signer = Signer(self.identity)
        self.ledger = Ledger(self.state_dir, cap_epsilon=config.privacy.cap_epsilon)
        self.peers = {p.name: PeerState(p.name, p.pub_address or "") for p in config.peers}
        self.rejected: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.store: Store | None = None
        self.verifier: Verifier | None = None
        self.transport: Transport | None = None
        self.control: ControlServer | None = None
        self.jobs = JobSlot()
        self._tasks: list[asyncio.Task] = []
        self._pending: dict[bytes, tuple[str, asyncio.Future]] = {}
        self._serving: set[asyncio.Task] = set()
        self._ingest_lock = asyncio.Lock()
        self._stop_requested = asyncio.Event()
        self._started = time.monotonic()
        self._stopping = False
        self._denied_logged: dict[bytes, float] = {}
        self._last_live = -math.inf  # when a twin last arrived live (SUB)

    # ---- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Open the store and rebuild the replay guard from its index (no sockets)."""
        if self.store is not None:
            return
        self.store = await asyncio.to_thread(Store.open, self.state_dir)
        guard = ReplayGuard()
        for entry in await asyncio.to_thread(self.store.list):
            guard.accept(entry.sender, entry.seq, bytes.fromhex(entry.digest))
        self.verifier = Verifier(self.trust, self.schema, guard, self.limits, local=self.name)

    async def start(self) -> None:
        """Open the store, bind and connect the sockets, serve control, start the tasks."""
        from twinnode.node.commands import handlers  # control handlers read this node's state

        if self.transport is not None:
            raise ControlError(f"node {self.name} is already started")
        self._started = time.monotonic()
        self._stop_requested.clear()
        try:
            await self.open()
            net = self.config.network
            self.transport = Transport(
                self.identity.curve_public, self.identity.curve_secret,
                [p.curve_key for p in self.config.peers], hwm=net.hwm,
                reply_hwm=net.catchup_batch + 2, max_message_bytes=max_frame_bytes(self.limits),
                on_denied=self._denied)
            await self.transport.start(net.pub, net.router)
            for peer in self.config.peers:
                self.transport.connect(peer.name, peer.pub_address or "",
                                       peer.router_address or "", peer.curve_key)
            self.control = ControlServer(socket_path(self.state_dir), handlers(self))
            await self.control.start()
            self._spawn(self._loop("sub", self._from_sub),
                        self._loop("router", self._from_router, concurrent=MAX_SERVING),
                        self._heartbeat_loop(), self._periodic_catchup())
            for name in self.peers:
                self._spawn(self._loop("dealer", self._from_dealer(name)),
                            self._catchup_worker(name))
        except BaseException:
            await self.stop()
            raise
        held = self.store.counts() if self.store else {}
        event(log, "node.started", node=self.name, pub=self.transport.endpoints.get("pub"),
              router=self.transport.endpoints.get("router"), peers=",".join(self.peers),
              held=sum(held.values()), own_seq=self.own_latest(), pid=os.getpid())
        if self.config.training.auto and held.get(self.name, 0) == 0:
            from twinnode.node.jobs import auto_publish_blocker, publish_job
            why = await asyncio.to_thread(auto_publish_blocker, self)
            if why is None:
                self.start_job("publish", lambda job: publish_job(self, job, {}))
            else:
                event(log, "training.auto_skipped", why, level=logging.WARNING)

    async def stop(self) -> None:
        """Abandon the job, cancel the tasks, close control socket, sockets and store.
        Safe twice; afterwards `start()` may run again."""
        self._stop_requested.set()
        if self._stopping or (self.store is None and self.transport is None):
            return
        self._stopping = True
        event(log, "node.stopping", node=self.name)
        try:
            await self.jobs.cancel()
            tasks = [*self._tasks, *self._serving]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks = []
            self._serving.clear()
            if self.control is not None:
                await self.control.stop()
            if self.transport is not None:
                self.transport.close()
            if self.store is not None:
                await asyncio.to_thread(self.store.close)
        finally:
            self.control = self.transport = self.store = self.verifier = None
            self._pending.clear()
            self._stopping = False
        event(log, "node.stopped", node=self.name, accepted=self.counters["accepted"],
              rejected=sum(self.rejected.values()))

    def request_stop(self, why: str = "request") -> None:
        """Ask `run_until_stopped` to stop the node (signal handlers, `shutdown`)."""
        event(log, "node.stop_requested", why=why)
        self._stop_requested.set()

    async def run_until_stopped(self) -> None:
        """Start, wait for a stop request, stop."""
        try:
            await self.start()
            await self._stop_requested.wait()
        finally:
            await self.stop()

    def uptime(self) -> float:
        """Seconds since `start()`."""
        return time.monotonic() - self._started

    def _spawn(self, *coros: Awaitable[None]) -> None:
        self._tasks += [asyncio.create_task(c) for c in coros]

    # ---- receiving ---------------------------------------------------------------------

    async def handle_frames(self, frames: Sequence[bytes], channel: str = "sub",
                            reply: Reply | None = None) -> Envelope | None:
        """Open one inbound message and act on it; a refusal is logged and counted.

        Returns the verified envelope, or None when it was refused. Twins are stored before
        the guard records them; a catch-up request is answered through `reply`.
        """
        try:
            env = await self._ingest(frames, channel)
        except WireError as exc:
            self._reject(exc, channel)
            return None
        except StoreError as exc:
            self.rejected["store"] += 1
            event(log, "store.failed", str(exc), level=logging.ERROR, channel=channel)
            return None
        if env.family == HEARTBEAT:
            self._on_heartbeat(env.message)  # type: ignore[arg-type]
        elif env.family == REQUEST:
            await self._serve(env.message, reply)  # type: ignore[arg-type]
        elif env.family == END:
            asked, future = self._pending.get(env.message.request_id,  # type: ignore[union-attr]
                                              (None, None))
            if future is not None and asked != env.sender:
                self._reject(_tagged(MisaddressedMessage(
                    f"end marker for a request to {asked} came from {env.sender}"), env), channel)
                return None
            if future is not None and not future.done():
                future.set_result(env.message)
        return env

    async def _ingest(self, frames: Sequence[bytes], channel: str) -> Envelope:
        """Verify, check the channel, and store a twin before recording it as seen; raises
        the WireError (or StoreError) that refuses the message."""
        async with self._ingest_lock:
            return await self._ingest_locked(frames, channel)

    async def _ingest_locked(self, frames: Sequence[bytes], channel: str) -> Envelope:
        assert self.verifier is not None, "open() the node first"
        big = len(frames) > 2 and isinstance(frames[2], (bytes, bytearray, memoryview)) \
            and len(frames[2]) > OFFLOAD_BYTES
        env = (await asyncio.to_thread(self.verifier.open, frames) if big
               else self.verifier.open(frames))
        if env.family not in CHANNELS.get(channel, ()):
            raise _tagged(MalformedMessage(
                f"a {env.family} message does not belong on the {channel} channel"), env)
        if env.family == TWIN:
            await self._store(env, channel)
        return env

    async def _receive(self, frames: Sequence[bytes], channel: str,
                       reply: Reply | None = None) -> None:
        """`handle_frames`, with anything unexpected logged and counted as internal."""
        try:
            await self.handle_frames(frames, channel, reply)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.rejected["internal"] += 1
            log.exception("internal error while handling a message on %s", channel,
                          extra={"event": "internal", "fields": {"channel": channel}})

    async def _store(self, env: Envelope, channel: str) -> None:
        assert self.store is not None and self.verifier is not None
        p = env.twin.provenance
        stored = await asyncio.to_thread(self.store.put, env.sender, env.seq, env.digest,
                                         env.frames, kind="twin", k=p.index, release=p.release,
                                         own=env.sender == self.name)
        if not stored:
            raise _tagged(DuplicateMessage(f"{env.sender} seq {env.seq} (or its content) is "
                                           "already in the store"), env)
        self.verifier.accept(env)
        self.counters["accepted"] += 1
        if channel == "sub":
            self._last_live = time.monotonic()
        event(log, "twin.accepted", peer=env.sender, seq=env.seq, k=p.index,
              release=p.release, channel=channel, level=logging.DEBUG)

    def _reject(self, exc: WireError, channel: str) -> None:
        self.rejected[exc.reason] += 1
        level = logging.INFO if exc.reason in QUIET_REASONS else logging.WARNING
        event(log, "rejected", rejection_line(exc), level=level, reason=exc.reason,
              peer=getattr(exc, "sender", None), seq=getattr(exc, "seq", None), channel=channel,
              count=self.rejected[exc.reason])

    def _denied(self, key: bytes) -> None:
        """ZAP refused a CURVE client: count it, log it (once a minute per key)."""
        self.rejected["zap-denied"] += 1
        now = time.monotonic()
        if now - self._denied_logged.get(key, -math.inf) >= 60.0:
            self._denied_logged[key] = now
            event(log, "zap.denied", "DENIED (unpinned CURVE key)", level=logging.WARNING,
                  key_fingerprint=fingerprint(curve_raw(key)), count=self.rejected["zap-denied"])

    async def _loop(self, channel: str,
                    receive: Callable[[], Awaitable[tuple[list[bytes], Reply | None]]],
                    concurrent: int = 0) -> None:
        """Receive and handle messages on one channel until cancelled; never dies on input.
        `concurrent` > 0: handle each message in a task of its own, at most that many at
        once (a requester that stops reading fills only its own bounded reply queue); a message
        beyond that is dropped and counted as `busy` (its sender asks again later)."""
        while True:
            try:
                frames, reply = await receive()
            except asyncio.CancelledError:
                raise
            except Exception:  # a socket error: log, count, go on (never a hot loop)
                self.rejected["internal"] += 1
                log.exception("receiving on %s failed", channel)
                await asyncio.sleep(0.1)
                continue
            if not concurrent:
                await self._receive(frames, channel, reply)
            elif len(self._serving) >= concurrent:
                self.rejected["busy"] += 1
                event(log, "busy", f"{concurrent} requests in progress; one dropped",
                      level=logging.DEBUG, channel=channel)
            else:
                task = asyncio.create_task(self._receive(frames, channel, reply))
                self._serving.add(task)
                task.add_done_callback(self._serving.discard)

    async def _from_sub(self) -> tuple[list[bytes], Reply | None]:
        assert self.transport is not None
        return await self.transport.recv_sub(), None

    async def _from_router(self) -> tuple[list[bytes], Reply | None]:
        assert self.transport is not None
        routing_id, frames = await self.transport.recv_request()
        return frames, partial(self.transport.reply, routing_id)

    def _from_dealer(self, peer: str) -> Callable[[], Awaitable[tuple[list[bytes], None]]]:
        async def receive() -> tuple[list[bytes], None]:
            assert self.transport is not None
            return await self.transport.recv_reply(peer), None
        return receive

    # ---- heartbeats and catch-up -------------------------------------------------------

    def own_latest(self) -> int:
        """The highest own seq held (our heartbeat's `latest`)."""
        return self.latest_held(self.name)

    def latest_held(self, sender: str) -> int:
        assert self.verifier is not None
        return self.verifier.guard.holding(sender).latest

    async def _heartbeat_loop(self) -> None:
        assert self.transport is not None and self.verifier is not None
        while True:
            hb = Heartbeat(self.name, self.own_latest(), self.verifier.guard.holdings())
            await self.transport.publish(encode_heartbeat(hb, self.signer))
            await asyncio.sleep(self.config.network.heartbeat_interval)

    def _on_heartbeat(self, hb: Heartbeat) -> None:
        peer = self.peers.get(hb.sender)
        if peer is None:
            return  # our own heartbeat, forwarded: nothing to learn
        self.counters["heartbeats"] += 1
        first = peer.last_heartbeat is None
        peer.last_heartbeat, peer.latest, peer.holdings = (time.monotonic(), hb.latest,
                                                           dict(hb.holdings))
        state = (hb.latest, tuple(sorted(hb.holdings.items())))
        if first:
            event(log, "peer.heartbeat", "first heartbeat", peer=hb.sender, latest=hb.latest)
            peer.asked = state
            peer.wanted.set()
        elif state != peer.asked and self._lacks(hb.sender, state):
            peer.asked, peer.recheck = state, True
            peer.wanted.set()

    def _lacks(self, sender: str, state: tuple[int, tuple[tuple[str, int], ...]]) -> bool:
        """Whether a heartbeat state (latest, holdings) of `sender` shows twins we lack."""
        assert self.verifier is not None
        guard = self.verifier.guard
        latest, holdings = state
        if latest and guard.missing(sender, latest, limit=1):
            return True
        return any(s in self.trust and guard.missing(s, w, limit=1) for s, w in holdings)

    async def _periodic_catchup(self) -> None:
        """Wake one live peer's catch-up per interval, round robin; skipped while twins
        arrive live (a request then fetches what is already on its way; a real gap shows
        in the heartbeats)."""
        turn = 0
        interval = self.config.network.catchup_interval
        beat = self.config.network.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() - self._last_live < 2 * beat:
                continue
            alive = [p for p in self.peers.values() if p.alive(beat)]
            if alive:
                alive[turn % len(alive)].wanted.set()
                turn += 1

    async def _catchup_worker(self, name: str) -> None:
        peer = self.peers[name]
        while True:
            await peer.wanted.wait()
            peer.wanted.clear()
            if peer.recheck:
                peer.recheck = False
                if not await self._still_lacking(peer):
                    continue
            try:
                await self.catch_up(name)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.rejected["internal"] += 1
                log.exception("catch-up from %s failed", name)
            await asyncio.sleep(CATCHUP_GAP)

    async def _still_lacking(self, peer: PeerState) -> bool:
        """After a heartbeat showed a lack: wait while live traffic is still filling it
        (our holdings grow from one grace period to the next); True once it stalls."""
        assert self.verifier is not None
        grace = max(self.config.network.heartbeat_interval, 0.5)
        before = self.verifier.guard.holdings()
        for _ in range(RECHECKS):
            await asyncio.sleep(grace)
            if not self._lacks(peer.name, peer.asked):
                return False
            now = self.verifier.guard.holdings()
            if now == before:
                return True
            before = now
        return True

    async def catch_up(self, peer: str) -> int:
        """Ask `peer` for every stored envelope we lack, batch after batch; return how many
        new twins arrived (0 when it is not connected or does not answer)."""
        assert self.transport is not None and self.verifier is not None
        total = 0
        while True:
            guard = self.verifier.guard
            have = {s: guard.holding(s) for s in self.trust.names}
            req = CatchupRequest(self.name, peer, have)
            future = self._expect_end(peer, req.request_id)
            before = self.counters["accepted"]
            try:
                if not await self.transport.request(peer, encode_catchup_request(req,
                                                                                 self.signer)):
                    event(log, "catchup.skipped", "peer not connected", peer=peer,
                          level=logging.DEBUG)
                    return total
                self.counters["catchup_requests"] += 1
                end: CatchupEnd = await asyncio.wait_for(future, CATCHUP_TIMEOUT)
            except asyncio.TimeoutError:
                event(log, "catchup.timeout", f"no end marker within {CATCHUP_TIMEOUT:g} s",
                      level=logging.WARNING, peer=peer)
                return total
            finally:
                self._pending.pop(req.request_id, None)
            new = self.counters["accepted"] - before
            total += new
            event(log, "catchup.done", peer=peer, sent=end.count, new=new,
                  level=logging.INFO if end.count else logging.DEBUG)
            if end.count == 0 or new == 0:
                return total
            await asyncio.sleep(CATCHUP_GAP)

    def _expect_end(self, peer: str, request_id: bytes) -> asyncio.Future:
        """A future that `peer`'s end marker for `request_id` completes (and no one else's)."""
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (peer, future)
        return future

    async def _serve(self, req: CatchupRequest, reply: Reply | None) -> None:
        """Answer a catch-up request: stored envelopes the requester lacks, then the end."""
        assert self.store is not None
        if reply is None:
            return
        peer = self.peers.get(req.sender)
        now = time.monotonic()
        if peer is not None and now - peer.last_served < SERVE_GAP:
            self.rejected["throttled"] += 1
            await reply(encode_catchup_end(CatchupEnd(self.name, req.sender, req.request_id, 0),
                                           self.signer))
            return
        if peer is not None:
            peer.last_served = now
        wanted = await asyncio.to_thread(self._missing_for, req.have,
                                         self.config.network.catchup_batch)
        sent = 0
        for sender, seq in wanted:
            try:
                frames = await asyncio.to_thread(self.store.frames, sender, seq)
            except StoreError as exc:
                event(log, "store.unreadable", str(exc), level=logging.ERROR, peer=sender,
                      seq=seq)
                continue
            if not await reply(frames):
                return
            sent += 1
        await reply(encode_catchup_end(CatchupEnd(self.name, req.sender, req.request_id, sent),
                                       self.signer))
        self.counters["served"] += sent
        event(log, "catchup.served", peer=req.sender, sent=sent,
              level=logging.INFO if sent else logging.DEBUG)

    def _missing_for(self, have: Any, limit: int) -> list[tuple[str, int]]:
        """Up to `limit` (sender, seq) we hold and the requester lacks, of the senders it
        names in `have` (it names every sender it pins, so it never gets what it refuses),
        taken round robin over the senders, lowest seqs first: a sender whose `have` was cut
        short (`seqset.bounded`) and so looks lacking cannot crowd the others out of a batch."""
        assert self.store is not None
        lacking = {sender: self.store.missing(sender, have[sender], limit)
                   for sender in sorted(set(have) & set(self.store.counts()))}
        out = [(sender, seqs[rank]) for rank in range(limit)
               for sender, seqs in lacking.items() if rank < len(seqs)]
        return out[:limit]

    # ---- publishing and jobs -----------------------------------------------------------

    async def publish_release(self, release: Release,
                              progress: Callable[[int, int], None] | None = None) -> list[int]:
        """Check which twins of `release` were published before, then per remaining twin: take
        the next own seq, sign, store (durable), publish. Returns the new seqs. A publish cut
        short (cancelled, crashed) is completed by publishing the same release again."""
        assert self.store is not None and self.transport is not None
        if release.sender != self.name:
            raise ControlError(f"this release is from {release.sender!r}, not {self.name!r}; "
                               f"make it with --sender {self.name}")
        done = await asyncio.to_thread(self._published_before, release)
        if done:
            event(log, "release.resumed", f"{len(done)} of {len(release.twins)} twins were "
                  "published before; publishing the rest", release=release.receipt.get("release"))
        seqs: list[int] = []
        for i, twin in enumerate(release.twins):
            if i in done:
                continue
            async with self._ingest_lock:  # seq taken, signed and stored as one step
                seq = await asyncio.to_thread(self.store.next_own_seq, self.name)
                frames = await asyncio.to_thread(encode_twin, twin, self.schema, seq,
                                                 self.signer)
                try:
                    env = await self._ingest_locked(frames, "local")
                except WireError as exc:
                    raise ControlError(f"own twin {i} (seq {seq}) refused ({exc.reason}): "
                                       f"{exc}") from None
            seqs.append(seq)
            await self.transport.publish(env.frames)
            self.counters["published"] += 1
            if progress is not None:
                progress(len(done) + len(seqs), len(release.twins))
        event(log, "release.published", release=release.receipt.get("release"),
              k=len(release.twins), seqs=f"{seqs[0]}-{seqs[-1]}" if seqs else "-")
        return seqs

    def _published_before(self, release: Release) -> set[int]:
        """Indices of the twins of `release` already stored as ours under this release and
        index (an earlier publish of it, cut short). ControlError, before anything is sent,
        if every twin was published, if a twin's content went out under another release or
        index, or if two twins are identical. Runs in a thread: it encodes every payload."""
        assert self.store is not None
        seen: dict[bytes, int] = {}
        done: set[int] = set()
        for i, twin in enumerate(release.twins):
            digest = twin_digest(twin, self.schema)
            seq = self.store.has_digest(self.name, digest)
            if seq is not None:
                entry = self.store.get(self.name, seq)
                p = twin.provenance
                if entry is None or (entry.release, entry.k) != (p.release, p.index):
                    raise ControlError(f"own twin {i} repeats our twin seq {seq} of another "
                                       "release (duplicate); nothing was sent")
                done.add(i)
            if digest in seen:
                raise ControlError(f"own twins {seen[digest]} and {i} of this release are "
                                   "identical (duplicate); nothing was sent")
            seen[digest] = i
        if done and len(done) == len(release.twins):
            raise ControlError(f"all {len(done)} twins of this release were published before "
                               "(duplicate); nothing was sent")
        return done

    def start_job(self, name: str, body: Body) -> JobState:
        """Run `body` as the node's one background job; ControlError if one is running."""
        if self._stopping:
            raise ControlError("the node is stopping")
        return self.jobs.start(name, body)

    async def wait_job(self) -> JobState:
        """Wait for the current job to end."""
        return await self.jobs.wait()


def max_frame_bytes(limits: WireLimits) -> int:
    """The socket's MAXMSGSIZE: the largest frame the wire accepts, plus CURVE's framing."""
    return max(limits.max_payload_bytes, limits.max_header_bytes) + 4096


def _tagged(exc: WireError, env: Envelope) -> WireError:
    """Attach sender and seq, as Verifier.open does, for `rejection_line`."""
    exc.sender, exc.seq = env.sender, env.seq  # type: ignore[attr-defined]
    return exc
