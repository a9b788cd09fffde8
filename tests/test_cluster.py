"""Real `twinnode run` processes on 127.0.0.1: convergence, late join, SIGKILL, hostile peers.

Releases are simulated twins made once per session (no JAX); exactly one test trains inside
the nodes. Every wait polls the control sockets and is bounded.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import zmq

from twinnode.cli.main import main as cli_main
from twinnode.data import write_table
from twinnode.generator.privacy import Ledger
from twinnode.lab.harness import LocalCluster, PartySpec, free_ports
from twinnode.lab.simtwins import as_release, posterior_twins, simulate_small, small_schema
from twinnode.releasedir import save_release
from twinnode.schema import Schema
from twinnode.store.store import Store
from twinnode.trust.identity import Identity
from twinnode.wire import (
    Heartbeat,
    ReplayGuard,
    Signer,
    Verifier,
    encode_heartbeat,
    encode_twin,
)

WAIT = 60.0  # seconds any one convergence may take on a loaded 2-core machine
K = 3
NAMES = ("alice", "bob", "carol")


@dataclass(frozen=True)
class World:
    """Files shared by the tests: schema, each party's CSV and a release of K twins."""

    root: Path
    schema: Schema
    schema_path: Path

    def party(self, name: str) -> PartySpec:
        return PartySpec(name, self.root / f"{name}.csv")

    def release(self, name: str, big: bool = False) -> str:
        return str(self.root / (f"release-{name}-big" if big else f"release-{name}"))


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("world")
    schema = small_schema()
    (root / "schema.toml").write_text(schema.to_toml())
    for i, name in enumerate(NAMES):
        frame = simulate_small(schema, 200, seed=i)
        write_table(frame, root / f"{name}.csv", schema)
        twins = posterior_twins(schema, frame, sender=name, k=K, seed=i)
        save_release(as_release(twins), root / f"release-{name}", schema)
    big = posterior_twins(schema, simulate_small(schema, 2000, seed=9), sender="bob", k=40,
                          seed=9)
    save_release(as_release(big), root / "release-bob-big", schema)
    return World(root, schema, root / "schema.toml")


def cluster(world: World, workdir: Path, names=NAMES, **kw) -> LocalCluster:
    return LocalCluster(workdir, [world.party(n) for n in names], world.schema_path, k=K, **kw)


def held(c: LocalCluster, name: str) -> dict[str, list[tuple[int, str]]]:
    """(seq, digest) per sender, as the node reports it."""
    return {s["sender"]: [(e["seq"], e["digest"]) for e in s["entries"]]
            for s in c.ctl(name, "twins", detail=True)["senders"]}


def verify_store(state: Path, world: World, trust_from: LocalCluster, names) -> dict[str, int]:
    """Open a stopped node's store and re-verify every envelope; counts per sender."""
    from twinnode.trust.identity import TrustStore

    trust = TrustStore([trust_from.peer(n) for n in names])
    verifier = Verifier(trust, world.schema, ReplayGuard())
    with Store.open(state) as store:
        assert store.recovery["quarantined"] == 0
        counts = store.counts()
        for entry in store.list():
            env = verifier.open(store.frames(entry.sender, entry.seq))
            assert env.seq == entry.seq and env.digest.hex() == entry.digest
    assert not list(state.glob("store/envelopes/*/.*.tmp"))
    return counts


def test_three_nodes_converge_on_identical_verified_envelopes(world, tmp_path):
    with cluster(world, tmp_path) as c:
        # Prepare
        c.start()
        c.wait_connected(WAIT)
        # Execute: each node publishes its release of K twins
        for name in NAMES:
            reply = c.ctl(name, "publish", release=world.release(name), wait=True)
            assert reply["seqs"] == [1, K]
        c.wait_holdings({n: K for n in NAMES}, WAIT)
        # Assert: the same (seq, digest) everywhere, nothing refused but redundant deliveries
        views = {name: held(c, name) for name in NAMES}
        assert views["alice"] == views["bob"] == views["carol"]
        assert sorted(views["alice"]) == sorted(NAMES)
        assert all(len(v) == K for v in views["alice"].values())
        for name in NAMES:
            rejected = c.status(name)["rejected"]
            assert set(rejected) <= {"replay", "duplicate"}, rejected
    for name in NAMES:
        assert verify_store(c.state_dir(name), world, c, NAMES) == {n: K for n in NAMES}


def test_late_joiner_gets_a_stopped_senders_twins_from_another_peer(world, tmp_path):
    with cluster(world, tmp_path) as c:
        # Prepare: alice and bob publish, then alice stops
        c.start("alice", "bob")
        c.wait_connected(WAIT)
        for name in ("alice", "bob"):
            c.ctl(name, "publish", release=world.release(name), wait=True)
        c.wait_holdings({"alice": K, "bob": K}, WAIT)
        assert c.stop("alice") == 0
        # Execute: carol joins late; only bob can serve alice's twins
        c.start("carol")
        c.wait_holdings({"alice": K, "bob": K}, WAIT, names=["carol"])
        # Assert
        assert held(c, "carol")["alice"] == held(c, "bob")["alice"]
        peers = {p["name"]: p for p in c.status("carol")["peers"]}
        assert peers["alice"]["last_heartbeat_age"] is None  # never heard from alice herself
        assert c.status("bob")["counters"]["served"] >= 2 * K


def test_sigkill_while_receiving_then_restart_catches_up_without_duplicates_or_partials(
        world, tmp_path):
    with cluster(world, tmp_path, names=("alice", "bob")) as c:
        # Prepare: a ledger entry that a restart must not touch
        Ledger(c.state_dir("alice")).charge(0.5, 1e-4, note="earlier run")
        ledger_before = (c.state_dir("alice") / "ledger.json").read_bytes()
        c.start()
        c.wait_connected(WAIT)
        # Execute: bob publishes 40 twins of 2,000 rows; alice is killed while receiving them
        c.ctl("bob", "publish", release=world.release("bob", big=True))
        c.wait_until(lambda: c.status("alice")["twins"].get("bob", 0) >= 3, WAIT,
                     "alice to receive some of bob's twins", names=["alice"])
        c.kill("alice")
        c.wait_until(lambda: c.status("bob")["job"]["state"] == "done", WAIT, "bob's publish",
                     names=["bob"])
        c.start("alice")
        c.wait_holdings({"bob": 40}, WAIT, names=["alice"])
        # Assert: same envelopes as bob, each once; the restart left the ledger alone
        assert held(c, "alice")["bob"] == held(c, "bob")["bob"]
        assert c.status("alice")["own_seq"] == 0
    assert verify_store(c.state_dir("alice"), world, c, ("alice", "bob")) == {"bob": 40}
    assert (c.state_dir("alice") / "ledger.json").read_bytes() == ledger_before


# ---- a two-node cluster with a pinned hostile peer, shared by the tests below -------------

@dataclass
class Hostile:
    cluster: LocalCluster
    mallory: Identity
    pub: zmq.Socket
    schema: Schema


@pytest.fixture(scope="module")
def hostile(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    mallory = Identity.generate("mallory")
    port = free_ports(2)
    peer = mallory.peer(f"tcp://127.0.0.1:{port[0]}", f"tcp://127.0.0.1:{port[1]}")
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.CURVE_SERVER, 1)
    pub.setsockopt(zmq.CURVE_SECRETKEY, mallory.curve_secret)
    pub.bind(peer.pub_address)
    c = cluster(world, tmp_path_factory.mktemp("hostile"), names=("alice", "bob"),
                extra_peers=[peer])
    try:
        c.start()
        c.wait_connected(WAIT)
        yield Hostile(c, mallory, pub, world.schema)
    finally:
        c.close()
        pub.close()
        ctx.term()


def test_pinned_peer_sending_forged_replayed_and_garbage_frames_is_counted_and_twins_flow(
        hostile, world):
    c, schema, m = hostile.cluster, hostile.schema, Signer(hostile.mallory)
    # Prepare: alice and bob hear mallory's heartbeats (so their SUB connections are up)

    def both_hear_mallory() -> bool:
        hostile.pub.send_multipart(encode_heartbeat(Heartbeat("mallory", 0, {}), m))
        return all(any(p["name"] == "mallory" and p["last_heartbeat_age"] is not None
                       for p in c.status(name)["peers"]) for name in ("alice", "bob"))

    c.wait_until(both_hear_mallory, WAIT, "alice and bob to hear mallory",
                 names=["alice", "bob"])
    twins = posterior_twins(schema, simulate_small(schema, 100, seed=5), sender="mallory", k=3,
                            seed=5)
    honest = [encode_twin(t, schema, i + 1, m) for i, t in enumerate(twins)]
    as_bob = Identity("bob", hostile.mallory.sign_secret, hostile.mallory.curve_public,
                      hostile.mallory.curve_secret)
    bob_like = posterior_twins(schema, simulate_small(schema, 100, seed=6), sender="bob", k=2,
                               seed=6)
    forged = [encode_twin(t, schema, 50 + i, Signer(as_bob)) for i, t in enumerate(bob_like)]
    garbage = [[b"twin:mallory", b"\xde\xad\xbe\xef" * 50, b"", b"\0" * 64],
               [b"twin:mallory", b"\x81\xa7version\x01"], [b"hb:mallory", b"\xc1", b"", b""]]
    # Execute: bob publishes honestly while mallory interleaves attacks with honest twins
    c.ctl("bob", "publish", release=world.release("bob"))
    for frames in [honest[0], forged[0], honest[0], garbage[0], honest[1], garbage[1],
                   forged[1], honest[2], garbage[2], honest[1]]:
        hostile.pub.send_multipart(frames)
    c.wait_holdings({"bob": K, "mallory": 3}, WAIT, names=["alice", "bob"])
    # Assert: each attack under its reason; alice still runs and answers
    for name in ("alice", "bob"):
        rejected = c.status(name)["rejected"]
        assert rejected.get("signature") == 2, rejected
        assert rejected.get("malformed") == 3, rejected
        assert rejected.get("replay", 0) >= 2, rejected
        assert c.running(name)
    log = c.log_path("alice").read_text()
    assert "REJECTED (signature) peer=bob seq=50" in log
    assert "REJECTED (malformed) peer=" in log


def test_unpinned_curve_key_cannot_subscribe_while_a_pinned_one_can(hostile):
    c = hostile.cluster
    alice = c.peer("alice")
    ctx = zmq.Context()
    subs = {}
    denied_before = c.status("alice")["rejected"].get("zap-denied", 0)  # before connecting
    try:
        for label, keys in (("stranger", zmq.curve_keypair()),
                            ("pinned", (c.identity("bob").curve_public,
                                        c.identity("bob").curve_secret))):
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.CURVE_PUBLICKEY, keys[0])
            sub.setsockopt(zmq.CURVE_SECRETKEY, keys[1])
            sub.setsockopt(zmq.CURVE_SERVERKEY, alice.curve_key)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(alice.pub_address)
            subs[label] = sub
        got = {"stranger": 0, "pinned": 0}
        deadline = time.monotonic() + WAIT
        # Execute: listen until the pinned client heard 3 heartbeats and ZAP denied the stranger
        while got["pinned"] < 3 or c.status("alice")["rejected"].get("zap-denied", 0) <= \
                denied_before:
            assert time.monotonic() < deadline, got
            for label, sub in subs.items():
                if sub.poll(50):
                    sub.recv_multipart()
                    got[label] += 1
        for _ in range(10):  # a last chance for the stranger
            if subs["stranger"].poll(50):
                got["stranger"] += 1
        # Assert
        assert got["stranger"] == 0 and got["pinned"] >= 3
        assert "event=zap.denied" in c.log_path("alice").read_text()
    finally:
        for sub in subs.values():
            sub.close()
        ctx.term()


def test_ctl_prints_status_and_exits_14_once_the_node_is_gone(hostile, capsys):
    c = hostile.cluster
    state = str(c.state_dir("bob"))
    assert cli_main(["ctl", "--state", state, "status"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("node bob") and "alice" in out and "rejected:" in out
    assert cli_main(["ctl", "--state", state, "peers", "--json"]) == 0
    assert {p["name"] for p in json.loads(capsys.readouterr().out)["peers"]} == \
        {"alice", "mallory"}
    assert cli_main(["ctl", "--state", state, "analyze", "policy=maybe"]) == 13
    assert "policy must be one of" in capsys.readouterr().err
    assert c.stop("bob") == 0
    assert cli_main(["ctl", "--state", state, "status"]) == 14
    assert "no node is running" in capsys.readouterr().err


def test_sigterm_during_training_abandons_the_worker_keeps_the_charge_and_exits_0(
        world, tmp_path):
    with cluster(world, tmp_path, names=("alice",), auto_train=True,
                 privacy={"epochs": 50.0, "q": 0.05}, generator={"chunk": 20}) as c:
        ledger = c.state_dir("alice") / "ledger.json"
        c.start()
        # Prepare: the worker has charged the ledger, so it is training
        c.wait_until(ledger.exists, WAIT, "the training run's ledger charge", names=["alice"])
        pid = c.members["alice"].proc.pid
        assert len(live_group_members(pid)) >= 2  # the node and its training worker
        # Execute
        code = c.stop("alice")
        # Assert: exit 0, the worker gone with the node, the charge kept, nothing published
        assert code == 0
        c.wait_until(lambda: not live_group_members(pid), 10.0, "the node's processes to end")
        entries = json.loads(ledger.read_text())["entries"]
        assert [(e["kind"], e["status"]) for e in entries] == [("train", "charged")]
        assert not (c.state_dir("alice") / "posterior.npz").exists()
        assert "job.started job=publish" in c.log_path("alice").read_text()
        assert "event=node.stopped" in c.log_path("alice").read_text()
        # Execute: a restart with [training] auto does not spend ε again on its own
        c.start("alice")
        c.wait_until(lambda: "training.auto_skipped" in c.log_path("alice").read_text(), WAIT,
                     "the node to decline auto training", names=["alice"])
        # Assert
        assert c.status("alice")["job"] is None
        assert len(json.loads(ledger.read_text())["entries"]) == 1
        assert "ctl train" in c.log_path("alice").read_text()


def live_group_members(pgid: int) -> list[int]:
    """Processes of process group `pgid` that are still running (zombies excluded)."""
    pids = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(stat_file.parent.name))
    return pids


# ---- the one test that trains inside the nodes ------------------------------------------

@pytest.mark.slow
def test_three_nodes_train_publish_and_converge(world, tmp_path):
    with cluster(world, tmp_path, auto_train=True,
                 privacy={"epsilon": 1.0, "epochs": 2.0, "q": 0.05},
                 generator={"components": 2, "chunk": 20, "learning_rate": 0.01}) as c:
        c.start()
        # once alice's worker has charged the ledger it trains; her node keeps answering
        # and hearing its peers meanwhile
        ledger = c.state_dir("alice") / "ledger.json"
        c.wait_until(ledger.exists, 3 * WAIT, "alice's training run", names=["alice"])
        c.wait_connected(WAIT)
        during = c.status("alice")
        assert during["job"]["state"] == "running", during["job"]
        assert all(p["connected"] for p in during["peers"]), during["peers"]
        c.wait_holdings({n: K for n in NAMES}, 6 * WAIT)
        views = {name: held(c, name) for name in NAMES}
        assert views["alice"] == views["bob"] == views["carol"]
        for name in NAMES:
            budget = c.ctl(name, "budget")
            assert budget["spent"] == pytest.approx(1.0)
            assert [e["note"] for e in budget["entries"]] == ["train: trained",
                                                             "sample: free (post-processing)"]
            assert c.status(name)["job"]["state"] == "done"
        # publishing again samples the saved posterior: new seqs, no new privacy cost
        again = c.ctl("alice", "publish", wait=True, timeout=6 * WAIT)
        assert again["seqs"] == [K + 1, 2 * K]
        c.wait_holdings({"alice": 2 * K}, WAIT)
        assert c.ctl("alice", "budget")["spent"] == pytest.approx(1.0)
        assert len(list((c.state_dir("alice") / "releases").glob("*.json"))) == 2
    expected = {"alice": 2 * K, "bob": K, "carol": K}
    for name in NAMES:
        assert verify_store(c.state_dir(name), world, c, NAMES) == expected
