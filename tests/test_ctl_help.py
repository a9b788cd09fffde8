"""The operator's CLI text: every command's help has an example, `ctl COMMAND --help` is that
command's own, ctl resolves the paths the node opens, `twins detail=true` shows the entries."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from twinnode.cli.ctl import format_twins, resolve_paths
from twinnode.cli.ctl_help import CLIENT_COMMANDS, HELP
from twinnode.cli.main import build_parser, main
from twinnode.node.command_names import COMMANDS


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommands_help_has_an_example():
    for name, sub in subcommands().items():
        assert "example: twinnode " in (sub.epilog or "") or "examples: twinnode " in \
            (sub.epilog or ""), name


def test_every_control_command_has_its_own_help_with_an_example():
    assert set(HELP) == set(COMMANDS) | set(CLIENT_COMMANDS)
    assert all(example.startswith("twinnode ctl ") for _, _, example in HELP.values())


def test_ctl_train_help_is_trains_own(capsys):
    with pytest.raises(SystemExit) as done:
        main(["ctl", "train", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "again=true" in out and "example: twinnode ctl --state state train wait=true" in out
    assert "Commands: status" not in out  # not the generic ctl help
    with pytest.raises(SystemExit):
        main(["ctl", "--help"])
    assert "Commands: status" in capsys.readouterr().out


def test_screening_needs_three_peers_is_said_where_screening_is_asked_for(capsys):
    for cmd in ("screen", "analyze"):
        assert "at least 3 peers" in HELP[cmd][0]
    assert "at least 3 peers" in subcommands()["analyze"].description


def test_ctl_makes_the_paths_the_node_opens_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_paths("analyze", {"test": "heldout.csv", "weight": 1}) == \
        {"test": str(tmp_path / "heldout.csv"), "weight": 1}
    assert resolve_paths("publish", {"release": "out/rel"}) == {"release": str(tmp_path / "out"
                                                                               / "rel")}
    assert resolve_paths("publish", {"release": "/abs"}) == {"release": "/abs"}
    assert resolve_paths("status", {"test": "x"}) == {"test": "x"}


def test_twins_with_detail_lists_each_envelope_without_json():
    text = format_twins({"senders": [{
        "sender": "bob", "count": 2, "watermark": 2, "ranges": [], "status": {"accepted": 2},
        "entries": [{"seq": s, "digest": "ab" * 32, "k": s - 1, "release": "r1",
                     "status": "accepted", "received": 1767225600.0} for s in (1, 2)]}]})
    lines = text.splitlines()
    assert "bob:" in lines and any(line.split()[:4] == ["2", "1", "r1", "accepted"]
                                   for line in lines)
    assert "SEQ" in text and "abababababababab" in text


def test_keygen_writes_where_the_node_config_looks_by_default(tmp_path, monkeypatch, capsys):
    from twinnode.lab.harness import free_ports, to_toml
    from twinnode.node.config import load_config
    from twinnode.trust.identity import Identity

    monkeypatch.chdir(tmp_path)
    assert main(["keygen", "alice"]) == 0
    (tmp_path / "s.toml").write_text('outcome = "y"\n[columns.y]\ntype = "count"\nupper = 5\n')
    (tmp_path / "d.csv").write_text("y\n1\n")
    a, b = free_ports(2)
    (tmp_path / "node.toml").write_text(to_toml(
        {"node": {"name": "alice"}, "data": {"path": "d.csv", "schema": "s.toml"},
         "network": {"pub": f"tcp://127.0.0.1:{a}", "router": f"tcp://127.0.0.1:{b}"}}, []))
    config = load_config(Path("node.toml"))
    assert Identity.load(config.keys_dir, "alice").name == "alice"
