"""What a peers reload changes: the pure diff between the peers pinned and those pinned now.

A peer whose keys or addresses changed is dropped and connected again (its connections were
made with the old CURVE key or to the old address); one whose new entry retires its old
signing key is a rotation, and the node logs it as one. `node.core` carries the change out.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

from twinnode.eventlog import event
from twinnode.trust.identity import Peer, TrustStore

log = logging.getLogger("twinnode.node")


@dataclass(frozen=True)
class PeerChanges:
    """Peers to connect (`added`, new or changed), to drop (`dropped`: removed or changed),
    and which of the changed ones rotated their keys."""

    added: tuple[Peer, ...]
    dropped: tuple[Peer, ...]
    removed: tuple[str, ...]
    rotated: tuple[str, ...]
    moved: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.dropped)

    def summary(self) -> dict[str, Any]:
        """The reply of `ctl peers reload`, and the log line's fields."""
        changed = set(self.rotated) | set(self.moved)
        return {"added": sorted(p.name for p in self.added if p.name not in changed),
                "removed": list(self.removed), "rotated": list(self.rotated),
                "moved": list(self.moved)}


def peer_changes(old: Sequence[Peer], new: Sequence[Peer]) -> PeerChanges:
    """The change from pinning `old` to pinning `new` (both without this node itself)."""
    before = {p.name: p for p in old}
    after = {p.name: p for p in new}
    added = tuple(p for name, p in after.items() if _link(before.get(name)) != _link(p))
    dropped = tuple(p for name, p in before.items() if _link(after.get(name)) != _link(p))
    rotated, moved = [], []
    for peer in dropped:
        now = after.get(peer.name)
        if now is None:
            continue
        if now.sign_key != peer.sign_key or now.curve_key != peer.curve_key:
            rotated.append(peer.name)
        elif (now.pub_address, now.router_address) != (peer.pub_address, peer.router_address):
            moved.append(peer.name)
    removed = tuple(sorted(set(before) - set(after)))
    return PeerChanges(added, dropped, removed, tuple(sorted(rotated)), tuple(sorted(moved)))


def _link(peer: Peer | None) -> tuple[Any, ...] | None:
    """What a connection to `peer` is made with (its retired keys play no part)."""
    if peer is None:
        return None
    return (peer.sign_key, peer.curve_key, peer.pub_address, peer.router_address)


def log_changes(change: PeerChanges, trust: TrustStore, own: str) -> dict[str, Any]:
    """Log a reload's change (`peers.reloaded`, and `peer.rotated` per rotation); the reply
    of `ctl peers reload`: what changed, and the peers pinned now."""
    summary = change.summary()
    peers = [name for name in trust.names if name != own]
    if change:
        fields: dict[str, Any] = {k: ",".join(v) or "-" for k, v in summary.items()}
        event(log, "peers.reloaded", **fields)
    for name in change.rotated:
        event(log, "peer.rotated", "a new key replaces the pinned one; the old key is "
              "refused from now on", peer=name, sign=trust.get(name).sign_fingerprint)
    return {**summary, "pinned": peers}
