"""Catch-up's state and decisions (node.catchup), loop-free, on a fake clock."""
from __future__ import annotations

import pytest

from twinnode.errors import MisaddressedMessage
from twinnode.node.catchup import ASK_STALL, RECHECKS, SERVE_GAP, Catchup, heartbeat_gap
from twinnode.node.serving import FairSlots
from twinnode.trust.replay import Holding, ReplayGuard
from twinnode.wire import Heartbeat

BEAT = 1.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock) -> Catchup:
    return Catchup([("bob", "tcp://b"), ("carol", "tcp://c")], ["alice", "bob", "carol"],
                   BEAT, clock)


def guard_holding(**seqs: int) -> ReplayGuard:
    guard = ReplayGuard()
    for sender, top in seqs.items():
        for seq in range(1, top + 1):
            guard.accept(sender, seq, f"{sender}{seq}".encode())
    return guard


def test_a_first_heartbeat_wakes_and_a_repeated_state_does_not():
    clock, guard = Clock(), guard_holding(bob=2)
    state = make(clock)
    # Execute / Assert
    assert state.on_heartbeat(Heartbeat("bob", 2, {"bob": 2}), guard)
    assert state.peers["bob"].last_heartbeat == clock.now and state.peers["bob"].latest == 2
    assert not state.on_heartbeat(Heartbeat("bob", 2, {"bob": 2}), guard)
    assert not state.peers["bob"].recheck  # the first heartbeat asks at once
    assert not state.on_heartbeat(Heartbeat("alice", 9, {}), guard)  # ours, forwarded


def test_a_heartbeat_showing_a_lack_wakes_once_with_a_recheck_and_one_we_cover_does_not():
    clock, guard = Clock(), guard_holding(bob=2)
    state = make(clock)
    state.on_heartbeat(Heartbeat("bob", 2, {}), guard)
    # Execute / Assert: bob now has 4 of his own, we hold 2
    assert state.on_heartbeat(Heartbeat("bob", 4, {}), guard)
    assert state.take_recheck("bob") and not state.take_recheck("bob")
    assert not state.on_heartbeat(Heartbeat("bob", 4, {}), guard)  # the same state again
    # a new state we do not lack (carol's 0; an unpinned sender's 5) wakes nothing
    guard = guard_holding(bob=4)
    assert not state.on_heartbeat(Heartbeat("bob", 4, {"carol": 0, "eve": 5}), guard)
    # carol's seqs that bob holds and we lack do
    assert state.on_heartbeat(Heartbeat("bob", 4, {"carol": 3}), guard)


def test_periodic_catchup_goes_round_robin_over_live_peers_and_pauses_for_live_twins():
    clock, guard = Clock(), ReplayGuard()
    state = make(clock)
    assert state.periodic_pick() is None  # no heartbeat yet: nobody is alive
    state.on_heartbeat(Heartbeat("bob", 0, {}), guard)
    state.on_heartbeat(Heartbeat("carol", 0, {}), guard)
    # Execute / Assert
    assert [state.periodic_pick() for _ in range(3)] == ["bob", "carol", "bob"]
    state.on_twin(live=True)
    clock.now += 2 * BEAT - 0.01
    assert state.periodic_pick() is None  # twins arrive live
    clock.now += 0.02
    state.on_heartbeat(Heartbeat("carol", 0, {}), guard)
    clock.now += 3 * BEAT + 1.0 - 0.02  # bob's last heartbeat is now too old
    assert state.periodic_pick() == "carol" and state.periodic_pick() == "carol"


def test_a_recheck_stops_when_live_traffic_fills_the_lack_and_asks_when_it_stalls():
    clock = Clock()
    state = make(clock)
    guard = guard_holding(bob=1)
    state.on_heartbeat(Heartbeat("bob", 1, {}), guard)
    state.on_heartbeat(Heartbeat("bob", 5, {"bob": 5}), guard)
    # Execute / Assert: progress (2 arrives) waits, then 3..5 arrive: filled
    check = state.recheck("bob", guard)
    assert check.grace == max(BEAT, 0.5)
    guard.accept("bob", 2, b"bob2")
    assert check.step(guard) is None
    for seq in (3, 4, 5):
        guard.accept("bob", seq, f"bob{seq}".encode())
    assert check.step(guard) is False
    # a lack that does not move is asked for at the next step
    state.on_heartbeat(Heartbeat("bob", 7, {"bob": 7}), guard)
    assert state.recheck("bob", guard).step(guard) is True


def test_a_recheck_that_keeps_progressing_asks_after_its_last_grace_period():
    clock = Clock()
    state = make(clock)
    guard = guard_holding(bob=1)
    state.on_heartbeat(Heartbeat("bob", 1, {}), guard)
    state.on_heartbeat(Heartbeat("bob", 1000, {}), guard)
    check = state.recheck("bob", guard)
    verdicts = []
    for seq in range(2, 2 + RECHECKS):
        guard.accept("bob", seq, f"bob{seq}".encode())
        verdicts.append(check.step(guard))
    assert verdicts == [None] * (RECHECKS - 1) + [True]


def test_an_end_marker_completes_only_a_request_to_its_sender():
    state = make(Clock())
    state.expect_end("bob", b"r1")
    # Execute / Assert
    assert state.end_marker(b"unknown", "bob") is False
    with pytest.raises(MisaddressedMessage, match="request to bob came from carol"):
        state.end_marker(b"r1", "carol")
    assert state.end_marker(b"r1", "bob") is True
    state.forget(b"r1")
    assert state.end_marker(b"r1", "bob") is False and state.pending == {}


def test_a_peer_asking_again_within_the_serve_gap_is_throttled():
    clock = Clock()
    state = make(clock)
    # Execute / Assert
    assert state.may_serve("bob")
    clock.now += SERVE_GAP / 2
    assert not state.may_serve("bob")
    assert state.may_serve("carol") and state.may_serve("stranger")
    clock.now += SERVE_GAP
    assert state.may_serve("bob")


def test_a_request_names_every_pinned_sender_and_a_batch_is_shared_round_robin():
    state = make(Clock())
    have = state.have(guard_holding(bob=3))
    assert list(have) == ["alice", "bob", "carol"] and have["bob"] == Holding(3)
    plan = state.serve_plan({"alice": list(range(1, 100)), "bob": [4, 5]}, 5)
    assert plan == [("alice", 1), ("bob", 4), ("alice", 2), ("bob", 5), ("alice", 3)]
    assert Catchup.again(sent=3, new=2) and not Catchup.again(3, 0) \
        and not Catchup.again(0, 0)


def test_one_peer_asks_at_a_time_and_a_stalled_one_loses_the_turn():
    clock = Clock()
    state = make(clock)
    turn = state.asking
    # Execute / Assert: bob takes the turn; carol waits until it lapses
    assert turn.take("bob") == 0.0
    assert turn.take("carol") == pytest.approx(ASK_STALL)
    clock.now += ASK_STALL - 1
    state.on_twin(live=False)  # a twin by catch-up: bob's turn goes on
    clock.now += ASK_STALL - 1
    assert turn.take("carol") == pytest.approx(1.0)
    assert state.last_live < clock.now - 2 * BEAT  # a catch-up twin is not live traffic
    turn.release("bob")
    assert turn.take("carol") == 0.0
    # carol stalls: bob may take the turn after ASK_STALL, and carol's late release is a no-op
    clock.now += ASK_STALL
    assert turn.take("bob") == 0.0
    turn.release("carol")
    assert turn.holder == "bob"


def test_serving_slots_are_one_per_peer_and_a_newer_request_replaces_the_waiting_one():
    fair: FairSlots[str] = FairSlots(2)
    # Execute / Assert: bob's first starts; his second and third wait (the third replaces)
    assert fair.offer("bob", "b1") == (True, None)
    assert fair.offer("bob", "b2") == (False, None)
    assert fair.offer("bob", "b3") == (False, "b2")
    assert fair.offer("carol", "c1") == (True, None)  # bob holds one slot, not two
    assert fair.offer("dave", "d1") == (False, None)  # both slots busy: dave waits
    assert fair.offer("erin", "e1") == (False, None)
    # bob's ends: the longest-waiting peer not being served goes first (bob waited first)
    assert fair.done("bob") == [("bob", "b3")]
    assert fair.done("carol") == [("dave", "d1")]
    assert fair.done("bob") == [("erin", "e1")]
    assert fair.done("dave") == [] and fair.done("erin") == [] and fair.active == set()
    assert len(fair.waiting) == 0


@pytest.mark.parametrize("relink_after, gap", [(5, 1.5), (0, 1.5), (3, 0.8), (2, 0.4)])
def test_the_heartbeat_gap_leaves_a_peer_heard_well_within_its_relink_wait(relink_after, gap):
    assert heartbeat_gap(BEAT, relink_after) == pytest.approx(gap)
    # a heartbeat every period, one in two at most unopened: the longest wait between two
    # opened ones (gap plus one period) stays under the relink wait
    assert relink_after == 0 or heartbeat_gap(BEAT, relink_after) + BEAT < relink_after * BEAT


def test_a_heartbeat_soon_after_a_verified_one_of_its_peer_is_left_unopened():
    # Prepare: one in two of bob's heartbeats (every BEAT) may go unopened
    clock, guard = Clock(), guard_holding()
    state = Catchup([("bob", "tcp://b")], ["alice", "bob"], BEAT, clock,
                    heartbeat_gap=heartbeat_gap(BEAT, 5))
    # Execute / Assert: nothing verified yet from bob: opened
    assert not state.skip_heartbeat(b"hb:bob")
    state.on_heartbeat(Heartbeat("bob", 0, {}), guard)
    opened = []
    for _ in range(6):
        clock.now += BEAT
        if not state.skip_heartbeat(b"hb:bob"):
            opened.append(clock.now)
            state.on_heartbeat(Heartbeat("bob", 0, {}), guard)
    assert [b - a for a, b in zip(opened, opened[1:])] == [2 * BEAT, 2 * BEAT]
    # twins, other peers, ourselves and a node without a gap are always opened
    assert not state.skip_heartbeat(b"twin:bob") and not state.skip_heartbeat(b"hb:carol")
    assert not state.skip_heartbeat(b"hb:alice")
    assert not make(clock).skip_heartbeat(b"hb:bob")
