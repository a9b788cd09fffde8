"""State-loss recovery (issue 15), with real `twinnode run` processes on 127.0.0.1: a node that
lost its state directory but kept its keys publishes at once after `--recovered-state`; its new
release reaches every peer, no seq is reused with other content anywhere, and its ledger shows
both releases' epsilon. Beside it, the pieces on their own: equivocation on stored twins, a
catch-up offer that shows it, the refusal of a fresh ledger, the ledger's rebuild."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil

import pytest
from node_fixtures import node_factory  # noqa: F401
from test_cluster import K, WAIT, World, cluster, held, verify_store, world  # noqa: F401
from test_node import make_twins, party, signed  # noqa: F401

from twinnode.errors import ControlError, EquivocatedMessage, PrivacyError, ReplayedMessage
from twinnode.generator.privacy import Ledger
from twinnode.lab.harness import ClusterError
from twinnode.lab.simtwins import as_release, posterior_twins, simulate_small
from twinnode.node.preflight import run_checks
from twinnode.node.recovery import Recovery, Stated, mark_used, start_mode
from twinnode.releasedir import save_release
from twinnode.trust.replay import ReplayGuard
from twinnode.trust.seqset import Holding
from twinnode.wire import CatchupRequest, Signer, Verifier, encode_catchup_request

NAMES = ("alice", "bob", "carol")


def second_release(world: World, tmp_path) -> str:
    """Another release of alice's (other content, its own release id, epsilon 1)."""
    twins = posterior_twins(world.schema, simulate_small(world.schema, 200, seed=0),
                            sender="alice", k=K, seed=77)
    path = tmp_path / "release-alice-2"
    save_release(as_release(twins), path, world.schema)
    return str(path)


def first_release_everywhere(c, world) -> None:
    """Start the cluster; alice publishes her first release and every node holds it."""
    c.start()
    c.wait_connected(WAIT)
    c.ctl("alice", "publish", release=world.release("alice"), wait=True)
    c.wait_holdings({"alice": K}, WAIT)


def test_a_node_that_lost_its_state_recovers_and_its_new_release_reaches_every_peer(
        world, tmp_path):
    again = second_release(world, tmp_path)
    with cluster(world, tmp_path / "c") as c:
        # Prepare: alice publishes (epsilon 1) and every node holds it
        first_release_everywhere(c, world)
        first = held(c, "bob")["alice"]
        # Execute: alice's state directory is lost (keys kept)
        assert c.stop("alice") == 0
        shutil.rmtree(c.state_dir("alice"))
        c.start("alice", args=["--recovered-state", "--spent-epsilon", "1"])
        reply = c.ctl("alice", "publish", release=again, wait=True, timeout=WAIT)  # at once
        # Assert: numbered above what peers hold, reached everyone, nothing forked
        assert reply["seqs"] == [K + 1, 2 * K]
        c.wait_holdings({"alice": 2 * K}, WAIT)
        views = {name: held(c, name)["alice"] for name in NAMES}
        assert views["alice"] == views["bob"] == views["carol"]
        assert views["bob"][:K] == first  # the old twins, kept and fetched back
        assert [seq for seq, _ in views["bob"]] == list(range(1, 2 * K + 1))
        status = c.status("alice")
        assert status["recovery"]["state"] == "done", status["recovery"]
        assert status["budget"]["spent"] == pytest.approx(2.0)
        for name in NAMES:
            assert "equivocation" not in c.status(name)["rejected"]
        # the ledger's statement is marked by the recovery's watcher, a poll after "done"
        c.wait_until(lambda: Ledger(c.state_dir("alice")).snapshot()["entries"][0]["status"]
                     == "recovered", WAIT, "alice's ledger statement marked recovered")
    for name in NAMES:
        assert verify_store(c.state_dir(name), world, c, NAMES) == {"alice": 2 * K}
    entries = Ledger(c.state_dir("alice")).snapshot()["entries"]
    assert [e["kind"] for e in entries] == ["recovered", "recovered-release", "import"]
    assert entries[0]["status"] == "recovered"
    assert entries[1]["release_epsilon"] == 1.0 and entries[1]["epsilon"] == 0.0


def test_an_equivocating_twin_is_refused_after_the_first_copy_left_the_memory():
    guard = ReplayGuard(max_digests=2, lookup=lambda s, q: bytes([q]) * 32)
    for seq in (1, 2, 3):
        guard.accept("alice", seq, bytes([seq]) * 32)
    with pytest.raises(ReplayedMessage):  # the same content again: a replay
        guard.check("alice", 1, bytes([1]) * 32)
    with pytest.raises(EquivocatedMessage) as info:  # seq 1's digest is only in the store
        guard.check("alice", 1, b"\x09" * 32)
    assert info.value.digests == (b"\x01" * 32, b"\x09" * 32)
    assert guard.tips() == {"alice": (3, b"\x03" * 32)}


def test_a_fresh_ledger_beside_keys_that_published_is_refused_without_a_statement(tmp_path):
    marker = tmp_path / "keys" / "alice.used"
    marker.parent.mkdir()
    ledger = Ledger(tmp_path / "state")
    assert start_mode(own_twins=False, ledger=ledger, marker=marker, stated=None) == "check"
    mark_used(marker, tmp_path / "state")
    with pytest.raises(PrivacyError, match="--recovered-state --spent-epsilon"):
        start_mode(own_twins=False, ledger=ledger, marker=marker, stated=None)
    assert start_mode(own_twins=False, ledger=ledger, marker=marker,
                      stated=Stated(1.5)) == "recover"
    # the releases peers serve back count only past the statement: max(stated, served)
    ledger.recover_release("r1", 1.0, 1e-3)
    assert ledger.snapshot()["spent_epsilon"] == pytest.approx(1.5)
    ledger.recover_release("r2", 1.0, 1e-3)
    ledger.recover_release("r2", 1.0, 1e-3)  # once per release
    assert ledger.snapshot()["spent_epsilon"] == pytest.approx(2.0)
    assert start_mode(own_twins=True, ledger=ledger, marker=marker,
                      stated=Stated(9.0)) == "recover"  # resumed; not stated twice
    assert ledger.snapshot()["spent_epsilon"] == pytest.approx(2.0)


def test_a_statement_after_a_rebuild_counts_only_what_the_releases_do_not_show(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.recover_release("r1", 1.0, 0.0)  # served back before the operator said anything
    ledger.state_recovery(0.5, 0.0)
    assert ledger.snapshot()["spent_epsilon"] == pytest.approx(1.0)
    ledger.recover_release("r2", 1.0, 0.0)
    assert ledger.snapshot()["spent_epsilon"] == pytest.approx(2.0)


def test_recovery_waits_for_every_peer_then_refuses_on_silence_unless_accepted():
    now = [0.0]
    r = Recovery("alice", ("bob", "carol"), wait=10.0, clock=lambda: now[0])
    r.begin("recover", 0.25)
    r.on_heartbeat("bob", {"alice": 5}, own_held=0)
    r.on_caught_up("bob")
    assert r.verdict(own_held=5) is None and r.floor == 5  # carol not heard yet
    now[0] = 11.0
    with pytest.raises(ControlError, match="no answer from carol"):
        r.verdict(own_held=5)
    assert r.row(5)["state"] == "incomplete"
    assert r.verdict(own_held=5, accept_silent=True) is True
    assert r.next_seq(own_held=5) == 6
    r.on_heartbeat("carol", {"alice": 10**9}, own_held=5)  # a claim no twin backs
    assert r.next_seq(own_held=5) == 5 + 10_000 + 1  # cannot push us out of the window
    # an empty state that learns from a peer that it lived before: refused until restarted
    r = Recovery("alice", ("bob",), clock=lambda: now[0])
    r.begin("check", 0.25)
    r.on_heartbeat("bob", {"alice": 3}, own_held=0)
    with pytest.raises(ControlError, match="--recovered-state"):
        asyncio.run(r.ready(lambda: 0, lambda _: None))


# ---- in-process: equivocation on stored twins and through a catch-up offer ----------------

def test_a_second_twin_under_a_stored_seq_is_counted_logged_and_the_first_kept(
        party, node_factory, caplog):
    async def main() -> None:
        # Prepare: alice holds bob's 1..3, and a restart forgets everything but the store
        first = signed(make_twins(party.schema, "bob"), party.schema, party.bob)
        other = signed(make_twins(party.schema, "bob", seed=5), party.schema, party.bob)
        node = await node_factory.opened(party.config)
        for f in first:
            assert await node.handle_frames(f) is not None
        await node.stop()
        node = await node_factory.opened(party.config)
        kept = node.store.get("bob", 2).digest
        # Execute: bob signed other content as seq 2 (live), then sends seq 2 again
        with caplog.at_level(logging.INFO, logger="twinnode.node"):
            assert await node.handle_frames(other[1]) is None
            assert await node.handle_frames(first[1]) is None
        # Assert: counted once as equivocation (the replay apart), the first copy kept
        assert dict(node.rejected) == {"equivocation": 1, "replay": 1}
        assert node.store.get("bob", 2).digest == kept
        line = next(r for r in caplog.records if getattr(r, "fields", {}).get("reason")
                    == "equivocation")
        fields = line.fields
        assert fields["seq"] == 2 and fields["kept"] == kept
        assert fields["refused"] == hashlib.sha256(other[1][2]).hexdigest()
        assert fields["sender_fingerprint"] == node.trust.get("bob").sign_fingerprint
        assert "recovered-state" in fields["hint"]

    node_factory.run(main(), 60)


def test_a_catch_up_offer_naming_other_content_gets_our_copy_and_the_requester_sees_it(
        party, node_factory):
    async def main() -> None:
        node = await node_factory.opened(party.config)
        first = signed(make_twins(party.schema, "bob"), party.schema, party.bob)
        for f in first:
            await node.handle_frames(f)
        replies: list[list[bytes]] = []

        async def reply(frames) -> bool:
            replies.append(list(frames))
            return True

        # Execute: mallory holds bob's 1..3 too, but offers another digest for seq 3
        tips = {"bob": (3, b"\x07" * 32)}
        req = encode_catchup_request(CatchupRequest("mallory", "alice", {"bob": Holding(3)},
                                                    tips=tips), Signer(party.mallory))
        await node.handle_frames(req, channel="router", reply=reply)
        # Assert: our bob seq 3, exactly as stored (her verifier refuses it as equivocation)
        assert [f[0] for f in replies] == [b"twin:bob", b"end:alice"]
        assert replies[0] == first[2]
        guard = ReplayGuard()
        guard.accept("bob", 3, b"\x07" * 32)
        with pytest.raises(EquivocatedMessage):
            Verifier(node.trust, node.schema, guard, local="mallory").open(replies[0])
        # and alice's own offer names the digest of what she holds highest
        assert node.verifier.guard.tips()["bob"] == (3, hashlib.sha256(first[2][2]).digest())

    node_factory.run(main(), 60)


def test_twinnode_check_reports_a_lost_state_directory_and_writes_nothing(party):
    marker = party.config.keys_dir / "alice.used"
    assert next(c for c in run_checks(party.config) if c.name == "state").ok
    mark_used(marker, party.config.state_dir)  # these keys published; the state is gone
    state = next(c for c in run_checks(party.config) if c.name == "state")
    assert isinstance(state.error, PrivacyError) and "--recovered-state" in str(state.error)
    assert not party.config.state_dir.exists()


@pytest.mark.slow
def test_a_recovery_with_a_silent_peer_is_refused_until_the_operator_accepts_the_silence(
        world, tmp_path):
    again = second_release(world, tmp_path)
    with cluster(world, tmp_path / "c") as c:
        # Prepare: alice's first release reaches bob and carol, then alice loses her state
        first_release_everywhere(c, world)
        assert c.stop("alice") == 0 and c.stop("carol") == 0
        shutil.rmtree(c.state_dir("alice"))
        path = c.config_path("alice")
        path.write_text(path.read_text().replace("[network]\n",
                                                 "[network]\nrecovery_wait = 3.0\n", 1))
        # Execute: a start without --recovered-state is refused (exit 6, the marker)
        with pytest.raises(ClusterError, match="exited with 6"):
            c.start("alice")
        assert "--recovered-state --spent-epsilon X" in c.log_tail("alice", 2)
        c.start("alice", args=["--recovered-state", "--spent-epsilon", "1"])
        # carol is down: after recovery_wait, publishing is refused with her name
        with pytest.raises(ControlError, match="no answer from carol"):
            c.ctl("alice", "publish", release=again, wait=True, timeout=WAIT)
        assert c.status("alice")["recovery"]["state"] == "incomplete"
        reply = c.ctl("alice", "publish", release=again, wait=True, accept_silent=True)
        # Assert: above what bob holds; carol, back, gets everything without a fork
        assert reply["seqs"] == [K + 1, 2 * K]
        c.start("carol")
        c.wait_holdings({"alice": 2 * K}, WAIT)
        views = {name: held(c, name)["alice"] for name in NAMES}
        assert views["alice"] == views["bob"] == views["carol"]
        assert all("equivocation" not in c.status(n)["rejected"] for n in NAMES)
        assert c.status("alice")["budget"]["spent"] == pytest.approx(2.0)


def test_without_the_marker_the_peers_heartbeats_show_the_loss_and_publishing_is_refused(
        world, tmp_path):
    again = second_release(world, tmp_path)
    with cluster(world, tmp_path / "c") as c:
        # Prepare: alice publishes, then loses her state and the marker beside her keys
        first_release_everywhere(c, world)
        assert c.stop("alice") == 0
        shutil.rmtree(c.state_dir("alice"))
        (c.state_dir("alice").parent / "keys" / "alice.used").unlink()
        # Execute: she starts as a new site; her peers' heartbeats say they hold her 1-3
        c.start("alice")
        with pytest.raises(ControlError, match="--recovered-state"):
            c.ctl("alice", "publish", release=again, wait=True, timeout=WAIT)
        assert c.status("alice")["recovery"]["state"] == "required"
        assert c.stop("alice") == 0
        with pytest.raises(ClusterError, match="exited with 6"):  # her twins came back
            c.start("alice")
        c.start("alice", args=["--recovered-state", "--spent-epsilon", "0"])
        reply = c.ctl("alice", "publish", release=again, wait=True, timeout=WAIT)
        # Assert: nothing forked, and the ledger rebuilt the first release from its twins
        assert reply["seqs"] == [K + 1, 2 * K]
        c.wait_holdings({"alice": 2 * K}, WAIT)
        views = {name: held(c, name)["alice"] for name in NAMES}
        assert views["alice"] == views["bob"] == views["carol"]
        assert c.status("alice")["budget"]["spent"] == pytest.approx(2.0)
