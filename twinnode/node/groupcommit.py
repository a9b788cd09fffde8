"""Group commit on the receive path: twins verified close together are stored as one batch,
and acknowledged only once that batch is durable.

`node.core` verifies a twin (under its ingest lock), asks `check` whether it repeats one that
is still on its way to the disk, and `submit`s it. A flush task, started on demand, hands
everything queued to `Store.put_many` (one journal fsync per batch, `store.store`) in a
thread; twins that arrive while a batch is being written form the next batch, so a lone twin
waits for no timer and a burst shares its fsyncs. Only after `put_many` returns is each twin
acknowledged (`acknowledge`: the replay guard, the counters, so the heartbeats' holdings and
catch-up requests, and the `accepted` count the operator sees) and its future resolved. What a
peer or the operator is told we have is therefore always on disk.

A twin submitted while the same (sender, seq) is pending is refused as a replay (or, with
another digest, as equivocation), and the same sender's content under another pending seq as
a duplicate: the store would refuse them anyway, this names why. Own twins take their seqs
above every pending one (`next_own_seq`), so a publish can sign the next twin while the last
is being written.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Callable

from twinnode.errors import (
    DuplicateMessage,
    EquivocatedMessage,
    ReplayedMessage,
    StoreError,
    WireError,
)
from twinnode.store.store import Packed, Put, Store, pack_put
from twinnode.wire import Envelope

log = logging.getLogger("twinnode.node")

MAX_BATCH = 256     # twins per put_many; a longer queue is written in several batches
MAX_PENDING = 1024  # twins on their way to the disk before the receive loops wait (`room`)
# called per twin after its batch: True stored, False already held, or why the store failed
Acknowledge = Callable[[Envelope, str, "bool | StoreError"], None]


@dataclass
class _Item:
    env: Envelope
    channel: str
    packed: Packed | StoreError  # its container, made at submit (or why the store refuses it)
    done: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop()
                                       .create_future())


class GroupCommit:
    """The twins between verification and acknowledgement; `store` is set while it is open."""

    def __init__(self, own: str, acknowledge: Acknowledge, max_batch: int = MAX_BATCH) -> None:
        self.own, self.acknowledge, self.max_batch = own, acknowledge, max_batch
        self.store: Store | None = None
        self.batches = 0  # put_many calls made (status: twins per fsync = accepted / batches)
        self._queue: list[_Item] = []
        self._writing: list[_Item] = []  # the batch being written
        self._by_seq: dict[tuple[str, int], bytes] = {}
        self._by_digest: dict[tuple[str, bytes], int] = {}
        self._flush: asyncio.Task[None] | None = None

    def check(self, env: Envelope) -> None:
        """Refuse a twin that repeats a pending one (ReplayedMessage, EquivocatedMessage,
        DuplicateMessage), as the replay guard does for acknowledged ones."""
        try:
            self._check(env)
        except WireError as exc:
            exc.sender, exc.seq = env.sender, env.seq  # type: ignore[attr-defined]
            raise

    def _check(self, env: Envelope) -> None:
        seq = env.seq
        assert seq is not None
        first = self._by_seq.get((env.sender, seq))
        if first is not None and first != env.digest:
            exc = EquivocatedMessage(f"{env.sender} signed two different twins as seq {seq} "
                                     f"(kept {first.hex()}, refused {env.digest.hex()})")
            exc.digests = (first, env.digest)  # type: ignore[attr-defined]  # for the log
            raise exc
        if first is not None:
            raise ReplayedMessage(f"{env.sender} seq {seq} is being stored already")
        other = self._by_digest.get((env.sender, env.digest))
        if other is not None:
            raise DuplicateMessage(f"{env.sender} seq {seq} repeats the content of its seq "
                                   f"{other}, being stored already")

    def submit(self, env: Envelope, channel: str) -> asyncio.Future[bool]:
        """Queue a verified (and `check`ed) twin; the future is True once it is durable and
        acknowledged, False if it was not stored (already held, or the store failed)."""
        seq = env.seq
        assert seq is not None
        item = _Item(env, channel, _pack(env, self.own))
        self._queue.append(item)
        self._by_seq[(env.sender, seq)] = env.digest
        self._by_digest[(env.sender, env.digest)] = seq
        if self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self._run())
        return item.done

    def own_above(self) -> int:
        """One above the highest own seq pending (1: none pending)."""
        return max((seq for sender, seq in self._by_seq if sender == self.own), default=0) + 1

    async def next_own_seq(self, store: Store) -> int:
        """The seq for our next twin: above `Store.next_own_seq` and every own twin pending.
        The pending ones are read first: each is then pending still or stored by the time the
        store is read. A publish reads this once; for the twins after the first it takes
        seqs above its own last and `own_above` (the store's lock is held while a batch is
        synced: reading it per twin would wait for every fsync)."""
        pending = self.own_above()
        return max(pending, await asyncio.to_thread(store.next_own_seq, self.own))

    async def room(self) -> None:
        """Wait while MAX_PENDING twins are on their way to the disk: backpressure on the
        receive loops (ZeroMQ's high-water marks then hold the rest), never unbounded memory."""
        while len(self._by_seq) >= MAX_PENDING and self._flush is not None \
                and not self._flush.done():
            await asyncio.wait({self._flush}, timeout=0.05)

    @property
    def pending(self) -> int:
        """Twins submitted and not acknowledged yet."""
        return len(self._by_seq)

    async def drain(self) -> None:
        """Wait until the queue is empty: every twin submitted, now and meanwhile, is stored
        and acknowledged (or refused); for stopping."""
        while self._flush is not None and not self._flush.done():
            await asyncio.wait({self._flush})

    async def settled(self) -> None:
        """Wait until every twin submitted so far is acknowledged (or refused), not for those
        submitted meanwhile: an end marker counts what its reply brought without waiting for
        a live burst to end (`drain` waited for an empty queue, which a start-up's stream of
        live twins kept from happening for longer than the requester's 15 s)."""
        waiting = [item.done for item in [*self._writing, *self._queue] if not item.done.done()]
        if waiting:
            await asyncio.wait(waiting)

    async def _run(self) -> None:
        """Write what is queued, batch after batch, until the queue is empty."""
        while self._queue:
            batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
            self._writing = batch
            try:
                outcomes = await self._write(batch)
            except asyncio.CancelledError:
                for item in [*batch, *self._queue]:
                    self._forget(item)
                    item.done.cancel()
                self._queue = self._writing = []
                raise
            self._writing = []
            for item, outcome in zip(batch, outcomes):
                self._forget(item)
                try:
                    self.acknowledge(item.env, item.channel, outcome)
                except Exception:  # the acknowledgement must not strand the others
                    log.exception("acknowledging %s#%s failed", item.env.sender, item.env.seq)
                    outcome = False
                if not item.done.done():
                    item.done.set_result(outcome is True)

    async def _write(self, batch: list[_Item]) -> list[bool | StoreError]:
        store = self.store
        if store is None:
            return [StoreError("the node's store is not open")] * len(batch)
        outcomes: list[bool | StoreError] = [i.packed if isinstance(i.packed, StoreError)
                                             else False for i in batch]
        packed = [i.packed for i in batch if not isinstance(i.packed, StoreError)]
        try:
            stored = iter(await asyncio.to_thread(store.put_packed, packed) if packed else [])
        except StoreError as exc:
            return [exc] * len(batch)
        self.batches += 1
        return [o if isinstance(o, StoreError) else next(stored) for o in outcomes]

    def _forget(self, item: _Item) -> None:
        env = item.env
        assert env.seq is not None
        if self._by_seq.get((env.sender, env.seq)) == env.digest:
            del self._by_seq[(env.sender, env.seq)]
            self._by_digest.pop((env.sender, env.digest), None)


def _pack(env: Envelope, own: str) -> Packed | StoreError:
    """A verified twin's container for the store (on the event loop, as it arrives: the
    thread that writes the batch then needs Python's lock for little but the index)."""
    p = env.twin.provenance
    assert env.seq is not None
    try:
        return pack_put(Put(env.sender, env.seq, env.digest, env.frames, kind="twin",
                            k=p.index, release=p.release, own=env.sender == own))
    except StoreError as exc:
        return exc
