"""The node in-process: store then accept, refusals by reason, catch-up, restarts, jobs, control."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from conftest import SMALL_SCHEMA, make_small_frame
from node_fixtures import node_factory  # noqa: F401  (a fixture)

from twinnode.data import frame_to_arrays, write_table
from twinnode.errors import ControlError
from twinnode.lab.harness import free_ports, to_toml
from twinnode.lab.simtwins import as_release, poison_frame, posterior_twins
from twinnode.node.config import NodeConfig, load_config
from twinnode.node.control_client import request, socket_path
from twinnode.node.jobs import analyze_job, screen_job
from twinnode.releasedir import save_release
from twinnode.schema import Schema
from twinnode.trust.identity import Identity, TrustStore, save_identity
from twinnode.twins import Provenance, Twin
from twinnode.wire import (
    CatchupEnd,
    CatchupRequest,
    Heartbeat,
    Holding,
    ReplayGuard,
    Signer,
    Verifier,
    encode_catchup_request,
    encode_heartbeat,
    encode_twin,
)

WAIT = 10.0


@dataclass
class Party:
    """alice's node config, plus the keys of her pinned peers bob, carol, mallory, and eve's."""

    config: NodeConfig
    schema: Schema
    alice: Identity
    bob: Identity
    carol: Identity
    mallory: Identity
    eve: Identity  # not pinned


@pytest.fixture
def party(tmp_path: Path, small_csv: Path) -> Party:
    (tmp_path / "schema.toml").write_text(SMALL_SCHEMA)
    ids = {n: Identity.generate(n) for n in ("alice", "bob", "carol", "mallory", "eve")}
    save_identity(ids["alice"], tmp_path / "keys")
    ports = free_ports(8)
    peers = [ids[n].peer(f"tcp://127.0.0.1:{ports[2 * i + 2]}",
                         f"tcp://127.0.0.1:{ports[2 * i + 3]}")
             for i, n in enumerate(("bob", "carol", "mallory"))]
    doc = {"node": {"name": "alice"}, "data": {"path": str(small_csv), "schema": "schema.toml"},
           "twins": {"k": 3},
           "network": {"pub": f"tcp://127.0.0.1:{ports[0]}",
                       "router": f"tcp://127.0.0.1:{ports[1]}", "heartbeat_interval": 0.2}}
    (tmp_path / "node.toml").write_text(to_toml(doc, peers))
    config = load_config(tmp_path / "node.toml")
    return Party(config, Schema.load(tmp_path / "schema.toml"), **ids)


def make_twins(schema: Schema, sender: str, k: int = 3, seed: int = 0) -> list[Twin]:
    prov = dict(sender=sender, schema_hash=schema.hash, epsilon=1.0, delta=1e-3, n=20, k=k,
                relation="add-remove", release=f"{sender}-r{seed}", created=1000.0 + seed,
                generator={"components": 2})
    return [Twin(Provenance(index=i, **prov),
                 frame_to_arrays(schema, make_small_frame(schema, n=20, seed=100 * seed + i)))
            for i in range(k)]


def signed(twins: list[Twin], schema: Schema, signer: Identity, first_seq: int = 1) -> list:
    return [encode_twin(t, schema, first_seq + i, Signer(signer)) for i, t in enumerate(twins)]


def test_a_peers_twin_is_stored_then_accepted_and_a_resend_counts_as_replay(party, node_factory):
    async def main() -> None:
        node = await node_factory.opened(party.config)
        frames = signed(make_twins(party.schema, "bob"), party.schema, party.bob)
        # Execute
        first = [await node.handle_frames(f) for f in frames]
        again = await node.handle_frames(frames[0])
        # Assert
        assert [e.seq for e in first] == [1, 2, 3] and again is None
        assert node.store.counts() == {"bob": 3}
        assert node.store.frames("bob", 2) == frames[1]  # stored byte for byte
        assert node.verifier.guard.latest("bob") == 3
        assert dict(node.rejected) == {"replay": 1}

    node_factory.run(main(), 6 * WAIT)


def test_twins_received_close_together_share_one_batch_and_are_acknowledged_once_durable(
        party, node_factory):
    async def main() -> None:
        # Prepare: twelve of bob's twins, and another twin bob signed as seq 1
        node = await node_factory.opened(party.config)
        frames = signed(make_twins(party.schema, "bob", k=12), party.schema, party.bob)
        other = signed(make_twins(party.schema, "bob", k=1, seed=5), party.schema, party.bob)[0]
        on_disk_when_acknowledged = []
        acknowledge = node.commits.acknowledge

        def watching(env, channel, stored):
            on_disk_when_acknowledged.append(
                (env.seq, node.store.frames(env.sender, env.seq) == list(env.frames)))
            acknowledge(env, channel, stored)
        node.commits.acknowledge = watching
        # Execute: handed over as the SUB loop does (not waiting for the disk), then seq 1
        # again and seq 1 with other content while it is still on its way
        envs = [await node.handle_frames(f, wait=False) for f in frames]
        replay = await node.handle_frames(frames[0], wait=False)
        equivocation = await node.handle_frames(other, wait=False)
        before = (node.counters["accepted"], node.verifier.guard.latest("bob"))
        await node.commits.drain()
        # Assert: nothing said "we have it" before the one batch was durable
        assert all(e is not None for e in envs) and replay is None and equivocation is None
        assert before == (0, 0) and node.commits.batches == 1
        assert on_disk_when_acknowledged == [(s, True) for s in range(1, 13)]
        assert node.counters["accepted"] == 12 and node.verifier.guard.latest("bob") == 12
        assert dict(node.rejected) == {"replay": 1, "equivocation": 1}
        assert node.store.frames("bob", 1) == frames[0]

    node_factory.run(main(), 6 * WAIT)


def test_forged_garbage_unpinned_misrouted_and_foreign_schema_messages_are_counted_by_reason(
        party, caplog, node_factory):
    async def main() -> None:
        node = await node_factory.opened(party.config)
        bob_twins = make_twins(party.schema, "bob")
        as_bob = Identity("bob", party.mallory.sign_secret, party.mallory.curve_public,
                          party.mallory.curve_secret)  # mallory's key, bob's name
        forged = signed(bob_twins[:1], party.schema, as_bob)[0]
        other = Schema.from_toml(SMALL_SCHEMA.replace("upper = 50", "upper = 60"), "other")
        foreign = make_twins(other, "bob", seed=1)
        hb = encode_heartbeat(Heartbeat("bob", 0, {}), Signer(party.bob))
        cases = {
            "signature": forged,
            "malformed": [b"twin:bob", b"\xc1garbage", b"", b"\0" * 64],
            "unknown-sender": signed(make_twins(party.schema, "eve"), party.schema,
                                     party.eve)[0],
            "schema": signed(foreign[:1], other, party.bob)[0],
        }
        # Execute
        with caplog.at_level(logging.INFO, logger="twinnode.node"):
            results = {reason: await node.handle_frames(f) for reason, f in cases.items()}
            misrouted = await node.handle_frames(hb, channel="router")
            short = await node.handle_frames([b"twin:bob"])
        # Assert: each refused under its reason, nothing stored, nothing raised
        assert all(r is None for r in results.values()) and misrouted is None and short is None
        assert dict(node.rejected) == {"signature": 1, "malformed": 3, "unknown-sender": 1,
                                       "schema": 1}
        assert node.store.counts() == {}
        lines = [r.getMessage() for r in caplog.records]
        assert any(m.startswith("REJECTED (signature) peer=bob seq=1") for m in lines)
        assert any("REJECTED (malformed) peer=bob seq=-: a hb message does not belong on the "
                   "router channel" in m for m in lines)
        # an honest twin still goes through afterwards
        assert (await node.handle_frames(signed(bob_twins, party.schema, party.bob)[0])).seq == 1

    node_factory.run(main(), 6 * WAIT)


def test_catchup_request_is_answered_with_missing_stored_envelopes_then_an_end_marker(
        party, node_factory):
    async def main() -> None:
        # Prepare: alice holds bob's 1..3 and mallory's 1..3
        node = await node_factory.opened(party.config)
        stored = {name: signed(make_twins(party.schema, name, seed=seed), party.schema,
                               getattr(party, name))
                  for seed, name in enumerate(("bob", "mallory"))}
        for frames in stored.values():
            for f in frames:
                assert await node.handle_frames(f) is not None
        replies: list[list[bytes]] = []

        async def reply(frames) -> bool:
            replies.append(list(frames))
            return True

        # Execute: mallory asks, holding her own twins and bob's seq 1 and 3
        have = {"mallory": Holding(3), "bob": Holding(1, ((3, 3),))}
        req = encode_catchup_request(CatchupRequest("mallory", "alice", have),
                                     Signer(party.mallory))
        env = await node.handle_frames(req, channel="router", reply=reply)
        # Assert: bob's seq 2 exactly as stored, then a signed end marker counting 1
        assert env is not None and len(replies) == 2
        assert replies[0] == stored["bob"][1]
        end = Verifier(node.trust, node.schema, ReplayGuard(), local="mallory").open(
            replies[1]).message
        assert isinstance(end, CatchupEnd) and end.count == 1 and end.sender == "alice"
        assert node.counters["served"] == 1

    node_factory.run(main(), 6 * WAIT)


def test_catchup_serves_only_the_senders_the_requester_names(party, node_factory):
    async def main() -> None:
        node = await node_factory.opened(party.config)
        for seed, name in enumerate(("bob", "mallory")):
            for f in signed(make_twins(party.schema, name, seed=seed), party.schema,
                            getattr(party, name)):
                await node.handle_frames(f)
        replies: list[list[bytes]] = []

        async def reply(frames) -> bool:
            replies.append(list(frames))
            return True

        # Execute: mallory names only herself, holding nothing
        req = encode_catchup_request(CatchupRequest("mallory", "alice", {"mallory": Holding(0)}),
                                     Signer(party.mallory))
        await node.handle_frames(req, channel="router", reply=reply)
        # Assert: her three twins and the end marker; none of bob's
        assert [f[0] for f in replies] == [b"twin:mallory"] * 3 + [b"end:alice"]

    node_factory.run(main(), 6 * WAIT)


def test_screen_job_flags_a_shifted_peer_and_marks_its_stored_twins(party, node_factory):
    async def main() -> None:
        # Prepare: bob and carol from the known model, mallory with smoker coded backwards
        node = await node_factory.opened(party.config)
        for seed, name in enumerate(("bob", "carol", "mallory")):
            frame = make_small_frame(party.schema, n=800, seed=seed)
            if name == "mallory":
                frame = poison_frame(party.schema, frame, "flip:smoker")
            twins = posterior_twins(party.schema, frame, sender=name, k=5, seed=seed)
            for f in signed(twins, party.schema, getattr(party, name)):
                assert await node.handle_frames(f) is not None
        # Execute
        node.start_job("screen", lambda job: screen_job(node, job, {}))
        job = await node.wait_job()
        # Assert
        assert job.state == "done" and job.result["flagged"] == ["mallory"]
        statuses = {(e.sender, e.status) for e in node.store.list()}
        assert statuses == {("bob", "accepted"), ("carol", "accepted"), ("mallory", "flagged")}
        assert json.loads(Path(job.result["report"]).read_text())["flagged"] == ["mallory"]

    node_factory.run(main(), 6 * WAIT)


def test_analyze_job_pools_local_rows_with_each_peers_latest_publication(party, node_factory):
    async def main() -> None:
        # Prepare: bob published twice from one release id (a re-sample); carol once
        node = await node_factory.opened(party.config)
        bob_old = make_twins(party.schema, "bob", seed=0)
        bob_new = [Twin(replace(t.provenance, created=2000.0), t.arrays)
                   for t in make_twins(party.schema, "bob", seed=7)]
        for twins, name, first in ((bob_old, "bob", 1), (bob_new, "bob", 4),
                                   (make_twins(party.schema, "carol", seed=1), "carol", 1)):
            for f in signed(twins, party.schema, getattr(party, name), first_seq=first):
                assert await node.handle_frames(f) is not None
        # Execute
        node.start_job("analyze", lambda job: analyze_job(node, job, {"policy": "off"}))
        job = await node.wait_job()
        # Assert: K = 3 from bob's newest draw and carol's; local rows in every fit
        assert job.state == "done", job.error
        assert job.result["peers"] == ["bob", "carol"]
        assert set(job.result["coefficients"]) == {"Intercept", "age", "region[south]",
                                                   "region[east]", "smoker"}
        report = json.loads(Path(job.result["report"]).read_text())
        assert report["pooling"]["k"] == 3
        assert report["pooling"]["rows"] == {"local": 200, "bob": 20, "carol": 20}
        assert report["local_pooling"]["kind"] == "local"
        assert report["weight"]["mode"] == "auto" and "twin weight" in job.result["message"]

    node_factory.run(main(), 6 * WAIT)


def test_a_screening_and_two_analyses_decode_each_stored_twin_once(party, node_factory):
    async def main() -> None:
        # Prepare: 3 twins each from bob and carol
        node = await node_factory.opened(party.config)
        for seed, name in enumerate(("bob", "carol")):
            for f in signed(make_twins(party.schema, name, seed=seed), party.schema,
                            getattr(party, name)):
                assert await node.handle_frames(f) is not None
        # Execute: three jobs over the same stored twins
        results = []
        for name, body, args in (("screen", screen_job, {}),
                                 ("analyze", analyze_job, {"policy": "off", "weight": 1.0}),
                                 ("analyze", analyze_job, {"policy": "off", "weight": 1.0})):
            node.start_job(name, lambda job, body=body, args=args: body(node, job, args))
            job = await node.wait_job()
            assert job.state == "done", job.error
            results.append(job.result)
        # Assert: each twin decoded by the first job only; the two analyses agree exactly
        assert node.counters["twins_decoded"] == 6
        assert (node.stored_twins.decoded, node.stored_twins.reused) == (6, 12)
        assert results[1]["coefficients"] == results[2]["coefficients"]

    node_factory.run(main(), 6 * WAIT)


def test_analyze_job_scores_a_test_set_and_restricts_to_named_peers(party, tmp_path, node_factory):
    async def main() -> None:
        # Prepare: twins from bob and carol, a held-out test file
        node = await node_factory.opened(party.config)
        for seed, name in enumerate(("bob", "carol")):
            for f in signed(make_twins(party.schema, name, seed=seed), party.schema,
                            getattr(party, name)):
                assert await node.handle_frames(f) is not None
        test = tmp_path / "test.csv"
        write_table(make_small_frame(party.schema, n=150, seed=9), test, party.schema)
        # Execute
        args = {"policy": "off", "weight": 1.0, "test": str(test), "peers": ["carol"]}
        node.start_job("analyze", lambda job: analyze_job(node, job, args))
        job = await node.wait_job()
        # Assert: only carol's twins, both test log-likelihoods reported
        assert job.state == "done", job.error
        assert job.result["peers"] == ["carol"]
        assert job.result["ll_local"] < 0 and job.result["ll_combined"] < 0
        report = json.loads(Path(job.result["report"]).read_text())
        assert set(report["pooling"]["rows"]) == {"local", "carol"}
        assert len(report["ll_combined_samples"]) == 100
        # a peer we hold nothing from is a clear error
        node.start_job("analyze", lambda job: analyze_job(node, job, {"peers": ["zed"]}))
        job = await node.wait_job()
        assert job.state == "failed" and "no twins held from zed" in str(job.error)

    node_factory.run(main(), 6 * WAIT)


def test_analyze_takes_its_defaults_from_the_analysis_section_and_the_call_overrides_them(
        party, node_factory):
    # Prepare: node.toml's [analysis] sets a site's defaults
    path = party.config.path
    path.write_text(path.read_text() + '\n[analysis]\nweight = 1.0\nheterogeneity = "off"\n'
                    'interval = "normal"\nagreement_alpha = 0.2\non_disagreement = "local"\n')
    config = load_config(path)
    # bob's and carol's twins code smoker the other way round: they disagree on it
    def flip(twin: Twin, seed: int) -> Twin:
        frame = make_small_frame(party.schema, n=400, seed=50 * seed + twin.provenance.index)
        arrays = frame_to_arrays(party.schema, poison_frame(party.schema, frame, "flip:smoker"))
        return Twin(replace(twin.provenance, n=400), arrays)

    flipped = {name: [flip(t, seed) for t in make_twins(party.schema, name, seed=seed)]
               for seed, name in enumerate(("bob", "carol"))}

    async def main() -> list[dict[str, Any]]:
        node = await node_factory.opened(config)
        for name, twins in flipped.items():
            for f in signed(twins, party.schema, getattr(party, name)):
                assert await node.handle_frames(f) is not None
        # Execute: one analysis with the config's values, one overriding two of them
        reports = []
        for args in ({"policy": "off"},
                     {"policy": "off", "heterogeneity": "dl", "weight": "auto",
                      "on_disagreement": "keep"}):
            node.start_job("analyze", lambda job, args=args: analyze_job(node, job, args))
            job = await node.wait_job()
            assert job.state == "done", job.error
            reports.append(json.loads(Path(job.result["report"]).read_text())
                           | {"reply": job.result})
        return reports

    configured, overridden = node_factory.run(main(), 6 * WAIT)
    # Assert: the report records what was used
    opts = configured["options"]
    assert (opts["heterogeneity"], opts["interval"], opts["agreement_alpha"],
            opts["on_disagreement"]) == ("off", "normal", 0.2, "local")
    assert configured["weight"]["mode"] == "fixed" and configured["weight"]["chosen"] == 1.0
    assert configured["pooling"]["heterogeneity"] is None
    assert configured["agreement"]["alpha"] == 0.2
    assert "smoker" in configured["replaced_by_local"]
    assert configured["replaced_by_local"] == configured["agreement"]["disagreeing"]
    smoker = configured["coefficients"]["smoker"]
    assert smoker["local_only"] and smoker["estimate"] == smoker["local_estimate"]
    assert configured["reply"]["options"]["weight"] == 1.0
    opts = overridden["options"]
    assert (opts["heterogeneity"], opts["interval"], opts["on_disagreement"]) == \
        ("dl", "normal", "keep")
    assert overridden["weight"]["mode"] == "auto"
    assert overridden["pooling"]["heterogeneity"]["method"] == "dl"
    assert overridden["replaced_by_local"] == []
    assert "smoker" in overridden["reply"]["disagreeing"]


@pytest.mark.parametrize("args, message", [
    ({"on_disagreement": "drop"}, "on_disagreement must be one of keep, local"),
    ({"heterogeneity": "reml"}, "heterogeneity must be one of pmm, pm, dl, off"),
    ({"agreement_alpha": 1.0}, r"agreement_alpha must be in \(0, 1\)"),
    ({"level": 0}, r"level must be in \(0, 1\)"),
    ({"interval": 3}, "argument interval must be str"),
])
def test_ctl_analyze_refuses_bad_analysis_arguments_before_any_job(party, node_factory, args,
                                                                   message):
    from twinnode.node.commands import analyze

    async def main() -> None:
        node = await node_factory.opened(party.config)
        with pytest.raises(ControlError, match=message):
            await analyze(node, dict(args))
        assert node.current_job() is None

    node_factory.run(main(), 2 * WAIT)


def test_heartbeat_showing_twins_we_lack_wakes_catchup_for_that_peer_once_per_state(
        party, node_factory):
    async def main() -> None:
        node = await node_factory.opened(party.config)
        bob = Signer(party.bob)
        wanted = node.catchup_runner.wanted["bob"]
        # Execute / Assert: the first heartbeat always wakes catch-up
        await node.handle_frames(encode_heartbeat(Heartbeat("bob", 0, {}), bob))
        assert wanted.is_set() and node.peers["bob"].last_heartbeat is not None
        wanted.clear()
        await node.handle_frames(encode_heartbeat(Heartbeat("bob", 0, {}), bob))
        assert not wanted.is_set()  # nothing new
        await node.handle_frames(encode_heartbeat(Heartbeat("bob", 2, {"mallory": 4}), bob))
        assert wanted.is_set() and node.peers["bob"].latest == 2
        wanted.clear()
        await node.handle_frames(encode_heartbeat(Heartbeat("bob", 2, {"mallory": 4}), bob))
        assert not wanted.is_set()  # same state: the periodic catch-up covers a lost reply

    node_factory.run(main(), 6 * WAIT)


def test_a_lack_shown_by_a_heartbeat_waits_while_live_twins_fill_it_and_asks_once_stalled(
        party, node_factory):
    async def main() -> None:
        # Prepare: we hold bob's seq 1; his heartbeat says he has 3
        node = await node_factory.opened(party.config)
        frames = signed(make_twins(party.schema, "bob", k=5), party.schema, party.bob)
        await node.handle_frames(frames[0])
        bob, peer = Signer(party.bob), node.peers["bob"]
        await node.handle_frames(encode_heartbeat(Heartbeat("bob", 0, {}), bob))  # first
        await node.handle_frames(encode_heartbeat(Heartbeat("bob", 3, {"bob": 3}), bob))
        assert peer.recheck and peer.asked == (3, (("bob", 3),))

        async def live() -> None:  # 2 and 3 arrive live during the grace period
            await asyncio.sleep(0.1)
            for f in frames[1:3]:
                await node.handle_frames(f)

        # Execute / Assert: filled by live traffic, so no request
        delivery = asyncio.create_task(live())
        assert await node.catchup_runner.still_lacking("bob", node.verifier.guard) is False
        await delivery
        # 4 and 5 never come: the lack stalls and a request is due
        await node.handle_frames(encode_heartbeat(Heartbeat("bob", 5, {"bob": 5}), bob))
        assert await node.catchup_runner.still_lacking("bob", node.verifier.guard) is True

    node_factory.run(main(), 6 * WAIT)


def test_an_end_marker_waits_for_the_twins_before_it_not_for_a_stream_after_it(
        party, node_factory):
    async def main() -> tuple[bool, int, int]:
        # Prepare: the store's first write waits for one gate, every later write for another
        node = await node_factory.opened(party.config)
        frames = signed(make_twins(party.schema, "bob", k=4), party.schema, party.bob)
        gates = [threading.Event(), threading.Event()]
        writes = []
        put_packed = node.store.put_packed

        def gated(packed):
            writes.append(len(packed))
            gates[min(len(writes), 2) - 1].wait(WAIT)
            return put_packed(packed)
        node.store.put_packed = gated
        for f in frames[:2]:  # the reply's twins: one batch, held at the first gate
            await node.handle_frames(f, "dealer", wait=False)
        await asyncio.sleep(0.05)
        # Execute: the end marker's wait starts; twins keep arriving behind it
        settled = asyncio.create_task(node.commits.settled())
        await asyncio.sleep(0)
        for f in frames[2:]:
            await node.handle_frames(f, "sub", wait=False)
        gates[0].set()  # the first batch is written; the next stays behind its gate
        while not settled.done() and len(writes) < 2:
            await asyncio.sleep(0.01)
        waited_for_stream = not settled.done() and await asyncio.sleep(0.3) is None \
            and not settled.done()
        held_when_settled = node.verifier.guard.latest("bob")
        gates[1].set()
        await node.commits.drain()
        await settled
        return waited_for_stream, held_when_settled, node.counters["accepted"]

    waited_for_stream, held_when_settled, accepted = node_factory.run(main(), 6 * WAIT)
    # Assert: the wait ended once the twins before it were acknowledged, not the stream's
    assert not waited_for_stream and held_when_settled == 2 and accepted == 4


def test_a_catch_up_batch_is_shared_round_robin_between_senders(party, node_factory):
    async def main() -> list[tuple[str, int]]:
        node = await node_factory.opened(party.config)
        # Prepare: 100 twins of alice and 3 of bob; the requester's `have` for alice was
        # cut short, so everything of alice looks lacking
        for sender, count in (("alice", 100), ("bob", 3)):
            for seq in range(1, count + 1):
                frames = [f"{sender}{seq}".encode()]
                node.store.put(sender, seq, f"{sender}-{seq}".encode().hex(), frames)
        # Execute
        have = {"alice": Holding(), "bob": Holding()}
        return node.catchup_runner.missing_for(node.store, have, 8)

    wanted = node_factory.run(main(), 6 * WAIT)
    # Assert: bob's three are in the batch, interleaved, lowest seqs first
    assert wanted == [("alice", 1), ("bob", 1), ("alice", 2), ("bob", 2), ("alice", 3),
                      ("bob", 3), ("alice", 4), ("alice", 5)]


def test_replay_guard_is_rebuilt_from_the_store_so_replays_stay_refused_after_restart(
        party, node_factory):
    async def main() -> None:
        frames = signed(make_twins(party.schema, "bob"), party.schema, party.bob)
        node = await node_factory.opened(party.config)
        for f in frames:
            await node.handle_frames(f)
        await node.stop()
        await node.stop()  # safe twice
        # Execute: a new process's node on the same state, the first twin again
        again = await node_factory.opened(party.config)
        replayed = await again.handle_frames(frames[0])
        # Assert
        assert replayed is None and dict(again.rejected) == {"replay": 1}
        assert node.store is None and node.verifier is None  # closed, ready to open again
        # a file the store lost is quarantined at open and can be fetched again
        lost = again.store.envelopes_dir / "bob" / f"{2:010d}.env"
        await again.stop()
        lost.unlink()
        third = await node_factory.opened(party.config)
        assert third.store.counts() == {"bob": 2}
        assert (await third.handle_frames(frames[1])).seq == 2
        await third.stop()

    node_factory.run(main(), 6 * WAIT)


def write_release(party: Party, tmp: Path, sender: str = "alice", seed: int = 0) -> Path:
    return save_release(as_release(make_twins(party.schema, sender, seed=seed)),
                        tmp / f"release-{sender}-{seed}", party.schema)


def test_published_seqs_are_stored_before_sending_and_never_reused_after_restart(
        party, tmp_path, node_factory):
    async def main() -> None:
        ask = socket_path(party.config.state_dir)
        node = node_factory(party.config)
        await node.start()
        try:
            # Execute
            first = await request(ask, "publish", {"release": str(write_release(party, tmp_path)),
                                                   "wait": True}, WAIT)
        finally:
            await node.stop()
        await node.start()  # the same node object starts again on the same state
        try:
            second = await request(ask, "publish", {"release": str(write_release(
                party, tmp_path, seed=1)), "wait": True}, WAIT)
            with pytest.raises(ControlError, match=r"all 3 twins of this release were "
                                                   r"published before \(duplicate\)"):
                await request(ask, "publish", {"release": str(write_release(
                    party, tmp_path, seed=1)), "wait": True}, WAIT)
            with pytest.raises(ControlError, match="release is from 'bob', not 'alice'"):
                await request(ask, "publish", {"release": str(write_release(
                    party, tmp_path, sender="bob")), "wait": True}, WAIT)
            with pytest.raises(ControlError, match="must be an absolute path"):
                await request(ask, "publish", {"release": "rel", "wait": True}, WAIT)
            status = await request(ask, "status", {}, WAIT)
        finally:
            await node.stop()
        # Assert
        assert first["seqs"] == [1, 3] and second["seqs"] == [4, 6]
        assert status["own_seq"] == 6 and status["twins"] == {"alice": 6}
        assert status["rejected"] == {}  # our own refusals are errors, not network refusals
        assert status["counters"]["published"] == 6

    node_factory.run(main(), 6 * WAIT)


def test_a_publish_encodes_each_twin_once_and_peers_open_what_it_stored(party, node_factory,
                                                                       monkeypatch):
    import twinnode.wire.codec as codec
    encoded = []
    encode_columns = codec.encode_columns

    def counting(arrays, schema):
        encoded.append(1)
        return encode_columns(arrays, schema)
    monkeypatch.setattr(codec, "encode_columns", counting)

    async def main() -> tuple[list[int], list]:
        node = node_factory(party.config)
        await node.start()
        try:
            seqs = await node.publish_release(as_release(make_twins(party.schema, "alice", k=4)))
            frames = [await asyncio.to_thread(node.store.frames, "alice", s) for s in seqs]
        finally:
            await node.stop()
        return seqs, frames

    seqs, frames = node_factory.run(main(), 6 * WAIT)
    # Assert: four twins, four encodings (the publish check's, signed as they were), and a
    # peer opens every stored envelope as a valid twin of alice's
    assert seqs == [1, 2, 3, 4] and len(encoded) == 4
    bob = Verifier(TrustStore([party.alice.peer()]), party.schema, ReplayGuard())
    assert [bob.open(f).seq for f in frames] == [1, 2, 3, 4]


def test_a_publish_cut_short_is_completed_by_publishing_the_release_again(party, node_factory):
    async def main() -> tuple[list[int], list[int], Any, str]:
        release = as_release(make_twins(party.schema, "alice", k=4))
        node = node_factory(party.config)
        await node.start()
        try:
            # Prepare: only the first two twins went out (as if the publish was cancelled)
            first = await node.publish_release(replace(release, twins=release.twins[:2]))
            # Execute
            rest = await node.publish_release(release)
            with pytest.raises(ControlError) as again:
                await node.publish_release(release)
            held = await asyncio.to_thread(node.store.list, "alice")
        finally:
            await node.stop()
        return first, rest, held, str(again.value)

    first, rest, held, again = node_factory.run(main(), 6 * WAIT)
    # Assert: twins 2 and 3 follow under new seqs; the whole release is out once
    assert (first, rest) == ([1, 2], [3, 4])
    assert [(e.seq, e.k) for e in held] == [(1, 0), (2, 1), (3, 2), (4, 3)]
    assert "all 4 twins of this release were published before" in again


def test_a_twin_published_under_another_release_is_refused_before_anything_is_sent(
        party, node_factory):
    async def main() -> tuple[str, int]:
        twins = make_twins(party.schema, "alice", k=2)
        node = node_factory(party.config)
        await node.start()
        try:
            await node.publish_release(as_release(twins))
            relabelled = [Twin(replace(t.provenance, release="another"), t.arrays)
                          for t in twins]
            with pytest.raises(ControlError) as info:
                await node.publish_release(as_release(relabelled))
            count = len(await asyncio.to_thread(node.store.list, "alice"))
        finally:
            await node.stop()
        return str(info.value), count

    message, count = node_factory.run(main(), 6 * WAIT)
    assert "of another release (duplicate); nothing was sent" in message and count == 2


def test_control_socket_is_0600_and_bad_requests_get_clear_errors_while_it_keeps_serving(
        party, node_factory):
    async def main() -> None:
        node = node_factory(party.config)
        await node.start()
        path = socket_path(party.config.state_dir)
        try:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            replies = await asyncio.to_thread(raw_exchange, path, [
                b'{"cmd": "frobnicate"}\n', b'{"cmd": "status"\n', b'{"cmd": "status"}\n',
                b'{"cmd": "twins", "args": {"detail": "yes"}}\n'])
            unknown, malformed, status, bad_arg = replies
            assert unknown["error"]["type"] == "unknown-command"
            assert "frobnicate" in unknown["error"]["message"]
            assert "status" in unknown["error"]["message"]
            assert malformed["error"]["type"] == "malformed"
            assert status["ok"] and status["result"]["node"] == "alice"
            assert [p["name"] for p in status["result"]["peers"]] == ["bob", "carol", "mallory"]
            assert bad_arg["error"]["type"] == "control" and "detail" in \
                bad_arg["error"]["message"]
            budget = await request(path, "budget", {}, WAIT)
            assert budget["spent"] == 0 and budget["entries"] == []
        finally:
            await node.stop()
        assert not path.exists()

    node_factory.run(main(), 6 * WAIT)


def raw_exchange(path: Path, lines: list[bytes]) -> list[dict]:
    """Send each line on one connection and read one reply line per request."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT)
        sock.connect(str(path))
        out, buf = [], b""
        for line in lines:
            sock.sendall(line)
            while b"\n" not in buf:
                buf += sock.recv(65536)
            reply, buf = buf.split(b"\n", 1)
            out.append(json.loads(reply))
        return out


def test_shutdown_command_replies_then_stops_the_node(party, node_factory):
    async def main() -> None:
        node = node_factory(party.config)
        runner = asyncio.create_task(node.run_until_stopped())
        path = socket_path(party.config.state_dir)
        while not path.exists():
            assert not runner.done(), runner.exception()
            await asyncio.sleep(0.02)
        reply = await request(path, "shutdown", {}, WAIT)
        await asyncio.wait_for(runner, WAIT)
        assert reply == {"message": "stopping"} and not path.exists()

    node_factory.run(main(), 6 * WAIT)


def test_a_peer_refused_again_and_again_is_logged_once_with_a_hint_and_counted_each_time(
        party, caplog, node_factory):
    async def main() -> None:
        node = await node_factory.opened(party.config)
        as_bob = Identity("bob", party.mallory.sign_secret, party.mallory.curve_public,
                          party.mallory.curve_secret)  # bob after he made new keys
        forged = signed(make_twins(party.schema, "bob", k=5), party.schema, as_bob)
        with caplog.at_level(logging.INFO, logger="twinnode.node"):
            for frames in forged:
                assert await node.handle_frames(frames) is None
        assert node.rejected["signature"] == 5
        lines = [r for r in caplog.records if r.getMessage().startswith("REJECTED")]
        assert len(lines) == 1 and "compare fingerprints" in lines[0].fields["hint"]

    node_factory.run(main(), 6 * WAIT)


def test_status_holds_every_counter_at_zero_and_control_md_quotes_the_real_replies(
        party, node_factory):
    control_md = (Path(__file__).parent.parent / "docs" / "CONTROL.md").read_text()
    flat = " ".join(control_md.split())

    async def main() -> tuple[dict, dict, dict]:
        node = node_factory(party.config)
        await node.start()
        path = socket_path(party.config.state_dir)
        status = await request(path, "status", {}, WAIT)
        started = await request(path, "screen", {}, WAIT)
        await node.wait_job()
        return status, started, await request(path, "shutdown", {}, WAIT)

    status, started, stopping = node_factory.run(main(), 6 * WAIT)
    assert status["counters"] == {"accepted": 0, "busy": 0, "catchup_requests": 0,
                                  "heartbeats": 0, "published": 0, "serve_waits": 0,
                                  "served": 0, "twins_decoded": 0}
    assert status["job"] is None and set(status["endpoints"]) == {"pub", "router"}
    assert started["message"] == "screen started" and f'"{started["message"]}"' in flat
    assert set(started["job"]) == {"name", "state", "progress", "detail", "started", "finished"}
    for key in started["job"]:
        assert f'"{key}"' in flat, key
    assert stopping == {"message": "stopping"} and '{"message": "stopping"}' in flat
    assert "training started" not in flat and "queued" not in flat
