"""The floor plan is checked by tools, and the tools catch a break: import contracts and sizes."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter with the project's contracts on the `twinnode` package under `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo",
                           str(tree / "pyproject.toml")], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300)


def copy_tree(dest: Path) -> Path:
    shutil.copytree(ROOT / "twinnode", dest / "twinnode",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_the_import_contracts_hold():
    res = lint_imports(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert " 0 broken" in res.stdout, res.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("wire/__init__.py", "import zmq", "The bytes layer knows no network"),
    ("analysis/__init__.py", "import twinnode.store", "The analysis is pure"),
    ("trust/__init__.py", "import twinnode.node", "Wings are layered"),
    ("schema.py", "import twinnode.wire", "The base modules import no wing"),
])
def test_a_planted_violation_breaks_its_contract(tmp_path, module, line, contract):
    tree = copy_tree(tmp_path)
    target = tree / "twinnode" / module
    target.write_text(target.read_text() + f"\n{line}  # planted by the test\n")
    res = lint_imports(tree)
    assert res.returncode != 0
    broken = res.stdout.split("Broken contracts")[-1]
    assert contract in broken, res.stdout


def test_a_planted_cycle_is_caught(tmp_path):
    tree = copy_tree(tmp_path)
    (tree / "twinnode" / "analysis" / "planted_a.py").write_text(
        "from twinnode.analysis import planted_b\n")
    (tree / "twinnode" / "analysis" / "planted_b.py").write_text(
        "def f():\n    from twinnode.analysis import planted_a  # function-local counts too\n")
    res = lint_imports(tree)
    assert res.returncode != 0
    assert "No import cycles" in res.stdout.split("Broken contracts")[-1], res.stdout


def load_check_sizes():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import check_sizes
    finally:
        sys.path.pop(0)
    return check_sizes


def test_no_module_or_function_is_over_its_size_limit():
    assert load_check_sizes().offenders(ROOT / "twinnode") == []


def test_the_size_check_names_a_long_function_and_a_long_module(tmp_path):
    check_sizes = load_check_sizes()
    body = "\n".join(f"    x{i} = {i}" for i in range(check_sizes.MAX_FUNCTION_LINES))
    (tmp_path / "long.py").write_text(f"def long():\n{body}\n")
    (tmp_path / "big.py").write_text("x = 1\n" * (check_sizes.MAX_MODULE_LINES + 1))
    found = check_sizes.offenders(tmp_path)
    assert any(line.startswith("long.py::long:") for line in found), found
    assert any(line.startswith("big.py:") for line in found), found
