"""Bounds on what a peer can make a node parse or allocate, checked before the work is done.

`Verifier` checks frame sizes and msgpack lengths against `WireLimits` before it unpacks
anything, and a twin's rows, cells and payload length before it hashes or decodes the payload.
`limits_for` narrows the defaults to what one schema allows: the most bytes a twin of the
node's `[network] max_rows` rows can take under it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import msgpack

from twinnode.schema import Schema
from twinnode.wire.columnar import max_payload_bytes

__all__ = ["WireLimits", "limits_for", "frame_limit", "twin_rows"]

FRAME_MARGIN = 4096  # a socket's MAXMSGSIZE is the largest valid frame plus this (CURVE framing)


@dataclass(frozen=True)
class WireLimits:
    """Bounds on what a peer can make us parse or allocate, checked before the work."""

    max_topic_bytes: int = 128
    max_header_bytes: int = 64 * 1024
    max_payload_bytes: int = 64 * 1024 * 1024
    max_signature_bytes: int = 1024      # a signature of any length but 64 is refused later
    max_str_len: int = 4096              # any string in a header
    max_bin_len: int = 64                # any binary in a header (digests, nonces)
    max_array_len: int = 10_000          # any array in a header (e.g. catch-up `ranges`)
    max_map_len: int = 1024              # any map in a header (holdings, have, generator)
    max_rows: int = 1_000_000            # rows in one peer twin (a node sets [network] max_rows)
    max_cells: int = 20_000_000          # rows x columns: bounds the decoded arrays (8 B each)
    max_columns: int = 1000
    freshness_s: float = 300.0           # heartbeats/catch-up: |now - created| within this
    max_nonces: int = 65_536             # remembered (sender, nonce) pairs of fresh messages


def limits_for(schema: Schema, max_rows: int, base: WireLimits = WireLimits()) -> WireLimits:
    """`base` narrowed to twins of at most `max_rows` rows under `schema`: the payload limit
    becomes what that many rows can take, so a peer cannot make us buffer more."""
    rows = min(max_rows, base.max_rows)
    return replace(base, max_rows=rows,
                   max_payload_bytes=min(base.max_payload_bytes, max_payload_bytes(schema, rows)))


def frame_limit(limits: WireLimits) -> int:
    """The largest frame a node with `limits` takes at its sockets (their MAXMSGSIZE): the
    largest frame the wire accepts, plus CURVE's framing."""
    return max(limits.max_payload_bytes, limits.max_header_bytes) + FRAME_MARGIN


def twin_rows(frames: Sequence[bytes]) -> int | None:
    """The rows a stored (already verified) twin envelope's header declares; None if the
    frames are not a twin's."""
    try:
        header = msgpack.unpackb(frames[1], raw=False, max_str_len=4096, max_bin_len=64,
                                 max_array_len=10_000, max_map_len=1024, max_ext_len=0)
    except Exception:  # not ours to judge here: the wire refuses it on arrival
        return None
    rows = header.get("rows") if isinstance(header, dict) else None
    return rows if type(rows) is int else None
