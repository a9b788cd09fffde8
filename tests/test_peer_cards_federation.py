"""Issue 14's Must-show: a federation pinned only through `init`, `card` and `peers add`.

From nothing to three sites on 127.0.0.1 (no hand-written TOML), then a fourth site joins the
running federation without anyone restarting, one site rotates its keys, one is removed; after
each step the test checks the effect at every node. Real processes, real sockets, real (tiny)
training.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import zmq
from conftest import SMALL_SCHEMA, make_small_frame

from twinnode.data import write_table
from twinnode.schema import Schema
from twinnode.trust.identity import Identity

K = 3
FIRST = ("north", "south", "east")


def cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "twinnode.cli", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout)


def ok(*args: str, cwd: Path) -> str:
    res = cli(*args, cwd=cwd)
    assert res.returncode == 0, (args, res.stdout, res.stderr)
    return res.stdout


def ctl(site: Path, *args: str) -> dict[str, Any]:
    return json.loads(ok("ctl", "--state", "state", "--json", *args, cwd=site))


def port_pair() -> int:
    """A free port p on 127.0.0.1 with p + 1 free too (init binds PUB at p, ROUTER at p+1)."""
    for _ in range(100):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            p = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
            return p
    raise RuntimeError("no two consecutive free ports")


class Federation:
    def __init__(self, root: Path) -> None:
        self.root, self.procs = root, {}
        self.schema = Schema.from_toml(SMALL_SCHEMA)

    def site(self, name: str) -> Path:
        return self.root / name

    def init(self, name: str, seed: int) -> str:
        site = self.site(name)
        site.mkdir()
        (site / "schema.toml").write_text(SMALL_SCHEMA)
        write_table(make_small_frame(self.schema, n=300, seed=seed), site / f"{name}.csv",
                    self.schema)
        out = ok("init", name, "--host", "127.0.0.1", "--port", str(port_pair()), cwd=site)
        assert (site / f"{name}.card.toml").is_file() and "fingerprint" in out
        return ok("card", "--show", cwd=site)  # what the site reads to its peers

    def pin(self, name: str, other: str, shown: str) -> str:
        out = ok("peers", "add", f"../{other}/{other}.card.toml", cwd=self.site(name))
        assert "signature verified" in out
        sign_fp = shown.split("signing key fingerprint")[1].splitlines()[0].strip()
        assert sign_fp in out  # the fingerprint compared out of band
        return out

    def run(self, name: str) -> None:
        site = self.site(name)
        with open(site / "node.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "twinnode.cli", "run", "--config", "node.toml"],
                cwd=site, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.until(lambda: (site / "state" / "control.sock").exists()
                   and cli("ctl", "--state", "state", "status", cwd=site).returncode == 0,
                   f"{name} answers", 60)

    def until(self, cond: Callable[[], Any], what: str, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            for name, p in self.procs.items():
                assert p.poll() is None or name in self.stopped, \
                    (self.site(name) / "node.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"timed out waiting for: {what}"
            time.sleep(0.5)

    stopped: set[str] = set()

    def held(self, name: str) -> dict[str, int]:
        return ctl(self.site(name), "status")["twins"]

    def peer_rows(self, name: str) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in ctl(self.site(name), "peers")["peers"]}

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def fed(tmp_path: Path):
    f = Federation(tmp_path)
    f.stopped = set()
    yield f
    f.close()


def holds_all(f: Federation, names: tuple[str, ...], senders: dict[str, int]) -> bool:
    return all(all(f.held(n).get(s, 0) >= k for s, k in senders.items()) for n in names)


def zap_denied(f: Federation, name: str) -> int:
    return ctl(f.site(name), "status")["rejected"].get("zap-denied", 0)


@pytest.mark.slow
def test_sites_pin_each_other_by_cards_join_rotate_and_leave_without_restarts(fed):
    f = fed
    # ---- 1. three sites from nothing: init, card --show, peers add (no TOML written here)
    shown = {name: f.init(name, seed) for seed, name in enumerate(FIRST)}
    for name in FIRST:
        for other in FIRST:
            if other != name:
                f.pin(name, other, shown[other])
    for name in FIRST:
        assert "ok" in ok("check", "--config", "node.toml", cwd=f.site(name)).lower()
        f.run(name)
        ctl(f.site(name), "train", "epochs=2", f"k={K}")
    f.until(lambda: holds_all(f, FIRST, {s: K for s in FIRST}), "three sites hold all twins")
    for name in FIRST:
        rows = f.peer_rows(name)
        assert set(rows) == set(FIRST) - {name} and all(r["connected"] for r in rows.values())
    pids = {name: f.procs[name].pid for name in FIRST}

    # ---- 2. a fourth site joins the running federation: nobody restarts
    shown["west"] = f.init("west", 3)
    for other in FIRST:
        f.pin("west", other, shown[other])
        f.pin(other, "west", shown["west"])
    # `ctl peers reload` at north (its file watch may have taken the change already); the
    # others only by their file watch
    assert "west" in ctl(f.site("north"), "peers", "reload")["reload"]["pinned"]
    f.run("west")
    ctl(f.site("west"), "train", "epochs=2", f"k={K}")
    everyone = (*FIRST, "west")
    f.until(lambda: holds_all(f, everyone, {s: K for s in everyone}), "west joined everywhere")
    for name in FIRST:
        assert f.procs[name].pid == pids[name] and f.procs[name].poll() is None
        assert ctl(f.site(name), "status")["pid"] == pids[name]
        assert "west" in f.peer_rows(name)
        assert "event=peers.reloaded added=west" in (f.site(name) / "node.log").read_text()

    # ---- 3. south rotates its keys; the others take the card the old key signed
    old = Identity.load(f.site("south") / "keys", "south")
    ok("card", "--rotate", cwd=f.site("south"))
    new_fp = ok("card", "--show", cwd=f.site("south")).split("signing key fingerprint")[1] \
        .splitlines()[0].strip()
    ctl(f.site("south"), "shutdown")
    f.stopped.add("south")
    assert f.procs["south"].wait(timeout=60) == 0
    f.run("south")
    f.stopped.discard("south")
    others = ("north", "east", "west")
    for name in others:
        out = ok("peers", "add", "../south/south.card.toml", cwd=f.site(name))
        assert "rotation" in out and new_fp in out
    assert "south" in ctl(f.site("north"), "peers", "reload")["reload"]["pinned"]
    f.until(lambda: all(f.peer_rows(n)["south"]["fingerprint"] == new_fp and
                        f.peer_rows(n)["south"]["connected"] for n in others),
            "the new key pinned and south connected everywhere", 60)
    ctl(f.site("south"), "publish", f"k={K}")  # free: from south's saved posterior
    f.until(lambda: holds_all(f, others, {"south": 2 * K}), "south's new-key twins accepted")
    for name in others:
        assert "event=peer.rotated" in (f.site(name) / "node.log").read_text()
    # the old key is refused: a client with south's old CURVE key never gets through ZAP
    before = {n: zap_denied(f, n) for n in others}
    ctx, probes = zmq.Context(), []
    try:
        for n in others:
            pub = f.peer_rows("south")[n]["address"]  # south pins n: its PUB address
            sock = ctx.socket(zmq.SUB)
            probes.append(sock)
            sock.setsockopt(zmq.LINGER, 0)
            sock.curve_publickey, sock.curve_secretkey = old.curve_public, old.curve_secret
            sock.curve_serverkey = _curve_key_of(f, n)
            sock.connect(pub)
        f.until(lambda: all(zap_denied(f, n) > before[n] for n in others),
                "the old CURVE key denied at every node", 30)
    finally:
        for sock in probes:
            sock.close(linger=0)
        ctx.term()

    # ---- 4. east is removed: its links closed, its future twins refused, its stored twins kept
    staying = ("north", "south", "west")
    for name in staying:
        assert "removed east" in ok("peers", "remove", "east", cwd=f.site(name))
    assert "east" not in ctl(f.site("north"), "peers", "reload")["reload"]["pinned"]
    f.until(lambda: all("east" not in f.peer_rows(n) for n in staying), "east unpinned", 30)
    f.until(lambda: not any(r["connected"] for r in f.peer_rows("east").values()),
            "east hears nobody any more", 30)
    ctl(f.site("east"), "publish", f"k={K}")
    f.until(lambda: ctl(f.site("east"), "status")["twins"].get("east", 0) == 2 * K,
            "east published again", 60)
    time.sleep(3)
    for name in staying:
        assert f.held(name)["east"] == K  # kept, and nothing new from east came in
        assert f.procs[name].poll() is None
    for name in staying:
        assert "removed=east" in (f.site(name) / "node.log").read_text()
    result = ctl(f.site("north"), "analyze", "wait=true")
    assert result["peers"] == ["south", "west"]  # east's stored twins left out
    for name in everyone:
        assert cli("ctl", "--state", "state", "shutdown", cwd=f.site(name)).returncode == 0
    for p in f.procs.values():
        assert p.wait(timeout=60) == 0


def _curve_key_of(f: Federation, name: str) -> bytes:
    """The CURVE public key `name`'s card carries (what south pins for it)."""
    import tomllib

    doc = tomllib.loads((f.site(name) / f"{name}.card.toml").read_text())
    return doc["curve_key"].encode("ascii")
