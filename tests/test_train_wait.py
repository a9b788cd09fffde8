"""`ctl train wait=true` with a real node and a real training run: a job that outlives ctl's
timeout is reported as running (exit 0, progress shown), never as a failure; a second train
of the same data needs again=true and says what it will spend."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from conftest import SMALL_SCHEMA
from node_fixtures import node_factory  # noqa: F401  (a fixture)

from twinnode.cli.main import main as cli_main
from twinnode.errors import ControlError
from twinnode.lab.harness import free_ports, to_toml
from twinnode.node.config import NodeConfig, load_config
from twinnode.node.control_client import request, socket_path
from twinnode.trust.identity import Identity, save_identity

WAIT = 10.0


@pytest.fixture
def config(tmp_path: Path, small_csv: Path) -> NodeConfig:
    """alice alone, with a short real training run (400 steps in chunks of 20)."""
    (tmp_path / "schema.toml").write_text(SMALL_SCHEMA)
    save_identity(Identity.generate("alice"), tmp_path / "keys")
    ports = free_ports(2)
    doc = {"node": {"name": "alice"}, "data": {"path": str(small_csv), "schema": "schema.toml"},
           "privacy": {"epochs": 20.0, "q": 0.05}, "generator": {"components": 2, "chunk": 20},
           "twins": {"k": 2},
           "network": {"pub": f"tcp://127.0.0.1:{ports[0]}",
                       "router": f"tcp://127.0.0.1:{ports[1]}"}}
    (tmp_path / "node.toml").write_text(to_toml(doc, []))
    return load_config(tmp_path / "node.toml")


def charged(config: NodeConfig) -> list[dict]:
    entries = json.loads((config.state_dir / "ledger.json").read_text())["entries"]
    return [e for e in entries if e["epsilon"] > 0]


def test_train_wait_past_the_timeout_says_it_runs_exits_0_and_charges_once(
        config, node_factory, capsys):
    async def main() -> tuple[int, str, str, dict, str, str]:
        node = node_factory(config)
        await node.start()
        path = socket_path(config.state_dir)
        # Execute: ctl waits 2 s for a run that takes longer (worker start, JAX, 400 steps)
        code = await asyncio.to_thread(cli_main, ["ctl", "--socket", str(path), "--timeout",
                                                  "2", "train", "wait=true"])
        out, err = capsys.readouterr()
        while (job := (await request(path, "status", {}, WAIT))["job"])["state"] == "running":
            await asyncio.sleep(0.2)
        # a second train of the same data is refused, naming again=true and the cost
        with pytest.raises(ControlError) as refused:
            await request(path, "train", {}, WAIT)
        again = await request(path, "train", {"again": True, "publish": False}, WAIT)
        return code, out, err, job, str(refused.value), again["message"]

    code, out, err, job, refused, again = node_factory.run(main(), 24 * WAIT)  # a loaded CI box
    # Assert: exit 0, said to be running, how to follow it, progress shown meanwhile
    assert code == 0, (out, err)
    assert "train is still running after 2 s" in out and "nothing failed" in out
    assert "ctl --socket" in out and "watch" in out and "status" in out
    assert err.startswith("train ") and "train: " in err  # the bar's line(s) while it waited
    # the job went on to the end, and the ledger holds exactly one charge
    assert job["state"] == "done", job
    assert len(charged(config)) == 1 and charged(config)[0]["status"] == "trained"
    assert "trained on already" in refused and "again=true" in refused
    assert "spend epsilon=1 (total 2, no cap)" in refused
    assert again == "train started: it will spend epsilon=1 (total 2, no cap)"


def test_wait_on_a_job_that_fails_still_reports_the_failure(config, node_factory, capsys):
    config.data.path.write_text("age,smoker\n1,2\n")  # the CSV no longer fits the schema

    async def main() -> int:
        node = node_factory(config)
        await node.start()
        return await asyncio.to_thread(cli_main, ["ctl", "--socket",
                                                  str(socket_path(config.state_dir)),
                                                  "train", "wait=true"])

    code = node_factory.run(main(), 6 * WAIT)
    err = capsys.readouterr().err
    assert code == 13 and str(config.data.path) in err  # refused before anything was charged
    assert "still running" not in err
    assert not (config.state_dir / "ledger.json").exists()


def test_the_nodes_data_fingerprint_is_the_one_the_ledger_keeps(small_schema, small_frame):
    from twinnode.data import data_fingerprint
    from twinnode.generator import release

    assert release.data_fingerprint is data_fingerprint  # one function: the ledger's is the node's
    assert data_fingerprint(small_frame.iloc[1:]) != data_fingerprint(small_frame)
