"""Refusals logged so that they help: counted always, logged without flooding, with a hint.

A peer whose keys changed is refused on every heartbeat, forever; one line a second buries
everything else. So the first refusal of each (reason, peer) is logged at once with the likely
cause and the fix (`hint=`); identical ones after it are counted, and at most one line per
WINDOW seconds says how many were held back (`repeated=`). The counters (`status`'s
`rejected`) count every one. ZAP's denials of unpinned CURVE keys go the same way, keyed by
the key's fingerprint.

What a flood can make us write is bounded, not only what one peer repeating itself can: a
sender name is the message's to claim, so every name we do not pin shares one key ("?");
and at most NEW_PER_WINDOW new keys per reason get a first line in a window (an attacker can
make CURVE keys without end), the rest share the key "*" (one line a window, `peers=many`).
The memo of keys is bounded (MAX_KEYS) and forgets keys quiet for a window.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from twinnode.errors import WireError
from twinnode.eventlog import event
from twinnode.trust.certs import curve_raw
from twinnode.trust.identity import fingerprint
from twinnode.wire import rejection_line

WINDOW = 60.0       # seconds between two lines for the same (reason, peer)
MAX_KEYS = 1024     # (reason, peer) pairs remembered; a sender name is the peer's to choose
NEW_PER_WINDOW = 16  # new (reason, peer) first lines per reason per window; more share "*"
QUIET_REASONS = ("replay", "duplicate")  # expected when catch-up overlaps live traffic

_COMPARE = ("compare fingerprints out of band: `twinnode check --config node.toml` (or "
            "`twinnode peers list`) lists those pinned here, and that site's `twinnode card "
            "--show` prints its own; if it rotated its keys, pin its new card with `twinnode "
            "peers add CARD` (taken without a restart), else fix its entry")
HINTS = {
    "signature": "the signature does not match the signing key pinned for this peer: most "
                 "often the peer made new keys, or its sign_key was copied wrongly; "
                 f"{_COMPARE}. If they match, someone else sends under its name",
    "unknown-sender": "this sender is not pinned (or was removed): pin its card with "
                      "`twinnode peers add CARD` (after comparing fingerprints) if it should "
                      "be heard, else nothing is to do",
    "schema": "the peer's twins use another schema (its hash travels in every twin): every "
              "site needs the same schema.toml content; compare `twinnode check`'s schema hash",
    "version": "the peer runs a twinnode release with another wire version: upgrade the older",
    "stale": "the message is outside the freshness window: check both machines' clocks (NTP)",
    "equivocation": "the sender signed two different twins under one seq; the first copy is "
                    "kept. Most often that site lost its state directory, kept its keys and "
                    "published again without `twinnode run --recovered-state` (docs/NODE.md, "
                    "'Losing the state directory'); else its signing key is used twice",
    "zap-denied": "a client with a CURVE key that no [[peers]] entry pins: a peer whose keys "
                  f"changed, or a curve_key copied wrongly; {_COMPARE}",
}


@dataclass
class _Seen:
    logged: float
    held_back: int = 0


class RejectionLog:
    """Counts every refusal in `counts` and logs the first of a kind, then one per WINDOW."""

    def __init__(self, log: logging.Logger, counts: Counter[str],
                 clock: Callable[[], float] = time.monotonic, window: float = WINDOW,
                 known: Callable[[str], bool] | None = None,
                 fingerprint: Callable[[str], str | None] | None = None) -> None:
        """`known(name)`: whether a sender name is pinned (others share the key "?");
        `fingerprint(name)`: its signing key's, for an equivocation's line."""
        self.log, self.counts, self.clock, self.window = log, counts, clock, window
        self.known, self.fingerprint = known, fingerprint
        self._seen: dict[tuple[str, str], _Seen] = {}
        self._new: dict[str, tuple[float, int]] = {}  # reason -> (window start, new keys)

    def refused(self, exc: WireError, channel: str) -> None:
        """A message refused by the wire (or the node) on `channel`."""
        self.counts[exc.reason] += 1
        peer = getattr(exc, "sender", None)
        label = str(peer) if self.known is None or (isinstance(peer, str)
                                                     and self.known(peer)) else "?"
        repeated, many = self._due(exc.reason, label)
        if repeated is None:
            return
        level = logging.INFO if exc.reason in QUIET_REASONS else logging.WARNING
        event(self.log, "rejected", rejection_line(exc)[:300], level=level, reason=exc.reason,
              peer=peer, seq=getattr(exc, "seq", None), channel=channel,
              count=self.counts[exc.reason], **self._evidence(exc, label),
              **self._extra(exc.reason, repeated, many))

    def _evidence(self, exc: WireError, label: str) -> dict[str, object]:
        """An equivocation's line names the sender's signing fingerprint and both digests."""
        digests = getattr(exc, "digests", None)
        if not isinstance(digests, tuple) or len(digests) != 2:
            return {}
        found = self.fingerprint(label) if self.fingerprint is not None and label != "?" \
            else None
        return {"sender_fingerprint": found or "?", "kept": digests[0].hex(),
                "refused": digests[1].hex()}

    def denied(self, key: bytes) -> None:
        """ZAP refused a CURVE client whose public key (Z85) is `key`."""
        self.counts["zap-denied"] += 1
        print_ = fingerprint(curve_raw(key))
        repeated, many = self._due("zap-denied", print_)
        if repeated is None:
            return
        event(self.log, "zap.denied", "DENIED (unpinned CURVE key)", level=logging.WARNING,
              key_fingerprint=print_, count=self.counts["zap-denied"],
              **self._extra("zap-denied", repeated, many))

    def _due(self, reason: str, peer: str) -> tuple[int | None, bool]:
        """(None: hold this one back; else how many were held back since the last line, -1
        for the first of its kind; whether it went to the shared "*" key)."""
        now, key = self.clock(), (reason, peer)
        seen = self._seen.get(key)
        if seen is not None and seen.held_back == 0 and now - seen.logged >= self.window:
            del self._seen[key]  # quiet for a window: it counts as new again (and is capped)
            seen = None
        if seen is None and not self._may_add(reason, now):
            key = (reason, "*")
            seen = self._seen.get(key)
        many = key[1] == "*"
        if seen is None:
            if len(self._seen) >= MAX_KEYS:
                self._forget(now)
            self._seen[key] = _Seen(now)
            return -1, many
        if now - seen.logged < self.window:
            seen.held_back += 1
            return None, many
        held, seen.logged, seen.held_back = seen.held_back, now, 0
        return held, many

    def _may_add(self, reason: str, now: float) -> bool:
        """Whether one more new key of `reason` may have its own line in this window."""
        start, added = self._new.get(reason, (now, 0))
        if now - start >= self.window:
            start, added = now, 0
        if added >= NEW_PER_WINDOW:
            return False
        self._new[reason] = (start, added + 1)
        return True

    def _forget(self, now: float) -> None:
        """Make room: drop keys idle for a window with nothing held back, else the oldest."""
        idle = [k for k, s in self._seen.items()
                if s.held_back == 0 and now - s.logged >= self.window]
        for k in idle:
            del self._seen[k]
        if len(self._seen) >= MAX_KEYS:
            self._seen.pop(next(iter(self._seen)))

    def _extra(self, reason: str, repeated: int, many: bool) -> dict[str, object]:
        more: dict[str, object] = {"peers": "many"} if many else {}
        if repeated < 0:
            hint = HINTS.get(reason)
            return {"hint": hint, **more} if hint else more
        return {"repeated": repeated, "window": f"{self.window:g}s", **more}
