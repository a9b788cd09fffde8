"""The bytes layer: how twins, heartbeats and catch-up messages are framed, signed and checked.

    envelope   the four frames, the header's common fields, signing (`Signer`, `seal`)
    messages   Heartbeat, CatchupRequest, CatchupEnd (a twin is `twinnode.twins.Twin`)
    codec      encode_x / decode_x for each family, and the header -> message readers
    columnar   a twin's columns as typed bytes
    checks     the structural checks of inbound frames, before the signature
    verify     `Verifier`: every check in the protocol's order; `rejection_line`
    limits     `WireLimits`, `limits_for`: bounds on what a peer can make us parse;
               `frame_limit` (a socket's MAXMSGSIZE), `twin_rows` (for what a peer accepts)

No sockets, no data frames, no JAX (an import-linter contract keeps it so): the node's
transport moves these frames, the store keeps them verbatim. The names below are the API the
node, the store, the lab and the tests use; `Holding` and `ReplayGuard` are the trust layer's,
re-exported because a `Verifier` is built with one.
"""
from twinnode.trust.replay import Holding, ReplayGuard
from twinnode.wire.codec import (
    decode_catchup_end,
    decode_catchup_request,
    decode_heartbeat,
    decode_twin,
    encode_catchup_end,
    encode_catchup_request,
    encode_heartbeat,
    TwinPayload,
    encode_twin,
    twin_digest,
    twin_payload,
)
from twinnode.wire.envelope import (
    END,
    FAMILIES,
    HEARTBEAT,
    REQUEST,
    TWIN,
    VERSION,
    Envelope,
    Signer,
    seal,
    signed_message,
    topic,
)
from twinnode.wire.limits import WireLimits, frame_limit, limits_for, twin_rows
from twinnode.wire.messages import CatchupEnd, CatchupRequest, Heartbeat
from twinnode.wire.verify import Verifier, rejection_line

__all__ = ["VERSION", "FAMILIES", "TWIN", "HEARTBEAT", "REQUEST", "END", "WireLimits",
           "Signer", "Envelope", "Heartbeat", "CatchupRequest", "CatchupEnd", "Holding",
           "ReplayGuard", "Verifier", "limits_for", "frame_limit", "twin_rows", "topic", "signed_message", "seal",
           "encode_twin", "twin_digest", "twin_payload", "TwinPayload", "encode_heartbeat", "encode_catchup_request",
           "encode_catchup_end", "decode_twin", "decode_heartbeat", "decode_catchup_request",
           "decode_catchup_end", "rejection_line"]
