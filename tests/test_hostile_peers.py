"""A pinned peer flooding a real node stays bounded (issue 15): one test per flood.

The victim (alice) is a real `twinnode run` process on 127.0.0.1 (LocalCluster). bob, an
honest peer, is this test: his PUB sends alice a live twin every second and his DEALER asks
her for catch-up once a second. mallory, pinned too, is `tests/hostile_peer.py` in a process
of its own, flooding alice's ROUTER and (through alice's subscription) her SUB for ATTACK
seconds. Under every flood:
  - at least 90% of bob's catch-up requests are answered (end marker within ANSWER_S);
  - bob's live twins reach alice's store no more than 2x slower than before the attack (on
    the median, with a floor of LATENCY_FLOOR for the polling resolution);
  - alice's log grows by at most 1 MB per minute of attack;
  - alice's resident memory grows by at most MEMORY_MB;
  - and the flood landed: alice counted what she refused (or served) from mallory.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
import zmq.asyncio
from conftest import SMALL_SCHEMA, make_small_frame

from twinnode.data import frame_to_arrays, write_table
from twinnode.lab.harness import LocalCluster, PartySpec, free_ports
from twinnode.node.control_client import request, socket_path
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
    seal,
)
from twinnode.wire.columnar import max_payload_bytes

ATTACK = 20.0        # seconds of flood
ANSWER_S = 5.0       # an honest request counts as answered if its end marker comes this soon
LATENCY_FLOOR = 0.25  # s: below this, live latency is the status poll's resolution
MEMORY_MB = 150.0    # the victim's RSS may grow this much under a flood
MAX_ROWS = 100_000   # alice's [network] max_rows: frames up to ~600 KB under the small schema
HOSTILE = Path(__file__).with_name("hostile_peer.py")


@dataclass
class Scene:
    cluster: LocalCluster
    schema: Schema
    bob: Identity
    mallory: Identity
    bob_pub: str
    mallory_pub: str
    alice: Identity
    work: Path


def twin(schema: Schema, sender: str, seq: int, signer: Identity, rows: int = 20) -> list[bytes]:
    prov = Provenance(sender, schema.hash, 1.0, 1e-3, rows, 1000, seq % 1000, "add-remove",
                      f"{sender}-r", 1000.0, {"components": 2})
    arrays = frame_to_arrays(schema, make_small_frame(schema, n=rows, seed=seq))
    return encode_twin(Twin(prov, arrays), schema, seq, Signer(signer))


def rewritten(frames: list[bytes], signer: Identity, payload: bytes, **changes: Any) -> list[bytes]:
    """A message re-signed by `signer` with header `changes` and `payload`, whose signed digest
    is NOT the payload's (signed, but wrong): the victim must hash it to find out."""
    header = msgpack.unpackb(frames[1]) | changes
    header["payload_len"] = len(payload)
    header["payload_digest"] = hashlib.sha256(b"not " + payload[:64]).digest()
    return seal(header, payload, Signer(signer), topic_frame=frames[0])


def prepared(mode: str, s: Scene) -> dict[str, list[list[bytes]]]:
    """The messages mallory sends over and over, per flood."""
    m = s.mallory
    if mode == "signed":
        to_carol = encode_catchup_request(CatchupRequest("mallory", "carol", {}), Signer(m))
        as_bob = Identity("bob", m.sign_secret, m.curve_public, m.curve_secret)
        forged = encode_catchup_request(CatchupRequest("bob", "alice", {}), Signer(as_bob))
        wrong = rewritten(twin(s.schema, "mallory", 1, m), m, bytes(5000))
        forged_hb = encode_heartbeat(Heartbeat("bob", 99, {}), Signer(as_bob))
        return {"router": [to_carol, forged], "pub": [wrong, forged_hb]}
    if mode == "replay":
        once = encode_catchup_request(CatchupRequest("mallory", "alice", {}), Signer(m))
        bobs = [twin(s.schema, "bob", seq, s.bob) for seq in (1, 2, 3)]  # alice holds these
        return {"router": [once], "pub": [twin(s.schema, "mallory", 1, m), *bobs]}
    if mode == "oversized":  # just under alice's frame limit, signed, digest wrong
        most = max_payload_bytes(s.schema, MAX_ROWS) - 64
        big = rewritten(twin(s.schema, "mallory", 1, m), m, bytes(most), rows=MAX_ROWS,
                        n=MAX_ROWS)
        return {"router": [], "pub": [big]}
    return {"router": [], "pub": []}


@pytest.fixture
def scene(tmp_path: Path, small_csv: Path):
    schema = Schema.from_toml(SMALL_SCHEMA, "schema.toml")
    (tmp_path / "schema.toml").write_text(SMALL_SCHEMA)
    ports = free_ports(4)
    bob, mallory = Identity.generate("bob"), Identity.generate("mallory")
    save_identity(mallory, tmp_path / "mallory-keys")
    addr = [f"tcp://127.0.0.1:{p}" for p in ports]
    peers = [bob.peer(addr[0], addr[1]), mallory.peer(addr[2], addr[3])]
    csv = tmp_path / "alice.csv"
    write_table(make_small_frame(schema, n=200, seed=1), csv, schema)
    cluster = LocalCluster(tmp_path / "nodes", [PartySpec("alice", csv)], tmp_path / "schema.toml",
                           extra_peers=peers, heartbeat_interval=0.5)
    config = cluster.config_path("alice")
    config.write_text(config.read_text().replace("[network]\n",
                                                 f"[network]\nmax_rows = {MAX_ROWS}\n"))
    with cluster:
        cluster.start()
        yield Scene(cluster, schema, bob, mallory, addr[0], addr[2], cluster.identity("alice"),
                    tmp_path)


class Bob:
    """The honest peer: a PUB alice subscribes to, a DEALER to alice's ROUTER."""

    def __init__(self, s: Scene) -> None:
        self.s = s
        self.ctx = zmq.asyncio.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.CURVE_SERVER, 1)
        self.pub.setsockopt(zmq.CURVE_SECRETKEY, s.bob.curve_secret)
        self.pub.bind(s.bob_pub)
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.setsockopt(zmq.CURVE_PUBLICKEY, s.bob.curve_public)
        self.dealer.setsockopt(zmq.CURVE_SECRETKEY, s.bob.curve_secret)
        self.dealer.setsockopt(zmq.CURVE_SERVERKEY, s.alice.curve_public)
        self.dealer.connect(s.cluster.members["alice"].router)
        trust = TrustStore([s.alice.peer(), s.bob.peer()])
        self.verifier = Verifier(trust, s.schema, ReplayGuard(), local="bob")
        self.ends: dict[bytes, float] = {}
        self.seq = 0
        self.path = socket_path(s.cluster.state_dir("alice"))

    def close(self) -> None:
        self.pub.close(0)
        self.dealer.close(0)
        self.ctx.term()

    async def held(self) -> int:
        return (await request(self.path, "status", {}, 10.0))["twins"].get("bob", 0)

    async def live_twin(self, timeout: float = 10.0) -> float:
        """Publish bob's next twin; seconds until alice's store holds it."""
        self.seq += 1
        frames = twin(self.s.schema, "bob", self.seq, self.s.bob)
        t0 = time.monotonic()
        await self.pub.send_multipart(frames)
        while await self.held() < self.seq:
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"bob's twin {self.seq} did not reach alice in {timeout} s")
            await asyncio.sleep(0.02)
        return time.monotonic() - t0

    async def first_twin(self) -> None:
        """Send twin 1 until alice's subscription is up and she holds it."""
        self.seq = 1
        frames = twin(self.s.schema, "bob", 1, self.s.bob)
        for _ in range(300):
            await self.pub.send_multipart(frames)
            await asyncio.sleep(0.1)
            if await self.held() >= 1:
                return
        raise AssertionError("alice never subscribed to bob")

    async def read_replies(self) -> None:
        while True:
            frames = await self.dealer.recv_multipart()
            if frames[0].startswith(b"end:"):
                end = self.verifier.open(frames).message
                assert isinstance(end, CatchupEnd)
                self.ends[end.request_id] = time.monotonic()

    async def ask_every_second(self, seconds: float) -> tuple[int, int]:
        """Catch-up requests once a second for `seconds`: (asked, answered within ANSWER_S)."""
        sent: dict[bytes, float] = {}
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            req = CatchupRequest("bob", "alice", {"bob": Holding(0), "alice": Holding(0)})
            sent[req.request_id] = time.monotonic()
            await self.dealer.send_multipart(encode_catchup_request(req, Signer(self.s.bob)))
            await asyncio.sleep(1.0)
        await asyncio.sleep(ANSWER_S)
        answered = sum(1 for rid, t in sent.items()
                       if rid in self.ends and self.ends[rid] - t <= ANSWER_S)
        return len(sent), answered


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


FLOODS = [
    pytest.param("garbage", id="garbage"),
    pytest.param("oversized", id="oversized", marks=pytest.mark.slow),
    pytest.param("signed", id="signed-but-wrong", marks=pytest.mark.slow),
    pytest.param("replay", id="replays", marks=pytest.mark.slow),
    pytest.param("requests", id="catch-up-request-flood", marks=pytest.mark.slow),
    pytest.param("noread", id="never-reads-replies", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("mode", FLOODS)
def test_a_pinned_peers_flood_leaves_honest_catch_up_and_live_delivery_and_stays_bounded(
        mode, scene: Scene) -> None:
    s = scene
    pid = s.cluster.members["alice"].proc.pid
    log = s.cluster.log_path("alice")
    spec = {"mode": mode, "seconds": ATTACK, "keys": str(s.work / "mallory-keys"),
            "victim": "alice", "victim_router": s.cluster.members["alice"].router,
            "victim_curve": s.alice.curve_public.decode(), "pub": s.mallory_pub,
            "prepared": str(s.work / "prepared.msgpack"),
            "big": max_payload_bytes(s.schema, MAX_ROWS), "senders": ["alice", "bob", "mallory"]}
    (s.work / "prepared.msgpack").write_bytes(msgpack.packb(prepared(mode, s)))
    (s.work / "spec.json").write_text(json.dumps(spec))

    async def main() -> dict[str, Any]:
        bob = Bob(s)
        reader = asyncio.create_task(bob.read_replies())
        try:
            # Prepare: alice holds bob's twins 1..6; the live latency before the attack
            await bob.first_twin()
            before = [await bob.live_twin() for _ in range(5)]
            log_before, rss_before = log.stat().st_size, rss_mb(pid)
            # Execute: mallory floods; bob asks once a second and sends a live twin a second
            attacker = await asyncio.create_subprocess_exec(
                sys.executable, str(HOSTILE), str(s.work / "spec.json"),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            await asyncio.sleep(2.0)  # alice's subscription to mallory's PUB comes up

            async def live() -> list[float]:
                out = []
                while attacker.returncode is None and len(out) < ATTACK - 6:
                    out.append(await bob.live_twin(timeout=20.0))
                    await asyncio.sleep(1.0)
                return out
            (asked, answered), during = await asyncio.gather(
                bob.ask_every_second(ATTACK - 4), live())
            out, err = await attacker.communicate()
            assert attacker.returncode == 0, err.decode()[-2000:]
            status = await request(bob.path, "status", {}, 10.0)
            return {"asked": asked, "answered": answered, "before": before, "during": during,
                    "log_growth": log.stat().st_size - log_before,
                    "rss_growth": rss_mb(pid) - rss_before, "sent": json.loads(out),
                    "status": status}
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            bob.close()

    r = asyncio.run(asyncio.wait_for(main(), 55.0))
    st = r["status"]
    print(f"\n{mode}: answered {r['answered']}/{r['asked']}, live median before "
          f"{statistics.median(r['before']):.3f} s during {statistics.median(r['during']):.3f} s, "
          f"log +{r['log_growth'] / 1e3:.1f} kB, RSS +{r['rss_growth']:.1f} MB, mallory sent "
          f"{r['sent']}, alice rejected {st['rejected']}, counters {st['counters']}")
    # Assert: the flood landed
    assert sum(r["sent"].values()) > 0
    landed = sum(st["rejected"].values()) + st["counters"]["served"] + st["counters"]["busy"]
    assert landed > 20, (st["rejected"], st["counters"])
    # honest catch-up answered, live delivery not slowed beyond 2x, log and memory bounded
    assert r["answered"] >= 0.9 * r["asked"], r
    floor = max(statistics.median(r["before"]), LATENCY_FLOOR)
    assert statistics.median(r["during"]) <= 2 * floor, r
    assert r["log_growth"] <= 1e6 * ATTACK / 60, r["log_growth"]
    assert r["rss_growth"] <= MEMORY_MB, r["rss_growth"]
