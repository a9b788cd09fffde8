"""The messages besides twins: heartbeats and the two halves of a catch-up exchange.

A twin (`twinnode.twins.Twin`) is the payload-bearing message; these three carry only header
fields. Each has a fresh random nonce and a creation time, which the receiver uses to refuse
stale or replayed copies (see `wire.verify`). `Message` is what a verified envelope carries.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Mapping

from twinnode.trust.seqset import Holding
from twinnode.twins import Twin

__all__ = ["NONCE_BYTES", "Heartbeat", "CatchupRequest", "CatchupEnd", "Message"]

NONCE_BYTES = 16


def _nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


@dataclass(frozen=True)
class Heartbeat:
    """Alive, my latest twin seq, and the watermark of every sender whose twins I hold; and,
    when they are not the defaults, the limits of what I accept (both or neither)."""

    sender: str
    latest: int
    holdings: Mapping[str, int]
    created: float = field(default_factory=time.time)
    nonce: bytes = field(default_factory=_nonce)
    max_rows: int | None = None   # the most rows a twin sent to me may have; None: the default
    max_frame: int | None = None  # the largest frame my sockets take (from max_rows, schema)


@dataclass(frozen=True)
class CatchupRequest:
    """Send me the stored twins I lack; `have` says what I hold per sender (bounded to
    `seqset.MAX_RANGES` ranges when encoded: it may claim less than is held)."""

    sender: str
    to: str
    have: Mapping[str, Holding]
    request_id: bytes = field(default_factory=_nonce)
    created: float = field(default_factory=time.time)
    nonce: bytes = field(default_factory=_nonce)
    # sender -> (seq, payload digest) of the highest seq we hold of it: a server holding
    # other content under that seq sends its copy, so the requester sees the equivocation
    # (absent or empty: the bytes of version 1.0)
    tips: Mapping[str, tuple[int, bytes]] | None = None


@dataclass(frozen=True)
class CatchupEnd:
    """The end of a catch-up reply: `count` twin envelopes were sent for `request_id`."""

    sender: str
    to: str
    request_id: bytes
    count: int
    created: float = field(default_factory=time.time)
    nonce: bytes = field(default_factory=_nonce)


Message = Twin | Heartbeat | CatchupRequest | CatchupEnd
