"""Which twins have been accepted: per-sender sequence sets and recently seen content digests.

A replay is a (sender, seq) that was already accepted, not merely "seq <= the last one": catch-up
can deliver a sender's twins out of order (seq 7 live before 5 and 6 are fetched), and a strict
high-water mark would refuse 5 and 6 forever. So per sender we keep a `seqset.SeqSet`
(contiguous watermark plus the accepted seqs above it); gaps are what catch-up asks for.

Content is judged per sender: a duplicate is a payload digest that *the same sender* already had
accepted under another seq (a release published twice). Another sender's twin with the same
payload is not a duplicate: otherwise a peer could re-sign someone else's twin, deliver it
first, and have the original refused forever. An equivocation is a second, different twin
under an accepted (sender, seq): the sender signed two messages with one seq. It is told apart
from a plain replay while the first twin's digest is among the last `max_digests` accepted,
and beyond them through `lookup` (the node passes its store's index: every stored twin).

Nothing is recorded until `accept`, which the node calls after the twin is durably stored, so a
twin refused by a later check (schema) is not burnt. A twin refused for good (its signed header
says it is larger than this node takes) is `decline`d: it counts as settled in what catch-up
asks for (`holding`, `missing`, the window) so it is never fetched again, but not as accepted
(`holdings`, what heartbeats say we hold, leaves it out: we cannot serve it). `twinnode.wire` re-exports this module's
API (a `Verifier` is built with a `ReplayGuard`).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

from twinnode.errors import DuplicateMessage, EquivocatedMessage, MalformedMessage, ReplayedMessage
from twinnode.trust.seqset import MAX_AHEAD, Holding, SeqSet

__all__ = ["Holding", "ReplayGuard"]


class ReplayGuard:
    """Accepted (sender, seq) pairs and the recent (sender, digest) pairs; rebuilt from the store."""

    def __init__(self, max_digests: int = 65_536, max_ahead: int = MAX_AHEAD,
                 window: bool = True,
                 lookup: Callable[[str, int], bytes | None] | None = None) -> None:
        """`lookup(sender, seq)`: the digest of an accepted twin no longer remembered here
        (the store's), so equivocation is told from a replay for every stored twin."""
        self.lookup = lookup
        self.max_digests = max_digests
        self.max_ahead = max_ahead
        self.window = window
        self._seqs: dict[str, SeqSet] = {}
        self._settled: dict[str, SeqSet] = {}   # accepted + declined, for senders with declines
        self._by_seq: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._by_digest: dict[tuple[str, bytes], int] = {}

    def check(self, sender: str, seq: int, digest: bytes) -> None:
        """Raise ReplayedMessage / EquivocatedMessage / DuplicateMessage / MalformedMessage if
        this twin must not be accepted."""
        if self.accepted(sender, seq):
            first = self.digest_of(sender, seq)
            if first is not None and first != digest:
                exc = EquivocatedMessage(f"{sender} signed two different twins as seq {seq} "
                                         f"(kept {first.hex()}, refused {digest.hex()})")
                exc.digests = (first, digest)  # type: ignore[attr-defined]  # for the log
                raise exc
            raise ReplayedMessage(f"{sender} seq {seq} was already accepted "
                                  f"(watermark {self.latest(sender)})")
        other = self._by_digest.get((sender, digest))
        if other is not None:
            raise DuplicateMessage(f"{sender} seq {seq} repeats the content of its seq {other}, "
                                   "already accepted")
        if self.window and seq > self.latest(sender) + self.max_ahead:
            raise MalformedMessage(f"{sender} seq {seq} is more than {self.max_ahead} ahead of "
                                   f"watermark {self.latest(sender)}; catch-up will fetch in order")

    def accept(self, sender: str, seq: int, digest: bytes) -> None:
        """Record a stored twin; idempotent."""
        self._remember(sender, seq, digest)
        self._seqs.setdefault(sender, SeqSet()).add(seq)
        if sender in self._settled:
            self._settled[sender].add(seq)

    def decline(self, sender: str, seq: int) -> None:
        """Record a twin refused for good: catch-up does not ask for it again."""
        if sender not in self._settled:
            held = self.holding(sender)  # the accepted ones: no declines yet
            settled = self._settled[sender] = SeqSet()
            for a, b in ((1, held.watermark), *held.ranges):
                if b >= a:
                    settled.add_range(a, b)
        self._settled[sender].add(seq)

    def digest_of(self, sender: str, seq: int) -> bytes | None:
        """The digest of the accepted twin (sender, seq), or None when unknown."""
        first = self._by_seq.get((sender, seq))
        if first is None and self.lookup is not None and self.accepted(sender, seq):
            first = self.lookup(sender, seq)
        return first

    def tips(self) -> dict[str, tuple[int, bytes]]:
        """Per sender the highest accepted seq and its digest (where known): what a catch-up
        request offers, so a server holding other content under it can show it."""
        out: dict[str, tuple[int, bytes]] = {}
        for sender, seqs in sorted(self._seqs.items()):
            top = seqs.holding().latest
            digest = self.digest_of(sender, top) if top else None
            if digest is not None:
                out[sender] = (top, digest)
        return out

    def latest(self, sender: str) -> int:
        """The contiguous watermark: every seq 1..latest from `sender` is settled (0: none)."""
        return self.holding(sender).watermark

    def accepted(self, sender: str, seq: int) -> bool:
        seqs = self._seqs.get(sender)
        return seqs is not None and seq in seqs

    def missing(self, sender: str, upto: int, limit: int = 1000) -> list[int]:
        """Seqs in latest+1..upto not accepted yet (at most `limit`): the gaps to fetch."""
        return self.holding(sender).gaps(upto, limit)

    def holding(self, sender: str) -> Holding:
        """What is settled of `sender`'s seqs: accepted, or declined for good."""
        seqs = self._settled.get(sender) or self._seqs.get(sender)
        return seqs.holding() if seqs else Holding()

    def have(self) -> dict[str, Holding]:
        """Per sender what is held: the `have` of a catch-up request."""
        return {s: self.holding(s) for s in sorted(self._seqs)}

    def holdings(self) -> dict[str, int]:
        """Per sender the watermark: the `holdings` of a heartbeat."""
        return {s: self._seqs[s].watermark for s in sorted(self._seqs)}

    def _remember(self, sender: str, seq: int, digest: bytes) -> None:
        old = self._by_seq.pop((sender, seq), None)
        if old is not None:
            self._by_digest.pop((sender, old), None)
        self._by_seq[(sender, seq)] = digest
        self._by_digest[(sender, digest)] = seq
        while len(self._by_seq) > self.max_digests:
            (s, _), d = self._by_seq.popitem(last=False)
            if self._by_digest.get((s, d)) is not None:
                del self._by_digest[(s, d)]
