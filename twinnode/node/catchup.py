"""Catch-up, the ZeroMQ Guide's Clone pattern: what each peer holds, what we lack, when to ask,
which requests are pending, what to serve. Loop-free state, driven by `node.core`.

The protocol: a peer's first heartbeat, a heartbeat showing seqs we lack (once live traffic
stops filling the lack), and a periodic timer (one live peer per `catchup_interval`, round
robin, unless twins are arriving live) wake that peer's catch-up worker, which sends a signed
request with what we `have` of every sender we pin (watermark 0 for none) and waits for the
end marker; the server answers with up to `catchup_batch` stored original envelopes of the
senders named in `have` (any of them, not only its own) and a signed end, which completes the
request only if it comes from the peer that was asked; the worker asks again while new twins
arrive. One peer is asked at a time (`Asking`): what several peers hold is fetched once, from
the first asked, and the next worker's request already names it as held. A peer asked that
sends nothing for ASK_STALL seconds loses the turn (it may not answer at all), so one silent
or hostile peer cannot hold up catch-up from the others.

This module holds the state and makes the decisions; it runs no task, never sleeps, opens no
socket and reads no store. `node.core` tells it what happened (a heartbeat, a live twin, a
request sent, an end marker, a request to serve) and does what it decides (wake a peer's
worker, wait one more grace period, answer or throttle). The clock is injectable, so every
decision can be tested with a fake one.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

from twinnode.errors import MisaddressedMessage
from twinnode.eventlog import event
from twinnode.trust.replay import Holding, ReplayGuard
from twinnode.wire import Heartbeat

log = logging.getLogger("twinnode.node")

CATCHUP_GAP = 0.2        # seconds between two requests of ours to one peer
CATCHUP_TIMEOUT = 15.0   # seconds to wait for a peer's end marker
SERVE_GAP = 0.1          # a peer asking more often than this gets an empty reply
RECHECKS = 20            # grace periods a heartbeat-shown lack may wait on live traffic
ASK_STALL = 3.0          # seconds the peer being asked may send nothing before another is asked

# what a heartbeat says: (latest own seq, sorted (sender, watermark) pairs)
HeartbeatState = tuple[int, tuple[tuple[str, int], ...]]
Clock = Callable[[], float]


@dataclass
class PeerState:
    """What this node knows of one pinned peer, from its heartbeats and our requests."""

    name: str
    address: str
    last_heartbeat: float | None = None    # on the catch-up clock (time.monotonic)
    last_word: float | None = None         # its last twin live or frame on our DEALER to it
    latest: int | None = None
    holdings: dict[str, int] = field(default_factory=dict)
    asked: HeartbeatState | None = None    # the heartbeat state that last woke catch-up
    recheck: bool = False                  # woken by a lack: check again after a grace
    last_served: float = -math.inf

    def alive(self, interval: float, now: float) -> bool:
        """Whether a heartbeat came within three intervals (and a second)."""
        return self.last_heartbeat is not None and now - self.last_heartbeat < 3 * interval + 1.0


def heartbeat_gap(heartbeat_interval: float, relink_after: int) -> float:
    """How soon after a peer's last verified heartbeat the next may go unopened
    (`Catchup.skip_heartbeat`): 1.5 heartbeat periods (one in two is verified), less when
    `relink_after` is short, so no peer is judged silent for heartbeats left unopened."""
    if relink_after == 0:
        return 1.5 * heartbeat_interval
    return min(1.5, (relink_after - 1) / 2.5) * heartbeat_interval


class Catchup:
    """The catch-up state of one node: its peers, the pending requests, the periodic turn."""

    def __init__(self, peers: Iterable[tuple[str, str]], pinned: Sequence[str],
                 heartbeat_interval: float, clock: Clock = time.monotonic,
                 heartbeat_gap: float = 0.0) -> None:
        """`peers`: (name, address) of each pinned peer; `pinned`: every sender we accept,
        ourselves included, in the order a request names them; `heartbeat_gap`: see
        `skip_heartbeat` (0: every heartbeat is opened)."""
        self.peers = {name: PeerState(name, address) for name, address in peers}
        self.pinned = tuple(pinned)
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_gap = heartbeat_gap
        self.clock = clock
        self.pending: dict[bytes, str] = {}  # request id -> the peer asked
        self.turn = 0
        self.last_live = -math.inf           # when a twin last arrived live (SUB)
        self.asking = Asking(clock)

    def set_peers(self, peers: Iterable[tuple[str, str]], pinned: Sequence[str]) -> None:
        """A peers reload: keep the state of peers that stay, start the new ones fresh, forget
        removed ones (and the requests pending with them)."""
        old = self.peers
        self.peers = {name: old.get(name) or PeerState(name, address)
                      for name, address in peers}
        self.pinned = tuple(pinned)
        self.pending = {rid: p for rid, p in self.pending.items() if p in self.peers}

    # ---- heartbeats and live traffic ----

    def skip_heartbeat(self, topic: bytes) -> bool:
        """Whether a heartbeat may be dropped unopened: its topic names a peer whose last
        verified heartbeat is under `heartbeat_gap` old. Verifying one is most of what a
        heartbeat costs (at 20 nodes and 0.25 s, 76 a second per node: at start-up about as
        much CPU as the twins); one in two tells nothing new soon enough to matter. The
        topic is unsigned: a forged one only gets a message dropped within the gap after a
        genuine heartbeat of that peer, never the next genuine one (the gap runs from the
        last *verified* heartbeat), and nothing unverified changes any state."""
        if self.heartbeat_gap <= 0 or not topic.startswith(b"hb:"):
            return False
        peer = self.peers.get(topic[3:].decode("utf-8", "replace"))
        return peer is not None and peer.last_heartbeat is not None and \
            self.clock() - peer.last_heartbeat < self.heartbeat_gap

    def on_word(self, name: str) -> None:
        """Something came from `name`: a new twin it signed, live (its signature checked;
        the SUB socket is shared, so another peer could forward it, as it could a fresh
        heartbeat), or any frame on our DEALER to it (the CURVE connection to its ROUTER).
        The link lives, though a heartbeat may still be queued behind a burst of twins
        (`node.links` relinks only a peer silent in every way)."""
        peer = self.peers.get(name)
        if peer is not None:
            peer.last_word = self.clock()

    def heard(self, name: str) -> float | None:
        """When `name` was last heard in any way (a heartbeat or `on_word`), or None."""
        peer = self.peers.get(name)
        if peer is None:
            return None
        times = [t for t in (peer.last_heartbeat, peer.last_word) if t is not None]
        return max(times) if times else None

    def on_heartbeat(self, hb: Heartbeat, guard: ReplayGuard) -> bool:
        """Record a peer's heartbeat; True when it should wake that peer's catch-up: its first
        heartbeat, or a new state showing twins we lack (then after a recheck)."""
        peer = self.peers.get(hb.sender)
        if peer is None:
            return False  # our own heartbeat, forwarded: nothing to learn
        first = peer.last_heartbeat is None
        peer.last_heartbeat, peer.latest, peer.holdings = (self.clock(), hb.latest,
                                                           dict(hb.holdings))
        state = (hb.latest, tuple(sorted(hb.holdings.items())))
        if first:
            event(log, "peer.heartbeat", "first heartbeat", peer=hb.sender, latest=hb.latest)
            peer.asked = state
            return True
        if state != peer.asked and self.lacks(hb.sender, state, guard):
            peer.asked, peer.recheck = state, True
            return True
        return False

    def lacks(self, sender: str, state: HeartbeatState, guard: ReplayGuard) -> bool:
        """Whether a heartbeat state of `sender` shows twins we lack (of senders we pin)."""
        latest, holdings = state
        if latest and guard.missing(sender, latest, limit=1):
            return True
        return any(s in self.pinned and guard.missing(s, w, limit=1) for s, w in holdings)

    def on_twin(self, live: bool) -> None:
        """A twin arrived live (SUB: the periodic catch-up pauses while they do) or by
        catch-up (the peer being asked is making progress: it keeps the turn)."""
        if live:
            self.last_live = self.clock()
        else:
            self.asking.progress()

    def periodic_pick(self) -> str | None:
        """The live peer whose catch-up the periodic timer wakes now (round robin), or None:
        none is alive, or twins arrive live (a request would fetch what is already on its
        way; a real gap shows in the heartbeats)."""
        now = self.clock()
        beat = self.heartbeat_interval
        if now - self.last_live < 2 * beat:
            return None
        alive = [p for p in self.peers.values() if p.alive(beat, now)]
        if not alive:
            return None
        peer = alive[self.turn % len(alive)]
        self.turn += 1
        return peer.name

    # ---- asking ----

    def take_recheck(self, name: str) -> bool:
        """Whether the peer's worker was woken by a lack (and must recheck it first); clears it."""
        peer = self.peers[name]
        due, peer.recheck = peer.recheck, False
        return due

    def recheck(self, name: str, guard: ReplayGuard) -> Recheck:
        """The grace-period checks of a heartbeat-shown lack of `name`, from now."""
        return Recheck(self, self.peers[name], guard)

    def have(self, guard: ReplayGuard) -> dict[str, Holding]:
        """What a request of ours says we hold: every sender we pin, in `pinned` order."""
        return {s: guard.holding(s) for s in self.pinned}

    def expect_end(self, peer: str, request_id: bytes) -> None:
        """A request to `peer` was made: only `peer`'s end marker completes it."""
        self.pending[request_id] = peer

    def end_marker(self, request_id: bytes, sender: str) -> bool:
        """Whether an end marker completes a pending request of ours (False: none is pending
        under that id); MisaddressedMessage when it comes from a peer we did not ask."""
        asked = self.pending.get(request_id)
        if asked is None:
            return False
        if asked != sender:
            raise MisaddressedMessage(f"end marker for a request to {asked} came from {sender}")
        return True

    def forget(self, request_id: bytes) -> None:
        """The request ended (answered, timed out or abandoned)."""
        self.pending.pop(request_id, None)

    @staticmethod
    def again(sent: int, new: int) -> bool:
        """Whether to ask the same peer again: its last batch was not empty and brought news."""
        return sent > 0 and new > 0

    # ---- serving ----

    def may_serve(self, requester: str) -> bool:
        """False when a pinned peer asks again within SERVE_GAP (it gets an empty answer);
        otherwise records the time of this answer."""
        peer = self.peers.get(requester)
        now = self.clock()
        if peer is None:
            return True
        if now - peer.last_served < SERVE_GAP:
            return False
        peer.last_served = now
        return True

    @staticmethod
    def serve_plan(lacking: Mapping[str, Sequence[int]], limit: int) -> list[tuple[str, int]]:
        """Up to `limit` (sender, seq) to send, given per sender the seqs the requester lacks
        (ascending): round robin over the senders, lowest seqs first, so a sender whose `have`
        was cut short (`seqset.bounded`) and so looks lacking cannot crowd the others out."""
        out = [(sender, seqs[rank]) for rank in range(limit)
               for sender, seqs in lacking.items() if rank < len(seqs)]
        return out[:limit]


class Asking:
    """The turn to ask: one peer at a time, until its worker ends or it stalls (sends no twin
    for `stall` seconds since it took the turn or since its last twin)."""

    def __init__(self, clock: Clock, stall: float = ASK_STALL) -> None:
        self.clock, self.stall = clock, stall
        self.holder: str | None = None
        self.moved = -math.inf

    def take(self, peer: str) -> float:
        """0.0: `peer` holds the turn now and may ask; else the seconds until the holder's
        turn lapses (try again then, or when it is released)."""
        now = self.clock()
        if self.holder in (None, peer) or now - self.moved >= self.stall:
            self.holder, self.moved = peer, now
            return 0.0
        return self.moved + self.stall - now

    def progress(self) -> None:
        """A twin arrived by catch-up: the holder's turn goes on."""
        self.moved = self.clock()

    def release(self, peer: str) -> None:
        """`peer`'s worker is done asking (a no-op when its turn had lapsed to another)."""
        if self.holder == peer:
            self.holder = None


class Recheck:
    """After a heartbeat showed a lack: wait while live traffic is still filling it (our
    holdings grow from one grace period to the next); ask once it stalls. The driver waits
    `grace` seconds before each `step`."""

    def __init__(self, catchup: Catchup, peer: PeerState, guard: ReplayGuard) -> None:
        self.catchup, self.peer = catchup, peer
        self.grace = max(catchup.heartbeat_interval, 0.5)
        self.left = RECHECKS
        self._before = guard.holdings()

    def step(self, guard: ReplayGuard) -> bool | None:
        """After one grace period: False (the lack is filled: no request), True (it stalled,
        or the grace periods ran out: ask), None (live traffic is filling it: wait again)."""
        self.left -= 1
        asked = self.peer.asked
        if asked is None or not self.catchup.lacks(self.peer.name, asked, guard):
            return False
        now = guard.holdings()
        if now == self._before or self.left <= 0:
            return True
        self._before = now
        return None
