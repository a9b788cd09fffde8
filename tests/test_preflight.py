"""Fail fast: `twinnode run` refuses a bad schema or CSV before binding anything, and
`twinnode check` finds the same offline, plus keys, peers, state and ports."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMALL_SCHEMA

from twinnode.cli.main import main
from twinnode.errors import SchemaError
from twinnode.lab.harness import free_ports, to_toml
from twinnode.schema import Schema
from twinnode.trust.identity import Identity, format_sign_key, save_identity


@pytest.fixture
def site(tmp_path: Path, small_csv: Path) -> Path:
    """alice's config: small schema and CSV, her keys, two pinned peers, free ports."""
    (tmp_path / "schema.toml").write_text(SMALL_SCHEMA)
    alice = Identity.generate("alice")
    save_identity(alice, tmp_path / "keys")
    ports = free_ports(6)
    peers = [Identity.generate(n).peer(f"tcp://127.0.0.1:{ports[2 + 2 * i]}",
                                       f"tcp://127.0.0.1:{ports[3 + 2 * i]}")
             for i, n in enumerate(("bob", "carol"))]
    doc = {"node": {"name": "alice"}, "data": {"path": str(small_csv), "schema": "schema.toml"},
           "network": {"pub": f"tcp://127.0.0.1:{ports[0]}",
                       "router": f"tcp://127.0.0.1:{ports[1]}"}}
    (tmp_path / "node.toml").write_text(to_toml(doc, peers))
    return tmp_path


def corrupt(csv: Path, line: int = 5) -> None:
    """Put a word where the first column's number is, on `line` (1 = header)."""
    lines = csv.read_text().splitlines()
    first, _, rest = lines[line - 1].partition(",")
    lines[line - 1] = "notanumber," + rest
    csv.write_text("\n".join(lines) + "\n")


def test_node_on_a_bad_csv_exits_with_the_data_error_before_binding_or_writing(site, small_csv):
    corrupt(small_csv)
    pub = int((site / "node.toml").read_text().split("127.0.0.1:")[1].split('"')[0])
    done = subprocess.run([sys.executable, "-m", "twinnode.cli", "run", "--config", "node.toml"],
                          cwd=site, capture_output=True, text=True, timeout=60)
    assert done.returncode == 5, done.stderr
    assert f"{small_csv}: line 5, column" in done.stderr and "notanumber" in done.stderr
    assert not (site / "state").exists()  # no store, no ledger, no control socket
    assert "ledger" not in done.stderr and "node.started" not in done.stderr
    with socket.socket() as sock:  # and the port was never bound (it is free now anyway)
        sock.bind(("127.0.0.1", pub))


def test_a_schema_without_outcome_fails_at_load_naming_the_file(tmp_path, capsys):
    path = tmp_path / "noout.toml"
    path.write_text("\n".join(line for line in SMALL_SCHEMA.splitlines()
                              if not line.startswith("outcome")))
    with pytest.raises(SchemaError, match=f"{path}: declares no outcome.*count column"):
        Schema.load(path)
    assert Schema.load(path, require_outcome=False).outcome is None


def test_train_on_a_schema_without_outcome_exits_4_and_says_nothing_of_a_ledger(
        tmp_path, small_csv, capsys):
    path = tmp_path / "noout.toml"
    path.write_text("\n".join(line for line in SMALL_SCHEMA.splitlines()
                              if not line.startswith("outcome")))
    code = main(["train", "--data", str(small_csv), "--schema", str(path),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 4 and f"{path}: declares no outcome" in err
    assert "ledger" not in err and not (tmp_path / "ledger.json").exists()


def test_check_passes_a_good_site_and_prints_every_fingerprint(site, capsys):
    code = main(["check", "--config", str(site / "node.toml")])
    out = capsys.readouterr().out
    assert code == 0, out
    for name in ("schema", "data", "keys", "peers", "state", "ports"):
        assert f"ok    {name}" in out
    assert "rows fit the schema" in out and "bob: signing" in out and "carol: signing" in out
    assert "needs at least 3 peers" in out  # two peers: screening cannot run
    assert not (site / "state").exists()  # the check wrote nothing


def test_check_reports_every_failure_and_exits_with_the_first_ones_code(site, small_csv, capsys):
    corrupt(small_csv, line=3)
    (site / "keys" / "alice.sign_secret").chmod(0o644)
    text = (site / "node.toml").read_text()
    router = int(text.split('router = "tcp://127.0.0.1:')[1].split('"')[0])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", router))
        busy.listen()
        code = main(["check", "--config", str(site / "node.toml")])
    out = capsys.readouterr().out
    assert code == 5  # data comes first
    assert f"FAIL  data       {small_csv}: line 3" in out
    assert "FAIL  keys" in out and "alice.sign_secret" in out
    assert f"FAIL  ports      tcp://127.0.0.1:{router}: cannot bind here" in out
    assert "ok    schema" in out and "ok    peers" in out and "3 check(s) failed" in out


def test_check_refuses_a_peer_pinned_with_our_own_key(site, capsys):
    alice = Identity.load(site / "keys", "alice")
    doc = (site / "node.toml").read_text()
    bob_sign = doc.split('sign_key = "')[1].split('"')[0]  # the first [[peers]] entry: bob
    (site / "node.toml").write_text(doc.replace(bob_sign, format_sign_key(alice.sign_public)))
    code = main(["check", "--config", str(site / "node.toml")])
    out = capsys.readouterr().out
    assert code == 9 and "peer 'bob' is pinned with this node's own key" in out


def test_check_on_a_bad_config_names_the_key_and_exits_3(site, capsys):
    text = (site / "node.toml").read_text()
    (site / "node.toml").write_text(text.replace('name = "alice"', 'name = "alice"\nnmae = 1', 1))
    code = main(["check", "--config", str(site / "node.toml")])
    assert code == 3 and "[node] nmae: unknown key" in capsys.readouterr().err
