"""docs/deploy/twinnode@.service agrees with the code: the command it runs, the exit codes it
will not restart on, the state directory the node's config must name."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from twinnode.cli.main import build_parser
from twinnode.errors import ConfigError, DataError, KeyFileError, SchemaError, TransportError

UNIT = Path(__file__).parent.parent / "docs" / "deploy" / "twinnode@.service"


def settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_the_unit_runs_a_command_the_cli_has_and_keeps_the_state_in_its_state_directory():
    s = settings()
    argv = s["ExecStart"][0].split()
    assert argv[0].endswith("/twinnode") and argv[1] == "run"
    args = build_parser().parse_args(argv[1:])  # the options exist and parse
    assert str(args.config) == "/etc/twinnode/%i/node.toml"
    assert s["StateDirectory"] == ["twinnode/%i"] and s["StateDirectoryMode"] == ["0700"]
    assert s["Environment"][0] == "TWINNODE_STATE=/var/lib/twinnode/%i"  # ctl's default


def test_the_unit_restarts_crashes_but_not_errors_a_restart_cannot_fix():
    s = settings()
    assert s["Restart"] == ["on-failure"]
    prevented = {int(c) for c in s["RestartPreventExitStatus"][0].split()}
    assert prevented == {e.exit_code for e in (ConfigError, SchemaError, DataError,
                                                KeyFileError)}
    assert TransportError.exit_code not in prevented  # a busy port may free itself
    assert "MemoryDenyWriteExecute" not in s  # JAX's compiler needs W+X pages
    assert all("@resources" not in f for f in s["SystemCallFilter"] if f.startswith("~"))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_reads_the_unit_without_complaint_beyond_the_missing_binary(tmp_path):
    unit = tmp_path / "twinnode@alice.service"
    unit.write_text(UNIT.read_text())
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert all("/opt/twinnode/bin/twinnode" in line for line in lines), lines
