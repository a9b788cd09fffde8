"""`twinnode demo`, small: real node processes end to end, and the report it leaves."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    res = subprocess.run(
        [sys.executable, "-m", "twinnode.cli", "demo", "--parties", "3", "--epochs", "3",
         "--twins", "3", "--fraction", "0.1,0.5,1", "--out", str(out)],
        capture_output=True, text=True, timeout=900)
    return out, res


def test_demo_prints_the_table_and_every_node_got_every_twin(demo):
    out, res = demo
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "3 nodes up on 127.0.0.1 and connected" in res.stdout
    assert "every node holds all 9 twins" in res.stdout
    assert "gap closed" in res.stdout and "results.json" in res.stdout
    assert "moved" in res.stdout and "wholly outside the party's local-only" in res.stdout
    results = json.loads((out / "results.json").read_text())
    assert {"settings", "versions", "parties", "oracle"} <= set(results)
    assert results["settings"]["parties"] == 3 and results["versions"]["d3p"] == "0.2.0"
    for p in results["parties"]:
        for key in ("name", "rows", "ll_local", "ll_combined", "ll_oracle", "twins_received",
                    "twins_expected", "flagged_peers", "moved_outside_local", "disagreeing"):
            assert key in p
        assert p["twins_received"] == p["twins_expected"] == 6
        # the adaptive weight guards the headline (plug-in) score
        assert p["ll_combined_plugin"] >= p["ll_local_plugin"] - 0.05
        assert len(p["ll_combined_samples"]) == 100 and len(p["join_curve"]) == 3
    assert [p["rows"] for p in results["parties"]] == sorted(p["rows"] for p in
                                                               results["parties"])


def test_demo_figures_are_png_files(demo):
    out, res = demo
    for name in ("fig1_loglik.png", "fig2_join_curve.png", "fig3_coefficients.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_refuses_to_overwrite_a_report(demo):
    out, res = demo
    again = subprocess.run([sys.executable, "-m", "twinnode.cli", "demo", "--out", str(out)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 3 and "already holds a demo" in again.stderr
