"""Real `twinnode run` processes, each in its own network namespace, through network faults.

Five nodes in a NetLab (a veth per pair, a fault relay in front of each node), one cluster for
the module; each test is one scenario: a new release of K twins on every node, a fault, its
end, then every node must hold every twin with the sender's digests and nothing refused but
honest redundancy. Shorter faults than scripts/netns_cluster.py's (which records the 60 s
partition in docs/results/netns/); the module stays under ~3 min on 2 cores. Skipped, with the
reason, where network namespaces cannot be made (not root, no `ip`, no netns support).
"""
from __future__ import annotations

import subprocess
from typing import Iterator

import pytest

from twinnode.lab.harness import LocalCluster
from twinnode.lab.netns import NetLab, _namespaces, cleanup_leftovers, ip, unavailable
from twinnode.lab.netns_scenarios import (Outcome, Scenarios, check, digests_agree, make_world,
                                          netns_cluster)

REASON = unavailable()
pytestmark = [pytest.mark.slow, pytest.mark.netns,
              pytest.mark.skipif(REASON is not None, reason=f"netns harness: {REASON}")]

NAMES = ("alice", "bob", "carol", "dave", "erin")
K = 2
WAIT = 120.0  # seconds any one convergence may take on a loaded 2-core machine


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NetLab, Scenarios]]:
    root = tmp_path_factory.mktemp("netns")
    schema, parties, release_of = make_world(root / "world", NAMES, K, rounds=6)
    with NetLab(NAMES, root / "net") as net:
        net.up()
        with netns_cluster(net, root / "nodes", parties, schema, k=K) as c:
            c.start(timeout=120)
            c.wait_connected(120)
            yield net, Scenarios(c, net, release_of, K, timeout=WAIT)
    # Assert (teardown): this lab's namespaces are gone
    assert not [ns for ns in _namespaces() if ns.startswith(net.tag + "-")]


def converged_clean(o: Outcome, run: Scenarios) -> None:
    """Every node holds all twins, identical digests, nothing refused wrongly."""
    check(o)
    assert digests_agree(run.c, NAMES)
    assert run.converged()


def test_nodes_in_namespaces_talk_only_through_their_own_addresses(lab):
    net, run = lab
    c: LocalCluster = run.c
    # Assert: each node's peers are dialled at 10.77.0.x (the relays), each node runs in its ns
    for i, name in enumerate(NAMES):
        assert c.members[name].pub == f"tcp://10.77.0.{i + 1}:7001"
        pids = subprocess.run(["ip", "netns", "pids", net.ns(name)], capture_output=True,
                              text=True).stdout.split()
        assert str(c.members[name].proc.pid) in pids
    o = run.baseline()
    converged_clean(o, run)


def test_partition_of_two_from_three_heals_and_converges(lab):
    net, run = lab
    o = run.partition(NAMES[:2], NAMES[2:], seconds=15)
    # Assert: the cut bit (each side had its own side's twins and none of the other's new
    # ones when it ended), then everything arrived
    assert o.fault_seen
    assert not o.converged_during_fault
    converged_clean(o, run)
    assert o.converge_after_fault_s < WAIT


def test_a_flapping_node_converges_after_its_links_settle(lab):
    net, run = lab
    o = run.flap("erin", cycles=3, down_s=3, up_s=2)
    converged_clean(o, run)


def test_delay_and_jitter_through_the_relays_converge(lab):
    net, run = lab
    o = run.relay("delay", {"*": {"delay": 0.2, "jitter": 0.15}}, seconds=8)
    converged_clean(o, run)


def test_stalls_resets_and_refused_connections_converge(lab):
    net, run = lab
    o = run.relay("loss", {"*": {"stall": 0.05, "stall_s": 1.5, "cut": 0.03, "refuse": 0.3}},
                  seconds=10)
    # Assert: the relays did cut and refuse connections, and the federation still converged
    assert sum(s.get("cut", 0) + s.get("refused", 0) for s in o.relays.values()) > 0
    converged_clean(o, run)


def test_leftover_namespaces_of_a_dead_run_are_removed(tmp_path):
    # Prepare: a namespace named as a dead process's lab would name it
    dead = subprocess.Popen(["true"])
    dead.wait()
    ns = f"tnx{dead.pid}x0-zombie"
    ip("netns", "add", ns)
    try:
        # Execute
        removed = cleanup_leftovers()
        # Assert: removed, and no live lab's namespace was touched
        assert ns in removed
        assert ns not in _namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_a_failing_run_leaves_no_namespace_behind(tmp_path):
    # Prepare / Execute: a lab that fails after its namespaces, links and relays are up
    with pytest.raises(RuntimeError, match="boom"):
        with NetLab(["x", "y"], tmp_path) as net:
            net.up()
            assert len([ns for ns in _namespaces() if ns.startswith(net.tag + "-")]) == 2
            raise RuntimeError("boom")
    # Assert: its namespaces and relay processes are gone
    assert not [ns for ns in _namespaces() if ns.startswith(net.tag + "-")]
    assert all(p.poll() is not None for p in net.relays.values())
