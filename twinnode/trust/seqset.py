"""What a node holds of one sender's twins: a contiguous watermark plus ranges above it.

One implementation for everything that tracks sequence numbers: the replay guard (what was
accepted), the store (what it can serve), catch-up requests (what the requester has) and the
`twins` control reply. A `Holding` is immutable and canonical (ranges sorted, disjoint, not
touching each other or the watermark); `SeqSet` is the mutable set the replay guard keeps.

A set with gaps stays small as ranges: a sender who skipped seqs, or a publish cut short,
costs one range, not one entry per seq held above the gap. A catch-up request lists at most
`MAX_RANGES` ranges over all senders (`bounded`): beyond that it keeps each sender's lowest
ranges and drops the rest, so it claims to hold less than it does. The server then sends
some envelopes the requester already has; those are refused as replays and cost only
bandwidth, and the gaps, which sit below the dropped ranges, are served first. The server
fills a batch round robin over the senders (`Catchup.serve_plan`), so one sender whose ranges
were cut cannot crowd the others out.

The limits below are the one set shared by the wire (what a peer may send), trust.replay (what
is accepted) and the store (what is stored).
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Iterable, Mapping

MAX_SEQ = 9_999_999_999   # the store's 10-digit file names; the wire refuses anything above
MAX_AHEAD = 100_000       # a twin's seq may be at most this far above its sender's watermark
MAX_RANGES = 1_000        # ranges one catch-up request lists, over all senders (~20 kB header)

Range = tuple[int, int]


@dataclass(frozen=True)
class Holding:
    """Every seq in 1..watermark, plus each inclusive range (a, b) in `ranges`."""

    watermark: int = 0
    ranges: tuple[Range, ...] = ()

    @classmethod
    def of(cls, seqs: Iterable[int]) -> "Holding":
        """The canonical holding of a set of seqs (each >= 1)."""
        held = SeqSet()
        for s in sorted(set(seqs)):  # ascending: each add appends or extends the last range
            held.add(s)
        return held.holding()

    def has(self, seq: int) -> bool:
        if seq <= self.watermark:
            return seq >= 1
        i = bisect_right(self.ranges, (seq, MAX_SEQ + 1)) - 1
        return i >= 0 and self.ranges[i][0] <= seq <= self.ranges[i][1]

    @property
    def latest(self) -> int:
        """The highest seq held (0: none)."""
        return self.ranges[-1][1] if self.ranges else self.watermark

    def count(self) -> int:
        """How many seqs are held."""
        return self.watermark + sum(b - a + 1 for a, b in self.ranges)

    def seqs_above(self) -> list[int]:
        """The seqs held above the watermark, ascending (expands the ranges: small sets only)."""
        return [s for a, b in self.ranges for s in range(a, b + 1)]

    def gaps(self, upto: int, limit: int) -> list[int]:
        """Up to `limit` seqs in watermark+1..upto that are not held, ascending."""
        out: list[int] = []
        nxt = self.watermark + 1
        for a, b in (*self.ranges, (upto + 1, upto + 1)):
            for s in range(nxt, min(a, upto + 1)):
                out.append(s)
                if len(out) >= limit:
                    return out
            nxt = b + 1
            if nxt > upto:
                break
        return out

    def lacking(self, held: Iterable[int], limit: int | None = None) -> list[int]:
        """The seqs of `held` (ascending) that this holding lacks: what a server sends."""
        out = []
        for s in held:
            if not self.has(s):
                out.append(s)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def truncated(self, max_ranges: int) -> "Holding":
        """The same holding less its ranges above the lowest `max_ranges` (claims less)."""
        return self if len(self.ranges) <= max_ranges else Holding(
            self.watermark, self.ranges[:max(max_ranges, 0)])

    def problem(self) -> str | None:
        """Why this is not a canonical holding (None if it is): for checking peer input."""
        w = self.watermark
        if type(w) is not int or not 0 <= w <= MAX_SEQ:
            return f"watermark must be an integer in 0..{MAX_SEQ}"
        prev = w
        for r in self.ranges:
            if (not isinstance(r, tuple) or len(r) != 2 or type(r[0]) is not int
                    or type(r[1]) is not int):
                return "each range must be two integers [first, last]"
            a, b = r
            if not prev + 2 <= a <= b <= MAX_SEQ:
                return (f"range [{a}, {b}] must satisfy {prev + 2} <= first <= last <= {MAX_SEQ}"
                        " (ranges sorted, apart, above the watermark + 1)")
            prev = b
        return None


class SeqSet:
    """A mutable set of one sender's seqs, kept as watermark + sorted disjoint ranges above it
    (`add` merges in O(log r + r) for r ranges; `holding` is cached until the next change)."""

    def __init__(self) -> None:
        self.watermark = 0
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._holding: Holding | None = Holding()

    def add(self, seq: int) -> None:
        if seq in self:
            return
        i = bisect_right(self._starts, seq)  # ranges before i start at or below seq
        joins_left = i > 0 and self._ends[i - 1] == seq - 1
        joins_right = i < len(self._starts) and self._starts[i] == seq + 1
        if joins_left and joins_right:
            self._ends[i - 1] = self._ends.pop(i)
            del self._starts[i]
        elif joins_left:
            self._ends[i - 1] = seq
        elif joins_right:
            self._starts[i] = seq
        else:
            self._starts.insert(i, seq)
            self._ends.insert(i, seq)
        if self._starts[0] == self.watermark + 1:  # ranges never touch each other, so once
            self.watermark = self._ends.pop(0)
            del self._starts[0]
        self._holding = None

    def add_range(self, first: int, last: int) -> None:
        """Add every seq in first..last (ascending adds: cheap when it extends the top)."""
        if first <= self.watermark + 1 and not self._starts:
            self.watermark = max(self.watermark, last)
            self._holding = None
            return
        for seq in range(first, last + 1):
            self.add(seq)

    def __contains__(self, seq: int) -> bool:
        if 1 <= seq <= self.watermark:
            return True
        i = bisect_right(self._starts, seq) - 1
        return i >= 0 and self._ends[i] >= seq

    def holding(self) -> Holding:
        if self._holding is None:
            self._holding = Holding(self.watermark, tuple(zip(self._starts, self._ends)))
        return self._holding


def bounded(have: Mapping[str, Holding], max_ranges: int = MAX_RANGES) -> dict[str, Holding]:
    """`have` with at most `max_ranges` ranges in all, shared evenly between the senders that
    have any (each keeps its lowest ranges; a dropped range is only fetched again)."""
    total = sum(len(h.ranges) for h in have.values())
    if total <= max_ranges:
        return dict(have)
    out = {s: h.truncated(0) for s, h in have.items()}
    budget, left = max_ranges, sorted(have, key=lambda s: len(have[s].ranges))
    while left:  # water-filling: small holders keep all, the rest share what remains evenly
        share = budget // len(left)
        sender = left.pop(0)
        keep = min(len(have[sender].ranges), share)
        out[sender] = have[sender].truncated(keep)
        budget -= keep
    return out
