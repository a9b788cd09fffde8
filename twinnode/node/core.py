"""The asyncio node: one long-lived process per party; the one module that composes the node.

    start()   open the store (lock, crash recovery) and rebuild the replay guard from it;
              bind PUB + ROUTER behind the ZAP allow-list, subscribe to every peer; serve the
              control socket; then run the tasks below (and, with [training] auto, a first
              publish job when nothing of ours was published yet)
    tasks     SUB loop (twins, heartbeats) - ROUTER loop (catch-up requests opened at once,
              answered fairly: `node.serving`) - one DEALER loop and one catch-up worker per
              peer - heartbeat - periodic catch-up - the links' watch (`node.links`) - the
              peers file's watch (`reload_peers`) - the recovery watch (`node.recovery`: an
              empty state publishes above what peers hold of ours; a lost ledger is refused)
    stop()    cancel the job (a training worker is terminated, its ledger charge stays),
              cancel the tasks, close the control socket, the sockets (linger 0), the store

Every inbound message goes through `handle_frames`: `Verifier.open` (in a thread for a large
payload; one message at a time under the ingest lock), a check that the family belongs on its
channel, then for a twin the group commit (`node.groupcommit`: stored in a batch with one
fsync) and only then `_acknowledge` (`Verifier.accept`, counters). A refusal is a counter and
a `REJECTED (<reason>)` log line (`node.rejections`), never an exception out of a loop. The
replay guard is rebuilt from the store's index at start: the index is what was acknowledged,
so the two cannot disagree after a crash, and a quarantined envelope can be fetched again.

Catch-up (the Clone pattern): `node.catchup` holds its state and decides, loop-free;
`node.catchup_runner` carries the decisions out (heartbeats, a worker per peer, the periodic
timer, requests, answers). This module feeds them what ingest opened and runs their tasks;
jobs and control commands see this node as a `node.context.NodeContext`."""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from dataclasses import replace
from functools import partial
from typing import Any, Coroutine, Mapping, Sequence

from twinnode.errors import ControlError, DuplicateMessage, StoreError, TwinTooLarge, WireError
from twinnode.eventlog import event
from twinnode.generator.privacy import Ledger
from twinnode.node.agreed import PeerLimits
from twinnode.node.catchup import Catchup, PeerState, heartbeat_gap
from twinnode.node.catchup_runner import CatchupRunner
from twinnode.node.commands import handlers
from twinnode.node.config import NodeConfig, read_peers
from twinnode.node.context import Progress
from twinnode.node.control_server import ControlServer
from twinnode.node.jobs import auto_publish_blocker, publish_job
from twinnode.node.links import Links, keep, open_transport
from twinnode.node.membership import PeerChanges, log_changes, peer_changes
from twinnode.node.groupcommit import GroupCommit
from twinnode.node.own_releases import Outbox, own_envelope, published_before
from twinnode.node.receiving import Reply, max_frame_bytes, receive_loop, tagged, watch_peers
from twinnode.node.recovery import (Recovery, Stated, mark_used, marker_path,
                                    own_release_back, watch)
from twinnode.node.rejections import RejectionLog
from twinnode.node.serving import CatchupServer, open_request
from twinnode.node.slot import Body, JobSlot, JobState
from twinnode.node.stored_twins import StoredTwins
from twinnode.node.transport import Transport
from twinnode.schema import Schema
from twinnode.store.layout import StateLayout
from twinnode.store.store import Store
from twinnode.trust.identity import Identity, TrustStore
from twinnode.twins import Release
from twinnode.wire import (END, HEARTBEAT, REQUEST, TWIN, CatchupEnd, CatchupRequest, Envelope,
                           Heartbeat, ReplayGuard, Signer, Verifier, WireLimits, encode_twin,
                           limits_for)

log = logging.getLogger("twinnode.node")

CHANNELS = {"sub": (TWIN, HEARTBEAT), "router": (REQUEST,), "dealer": (TWIN, END),
            "local": (TWIN,)}
OFFLOAD_BYTES = 1 << 20  # a larger payload is verified in a thread (a smaller: < 1 ms on the loop)


class Node:
    """One party's node. `start()`/`stop()` are symmetric; `stop()` is safe twice."""

    def __init__(self, config: NodeConfig, limits: WireLimits = WireLimits(),
                 stated: Stated | None = None) -> None:
        """`stated`: `run --recovered-state`, what was spent before the state was lost."""
        self.config, self.stated = config, stated
        self.name = config.name
        self.layout = StateLayout.of(config.state_dir)
        self.schema = Schema.load(config.data.schema)
        self.limits = limits_for(self.schema, config.network.max_rows, limits)
        self.identity = Identity.load(config.keys_dir, self.name)
        self.me = self.identity.peer(config.network.pub, config.network.router)
        self.trust = TrustStore([self.me, *config.peers])  # our twins come back via peers
        self.signer = Signer(self.identity)
        self.ledger = Ledger(self.layout.root, cap_epsilon=config.privacy.cap_epsilon)
        self.rejected: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.catchup = Catchup([(p.name, p.pub_address or "") for p in config.peers],
                               self.trust.names, config.network.heartbeat_interval,
                               heartbeat_gap=heartbeat_gap(config.network.heartbeat_interval,
                                                             config.network.relink_after))
        self.agreed = PeerLimits(self.schema, self.limits)
        self.catchup_runner = CatchupRunner(self.catchup, self.name, self.signer, config.network,
                                            self.counters, self.rejected, self.agreed)
        self.links = Links.of(config, self.me.curve_fingerprint, max_frame_bytes(self.limits))
        self.stored_twins = StoredTwins(self.trust, self.schema, self.limits)
        self.store: Store | None = None
        self.verifier: Verifier | None = None
        self.transport: Transport | None = None
        self.control: ControlServer | None = None
        self.jobs = JobSlot()
        self._tasks: list[asyncio.Task[None]] = []
        self._peer_tasks: dict[str, list[asyncio.Task[None]]] = {}
        self._reloading = asyncio.Lock()
        self.server = CatchupServer(self.counters, self.rejected)
        self._ingest_lock = asyncio.Lock()
        self.commits = GroupCommit(self.name, self._acknowledge)  # twins on their way to disk
        self._stop_requested = asyncio.Event()
        self._started = time.monotonic()
        self._stopping = False
        self.refusals = RejectionLog(log, self.rejected,  # counted, logged without flooding
                                     known=self.trust.__contains__, fingerprint=lambda n:
                                     self.trust.get(n).sign_fingerprint)
        self.recovery = Recovery(self.name, tuple(self.peers), wait=config.network.recovery_wait)
        self.catchup_runner.caught_up = self.recovery.on_caught_up
        self.marker = marker_path(config.keys_dir, self.name)

    @property
    def peers(self) -> Mapping[str, PeerState]:
        """What this node knows of each pinned peer (the catch-up state)."""
        return self.catchup.peers

    # ---- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Open the store and rebuild the replay guard from its index (no sockets)."""
        if self.store is not None:
            return
        self.store = store = self.commits.store = await asyncio.to_thread(
            Store.open, self.layout.root)
        guard = ReplayGuard(lookup=lambda s, q: bytes.fromhex(e.digest)
                            if (e := store.get(s, q)) is not None else None)
        for entry in await asyncio.to_thread(store.list):
            guard.accept(entry.sender, entry.seq, bytes.fromhex(entry.digest))
        self.verifier = Verifier(self.trust, self.schema, guard, self.limits, local=self.name)

    async def start(self) -> None:
        """Open the store, bind and connect the sockets, serve control, start the tasks."""
        if self.transport is not None:
            raise ControlError(f"node {self.name} is already started")
        self._started = time.monotonic()
        self._stop_requested.clear()
        try:
            await self.open()
            await asyncio.to_thread(partial(  # PrivacyError: a lost state without a statement
                self.recovery.open, own_twins=self.require_store().counts().get(self.name, 0)
                > 0, ledger=self.ledger, marker=self.marker, stated=self.stated,
                heartbeat_interval=self.config.network.heartbeat_interval))
            self.transport = await open_transport(self.identity, self.config, self.limits,
                                                  self.refusals.denied)
            self.control = ControlServer(self.layout.control_socket, handlers(self))
            await self.control.start()
            self._run_tasks()
        except BaseException:
            await self.stop()
            raise
        held = self.store.counts() if self.store else {}
        event(log, "node.started", node=self.name, pub=self.transport.endpoints.get("pub"),
              router=self.transport.endpoints.get("router"), peers=",".join(self.peers),
              held=sum(held.values()), own_seq=self.own_latest(), pid=os.getpid())
        if self.config.training.auto and held.get(self.name, 0) == 0:
            why = await asyncio.to_thread(auto_publish_blocker, self)
            if why is None:
                self.start_job("publish", lambda job: publish_job(self, job, {}))
            else:
                event(log, "training.auto_skipped", why, level=logging.WARNING)

    def _peer_loops(self, name: str) -> None:
        """The DEALER receive loop and the catch-up worker of one peer."""
        transport = self.transport
        assert transport is not None and self.verifier is not None

        async def from_dealer() -> tuple[list[bytes], Reply | None]:
            frames = await transport.recv_reply(name)
            self.catchup.on_word(name)  # over the CURVE connection to its ROUTER: it lives
            return frames, None
        self._peer_tasks[name] = [asyncio.create_task(c) for c in (
            receive_loop("dealer", from_dealer, self._receive, self.rejected),
            self.catchup_runner.worker(name, transport, self.verifier.guard))]

    def _run_tasks(self) -> None:
        """The receive loops, and catch-up's tasks (`CatchupRunner`)."""
        transport, runner = self.transport, self.catchup_runner
        assert transport is not None and self.verifier is not None

        async def from_sub() -> tuple[list[bytes], Reply | None]:
            return await transport.recv_sub(), None

        async def from_router() -> tuple[list[bytes], Reply | None]:
            routing_id, frames = await transport.recv_request()
            return frames, partial(transport.reply, routing_id)

        self._spawn(receive_loop("sub", from_sub, self._receive, self.rejected),
                    self.server.run(from_router, partial(open_request, self.verifier, self.refusals),
                                    partial(runner.serve, store=self.require_store())),
                    runner.heartbeats(transport, self.verifier.guard), runner.periodic(),
                    watch(self.recovery, self.own_latest, self.ledger),
                    keep(self.links, transport, lambda: self.catchup.peers,
                         min(self.config.network.heartbeat_interval, 1.0)),
                    watch_peers([self.config.path, self.config.peers_file],
                                self.reload_peers))
        for name in self.peers:
            self._peer_loops(name)

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
            await self.server.stop()
            tasks = [*self._tasks, *(t for ts in self._peer_tasks.values() for t in ts)]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks, self._peer_tasks = [], {}
            if self.control is not None:
                await self.control.stop()
            if self.transport is not None:
                self.transport.close()
            await self.commits.drain()  # what was verified is stored and acknowledged
            if self.store is not None:
                await asyncio.to_thread(self.store.close)
        finally:
            self.control = self.transport = self.store = self.verifier = None
            self.commits.store = None
            self.catchup_runner.reset()
            self._stopping = False
        event(log, "node.stopped", node=self.name, accepted=self.counters["accepted"],
              rejected=sum(self.rejected.values()))

    async def reload_peers(self) -> dict[str, Any]:
        """Pin what the config's files pin now: connect new peers; close our links to a
        removed (re-keyed, moved) one, make every client pass the new ZAP list again."""
        async with self._reloading:
            new = await asyncio.to_thread(read_peers, self.config)
            change = peer_changes(self.config.peers, new)
            self.trust.reset([self.me, *new])
            self.config = replace(self.config, peers=new)
            self.catchup_runner.set_peers([(p.name, p.pub_address or "") for p in new],
                                          self.trust.names)
            self.links.set_peers(new)
            self.recovery.set_peers(p.name for p in new)
            if change and self.transport is not None:
                await self._relink(change)
            return log_changes(change, self.trust, self.name)

    async def _relink(self, change: PeerChanges) -> None:
        transport = self.transport
        assert transport is not None
        for peer in change.dropped:
            tasks = self._peer_tasks.pop(peer.name, [])
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            transport.disconnect(peer.name)
        transport.allow_only(p.curve_key for p in self.config.peers)
        for peer in change.added:
            transport.connect(peer.name, peer.pub_address or "", peer.router_address or "",
                              peer.curve_key)
            self._peer_loops(peer.name)
        if change.dropped:
            await transport.rebind()

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

    def _spawn(self, *coros: Coroutine[Any, Any, None]) -> None:
        self._tasks += [asyncio.create_task(c) for c in coros]

    # ---- what jobs and commands see (node.context.NodeContext) ---------------------------

    def require_store(self) -> Store:
        """The open store; ControlError when it is not open."""
        if self.store is None:
            raise ControlError("the node's store is not open")
        return self.store

    def endpoints(self) -> dict[str, str]:
        """The bound addresses, or {} when the sockets are closed."""
        return dict(self.transport.endpoints) if self.transport else {}

    def current_job(self) -> JobState | None:
        return self.jobs.current

    def start_job(self, name: str, body: Body) -> JobState:
        """Run `body` as the node's one background job; ControlError if one is running."""
        if self._stopping:
            raise ControlError("the node is stopping")
        return self.jobs.start(name, body)

    async def wait_job(self) -> JobState:
        """Wait for the current job to end."""
        return await self.jobs.wait()

    # ---- receiving ---------------------------------------------------------------------

    async def handle_frames(self, frames: Sequence[bytes], channel: str = "sub",
                            reply: Reply | None = None, *, wait: bool = True
                            ) -> Envelope | None:
        """Open one inbound message and act on it; a refusal is logged and counted.

        The verified envelope, or None when refused; a twin's once it is durable and
        acknowledged (`wait=False`, the receive loops: once it is queued for the disk).
        """
        try:
            env, stored = await self._ingest(frames, channel)
            if isinstance(env.message, CatchupEnd):
                await self.commits.settled()  # what the reply brought is counted first
                try:
                    self.catchup_runner.on_end(env.message, env.sender)
                except WireError as exc:
                    raise tagged(exc, env) from None
        except WireError as exc:
            self.refusals.refused(exc, channel)
            if isinstance(exc, TwinTooLarge) and self.verifier is not None:  # signed: for good
                self.agreed.decline(self.verifier.guard, exc)
            return None
        if channel == "sub" and env.family == TWIN:
            self.catchup.on_word(env.sender)  # its own twin live: its PUB connection lives
        if stored is not None and wait and not await stored:
            return None
        if isinstance(env.message, Heartbeat) and self.verifier is not None:
            self.catchup_runner.on_heartbeat(env.message, self.verifier.guard)
            self.recovery.on_heartbeat(env.sender, env.message.holdings, self.own_latest())
        elif isinstance(env.message, CatchupRequest):
            await self.catchup_runner.serve(env.message, reply, self.require_store())
        return env

    async def _ingest(self, frames: Sequence[bytes],
                      channel: str) -> tuple[Envelope, asyncio.Future[bool] | None]:
        """Verify, check the channel, and submit a twin to the group commit (its future: True
        once durable and acknowledged); raises the WireError that refuses the message."""
        async with self._ingest_lock:
            return await self._ingest_locked(frames, channel)

    async def _ingest_locked(self, frames: Sequence[bytes],
                             channel: str) -> tuple[Envelope, asyncio.Future[bool] | None]:
        assert self.verifier is not None, "open() the node first"
        big = len(frames) > 2 and isinstance(frames[2], (bytes, bytearray, memoryview)) \
            and len(frames[2]) > OFFLOAD_BYTES
        opened = partial(self.verifier.open, expect=CHANNELS.get(channel, ()), channel=channel)
        env = await asyncio.to_thread(opened, frames) if big else opened(frames)
        if env.family != TWIN:
            return env, None
        self.commits.check(env)  # tagged with sender and seq, as Verifier.open's refusals
        await self.commits.room()
        return env, self.commits.submit(env, channel)

    async def _receive(self, frames: Sequence[bytes], channel: str,
                       reply: Reply | None = None) -> None:
        """`handle_frames` for the receive loops: a twin queued for the disk, not waited for;
        a well-formed heartbeat soon after its peer's last verified one left unopened (its
        signature unchecked: `skip_heartbeat`; a malformed one is still refused, counted)."""
        if channel == "sub" and frames and self.catchup.skip_heartbeat(frames[0]) \
                and self.verifier is not None and self.verifier.well_formed(frames):
            return
        await self.handle_frames(frames, channel, reply, wait=False)

    def _acknowledge(self, env: Envelope, channel: str, stored: bool | StoreError) -> None:
        """A twin's batch was written: record it as seen and count it, or refuse it."""
        if isinstance(stored, StoreError):
            self.rejected["store"] += 1
            event(log, "store.failed", str(stored), level=logging.ERROR, channel=channel)
        elif not stored:
            self.refusals.refused(tagged(DuplicateMessage(f"{env.sender} seq {env.seq} (or its "
                                                          "content) is stored already"), env),
                                  channel)
        elif self.verifier is not None:
            self.verifier.accept(env)
            self.counters["accepted"] += 1
            if env.sender == self.name and channel != "local" and self.recovery.back(env):
                self._spawn(asyncio.to_thread(own_release_back, self.ledger, env))
            if channel in ("sub", "dealer"):  # live, or the peer being asked makes progress
                self.catchup.on_twin(live=channel == "sub")
            event(log, "twin.accepted", peer=env.sender, seq=env.seq, channel=channel,
                  level=logging.DEBUG)

    # ---- what heartbeats say ----------------------------------------------------------

    def own_latest(self) -> int:
        """The highest own seq held (our heartbeat's `latest`)."""
        return self.latest_held(self.name)

    def latest_held(self, sender: str) -> int:
        assert self.verifier is not None
        return self.verifier.guard.holding(sender).latest

    # ---- publishing --------------------------------------------------------------------

    async def publish_release(self, release: Release,
                              progress: Progress | None = None) -> list[int]:
        """Check which twins of `release` were published before, then per remaining twin: take
        the next own seq, sign, submit; each is sent once durable (`Outbox`). The new seqs. A
        publish cut short is completed by publishing the same release again."""
        assert self.store is not None and self.transport is not None
        done, payloads = await asyncio.to_thread(published_before, self.store, self.schema,
                                                 self.name, release)
        seqs: list[int] = []
        outbox = Outbox(self.transport, self.counters, progress, len(done), len(release.twins),
                        live=lambda env: self.agreed.fits_everyone(env.frames, self.name,
                                                                   env.seq or 0))
        floor = max(await self.commits.next_own_seq(self.store),  # the store once, not per
                    self.recovery.next_seq(self.own_latest()))  # twin; above what peers hold
        for i, twin in enumerate(release.twins):
            if i in done:
                continue
            async with self._ingest_lock:  # seq taken, signed and submitted as one step
                seq = floor = max(floor, self.commits.own_above())
                encoded = payloads.pop(i, None)  # encoded by the check: signed here at once
                sign = partial(encode_twin, twin, self.schema, seq, self.signer, encoded)
                frames = sign() if encoded is not None else await asyncio.to_thread(sign)
                env = own_envelope(frames, twin, self.limits)  # its seq is above any pending
                stored = self.commits.submit(env, "local")  # the store refuses a repeat
                floor = seq + 1
            seqs.append(seq)
            await outbox.add(i, env, stored)  # sent once durable, in seq order
            await asyncio.sleep(0)  # the group commit's flush starts while we sign the next
        await outbox.close()
        await asyncio.to_thread(mark_used, self.marker, self.layout.root)
        event(log, "release.published", release=release.receipt.get("release"),
              k=len(release.twins), seqs=f"{seqs[0]}-{seqs[-1]}" if seqs else "-")
        return seqs
