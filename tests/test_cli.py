"""The command line as a user meets it: clear errors, the right exit codes, no tracebacks."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMALL_SCHEMA

from twinnode import errors
from twinnode.cli.main import main
from twinnode.generator.privacy import Ledger


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "twinnode.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    schema = tmp_path / "schema.toml"
    schema.write_text(SMALL_SCHEMA)
    good = "visits,age,smoker,region\n" + "\n".join(
        f"{i % 7},{20 + i % 60},{i % 2},{['north', 'south', 'east'][i % 3]}" for i in range(50))
    paths = {"schema": schema, "out": tmp_path / "out"}
    for name, text in {
        "good": good,
        "outside": good + "\n3,95.5,1,north",
        "wrongtype": good + "\n3,forty,1,north",
        "missing": "visits,age,smoker\n1,30,0\n",
        "empty": "",
    }.items():
        paths[name] = tmp_path / f"{name}.csv"
        paths[name].write_text(text + ("\n" if text else ""))
    return paths


@pytest.mark.parametrize("data, code, message", [
    ("outside", 5, "line 52, column 'age': value '95.5' is not a finite number in [18.0, 90.0]"),
    ("wrongtype", 5, "line 52, column 'age': value 'forty'"),
    ("missing", 5, "missing column(s): region"),
    ("empty", 5, "file is empty"),
])
def test_train_with_bad_data_exits_with_its_code_and_no_traceback(files, data, code, message):
    res = run_cli("train", "--data", str(files[data]), "--schema", str(files["schema"]),
                  "--out", str(files["out"]))
    assert res.returncode == code, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not files["out"].exists()


def test_schema_with_unknown_type_exits_4(files, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(SMALL_SCHEMA.replace('type = "binary"', 'type = "boolean"'))
    res = run_cli("train", "--data", str(files["good"]), "--schema", str(bad),
                  "--out", str(files["out"]))
    assert res.returncode == 4 and "unknown type 'boolean'" in res.stderr
    assert "Traceback" not in res.stderr


def test_train_past_the_budget_cap_exits_7_and_spends_nothing(files, tmp_path, capsys):
    state = tmp_path / "state"
    Ledger(state, cap_epsilon=1.0).charge(0.8, 1e-4)
    before = (state / "ledger.json").read_bytes()
    code = main(["train", "--data", str(files["good"]), "--schema", str(files["schema"]),
                 "--out", str(files["out"]), "--state", str(state), "--epsilon", "0.5"])
    assert code == 7
    assert "over the cap of 1" in capsys.readouterr().err
    assert (state / "ledger.json").read_bytes() == before and not files["out"].exists()


def test_bad_cpus_and_privacy_options_are_named(files, capsys):
    base = ["train", "--data", str(files["good"]), "--schema", str(files["schema"]),
            "--out", str(files["out"])]
    assert main(base + ["--cpus", "zero"]) == 3
    assert "--cpus must be a comma list" in capsys.readouterr().err
    assert main(base + ["--epsilon", "-1"]) == 6
    assert "epsilon must be a positive" in capsys.readouterr().err
    assert main(base + ["--q", "2"]) == 6
    assert "q must be in (0, 1]" in capsys.readouterr().err


def test_no_command_is_a_usage_error():
    res = run_cli()
    assert res.returncode == 2 and "usage: twinnode" in res.stderr


def test_every_error_class_has_a_documented_exit_code_and_is_drawn_under_its_base():
    # Prepare: the tree in errors.py's docstring, as {class drawn: class it hangs under}
    drawn: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        m = re.match(r"[ │├└─]*(\w+)", line)
        if m is None or not isinstance(getattr(errors, m.group(1), None), type):
            continue
        while stack and stack[-1][0] >= m.start(1):
            stack.pop()
        drawn[m.group(1)] = stack[-1][1] if stack else "Exception"
        stack.append((m.start(1), m.group(1)))
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.TwinnodeError)]
    assert len(classes) > 10
    for cls in classes:
        assert cls.exit_code in errors.EXIT_CODES, cls
        assert drawn.get(cls.__name__) == cls.__base__.__name__, cls
