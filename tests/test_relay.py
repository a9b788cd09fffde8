"""The netns harness's fault relay on 127.0.0.1 (no namespaces needed): it forwards bytes in
order, delays them as its policy says, and refuses or cuts connections."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from twinnode.lab.harness import free_ports


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """An echo server behind a relay; (the relay's port, its policy file)."""
    echo = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        echo.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = echo.accept()
            except OSError:
                continue
            threading.Thread(target=pump, args=(conn,), daemon=True).start()

    def pump(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    port = free_ports(1)[0]
    policy = tmp_path / "faults.json"
    policy.write_text(json.dumps({"rules": {}}))
    stats = tmp_path / "stats.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "twinnode.lab.relay", f"--policy={policy}", "--me=node",
         "--peer=client=127.0.0.1", f"--stats={stats}",
         f"--forward=127.0.0.1:{port}=127.0.0.1:{echo.getsockname()[1]}"],
        stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not stats.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "relay did not start"
            time.sleep(0.05)
        yield port, policy
    finally:
        proc.kill()
        proc.wait(10)
        stop.set()
        echo.close()


def set_policy(policy: Path, rules: dict) -> None:
    policy.write_text(json.dumps({"rules": rules}))
    time.sleep(0.6)  # the relay looks every 0.2 s


def round_trip(port: int, payload: bytes) -> tuple[bytes, float]:
    """What came back (b"" if the relay closed or reset the connection) and how long it took."""
    t0 = time.monotonic()
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(payload)
            while len(got) < len(payload):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            pass
    return got, time.monotonic() - t0


def test_relay_forwards_bytes_in_order_and_adds_its_delay(relay):
    port, policy = relay
    payload = bytes(range(256)) * 2000
    got, fast = round_trip(port, payload)
    assert got == payload
    set_policy(policy, {"client>node": {"delay": 0.3, "jitter": 0.1}})
    got, slow = round_trip(port, payload)
    # Assert: the same bytes in the same order, each direction delayed by >= 0.2 s
    assert got == payload
    assert slow >= 0.4 > fast


def test_relay_refuses_connections_as_its_policy_says(relay):
    port, policy = relay
    set_policy(policy, {"*": {"refuse": 1.0}})
    got, _ = round_trip(port, b"hello")
    assert got == b""
    set_policy(policy, {})
    assert round_trip(port, b"hello")[0] == b"hello"
