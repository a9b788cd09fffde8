"""No module over 450 lines, no function over 60: the floor plan's size rule, checked.

    python scripts/check_sizes.py [ROOT]      (default: the twinnode package beside this script)

A function's size counts its lines from `def` to its last statement, docstring included; a
module's, every line of the file. An exception is named in EXCEPTIONS with the reason it is
kept; an exception that no longer needs its entry is reported too, so the list cannot go stale.
Exit 0 when everything fits, 1 otherwise (each offender on a line).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60

# "path relative to ROOT" or "path::qualified.function" -> why it is kept larger.
EXCEPTIONS: dict[str, str] = {}


def function_sizes(tree: ast.AST) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function and method in a module's tree."""
    out: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                out.append((name, (child.end_lineno or child.lineno) - child.lineno + 1))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
    visit(tree, "")
    return out


def offenders(root: Path) -> list[str]:
    """One line per module or function over its limit that EXCEPTIONS does not name, and per
    stale exception."""
    found: list[str] = []
    used: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            if rel in EXCEPTIONS:
                used.add(rel)
            else:
                found.append(f"{rel}: {lines} lines (module limit {MAX_MODULE_LINES})")
        for name, size in function_sizes(ast.parse(text, filename=str(path))):
            key = f"{rel}::{name}"
            if size <= MAX_FUNCTION_LINES:
                continue
            if key in EXCEPTIONS:
                used.add(key)
            else:
                found.append(f"{key}: {size} lines (function limit {MAX_FUNCTION_LINES})")
    found += [f"{key}: listed in EXCEPTIONS but within its limit (or gone)"
              for key in sorted(set(EXCEPTIONS) - used)]
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "twinnode"
    found = offenders(root)
    for line in found:
        print(line)
    print(f"{len(found)} size offender(s) under {root}" if found
          else f"sizes ok: modules <= {MAX_MODULE_LINES} lines, functions <= "
               f"{MAX_FUNCTION_LINES} ({len(EXCEPTIONS)} named exception(s))")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
