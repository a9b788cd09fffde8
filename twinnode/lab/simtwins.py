"""Twins simulated from known models, for tests and experiments. NOT differentially private.

Until the DP generator exists (and to check the statistics where theory applies), this
module makes twins the way the fully-synthetic theory assumes: each twin from its own draw
of an approximate posterior given one party's real rows. Covariate rows come from a Bayesian
bootstrap (Dirichlet(1, ..., 1) weights over the real rows, then N rows drawn with them);
the outcome from a Poisson GLM whose coefficients are drawn from N(β̂, H⁻¹), H the Fisher
information at β̂. `inflate` > 1 mimics DP noise while keeping the posterior calibrated:
the release's centre is moved once by N(0, (inflate - 1) H⁻¹) (the noise) and each twin
draws its coefficients from N(centre, inflate · H⁻¹) (the wider posterior): the twins are
noise-aware, their spread includes the release's noise. With ``noise_aware=False`` they are
not (a release from before noise-aware generators): the centre moves the same way but each
twin draws from N(centre, H⁻¹), so the shared noise is invisible in their spread.
``noise_aware`` True or False is written to the provenance's ``generator``; None (the
default) writes nothing, as receipts from before did, and samples as True does.
The provenance's ε is only a label here. Anything with the signature of `TwinMaker` can
stand in: the scripts take the maker as an argument so real DP twins plug in later.
"""
from __future__ import annotations

from typing import Mapping, Protocol, Sequence

import numpy as np
import pandas as pd

from twinnode.analysis.design import make_design
from twinnode.analysis.glm import fit_poisson_batch
from twinnode.data import arrays_to_frame, frame_to_arrays
from twinnode.errors import AnalysisError
from twinnode.schema import Schema
from twinnode.twins import RECEIPT_FORMAT, Provenance, Release, Twin

SMALL_SCHEMA_TOML = """
name = "small"
outcome = "visits"

[columns.visits]
type = "count"
upper = 50

[columns.age]
type = "continuous"
lower = 18.0
upper = 90.0

[columns.smoker]
type = "binary"

[columns.region]
type = "categorical"
levels = ["north", "south", "east"]
"""
SMALL_TRUE_COEFFICIENTS: Mapping[str, float] = {
    "Intercept": 0.2 - 0.02 * 50, "age": 0.02, "region[south]": 0.3, "region[east]": -0.3,
    "smoker": 0.8}
"""log E[visits] = 0.2 + 0.8 smoker + 0.02 (age - 50) + (0, 0.3, -0.3)[region], as terms."""


class TwinMaker(Protocol):
    """Makes K twins of one party's rows: what the DP generator will provide."""

    def __call__(self, schema: Schema, frame: pd.DataFrame, *, sender: str, k: int,
                 epsilon: float, seed: int) -> Sequence[Twin]: ...


def small_schema() -> Schema:
    """The four-column example schema with a Poisson outcome (the tests' `small_schema`)."""
    return Schema.from_toml(SMALL_SCHEMA_TOML, "simtwins.small")


def simulate_small(schema: Schema, n: int = 200, seed: int = 0) -> pd.DataFrame:
    """n rows from the known model `SMALL_TRUE_COEFFICIENTS` (the tests' `make_small_frame`).

    age ~ Uniform(18, 90), smoker ~ Bernoulli(1/2), region uniform over its three levels,
    visits ~ Poisson(exp(0.2 + 0.8 smoker + 0.02 (age - 50) + (0, 0.3, -0.3)[region])),
    capped at the schema's bound of 50.
    """
    rng = np.random.default_rng(seed)
    age = rng.uniform(18, 90, n)
    smoker = rng.integers(0, 2, n)
    region = rng.integers(0, 3, n)
    rate = np.exp(0.2 + 0.8 * smoker + 0.02 * (age - 50) + np.array([0.0, 0.3, -0.3])[region])
    visits = np.minimum(rng.poisson(rate), 50)
    return arrays_to_frame(schema, {"age": age, "smoker": smoker, "region": region,
                                    "visits": visits})


def posterior_twins(schema: Schema, frame: pd.DataFrame, *, sender: str, k: int,
                    epsilon: float = 1.0, seed: int = 0, inflate: float = 1.0,
                    noise_aware: bool | None = None) -> list[Twin]:
    """K posterior-predictive twins of `frame`, each of its size (see the module docstring)."""
    if k < 1 or len(frame) == 0:
        raise AnalysisError("need k >= 1 and a non-empty frame to make twins")
    rng = np.random.default_rng(seed)
    arrays = frame_to_arrays(schema, frame)
    design = make_design(schema)
    X, y = design.matrix(arrays)
    fit = fit_poisson_batch(X, y)
    if not fit.converged[0]:
        raise AnalysisError(f"cannot make twins for {sender!r}: the outcome model did not fit")
    keep = ~fit.dropped[0]
    beta = np.where(keep, fit.coef[0], 0.0)
    Xk = X[:, keep]
    info = Xk.T @ (np.exp(Xk @ beta[keep])[:, None] * Xk)
    cov = np.zeros((design.p, design.p))
    spread = 1.0 if noise_aware is False else inflate  # what the twins' posterior shows
    cov[np.ix_(keep, keep)] = np.linalg.inv(info) * spread
    chol = np.linalg.cholesky(cov[np.ix_(keep, keep)])
    if inflate > 1:  # the release's one draw of "DP noise", from the same covariance shape
        beta[keep] += np.sqrt((inflate - 1) / spread) * (chol @ rng.standard_normal(
            int(keep.sum())))
    n, upper = len(y), schema.outcome_column().cardinality - 1  # counts run 0..upper
    release = f"{sender}-sim-{seed}"
    generator = {"kind": "simulated-posterior", "dp": False, "inflate": inflate}
    if noise_aware is not None:
        generator["noise_aware"] = noise_aware
    twins = []
    for index in range(k):
        rows = rng.choice(n, size=n, p=rng.dirichlet(np.ones(n)))
        b = beta.copy()
        b[keep] += chol @ rng.standard_normal(int(keep.sum()))
        out = {name: np.asarray(a)[rows] for name, a in arrays.items()}
        rate = np.exp(np.clip(X[rows] @ b, -30.0, 30.0))
        out[design.outcome] = np.minimum(rng.poisson(rate), upper).astype(np.int64)
        prov = Provenance(sender=sender, schema_hash=schema.hash, epsilon=epsilon,
                          delta=1.0 / n, n=n, k=k, index=index, relation="add-remove",
                          release=release, created=0.0,
                          generator=dict(generator))
        twins.append(Twin(prov, out))
    return twins


def poison_frame(schema: Schema, frame: pd.DataFrame, attack: str) -> pd.DataFrame:
    """A party's rows under a shifted model: 'outcome*F' scales the outcome by F (clipped to
    its bound), 'flip:COL' swaps 0 and 1 in a binary column (a flipped coding)."""
    arrays = {k: np.array(v, copy=True) for k, v in frame_to_arrays(schema, frame).items()}
    if attack.startswith("outcome*"):
        factor = float(attack.split("*", 1)[1])
        col = schema.outcome_column()
        y = np.round(arrays[col.name] * factor)
        arrays[col.name] = np.clip(y, 0, col.upper).astype(np.int64)
    elif attack.startswith("flip:"):
        name = attack.split(":", 1)[1]
        if schema.column(name).type != "binary":
            raise AnalysisError(f"flip needs a binary column, {name!r} is not")
        arrays[name] = 1 - arrays[name]
    else:
        raise AnalysisError(f"unknown attack {attack!r} (use 'outcome*F' or 'flip:COL')")
    return arrays_to_frame(schema, arrays)


def as_release(twins: Sequence[Twin]) -> Release:
    """Wrap one peer's twins with the receipt `releasedir.save_release` writes."""
    prov = twins[0].provenance
    receipt = {"format": RECEIPT_FORMAT, "sender": prov.sender, "schema_hash": prov.schema_hash,
               "epsilon": prov.epsilon, "delta": prov.delta, "n": prov.n, "k": len(twins),
               "relation": prov.relation, "release": prov.release, "created": prov.created,
               "generator": dict(prov.generator)}
    return Release(receipt=receipt, twins=tuple(twins))
