"""Agreed limits: what each pinned peer accepts, so we never send it a twin it must refuse.

Each node's heartbeat carries its `[network] max_rows` and the frame limit its sockets derive
from it (`wire.frame_limit`), unless both are the defaults (then the heartbeat is the version
1.0 one, and a peer that says nothing is taken to accept the defaults). A twin larger than a
peer accepts would be refused by it at best (`too-large`), and at worst cut the link: a frame
over its MAXMSGSIZE makes libzmq drop the connection (`node.links` makes it again).

    publish   a twin goes out live (PUB reaches every subscriber) only if every peer heard
              from accepts it; the others fetch it by catch-up, served per peer
    serve     catch-up sends a requester only what it accepts; a twin found too large for
              someone is remembered (`rows`), so later plans skip it
    status    per peer: its limits, how many twins we withheld from it, how many of its we
              refused as too large, and a line when its limits differ from ours

The receiving side refuses a too-large twin once (`TwinTooLarge`, after its signature) and
declines its (sender, seq) for good (`ReplayGuard.decline`), so it is not fetched again.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from twinnode.errors import TwinTooLarge
from twinnode.eventlog import event
from twinnode.schema import Schema
from twinnode.wire import Heartbeat, ReplayGuard, WireLimits, frame_limit, limits_for, twin_rows

log = logging.getLogger("twinnode.node")


@dataclass(frozen=True)
class Accepts:
    """The largest twin a node takes: rows, and the frame its sockets let through."""

    max_rows: int
    max_frame: int

    @classmethod
    def of(cls, limits: WireLimits) -> "Accepts":
        return cls(limits.max_rows, frame_limit(limits))

    def fits(self, rows: int | None, frames: Sequence[bytes]) -> bool:
        return (rows is None or rows <= self.max_rows) and all(
            len(f) <= self.max_frame for f in frames)


class PeerLimits:
    """What we and each heard peer accept; what we withheld from each."""

    def __init__(self, schema: Schema, ours: WireLimits) -> None:
        self.ours = Accepts.of(ours)
        self.default = Accepts.of(limits_for(schema, WireLimits().max_rows))
        self.peers: dict[str, Accepts] = {}
        self.withheld: Counter[str] = Counter()  # twins not sent to a peer, by peer
        self.declined: Counter[str] = Counter()  # a sender's twins refused here as too large
        self.rows: dict[tuple[str, int], int] = {}  # (sender, seq) -> rows, of twins found
        #                                             too large for some peer

    def advert(self) -> tuple[int | None, int | None]:
        """The heartbeat's (max_rows, max_frame): (None, None) when ours are the defaults."""
        if self.ours == self.default:
            return None, None
        return self.ours.max_rows, self.ours.max_frame

    def on_heartbeat(self, hb: Heartbeat) -> None:
        """Record what a peer accepts; log when it changes and differs from ours."""
        said = (Accepts(hb.max_rows, hb.max_frame)
                if hb.max_rows is not None and hb.max_frame is not None else self.default)
        if self.peers.get(hb.sender) == said:
            return
        self.peers[hb.sender] = said
        text = self.mismatch(hb.sender)
        if text:
            event(log, "peer.limits", text, level=logging.WARNING, peer=hb.sender,
                  max_rows=said.max_rows, max_frame=said.max_frame)

    def keep_only(self, peers: Iterable[str]) -> None:
        """A peers reload: forget the limits of peers no longer pinned."""
        keep = set(peers)
        self.peers = {p: a for p, a in self.peers.items() if p in keep}

    def decline(self, guard: ReplayGuard, exc: TwinTooLarge) -> None:
        """A signed twin was refused as too large: never fetch that (sender, seq) again."""
        sender, seq = getattr(exc, "sender", None), getattr(exc, "seq", None)
        if isinstance(sender, str) and type(seq) is int:
            guard.decline(sender, seq)
            self.declined[sender] += 1

    def fits(self, peer: str, sender: str, seq: int, frames: Sequence[bytes]) -> bool:
        """Whether `peer` accepts this stored twin (True while we have not heard its limits);
        counts a twin withheld and remembers its rows."""
        accepts = self.peers.get(peer)
        if accepts is None or accepts == self.ours:
            return True
        rows = twin_rows(frames)
        if accepts.fits(rows, frames):
            return True
        if rows is not None:
            self.rows[(sender, seq)] = rows
        self.withheld[peer] += 1
        return False

    def fits_everyone(self, frames: Sequence[bytes], sender: str, seq: int) -> bool:
        """Whether every heard peer accepts this twin (what may go out live, on PUB)."""
        rows = twin_rows(frames)
        narrower = [p for p, a in self.peers.items() if not a.fits(rows, frames)]
        for peer in narrower:
            self.withheld[peer] += 1
        if narrower and rows is not None:
            self.rows[(sender, seq)] = rows  # catch-up plans past it for them
        return not narrower

    def unfit(self, peer: str) -> set[tuple[str, int]]:
        """The stored twins known to be too large for `peer` (a catch-up plan skips them)."""
        accepts = self.peers.get(peer)
        if accepts is None:
            return set()
        return {key for key, rows in self.rows.items() if rows > accepts.max_rows}

    def mismatch(self, peer: str) -> str | None:
        """One line for `status` when `peer`'s limits differ from ours, else None."""
        theirs = self.peers.get(peer)
        if theirs is None or theirs.max_rows == self.ours.max_rows:
            return None
        if theirs.max_rows < self.ours.max_rows:
            return (f"{peer} accepts twins of at most {theirs.max_rows} rows, we up to "
                    f"{self.ours.max_rows}: larger ones are not sent to it "
                    f"({self.withheld[peer]} so far)")
        return (f"{peer} accepts twins of up to {theirs.max_rows} rows, we at most "
                f"{self.ours.max_rows}: its larger twins are refused here once each and not "
                f"fetched again ({self.declined[peer]} so far)")

    def row(self, peer: str) -> dict[str, Any]:
        """The `status` fields of one peer's limits."""
        theirs = self.peers.get(peer)
        return {"accepts": None if theirs is None else {"max_rows": theirs.max_rows,
                                                         "max_frame": theirs.max_frame},
                "withheld": self.withheld[peer], "declined": self.declined[peer],
                "limits_mismatch": self.mismatch(peer)}
