"""The analysis summary table (statsmodels style) on the bundled example: header, a row per
term with rate ratio, interval, p, local interval and agreement; `--csv` round-trips; the
p-value agrees with the interval; `ctl analyze`'s formatter prints the same table."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from twinnode.analysis.summary import p_value
from twinnode.cli.ctl import format_analyze
from twinnode.cli.main import main
from twinnode.cli.summary import COLUMNS, render
from twinnode.data import read_table
from twinnode.lab.simtwins import as_release, posterior_twins
from twinnode.releasedir import save_release
from twinnode.schema import Schema


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    """`twinnode example randhie` in 3 parties; parties 1 and 2 publish (simulated) twins."""
    d = tmp_path_factory.mktemp("randhie")
    assert main(["example", "randhie", "--out", str(d), "--parties", "3"]) == 0
    schema = Schema.load(d / "schema.toml")
    for i in (1, 2):
        frame = read_table(d / f"party-{i}.csv", schema)
        twins = posterior_twins(schema, frame, sender=f"party-{i}", k=4, seed=i)
        save_release(as_release(twins), d / f"release-{i}", schema)
    return d


def analyze(d: Path, *extra: str) -> list[str]:
    return ["analyze", "--schema", str(d / "schema.toml"), "--local", str(d / "party-0.csv"),
            "--twins", str(d / "release-1"), str(d / "release-2"), "--weight", "1", *extra]


def printed_table(out: str) -> list[list[str]]:
    """The table's rows as printed: from the 'term' header to the first blank line."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("term "))
    body = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        body.append(line.split())
    return body


def test_analyze_prints_the_summary_table_and_the_csv_round_trips(example, capsys, tmp_path):
    # Execute
    assert main(analyze(example, "--csv", str(tmp_path / "summary.csv"))) == 0
    out = capsys.readouterr().out
    assert main(analyze(example, "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    # Assert: the header names rows, peers, K, λ and verdict, the rule
    assert "local rows + twins of 2 peer(s) (party-1, party-2), K = 4" in out
    assert "rows per fit: local " in out and "party-1 " in out
    assert "twin weight λ = 1 (fixed); does joining help? " in out
    assert "rule: mixed, t intervals at 95%" in out
    header = next(line for line in out.splitlines() if line.startswith("term "))
    assert header.split() == ["term", "coef", "SE", "exp(coef)", "p", "[0.025", "0.975]",
                              "local", "[0.025", "0.975]", "agree-p", "agree"]
    # the CSV holds exactly the printed cells, and its numbers are the report's
    with open(tmp_path / "summary.csv", newline="") as f:
        back = list(csv.reader(f))
    assert back[0] == [name for name, _, _ in COLUMNS]
    table = printed_table(out)
    assert back[1:] == table
    terms = report["summary"]["terms"]
    assert [row[0] for row in table] == list(report["coefficients"]) == [t["term"] for t in terms]
    for row, t in zip(back[1:], terms):
        values = dict(zip(back[0], row))
        assert float(values["estimate"]) == pytest.approx(t["estimate"], abs=5e-5)
        assert float(values["rate_ratio"]) == pytest.approx(math.exp(t["estimate"]), abs=5e-5)
        assert float(values["lower"]) == pytest.approx(t["lower"], abs=5e-5)
        assert float(values["local_upper"]) == pytest.approx(t["local_upper"], abs=5e-5)
        assert float(values["p"]) == pytest.approx(t["p"], rel=5e-3, abs=1e-300)
        assert values["agrees"] in ("yes", "NO")
        # p < 0.05 exactly when the 95% interval leaves out 0
        assert (t["p"] < 0.05) == (t["lower"] > 0 or t["upper"] < 0), t


def test_ctl_analyze_prints_the_same_table_as_the_cli(example, capsys):
    assert main(analyze(example, "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    reply = {"message": "analysis over 2 peer(s)", "summary": report["summary"],
             "disagreeing": report["agreement"]["disagreeing"]}
    text = format_analyze(reply)
    assert render(report["summary"]) in text
    assert text.startswith("analysis over 2 peer(s)")


def test_p_value_uses_the_intervals_reference_distribution():
    assert p_value(1.96, 1.0, None) == pytest.approx(0.05, abs=1e-3)  # normal (df infinite)
    assert p_value(1.96, 1.0, math.inf) == p_value(1.96, 1.0, None)
    assert p_value(1.96, 1.0, 5.0) == pytest.approx(0.1073, abs=1e-3)  # t with 5 df
    assert p_value(None, 1.0, 5.0) is None and p_value(1.0, 0.0, 5.0) is None
