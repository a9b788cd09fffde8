"""Which twins have been accepted: per-sender sequence sets and recently seen content digests.

A replay is a (sender, seq) that was already accepted, not merely "seq <= the last one": catch-up
can deliver a sender's twins out of order (seq 7 live before 5 and 6 are fetched), and a strict
high-water mark would refuse 5 and 6 forever. So per sender we keep a contiguous watermark (every
seq 1..w accepted) plus the sparse set of accepted seqs above it; gaps are what catch-up asks for.
A duplicate is the same payload digest under another (sender, seq), from a bounded LRU.
Nothing is recorded until `accept`, which the node calls after the twin is durably stored, so a
twin refused by a later check (schema) is not burnt. `wire.py` re-exports this module's API.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import DuplicateMessage, MalformedMessage, ReplayedMessage, StoreError

STATE_FORMAT = "twinnode-replay/1"


@dataclass(frozen=True)
class Holding:
    """What a node holds of one sender: every seq 1..watermark, plus the `extra` seqs above."""

    watermark: int
    extra: tuple[int, ...] = ()

    def has(self, seq: int) -> bool:
        return seq <= self.watermark or seq in self.extra


class ReplayGuard:
    """Accepted (sender, seq) pairs and recent payload digests; serialisable node state."""

    def __init__(self, max_digests: int = 65_536, max_ahead: int = 100_000) -> None:
        self.max_digests = max_digests
        self.max_ahead = max_ahead
        self._marks: dict[str, int] = {}
        self._extra: dict[str, set[int]] = {}
        self._digests: OrderedDict[bytes, None] = OrderedDict()

    def check(self, sender: str, seq: int, digest: bytes) -> None:
        """Raise ReplayedMessage / DuplicateMessage if this twin must not be accepted again."""
        if self.accepted(sender, seq):
            raise ReplayedMessage(f"{sender} seq {seq} was already accepted "
                                  f"(watermark {self.latest(sender)})")
        if digest in self._digests:
            raise DuplicateMessage(f"{sender} seq {seq} repeats the content of a twin already "
                                   "accepted")
        if seq > self.latest(sender) + self.max_ahead:
            raise MalformedMessage(f"{sender} seq {seq} is more than {self.max_ahead} ahead of "
                                   f"watermark {self.latest(sender)}; catch-up will fetch in order")

    def accept(self, sender: str, seq: int, digest: bytes) -> None:
        """Record a stored twin; idempotent."""
        self._remember_digest(digest)
        mark = self._marks.get(sender, 0)
        extra = self._extra.setdefault(sender, set())
        if seq <= mark or seq in extra:
            return
        if seq != mark + 1:
            extra.add(seq)
            return
        mark = seq
        while mark + 1 in extra:
            mark += 1
            extra.remove(mark)
        self._marks[sender] = mark

    def latest(self, sender: str) -> int:
        """The contiguous watermark: every seq 1..latest from `sender` is accepted (0: none)."""
        return self._marks.get(sender, 0)

    def accepted(self, sender: str, seq: int) -> bool:
        return seq <= self.latest(sender) or seq in self._extra.get(sender, ())

    def missing(self, sender: str, upto: int, limit: int = 1000) -> list[int]:
        """Seqs in latest+1..upto not accepted yet (at most `limit`): the gaps to fetch."""
        extra = self._extra.get(sender, set())
        out = []
        for seq in range(self.latest(sender) + 1, upto + 1):
            if seq not in extra:
                out.append(seq)
                if len(out) >= limit:
                    break
        return out

    def holding(self, sender: str) -> Holding:
        return Holding(self.latest(sender), tuple(sorted(self._extra.get(sender, ()))))

    def have(self) -> dict[str, Holding]:
        """Per sender what is held: the `have` of a catch-up request."""
        return {s: self.holding(s) for s in sorted(set(self._marks) | set(self._extra))}

    def holdings(self) -> dict[str, int]:
        """Per sender the watermark: the `holdings` of a heartbeat."""
        return {s: h.watermark for s, h in self.have().items()}

    def _remember_digest(self, digest: bytes) -> None:
        self._digests[digest] = None
        self._digests.move_to_end(digest)
        while len(self._digests) > self.max_digests:
            self._digests.popitem(last=False)

    # -------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (digests oldest first)."""
        return {"format": STATE_FORMAT,
                "senders": {s: {"watermark": h.watermark, "extra": list(h.extra)}
                            for s, h in self.have().items()},
                "digests": [d.hex() for d in self._digests]}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], max_digests: int = 65_536,
                  max_ahead: int = 100_000) -> "ReplayGuard":
        """Rebuild from `to_dict` output; StoreError if the state is not well formed."""
        guard = cls(max_digests=max_digests, max_ahead=max_ahead)
        try:
            if doc.get("format") != STATE_FORMAT:
                raise ValueError(f"format is not {STATE_FORMAT}")
            for sender, h in dict(doc["senders"]).items():
                mark, extra = h["watermark"], list(h["extra"])
                if (not isinstance(sender, str) or type(mark) is not int or mark < 0
                        or not all(type(s) is int and s > mark + 1 for s in extra)):
                    raise ValueError(f"bad entry for sender {sender!r}")
                guard._marks[sender] = mark
                guard._extra[sender] = set(extra)
            for d in doc["digests"]:
                digest = bytes.fromhex(d)
                if len(digest) != 32:
                    raise ValueError("a digest is not 32 bytes")
                guard._remember_digest(digest)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StoreError(f"replay state is not well formed: {exc}") from None
        return guard
