"""The control socket and `twinnode ctl`: 0600, clear errors, and a server that keeps serving."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from twinnode.cli.ctl import format_result, parse_params
from twinnode.cli.main import main
from twinnode.errors import BudgetExceeded, ConfigError, ControlError, NodeNotRunning
from twinnode.node.control_client import request, request_sync
from twinnode.node.control_protocol import check_args
from twinnode.node.control_server import ControlServer

WAIT = 5.0  # every blocking step in these tests is bounded by this

STATUS = {
    "node": "alice", "pid": 4242, "uptime": 3723.5, "own_seq": 100,
    "peers": [{"name": "bob", "connected": True, "last_heartbeat_age": 1.25, "latest_seq": 100},
              {"name": "carol", "connected": False, "last_heartbeat_age": None,
               "latest_seq": None}],
    "twins": {"bob": 100}, "rejected": {"signature": 2},
    "budget": {"spent": 1.0, "cap": 3.0, "left": 2.0, "delta": 0.00033},
    "job": {"name": "train", "state": "running", "progress": 0.4, "detail": "epoch 400/1000"},
}


class Loop:
    """An asyncio loop in a background thread, so blocking clients can talk to a server."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = WAIT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()


@pytest.fixture
def bg() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


def make_handlers(server_box: list) -> dict:
    async def status(args: dict) -> dict:
        return STATUS

    async def echo(args: dict) -> dict:
        return {"args": args}

    async def train(args: dict) -> dict:
        args = check_args("train", args, {"epochs": int, "epsilon": float}, required=["epochs"])
        return {"message": f"training started (epochs={args['epochs']})",
                "job": {"name": "train", "state": "running", "progress": 0.0}}

    async def budget(args: dict) -> dict:
        raise BudgetExceeded("training at epsilon 2 would take the ledger to 4 > cap 3")

    async def boom(args: dict) -> dict:
        raise RuntimeError("secret internal detail")

    async def slow(args: dict) -> dict:
        await asyncio.sleep(args.get("s", 10))
        return {}

    async def shutdown(args: dict) -> dict:
        await server_box[0].stop()
        return {"message": "stopping"}

    async def peers(args: dict) -> dict:
        return {"peers": [dict(STATUS["peers"][0], address="tcp://127.0.0.1:5601", held=100)]}

    async def twins(args: dict) -> dict:
        return {"senders": [{"sender": "bob", "count": 100, "watermark": 98,
                             "ranges": [[100, 101], [105, 105]],
                             "status": {"accepted": 99, "flagged": 1}}]}

    return {"status": status, "echo": echo, "train": train, "budget": budget, "boom": boom,
            "slow": slow, "shutdown": shutdown, "peers": peers, "twins": twins}


@pytest.fixture
def served(bg: Loop, tmp_path: Path) -> Iterator[tuple[Path, ControlServer]]:
    path = tmp_path / "control.sock"
    box: list = []
    server = ControlServer(path, make_handlers(box), max_line=4096, idle_timeout=WAIT,
                           grace=0.2)
    box.append(server)
    bg.run(server.start())
    yield path, server
    bg.run(server.stop())


def raw(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT)
    sock.connect(str(path))
    return sock


def ask(sock: socket.socket, line: bytes) -> dict:
    """Send one raw line, read one reply line."""
    sock.sendall(line)
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(65536)
        assert chunk, "server closed the connection"
        buf += chunk
    return json.loads(buf)


# ---- server ---------------------------------------------------------------------------------

def test_socket_is_mode_0600_and_removed_on_stop_which_is_safe_twice(bg, served):
    path, server = served

    mode = os.stat(path).st_mode

    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert os.listdir(path.parent) == ["control.sock"]  # the private bind directory is gone
    bg.run(server.stop())
    bg.run(server.stop())
    assert not path.exists()


def test_bad_requests_get_clear_errors_and_the_connection_keeps_serving(served):
    path, _ = served
    sock = raw(path)
    cases = [
        (b"{not json\n", "malformed", "not valid JSON"),
        (b"\xff\xfe\n", "malformed", "not UTF-8"),
        (b"[1, 2]\n", "bad-request", "must be a JSON object"),
        (b'{"args": {}}\n', "bad-request", "needs \"cmd\""),
        (b'{"cmd": "frobnicate"}\n', "unknown-command", "unknown command 'frobnicate'"),
        (b'{"cmd": "status", "args": [1]}\n', "bad-request", "\"args\" must be a JSON object"),
        (b'{"cmd": "status", "arg": {}}\n', "bad-request", "unknown request field(s) 'arg'"),
        (b'{"cmd": "train", "args": {}}\n', "control", "train: missing argument(s) epochs"),
        (b'{"cmd": "train", "args": {"epochs": "x"}}\n', "control",
         'train: argument epochs must be int, got "x"'),
        (b'{"cmd": "train", "args": {"epochs": true}}\n', "control",
         "train: argument epochs must be int, got true"),
        (b'{"cmd": "train", "args": {"epochs": 3, "eps": 1}}\n', "control",
         "train: unknown argument(s) eps; arguments: epochs, epsilon"),
        (b"\n", "bad-request", "empty request line"),
    ]
    try:
        for line, type_, message in cases:
            reply = ask(sock, line)
            assert reply["ok"] is False, line
            assert reply["error"]["type"] == type_, line
            assert message in reply["error"]["message"], line

        unknown_with_id = ask(sock, b'{"cmd": "nope", "id": "q1"}\n')
        good = ask(sock, b'{"cmd": "status", "id": 7}\n')
    finally:
        sock.close()
    assert unknown_with_id["id"] == "q1"
    assert good == {"ok": True, "result": STATUS, "id": 7}


def test_unknown_command_error_lists_the_known_commands(served):
    path, _ = served
    with pytest.raises(ControlError, match="commands: boom, budget, echo, peers, shutdown") as info:
        request_sync(path, "frobnicate", timeout=WAIT)
    assert info.value.remote_type == "unknown-command"


def test_handler_errors_become_replies_and_the_server_keeps_serving(served, caplog):
    path, _ = served

    with pytest.raises(ControlError, match="would take the ledger to 4 > cap 3") as refused:
        request_sync(path, "budget", timeout=WAIT)
    with caplog.at_level(logging.ERROR, logger="twinnode.control"):
        with pytest.raises(ControlError, match="internal error while running 'boom'") as bug:
            request_sync(path, "boom", timeout=WAIT)
    after = request_sync(path, "status", timeout=WAIT)

    assert refused.value.remote_type == "budget"
    assert bug.value.remote_type == "internal"
    assert "secret internal detail" not in str(bug.value)
    assert "secret internal detail" in caplog.text  # the traceback went to the log
    assert after == STATUS


def test_oversized_line_is_refused_and_the_server_keeps_serving(served):
    path, _ = served

    with pytest.raises(ControlError, match="request line exceeds 4096 bytes") as streamed:
        request_sync(path, "echo", {"x": "a" * 1_000_000}, timeout=WAIT)
    sock = raw(path)
    try:
        at_once = ask(sock, b"x" * 5000 + b"\n")
    finally:
        sock.close()
    after = request_sync(path, "echo", {"x": "a" * 3000}, timeout=WAIT)

    assert streamed.value.remote_type == "too-large"
    assert at_once["error"]["type"] == "too-large"
    assert after == {"args": {"x": "a" * 3000}}


def test_idle_connection_is_told_and_closed(bg, tmp_path):
    path = tmp_path / "c.sock"
    server = ControlServer(path, make_handlers([]), idle_timeout=0.2)
    bg.run(server.start())
    try:
        sock = raw(path)
        data = sock.recv(65536)
        eof = sock.recv(65536)
        sock.close()
        assert json.loads(data)["error"]["type"] == "idle"
        assert eof == b""
    finally:
        bg.run(server.stop())


def test_connections_over_the_limit_are_told_busy(bg, tmp_path):
    path = tmp_path / "c.sock"
    server = ControlServer(path, make_handlers([]), max_connections=1, idle_timeout=WAIT)
    bg.run(server.start())
    first = raw(path)
    try:
        assert ask(first, b'{"cmd": "echo"}\n')["ok"]  # the first connection is established
        with pytest.raises(ControlError, match="too many control connections"):
            request_sync(path, "status", timeout=WAIT)
        assert ask(first, b'{"cmd": "status"}\n')["result"] == STATUS
    finally:
        first.close()
        bg.run(server.stop())


def test_stale_socket_file_is_replaced(bg, tmp_path):
    path = tmp_path / "control.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nothing answers: what a SIGKILLed node leaves
    with pytest.raises(NodeNotRunning, match="connection refused"):
        request_sync(path, "status", timeout=WAIT)
    server = ControlServer(path, make_handlers([]))

    bg.run(server.start())

    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert request_sync(path, "status", timeout=WAIT) == STATUS
    finally:
        bg.run(server.stop())


def test_second_server_on_a_live_socket_refuses_and_the_first_keeps_serving(bg, served):
    path, _ = served
    second = ControlServer(path, {})

    with pytest.raises(ControlError, match="a node is already running at"):
        bg.run(second.start())

    assert request_sync(path, "status", timeout=WAIT) == STATUS
    bg.run(second.stop())  # never started: a no-op that must not remove the live socket
    assert path.exists()


def test_a_regular_file_at_the_socket_path_is_not_replaced(bg, tmp_path):
    path = tmp_path / "control.sock"
    path.write_text("precious")
    with pytest.raises(ControlError, match="exists and is not a socket"):
        bg.run(ControlServer(path, {}).start())
    assert path.read_text() == "precious"


def test_shutdown_handler_gets_its_reply_out_and_stops_the_server(served):
    path, server = served

    reply = request_sync(path, "shutdown", timeout=WAIT)

    assert reply == {"message": "stopping"}
    assert not server.serving and not path.exists()
    with pytest.raises(NodeNotRunning, match="socket file not found"):
        request_sync(path, "status", timeout=WAIT)


def test_async_client_returns_results_and_reports_timeouts_and_absence(bg, served, tmp_path):
    path, _ = served

    result = bg.run(request(path, "echo", {"n": [1, 2]}, timeout=WAIT))

    assert result == {"args": {"n": [1, 2]}}
    with pytest.raises(ControlError, match="timed out after 0.2 s"):
        bg.run(request(path, "slow", {"s": 3}, timeout=0.2))
    with pytest.raises(ControlError, match="timed out after 0.2 s"):
        request_sync(path, "slow", {"s": 3}, timeout=0.2)
    with pytest.raises(NodeNotRunning, match="no node is running at"):
        bg.run(request(tmp_path / "nothing.sock", "status", timeout=WAIT))


# ---- twinnode ctl ---------------------------------------------------------------------------

def test_ctl_prints_status_for_humans_and_raw_json_on_request(served, capsys):
    path, _ = served

    code = main(["ctl", "--socket", str(path), "status"])
    human = capsys.readouterr().out
    code_json = main(["ctl", "--socket", str(path), "status", "--json"])
    raw_out = capsys.readouterr().out

    assert code == 0 and code_json == 0
    assert human.splitlines()[:3] == [
        "node alice (pid 4242, up 1h02m, own seq 100)",
        "job: train running 40% (epoch 400/1000)",
        "budget: epsilon spent 1.00 of 3.00, 2.00 left (delta 0.00033)"]
    assert "bob    yes        1.2 s ago       100" in human
    assert "carol  no         never           -" in human
    assert "twins held: bob 100" in human and "rejected: signature 2" in human
    assert json.loads(raw_out) == STATUS


def test_ctl_uses_the_state_directory_and_passes_key_value_args(served, capsys):
    path, _ = served

    code = main(["ctl", "--state", str(path.parent), "echo", "epochs=10", "name=x",
                 "ks=[1,2]", "on=true", "--json"])

    assert code == 0
    assert json.loads(capsys.readouterr().out) == {
        "args": {"epochs": 10, "name": "x", "ks": [1, 2], "on": True}}
    code = main(["ctl", "--state", str(path.parent), "train", "epochs=5", "epsilon=1"])
    assert code == 0
    assert capsys.readouterr().out.splitlines() == ["training started (epochs=5)",
                                                    "job: train running 0%"]


def test_ctl_prints_peers_and_twins_as_tables(served, capsys):
    path, _ = served

    codes = [main(["ctl", "--socket", str(path), cmd]) for cmd in ("peers", "twins")]

    assert codes == [0, 0]
    assert capsys.readouterr().out.splitlines() == [
        "peers:",
        "  NAME  CONNECTED  LAST HEARTBEAT  LATEST SEQ  HELD  ADDRESS",
        "  bob   yes        1.2 s ago       100         100   tcp://127.0.0.1:5601",
        "twins held:",
        "  SENDER  COUNT  CONTIGUOUS TO  ALSO          STATUS",
        "  bob     100    98             100-101, 105  accepted 99, flagged 1"]


def test_ctl_without_a_node_exits_14_with_a_clear_message(tmp_path, capsys):
    code = main(["ctl", "--state", str(tmp_path), "status"])
    err = capsys.readouterr().err
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(tmp_path / "control.sock"))
    dead.close()
    code_stale = main(["ctl", "--state", str(tmp_path), "status"])
    err_stale = capsys.readouterr().err

    assert (code, code_stale) == (14, 14)
    assert f"no node is running at {tmp_path}/control.sock (socket file not found)" in err
    assert "(connection refused: the socket is left over from a node that stopped)" in err_stale


def test_ctl_failed_command_exits_13_with_the_nodes_message(served, capsys):
    path, _ = served

    code = main(["ctl", "--socket", str(path), "budget"])
    code_unknown = main(["ctl", "--socket", str(path), "frobnicate"])

    err = capsys.readouterr().err
    assert (code, code_unknown) == (13, 13)
    assert "twinnode ctl: error: budget: training at epsilon 2 would take" in err
    assert "unknown command 'frobnicate'" in err


def test_ctl_refuses_malformed_arguments_before_connecting(tmp_path):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_params(["epochs"])
    with pytest.raises(ConfigError, match="given twice"):
        parse_params(["a=1", "a=2"])
    assert main(["ctl", "--state", str(tmp_path), "train", "epochs"]) == 3


def test_results_that_do_not_fit_a_formatter_fall_back_to_key_value_lines():
    odd_status = {"uptime": 5, "peers": "several"}

    text = format_result("status", odd_status)
    other = format_result("novel", {"a": 1, "b": {"c": [1, 2], "d": None},
                                    "e": [{"f": True}]})

    assert text == "uptime: 5\npeers: several"
    assert other == "a: 1\nb:\n  c: 1, 2\n  d: -\ne:\n  - f: yes"


def test_ctl_offers_exactly_the_commands_the_node_implements():
    from twinnode.cli import ctl
    from twinnode.node.command_names import COMMANDS
    from twinnode.node.commands import handlers

    assert ctl.COMMANDS is COMMANDS  # one definition, no copy
    assert tuple(handlers(object())) == COMMANDS  # type: ignore[arg-type]
    assert set(ctl.FORMATTERS) == set(COMMANDS)


def test_ctl_analyze_marks_the_terms_where_the_twins_disagree():
    reply = {"message": "analysis over 2 peer(s)", "disagreeing": ["smoker"],
             "moved_outside_local": ["smoker"],
             "coefficients": {t: {"estimate": 0.1, "se": 0.2, "local_estimate": 0.1,
                                  "local_se": 0.3} for t in ("age", "smoker")}}
    text = format_result("analyze", reply)
    rows = {line.split()[0]: line.split()[-1] for line in text.splitlines()
            if line.strip().startswith(("age", "smoker"))}
    assert rows == {"age": "yes", "smoker": "NO"}
    assert "disagree on smoker" in text
    assert "wholly outside the local one: smoker" in text


def test_ctl_analyze_prints_the_options_used_and_not_their_raw_dict():
    reply = {"message": "analysis over 2 peer(s)", "disagreeing": ["smoker"],
             "replaced_by_local": ["smoker"],
             "options": {"weight": "auto", "rule": "mixed", "heterogeneity": "off",
                         "interval": "t", "level": 0.95, "agreement_alpha": 0.2,
                         "on_disagreement": "local", "covariates": None}}
    text = format_result("analyze", reply)
    assert ("options: weight auto, rule mixed, heterogeneity off, interval t, level 0.95, "
            "agreement_alpha 0.2, on_disagreement local") in text
    assert "covariates" not in text and "replaced_by_local" not in text


def test_ctl_imports_neither_the_node_nor_the_store_nor_zmq():
    import subprocess
    import sys

    code = ("import sys, twinnode.cli.ctl; "
            "print(sorted(m for m in ('zmq', 'sqlite3', 'twinnode.node.core', "
            "'twinnode.store.store', 'jax', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_stop_with_idle_connections_open_logs_no_cancelled_error(bg, tmp_path, caplog):
    # Prepare: three clients connected and silent, as ctl status polls may be at shutdown
    path = tmp_path / "control.sock"
    server = ControlServer(path, make_handlers([]), idle_timeout=WAIT)
    bg.run(server.start())
    clients = [raw(path) for _ in range(3)]
    try:
        ask(clients[0], b'{"cmd": "status"}\n')  # one has been served and waits for more
        # Execute
        with caplog.at_level(logging.DEBUG, logger="asyncio"):
            bg.run(server.stop())
            bg.run(asyncio.sleep(0.1))  # let done-callbacks run
        # Assert: the connections were closed, and asyncio logged nothing about them
        assert all(c.recv(1) == b"" for c in clients)
        assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
    finally:
        for c in clients:
            c.close()
