"""The decisions behind links that heal and agreed limits, without sockets (issue 15):
`node.links.Links` on a fake clock and transport, `node.agreed.PeerLimits`, a twin refused as
too large after its signature and declined for good (`ReplayGuard.decline`)."""
from __future__ import annotations

from dataclasses import replace
from typing import Iterable

import msgpack
import pytest
import zmq
from node_fixtures import node_factory  # noqa: F401  (a fixture)
from test_node import WAIT, make_twins, party, signed  # noqa: F401  (party: a fixture)

from twinnode.cli.ctl import format_status
from twinnode.errors import InvalidSignature, MalformedMessage, TwinTooLarge
from twinnode.node.agreed import PeerLimits
from twinnode.node.catchup import Catchup, PeerState
from twinnode.node.links import Links
from twinnode.node.transport import LinkEvent
from twinnode.trust.identity import Identity, TrustStore
from twinnode.wire import (
    Heartbeat,
    ReplayGuard,
    Signer,
    Verifier,
    encode_heartbeat,
    limits_for,
    seal,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeTransport:
    """Records relinks; hands out queued monitor events."""

    def __init__(self) -> None:
        self.events: list[LinkEvent] = []
        self.relinked: list[tuple[str, tuple[str, ...]]] = []

    def link_events(self) -> list[LinkEvent]:
        out, self.events = self.events, []
        return out

    def relink(self, peer: str, pub_address: str, router_address: str, server_key: bytes,
               roles: Iterable[str] = ("sub", "dealer")) -> None:
        self.relinked.append((peer, tuple(roles)))


@pytest.fixture
def bob() -> Identity:
    return Identity.generate("bob")


def links_for(bob: Identity, clock: Clock) -> tuple[Links, FakeTransport]:
    peer = bob.peer("tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002")
    return (Links([peer], after=1.0, backoff_max=8.0, own_curve_fingerprint="ab cd",
                  max_frame=5000, clock=clock, wall=lambda: 1_000_000.0 + clock.now),
            FakeTransport())


def up(role: str) -> LinkEvent:
    return LinkEvent(role, "bob" if role == "dealer" else None,
                     "tcp://127.0.0.1:7001" if role == "sub" else "tcp://127.0.0.1:7002",
                     zmq.EVENT_HANDSHAKE_SUCCEEDED, 0)


def test_a_silent_peer_is_relinked_with_doubling_backoff_until_it_is_heard(bob):
    clock = Clock()
    links, transport = links_for(bob, clock)
    states = {"bob": PeerState("bob", "")}
    # Execute: tick every 0.5 s for 20 s without a heartbeat
    times = []
    for _ in range(40):
        clock.now += 0.5
        if links.step(transport, states):
            times.append(clock.now)
    # Assert: first after 1 s of silence, then 1, 2, 4, 8 (the cap), 8 ... s apart
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert times[0] == 1.5 and gaps[:4] == [1.0, 2.0, 4.0, 8.0] and max(gaps) == 8.0
    assert transport.relinked[0] == ("bob", ("sub", "dealer"))
    # Execute: bob is heard and both links come up
    transport.events = [up("sub"), up("dealer")]
    states["bob"].last_heartbeat = clock.now
    clock.now += 0.5
    assert links.step(transport, states) == {}
    row = links.rows()["bob"]
    assert row["down_since"] is None and row["sub"] == row["dealer"] == "up"
    # Assert: silence again starts over at the short wait
    clock.now += 1.6
    assert links.step(transport, states) == {"bob": ("sub", "dealer")}


def test_a_zap_denial_is_the_last_error_and_logged_with_the_fix(bob, caplog):
    clock = Clock()
    links, transport = links_for(bob, clock)
    transport.events = [LinkEvent("sub", None, "tcp://127.0.0.1:7001",
                                  zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400),
                        LinkEvent("sub", None, "tcp://127.0.0.1:7001",
                                  zmq.EVENT_DISCONNECTED, 0)]
    links.step(transport, {})
    clock.now += 0.5
    links.step(transport, {})
    row = links.rows()["bob"]
    assert "refused our CURVE key (ZAP status 400)" in row["last_error"]
    assert row["down_since"] == 1_000_000.0
    denied = [r for r in caplog.records if getattr(r, "event", "") == "link.denied"]
    assert len(denied) == 1
    fields = denied[0].fields  # type: ignore[attr-defined]
    assert "twinnode card --show" in fields["hint"] and fields["our_curve_fingerprint"] == "ab cd"
    text = format_status({"node": "alice", "peers": [{"name": "bob", "link": row}]})
    assert "bob: disconnected since" in text and "last error: bob refused our CURVE" in text


def test_a_connection_dropped_without_a_retry_is_named_a_protocol_error(bob):
    clock = Clock()
    links, transport = links_for(bob, clock)
    drop = LinkEvent("sub", None, "tcp://127.0.0.1:7001", zmq.EVENT_DISCONNECTED, 0)
    retry = LinkEvent("sub", None, "tcp://127.0.0.1:7001", zmq.EVENT_CONNECT_RETRIED, 100)
    # a peer that went away: libzmq retries
    transport.events = [up("sub"), drop, retry]
    links.step(transport, {})
    clock.now += 0.2
    links.step(transport, {})
    assert "not reachable" in links.rows()["bob"]["last_error"]
    # a frame over our limit: dropped, never retried
    transport.events = [up("sub"), drop]
    links.step(transport, {})
    clock.now += 0.2
    links.step(transport, {})
    assert "protocol error" in links.rows()["bob"]["last_error"]
    assert "5000 bytes" in links.rows()["bob"]["last_error"]


def test_a_peer_whose_twins_arrive_while_its_heartbeats_queue_is_not_relinked(bob):
    # Prepare: both links up, one heartbeat, then only twins of bob's own (a burst at
    # start-up, its heartbeats queued behind them) for 5 s
    clock = Clock()
    links, transport = links_for(bob, clock)
    states = {"bob": PeerState("bob", "")}
    catchup = Catchup([("bob", "")], ["alice", "bob"], 0.2, clock=clock)
    catchup.peers["bob"] = states["bob"]
    transport.events = [up("sub"), up("dealer")]
    states["bob"].last_heartbeat = clock.now
    # Execute
    for _ in range(10):
        clock.now += 0.5
        catchup.on_word("bob")
        links.step(transport, states)
    quiet = list(transport.relinked)
    for _ in range(3):  # then nothing at all
        clock.now += 0.5
        links.step(transport, states)
    # Assert: no relink while its words arrive; silent in every way, it is relinked
    assert quiet == [] and catchup.heard("bob") == clock.now - 1.5
    assert transport.relinked == [("bob", ("sub", "dealer"))]


def test_a_heard_peer_whose_dealer_is_down_gets_only_its_dealer_relinked(bob):
    clock = Clock()
    links, transport = links_for(bob, clock)
    states = {"bob": PeerState("bob", "")}
    transport.events = [up("sub")]
    for _ in range(4):
        clock.now += 0.5
        states["bob"].last_heartbeat = clock.now
        links.step(transport, states)
    assert transport.relinked == [("bob", ("dealer",))]


def test_declined_seqs_are_settled_for_catchup_but_not_claimed_as_held():
    guard = ReplayGuard()
    for seq in (1, 2, 4):
        guard.accept("bob", seq, bytes([seq]) * 32)
    guard.decline("bob", 3)
    guard.decline("bob", 6)
    assert guard.holding("bob").watermark == 4 and guard.holding("bob").ranges == ((6, 6),)
    assert guard.missing("bob", 6) == [5]
    assert guard.holdings() == {"bob": 2}        # what a heartbeat says we hold
    assert not guard.accepted("bob", 3)
    guard.accept("bob", 5, b"\x05" * 32)
    assert guard.holding("bob").watermark == 6


def test_a_signed_twin_over_max_rows_is_too_large_and_a_forged_one_is_not(small_schema):
    alice = Identity.generate("alice")
    twin = make_twins(small_schema, "alice", k=1)[0]  # 20 rows
    frames = signed([twin], small_schema, alice)[0]
    limits = limits_for(small_schema, 10)
    verifier = Verifier(TrustStore([alice.peer()]), small_schema, ReplayGuard(), limits)
    with pytest.raises(TwinTooLarge, match="20 rows"):
        verifier.open(frames)
    forged = [*frames[:3], b"\0" * 64]
    with pytest.raises(InvalidSignature):
        verifier.open(forged)


def test_a_heartbeat_with_only_one_limit_field_is_malformed(small_schema):
    alice = Identity.generate("alice")
    good = encode_heartbeat(Heartbeat("alice", 1, {}, max_rows=10, max_frame=900),
                            Signer(alice))
    header = msgpack.unpackb(good[1])
    del header["max_frame"]
    verifier = Verifier(TrustStore([alice.peer()]), small_schema, ReplayGuard())
    assert verifier.open(good).message.max_rows == 10
    with pytest.raises(MalformedMessage, match="missing"):
        verifier.open(seal(header, b"", Signer(alice)))


def test_peer_limits_hold_back_what_a_narrower_peer_cannot_take(small_schema):
    ours = limits_for(small_schema, 1_000_000)
    limits = PeerLimits(small_schema, ours)
    assert limits.advert() == (None, None)  # the defaults: the version 1.0 heartbeat
    alice = Identity.generate("alice")
    frames = signed(make_twins(small_schema, "alice", k=1), small_schema, alice)[0]
    narrow = PeerLimits(small_schema, limits_for(small_schema, 10))
    rows, frame = narrow.advert()
    assert rows == 10 and frame is not None
    limits.on_heartbeat(Heartbeat("bob", 0, {}, max_rows=rows, max_frame=frame))
    limits.on_heartbeat(Heartbeat("carol", 0, {}))
    assert not limits.fits_everyone(frames, "alice", 1)
    assert limits.unfit("bob") == {("alice", 1)} and limits.unfit("carol") == set()
    assert not limits.fits("bob", "alice", 1, frames) and limits.fits("carol", "alice", 1, frames)
    assert limits.withheld == {"bob": 2}
    assert "at most 10 rows" in (limits.mismatch("bob") or "")
    assert limits.mismatch("carol") is None


def test_a_node_declines_a_too_large_twin_once_and_never_asks_for_it_again(party,
                                                                           node_factory):
    config = replace(party.config, network=replace(party.config.network, max_rows=10))

    async def main() -> None:
        node = await node_factory.opened(config)
        frames = signed(make_twins(party.schema, "bob", k=2), party.schema, party.bob)
        # Execute
        results = [await node.handle_frames(f) for f in frames]
        # Assert: refused as too large, counted, declined: catch-up's `have` covers them
        assert results == [None, None] and node.rejected["too-large"] == 2
        assert node.catchup.have(node.verifier.guard)["bob"].watermark == 2
        assert node.agreed.row("bob")["declined"] == 2
        assert node.store.counts() == {}

    node_factory.run(main(), 6 * WAIT)
