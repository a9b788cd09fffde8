"""`twinnode ctl watch` on a real node process with a real (small) training run: the bar moves
at least every 2 s (finer than the 500-step chunk: the worker reports by time), shows steps,
ELBO and ETA, and the watch exits 0 when the job ends."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import SMALL_SCHEMA, make_small_frame

from twinnode.data import write_table
from twinnode.lab.harness import free_ports, to_toml
from twinnode.schema import Schema
from twinnode.trust.identity import Identity, save_identity

STEPS = 40_000  # epochs / q, run as ONE compiled chunk: every update before the end is a tick
# (4,000 steps took under a second on a quiet machine: too few updates to judge the bar by)
STEP_LINE = re.compile(r"^train \[[#.]+\] +\d+%  step (\d+)/(\d+)  ELBO/row (-?\d+\.\d+)")


def cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "twinnode.cli", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture
def node(tmp_path: Path):
    """alice alone, as `twinnode run` in its own process (training only when asked)."""
    schema = Schema.from_toml(SMALL_SCHEMA)
    (tmp_path / "schema.toml").write_text(SMALL_SCHEMA)
    write_table(make_small_frame(schema, n=2000, seed=3), tmp_path / "alice.csv", schema)
    save_identity(Identity.generate("alice"), tmp_path / "keys")
    pub, router = free_ports(2)
    doc = {"node": {"name": "alice"},
           "data": {"path": "alice.csv", "schema": "schema.toml"},
           "privacy": {"epochs": STEPS * 0.1, "q": 0.1},
           "generator": {"components": 4, "chunk": STEPS},
           "twins": {"k": 2}, "network": {"pub": f"tcp://127.0.0.1:{pub}",
                                         "router": f"tcp://127.0.0.1:{router}"}}
    (tmp_path / "node.toml").write_text(to_toml(doc, []))
    with open(tmp_path / "node.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "twinnode.cli", "run", "--config",
                                 "node.toml"], cwd=tmp_path, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while cli("ctl", "--state", "state", "status", cwd=tmp_path).returncode != 0:
        assert proc.poll() is None, (tmp_path / "node.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the node did not answer"
        time.sleep(0.3)
    yield tmp_path, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def read_lines(stream, lines: list[tuple[float, str]]) -> None:
    for line in stream:
        lines.append((time.monotonic(), line.rstrip("\n")))


def test_watch_follows_training_live_at_2s_granularity_and_exits_0(node):
    site, proc = node
    started = cli("ctl", "--state", "state", "train", cwd=site)
    assert started.returncode == 0 and "train started" in started.stdout, started.stderr
    # Execute: watch it (stderr is a pipe, so one line per update), timing each line
    watch = subprocess.Popen([sys.executable, "-m", "twinnode.cli", "ctl", "--state", "state",
                              "watch"], cwd=site, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=read_lines, args=(watch.stderr, lines), daemon=True)
    reader.start()
    with watch:  # closes its pipes
        out = watch.stdout.read()
        code = watch.wait(timeout=600)
        reader.join(timeout=10)
    # Assert: exit 0 and the job done, as the node says too
    assert code == 0, (out, lines)
    assert re.fullmatch(r"train done in \d+:\d\d\n", out), out
    status = json.loads(cli("ctl", "--state", "state", "--json", "status", cwd=site).stdout)
    assert status["job"]["state"] == "done", status["job"]
    # the bar showed steps, ELBO and ETA, and moved inside the one chunk (the time-based ticks)
    steps = [(when, int(m[1])) for when, text in lines if (m := STEP_LINE.match(text))]
    assert len(steps) >= 4 and steps[-1][1] == STEPS, lines
    print("\n".join(f"{when - lines[0][0]:6.2f} {text}" for when, text in lines))
    assert len([s for _, s in steps if 0 < s < STEPS]) >= 2, steps
    assert all(b[1] > a[1] for a, b in zip(steps, steps[1:])), steps  # always forward
    assert any("ETA " in text for _, text in lines), lines
    # every update during training came about 2 s after the previous one at most: the watch
    # promises 2 s; 1 s more is scheduling slack on a loaded 2-core machine (2.10 s was seen
    # under load), while updates at chunk ends alone would leave one gap as long as the run
    gaps = [b[0] - a[0] for a, b in zip(steps, steps[1:])]
    assert max(gaps) <= 3.0, (gaps, lines)
    assert proc.poll() is None  # the node goes on


def test_watch_with_no_job_running_names_the_last_one_and_exits_0(node):
    site, _ = node
    res = cli("ctl", "--state", "state", "watch", cwd=site)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "no job running (last: none since the node started)"
