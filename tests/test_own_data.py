"""A user's own federation, exactly as README.md's "Your own data" section tells it.

Three sites with their own small CSV (not randhie) and a shared schema: each runs
`twinnode keygen`, writes a node.toml pinning the others with the entries keygen printed,
starts `twinnode run`, and uses `twinnode ctl` to watch and analyse. Real processes, real
training (tiny), real sockets on 127.0.0.1.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SMALL_SCHEMA, make_small_frame

from twinnode.data import write_table
from twinnode.lab.harness import free_ports
from twinnode.schema import Schema

SITES = ("north", "south", "east")
K = 3


def cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "twinnode.cli", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout)


def ctl_json(site: Path, *args: str) -> dict:
    res = cli("ctl", "--state", "state", "--json", *args, cwd=site, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.fixture
def federation(tmp_path: Path):
    schema = Schema.from_toml(SMALL_SCHEMA)
    ports = iter(free_ports(2 * len(SITES)))
    entries, procs = {}, {}
    for i, name in enumerate(SITES):
        site = tmp_path / name
        site.mkdir()
        (site / "schema.toml").write_text(SMALL_SCHEMA)
        write_table(make_small_frame(schema, n=300, seed=i), site / f"{name}.csv", schema)
        # step 2: keys; keygen prints the [[peers]] entry the others pin
        res = cli("keygen", name, "--dir", "keys", cwd=site)
        assert res.returncode == 0, res.stderr
        pub, router = f"tcp://127.0.0.1:{next(ports)}", f"tcp://127.0.0.1:{next(ports)}"
        entry = res.stdout[res.stdout.index("[[peers]]"):]
        entry = re.sub(r'pub_address = ".*"', f'pub_address = "{pub}"', entry)
        entries[name] = (re.sub(r'router_address = ".*"', f'router_address = "{router}"',
                                entry), pub, router)
    for name in SITES:
        site = tmp_path / name
        _, pub, router = entries[name]
        # step 3: the node's config, pinning every other site
        config = "\n".join([
            "[node]", f'name = "{name}"', "",
            "[data]", f'path = "{name}.csv"', 'schema = "schema.toml"', "",
            "[network]", f'pub = "{pub}"', f'router = "{router}"', "heartbeat_interval = 0.5",
            "", "[privacy]", "epochs = 5", "q = 0.1", "", "[twins]", f"k = {K}", "",
            "[training]", "auto = true", "",
            *[entries[other][0] for other in SITES if other != name]])
        (site / "node.toml").write_text(config)
        # step 4: run it
        # the child holds its own copy of the descriptor; ours is closed at once
        with open(site / "node.log", "wb") as log:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "twinnode.cli", "run", "--config", "node.toml"],
                cwd=site, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    yield tmp_path, procs
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_three_sites_follow_the_readme_and_each_gets_a_combined_analysis(federation):
    root, procs = federation
    # step 5: watch until every site holds every site's twins
    deadline = time.monotonic() + 400
    while True:
        held = {}
        for name in SITES:
            res = cli("ctl", "--state", "state", "--json", "status", cwd=root / name)
            held[name] = json.loads(res.stdout)["twins"] if res.returncode == 0 else {}
        if all(all(h.get(s, 0) == K for s in SITES) for h in held.values()):
            break
        for name, p in procs.items():
            assert p.poll() is None, (root / name / "node.log").read_text()[-3000:]
        assert time.monotonic() < deadline, held
        time.sleep(1)
    # ...then analyse, as the README shows
    result = ctl_json(root / "north", "analyze", "wait=true")
    assert result["peers"] == ["east", "south"]
    assert {"smoker", "age", "Intercept"} <= set(result["coefficients"])
    assert result["verdict"].split(":")[0] in ("yes", "no", "unclear")
    human = cli("ctl", "--state", "state", "budget", cwd=root / "south")
    assert human.returncode == 0 and "spent" in human.stdout
    for name in SITES:
        assert cli("ctl", "--state", "state", "shutdown", cwd=root / name).returncode == 0
    for p in procs.values():
        assert p.wait(timeout=60) == 0
