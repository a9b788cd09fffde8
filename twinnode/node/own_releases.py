"""What of a release of ours the store holds already: the check that makes publishing resumable.

A publish takes an own seq per twin as it stores it, so a publish cut short (cancelled,
crashed) leaves some twins of the release stored and sent, the rest not. Publishing the same
release again must send only the rest, under new seqs, and must refuse (before anything is
sent) a release whose twins all went out, a twin whose content went out under another release
or index, and two identical twins.

`own_envelope` is what a publish stores of each twin; `Outbox` sends the twins of a publish: each only once its batch is durable (group commit,
`node.groupcommit`), in seq order, while the next ones are signed and written.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from typing import Callable

from twinnode.errors import ControlError
from twinnode.eventlog import event
from twinnode.node.context import Progress
from twinnode.node.transport import Transport
from twinnode.schema import Schema
from twinnode.store.store import Store
from twinnode.twins import Release, Twin
from twinnode.wire import TWIN, Envelope, TwinPayload, WireLimits, twin_payload
from twinnode.wire.checks import unpack_header

log = logging.getLogger("twinnode.node")
KEEP_PAYLOADS = 256 << 20  # encoded payloads a publish keeps from its check to its signing


def published_before(store: Store, schema: Schema, own: str, release: Release,
                     keep_bytes: int = KEEP_PAYLOADS) -> tuple[set[int], dict[int, TwinPayload]]:
    """Indices of the twins of `release` already stored as `own`'s under this release and
    index (an earlier publish of it, cut short), and the encoded payloads of the others, as
    many as fit in `keep_bytes` (the publish signs them without encoding them again).
    ControlError, before anything is sent, if the release is not `own`'s, if every twin was
    published, if a twin's content went out under another release or index, or if two twins
    are identical. Blocking (it encodes every payload): run it in a thread."""
    if release.sender != own:
        raise ControlError(f"this release is from {release.sender!r}, not {own!r}; make it "
                           f"with --sender {own}")
    seen: dict[bytes, int] = {}
    done: set[int] = set()
    payloads: dict[int, TwinPayload] = {}
    for i, twin in enumerate(release.twins):
        encoded = twin_payload(twin, schema)
        digest = encoded.digest
        if keep_bytes >= len(encoded.payload):
            payloads[i] = encoded
            keep_bytes -= len(encoded.payload)
        seq = store.has_digest(own, digest)
        if seq is not None:
            entry = store.get(own, seq)
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
    if done:
        event(log, "release.resumed", f"{len(done)} of {len(release.twins)} twins were "
              "published before; publishing the rest", release=release.receipt.get("release"))
    return done, {i: v for i, v in payloads.items() if i not in done}


def own_envelope(frames: list[bytes], twin: Twin, limits: WireLimits) -> Envelope:
    """The envelope of a twin we just encoded and signed (`encode_twin` checked its arrays
    against the schema and its provenance): what peers will open, without verifying our own
    signature or decoding our own payload again (that cost as much as encoding it)."""
    header = unpack_header(frames[1], limits)
    topic, header_bytes, payload, signature = frames
    return Envelope(TWIN, twin.provenance.sender, header,
                    (topic, header_bytes, payload, signature), header["payload_digest"], twin)


class Outbox:
    """Own twins signed and submitted, sent on PUB in seq order once each one is durable."""

    def __init__(self, transport: Transport, counters: Counter[str], progress: Progress | None,
                 done: int, total: int, live: Callable[[Envelope], bool] | None = None) -> None:
        """`done` of the release's `total` twins went out before (a publish cut short);
        `live`: whether a twin may go out on PUB (every peer heard accepts it; the others
        get it by catch-up, `node.agreed`)."""
        self.transport, self.counters, self.progress = transport, counters, progress
        self.live = live
        self.sent, self.total = done, total
        self._waiting: deque[tuple[int, Envelope, asyncio.Future[bool] | None]] = deque()

    async def add(self, index: int, env: Envelope, stored: asyncio.Future[bool] | None) -> None:
        """Queue twin `index` of the release; send every leading one already durable."""
        self._waiting.append((index, env, stored))
        await self._send(wait=False)

    async def close(self) -> None:
        """Wait for the rest to be durable and send them."""
        await self._send(wait=True)

    async def _send(self, wait: bool) -> None:
        while self._waiting and (wait or self._waiting[0][2] is None
                                 or self._waiting[0][2].done()):
            index, env, stored = self._waiting.popleft()
            if stored is None or not await stored:
                raise ControlError(f"own twin {index} (seq {env.seq}) was not stored (see the "
                                   "log); it and the twins after it were not sent")
            if self.live is None or self.live(env):
                await self.transport.publish(env.frames)
            self.counters["published"] += 1
            self.sent += 1
            if self.progress is not None:
                self.progress(self.sent, self.total)
