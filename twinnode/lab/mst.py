"""Twins from MST (smartnoise-synth), the marginal-based DP baseline of the fidelity study.

MST (McKenna et al. 2021) measures every one-way marginal and a maximum spanning tree of
two-way marginals with Gaussian noise, fits a graphical model to them (Private-PGM) and
samples from it. It needs discrete columns, so each column is cut on public facts only:
categorical and binary columns keep their levels; counts keep 0..upper, coarsened beyond
`COUNT_FINE` (one bin per value up to it, then geometric bins to the bound, as
`lab.fidelity` does); continuous columns get `CONTINUOUS_BINS` equal bins on their public
bounds and come back uniformly placed within their bin (counts within theirs). The bins
are fixed domains, so the synthesiser spends nothing on and learns nothing from the data's
range (`preprocessor_eps=0`).

Privacy: one fit at (ε, δ = 1/N) under smartnoise's accounting; the K twins are K samples
of N rows from the same fitted model (post-processing). MST uses the true row count as a
known total, so the guarantee is for the substitute-one-row relation.

smartnoise-synth cannot live in the project venv (its mbi needs a newer jax and numpy than
d3p 0.2.0 pins), so it runs in a side venv (`make mst-venv`, `.venv-mst`; another python
via TWINNODE_MST_PYTHON) as a subprocess that reads and writes CSV files of bin codes.
Its Gaussian noise comes from OpenDP and is not seeded: `seed` fixes the tree choice and
the sampling only, so two runs with one seed differ.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from twinnode.data import frame_to_arrays
from twinnode.errors import GeneratorError
from twinnode.schema import Column, Schema
from twinnode.twins import Provenance, Twin

CONTINUOUS_BINS = 20
COUNT_FINE = 15
COUNT_COARSE = 15
PYTHON_ENV = "TWINNODE_MST_PYTHON"
TIMEOUT_SECONDS = 3600.0

# Runs under the side venv's python: argv = work directory. Reads codes.csv (bin codes) and
# job.json; writes twin-<i>.csv (bin codes) and prints the library version as JSON.
_SIDE_SCRIPT = r"""
import json, sys, warnings
from importlib.metadata import version
from pathlib import Path
warnings.filterwarnings("ignore")
import numpy as np, pandas as pd
from snsynth import Synthesizer
from snsynth.transform import BinTransformer, TableTransformer

work = Path(sys.argv[1])
job = json.loads((work / "job.json").read_text())
codes = pd.read_csv(work / "codes.csv")
np.random.seed(job["seed"])
# bin code c of a column with B bins lands in bin c of [0, B): the domain is fixed, not fitted
transformer = TableTransformer([BinTransformer(bins=b, lower=0, upper=b, epsilon=0.0)
                                for b in job["cards"]])
synth = Synthesizer.create("mst", epsilon=float(job["epsilon"]), delta=float(job["delta"]))
synth.fit(codes, transformer=transformer, preprocessor_eps=0.0)
for i in range(job["k"]):
    rows = np.floor(np.asarray(synth.sample(len(codes)), dtype=float)).astype(int)
    rows = np.clip(rows, 0, np.asarray(job["cards"]) - 1)
    pd.DataFrame(rows, columns=codes.columns).to_csv(work / f"twin-{i}.csv", index=False)
print(json.dumps({"smartnoise-synth": version("smartnoise-synth"), "mbi": version("mbi")}))
"""


def side_python() -> Path:
    """The side venv's python (TWINNODE_MST_PYTHON, else <repo>/.venv-mst/bin/python)."""
    default = Path(__file__).resolve().parents[2] / ".venv-mst" / "bin" / "python"
    return Path(os.environ.get(PYTHON_ENV) or default)


def available() -> bool:
    """Whether the side python exists (it is not imported or run here)."""
    path = side_python()
    return path.is_file() and os.access(path, os.X_OK)


def bin_edges(col: Column) -> np.ndarray | None:
    """Public bin edges of a column, or None where its own values are the bins.

    Continuous: CONTINUOUS_BINS + 1 float edges over [lower, upper]. Counts with more than
    COUNT_FINE + COUNT_COARSE values: integer edges, one per value in 0..COUNT_FINE, then
    geometric up to upper + 1 (bin b holds the integers edges[b] .. edges[b+1] - 1).
    """
    if col.type == "continuous":
        lo, hi = col.bounds
        return np.linspace(lo, hi, CONTINUOUS_BINS + 1)
    if col.type == "count" and col.cardinality > COUNT_FINE + COUNT_COARSE:
        tail = np.ceil(np.geomspace(COUNT_FINE + 1, col.cardinality, COUNT_COARSE))
        return np.unique(np.concatenate([np.arange(COUNT_FINE + 1), tail])).astype(np.int64)
    return None


def discretise(schema: Schema, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays in the schema's layout -> bin codes 0..bins-1 per column."""
    out = {}
    for col in schema.columns:
        v, edges = np.asarray(arrays[col.name]), bin_edges(col)
        if edges is None:
            out[col.name] = v.astype(np.int64)
        else:
            code = np.searchsorted(edges, v.astype(np.float64), side="right") - 1
            out[col.name] = np.clip(code, 0, len(edges) - 2).astype(np.int64)
    return out


def cardinalities(schema: Schema) -> dict[str, int]:
    """Number of bins per column: what MST's domain is."""
    return {c.name: (c.cardinality if (e := bin_edges(c)) is None else len(e) - 1)
            for c in schema.columns}


def undiscretise(schema: Schema, codes: Mapping[str, np.ndarray],
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Bin codes -> arrays in the schema's layout: uniform within a coarse or continuous bin."""
    out: dict[str, np.ndarray] = {}
    for col in schema.columns:
        c, edges = np.asarray(codes[col.name], np.int64), bin_edges(col)
        if edges is None:
            out[col.name] = c
        elif col.type == "continuous":
            out[col.name] = rng.uniform(edges[c], edges[c + 1])
        else:
            out[col.name] = rng.integers(edges[c], edges[c + 1]).astype(np.int64)
    return out


def mst_twins(schema: Schema, frame: pd.DataFrame, epsilon: float, k: int, seed: int,
              *, sender: str = "study") -> list[Twin]:
    """K twins of `frame` (each of its size) from one MST fit at (epsilon, 1/N)."""
    n = len(frame)
    if k < 1 or n == 0 or not epsilon > 0:
        raise GeneratorError(f"MST needs k >= 1, rows and epsilon > 0 "
                             f"(got k={k}, {n} rows, epsilon={epsilon})")
    cards = cardinalities(schema)
    codes = discretise(schema, frame_to_arrays(schema, frame))
    job = {"cards": [cards[c] for c in schema.names], "epsilon": float(epsilon),
           "delta": 1.0 / n, "k": k, "seed": seed}
    with tempfile.TemporaryDirectory(prefix="twinnode-mst-") as tmp:
        work = Path(tmp)
        pd.DataFrame(codes, columns=schema.names).to_csv(work / "codes.csv", index=False)
        (work / "job.json").write_text(json.dumps(job))
        versions = _run_side(work)
        drawn = [pd.read_csv(work / f"twin-{i}.csv") for i in range(k)]
    rng = np.random.default_rng(seed)
    release, created = f"{sender}-mst-{seed}", time.time()
    generator = {"kind": "mst", "dp": True, **versions, "continuous_bins": CONTINUOUS_BINS,
                 "count_bins": {c.name: cards[c.name] for c in schema.columns
                                if c.type == "count"}}
    twins = []
    for index, table in enumerate(drawn):
        arrays = undiscretise(schema, {c: table[c].to_numpy() for c in schema.names}, rng)
        schema.check_arrays(arrays)
        prov = Provenance(sender=sender, schema_hash=schema.hash, epsilon=float(epsilon),
                          delta=1.0 / n, n=n, k=k, index=index, relation="substitute",
                          release=release, created=created, generator=generator)
        twins.append(Twin(prov, arrays))
    return twins


def _run_side(work: Path) -> dict[str, str]:
    """Run the side script in `work`; its printed library versions, or a GeneratorError."""
    python = side_python()
    if not available():
        raise GeneratorError(
            f"MST needs smartnoise-synth in a side venv, and {python} does not exist: run "
            f"`make mst-venv` in the repository (or set {PYTHON_ENV} to a python that has it)")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONWARNINGS="ignore")
    try:
        done = subprocess.run([str(python), "-c", _SIDE_SCRIPT, str(work)], env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise GeneratorError(f"MST did not finish within {TIMEOUT_SECONDS:.0f} s") from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-12:])
        raise GeneratorError(f"MST failed in {python} (exit {done.returncode}):\n{tail}")
    try:
        return {str(k): str(v) for k, v in json.loads(done.stdout.strip().splitlines()[-1])
                .items()}
    except (ValueError, IndexError, AttributeError):
        raise GeneratorError(f"MST's side script printed no versions: {done.stdout[-300:]!r}")


if __name__ == "__main__":  # python -m twinnode.lab.mst: is the side venv there?
    print(side_python(), "ok" if available() else "missing (make mst-venv)")
    sys.exit(0 if available() else 1)
