"""The shared public schema: column types, levels and bounds, a stable hash, the array layout.

Every party holds the same schema file. Levels and bounds come from it, never from private
data: anything learned from the data outside the accountant (its levels, its mean) leaks.
Columns are kept in canonical order (sorted by name) so the same schema text in any column
order gives the same hash and the same array layout: one numeric array per column, named by
it, categorical values as integer level codes (`check_arrays` checks it).

This module needs numpy only, so the bytes layer (`wire`) can use it; data frames, the
validation of raw cells and the CSV form are `twinnode.data`'s.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from twinnode.errors import DataError, SchemaError

COLUMN_TYPES = ("binary", "categorical", "count", "continuous")
SCHEMA_FORMAT = "twinnode-schema/1"
MAX_LEVELS = 1000
MAX_COUNT_BOUND = 2**31 - 1
MAX_COLUMNS = 1000
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")


@dataclass(frozen=True)
class Column:
    """One column: its name, type and the public facts the type needs."""

    name: str
    type: str
    levels: tuple[str, ...] = ()
    lower: float | None = None
    upper: float | None = None
    description: str = field(default="", compare=False)

    @property
    def cardinality(self) -> int:
        """Number of distinct values for discrete columns (count: 0..upper)."""
        if self.type == "binary":
            return 2
        if self.type == "categorical":
            return len(self.levels)
        if self.type == "count":
            return int(self.bounds[1]) + 1
        raise ValueError(f"column {self.name!r} is continuous")

    @property
    def bounds(self) -> tuple[float, float]:
        """The public bounds of a count (0, upper) or continuous (lower, upper) column."""
        if self.upper is None:
            raise ValueError(f"column {self.name!r} is {self.type}: it has no bounds")
        return (0 if self.lower is None else self.lower), self.upper

    def canonical(self) -> dict[str, Any]:
        """The hashed description: every fact that changes what a value means."""
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.type == "categorical":
            out["levels"] = list(self.levels)
        elif self.type == "count":
            out["upper"] = int(self.bounds[1])
        elif self.type == "continuous":
            out["lower"] = repr(float(self.bounds[0]))
            out["upper"] = repr(float(self.bounds[1]))
        return out


@dataclass(frozen=True)
class Schema:
    """A validated schema; `columns` are in canonical (name-sorted) order."""

    columns: tuple[Column, ...]
    outcome: str | None = None
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        if names != sorted(names):
            object.__setattr__(self, "columns", tuple(sorted(self.columns, key=lambda c: c.name)))

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def covariates(self) -> tuple[Column, ...]:
        """Every column except the outcome, in canonical order."""
        return tuple(c for c in self.columns if c.name != self.outcome)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise SchemaError(f"schema has no column {name!r}")

    def outcome_column(self) -> Column:
        if self.outcome is None:
            raise SchemaError("schema declares no outcome (add: outcome = \"<column>\")")
        return self.column(self.outcome)

    def canonical_json(self) -> str:
        doc = {
            "format": SCHEMA_FORMAT,
            "outcome": self.outcome,
            "columns": [c.canonical() for c in self.columns],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @cached_property
    def hash(self) -> str:
        """Hex SHA-256 of the canonical form; travels with every twin (computed once: every
        twin sent and received compares it)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @property
    def short_hash(self) -> str:
        return self.hash[:12]

    # ------------------------------------------------------------------ files
    @classmethod
    def load(cls, path: str | Path, require_outcome: bool = True) -> "Schema":
        """Read and validate a schema TOML file. A file must name its outcome (the generator
        and the analysis both model it), so a schema without one fails here, naming the file,
        not later inside a training run."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SchemaError(f"{path}: schema file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SchemaError(f"{path}: cannot read schema file: {exc}") from None
        schema = cls.from_toml(text, source=str(path))
        if require_outcome and schema.outcome is None:
            count = [c.name for c in schema.columns if c.type == "count"]
            raise SchemaError(f"{path}: declares no outcome; add a top-level line "
                              f"outcome = \"<column>\" naming a count column"
                              + (f" (here: {', '.join(count)})" if count else
                                 " (this schema has none)"))
        return schema

    @classmethod
    def from_toml(cls, text: str, source: str = "<schema>") -> "Schema":
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SchemaError(f"{source}: not valid TOML: {exc}") from None
        return cls.from_dict(doc, source)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], source: str = "<schema>") -> "Schema":
        unknown = set(doc) - {"name", "outcome", "columns", "description"}
        if unknown:
            raise SchemaError(f"{source}: unknown top-level key(s): {', '.join(sorted(unknown))}")
        cols = doc.get("columns")
        if not isinstance(cols, Mapping) or not cols:
            raise SchemaError(f"{source}: needs a [columns.<name>] table for each column")
        if len(cols) > MAX_COLUMNS:
            raise SchemaError(f"{source}: {len(cols)} columns; at most {MAX_COLUMNS} are supported")
        columns = tuple(_parse_column(name, spec, source) for name, spec in cols.items())
        outcome = doc.get("outcome")
        if outcome is not None:
            if not isinstance(outcome, str) or outcome not in cols:
                raise SchemaError(f"{source}: outcome {outcome!r} is not one of the columns")
            if columns[[c.name for c in columns].index(outcome)].type != "count":
                raise SchemaError(f"{source}: outcome {outcome!r} must be a count column "
                                  "(the analysis is a Poisson regression)")
        name = doc.get("name", "")
        if not isinstance(name, str):
            raise SchemaError(f"{source}: name must be a string")
        return cls(columns=columns, outcome=outcome, name=name)

    def to_toml(self) -> str:
        """Serialise back to the TOML form `load` reads."""
        lines = []
        if self.name:
            lines.append(f"name = {json.dumps(self.name)}")
        if self.outcome:
            lines.append(f"outcome = {json.dumps(self.outcome)}")
        for c in self.columns:
            lines += ["", f"[columns.{c.name}]", f"type = \"{c.type}\""]
            if c.type == "categorical":
                lines.append("levels = [" + ", ".join(json.dumps(v) for v in c.levels) + "]")
            if c.type == "continuous":
                lines.append(f"lower = {float(c.bounds[0])!r}")
            if c.type in ("count",):
                lines.append(f"upper = {int(c.bounds[1])}")
            if c.type == "continuous":
                lines.append(f"upper = {float(c.bounds[1])!r}")
            if c.description:
                lines.append(f"description = {json.dumps(c.description)}")
        return "\n".join(lines) + "\n"

    # ----------------------------------------------------------- arrays
    def check_arrays(self, arrays: Mapping[str, np.ndarray], source: str = "<arrays>") -> int:
        """Check numeric arrays against the schema; return the row count."""
        if set(arrays) != set(self.names):
            raise DataError(f"{source}: columns {sorted(arrays)} do not match schema {self.names}")
        lengths = {len(np.asarray(a)) for a in arrays.values()}
        if len(lengths) != 1:
            raise DataError(f"{source}: columns have different lengths {sorted(lengths)}")
        for col in self.columns:
            a = np.asarray(arrays[col.name])
            if col.type != "continuous" and not np.issubdtype(a.dtype, np.integer):
                raise DataError(f"{source}: column '{col.name}' must hold integers")
            lo, hi = col.bounds if col.type == "continuous" else (0, col.cardinality - 1)
            if not a.size or (a.min() >= lo and a.max() <= hi):  # NaN fails: min/max carry it
                continue
            ok = (np.isfinite(a) & (a >= lo) & (a <= hi)) if col.type == "continuous" else (
                (a >= 0) & (a < col.cardinality))
            if not ok.all():
                i = int(np.flatnonzero(~ok)[0])
                raise DataError(f"{source}: column '{col.name}' row {i}: value {a[i]!r} "
                                "outside the schema")
        return lengths.pop()


def _parse_column(name: Any, spec: Any, source: str) -> Column:
    where = f"{source}: column {name!r}"
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SchemaError(f"{where}: a name is 1-64 letters, digits, '_', '.', '-', "
                          "starting with a letter or '_'")
    if not isinstance(spec, Mapping):
        raise SchemaError(f"{where}: must be a table with at least 'type'")
    ctype = spec.get("type")
    if ctype not in COLUMN_TYPES:
        raise SchemaError(f"{where}: unknown type {ctype!r}; expected one of "
                          + ", ".join(COLUMN_TYPES))
    allowed = {"type", "description"} | {
        "binary": set(), "categorical": {"levels"}, "count": {"upper"},
        "continuous": {"lower", "upper"}}[ctype]
    unknown = set(spec) - allowed
    if unknown:
        raise SchemaError(f"{where}: key(s) {', '.join(sorted(unknown))} not allowed for "
                          f"type {ctype!r} (allowed: {', '.join(sorted(allowed))})")
    desc = spec.get("description", "")
    if not isinstance(desc, str):
        raise SchemaError(f"{where}: description must be a string")
    if ctype == "binary":
        return Column(name, ctype, description=desc)
    if ctype == "categorical":
        levels = spec.get("levels")
        if (not isinstance(levels, list) or len(levels) < 2
                or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in levels)):
            raise SchemaError(f"{where}: 'levels' must list at least two strings")
        levels_s = tuple(str(v).strip() for v in levels)
        if len(set(levels_s)) != len(levels_s) or "" in levels_s:
            raise SchemaError(f"{where}: levels must be distinct and non-empty")
        if len(levels_s) > MAX_LEVELS:
            raise SchemaError(f"{where}: at most {MAX_LEVELS} levels")
        return Column(name, ctype, levels=levels_s, description=desc)
    if ctype == "count":
        upper = spec.get("upper")
        if not isinstance(upper, int) or isinstance(upper, bool) or not 1 <= upper <= MAX_COUNT_BOUND:
            raise SchemaError(f"{where}: count needs an integer 'upper' bound in "
                              f"1..{MAX_COUNT_BOUND}")
        return Column(name, ctype, upper=upper, description=desc)
    lower, upper = _public_bound(spec, "lower", where), _public_bound(spec, "upper", where)
    if not lower < upper:
        raise SchemaError(f"{where}: lower ({spec['lower']}) must be below upper "
                          f"({spec['upper']})")
    return Column(name, ctype, lower=lower, upper=upper, description=desc)


def _public_bound(spec: Mapping[str, Any], key: str, where: str) -> float:
    value = spec.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise SchemaError(f"{where}: continuous needs a finite number '{key}' "
                          "(a public bound, not one read off the data)")
    return float(value)


def load_schema(path: str | Path) -> Schema:
    """Read a schema file (a convenience alias for `Schema.load`)."""
    return Schema.load(path)

