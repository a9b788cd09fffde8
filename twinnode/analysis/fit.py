"""The combined analysis at one party: local real rows + peers' twins -> pooled Poisson GLM.

For k in 1..K, D_k = the local real rows ∪ twin k of every accepted peer; each D_k gets the
same Poisson GLM (log link, robust HC1 errors, `glm.fit_poisson_columns`) and the K fits are
pooled (`pooling.pool`; the ``mixed`` rule by default, ``reiter`` is the paper's). The
local-only fit, the pooled real-data fit (an oracle for experiments) and one peer's twins
alone go through the same code and give the same report type, `PooledFit`. `evaluate`
scores a fit on held-out rows. Which peers' twins are usable, and the K a fit shares, is
`usable`'s job: a peer with a defective or incomplete release is left out with a
warning, never the cause of an error, and K is the smallest among the peers of that fit.
The fits take the peers as received or as a `usable.PeerSet` already checked (what
`party.analyze_party` passes, so the peers are checked once per analysis).

Peers' twin rows can carry a weight λ in [0, 1] (here 1, the paper's plain concatenation,
is the default; `weighting.choose_weight` picks λ, `party.analyze_party` is the whole
party analysis that the CLI and the node run). What the standard errors then mean: a
twin row of weight λ is one synthetic draw whose score counts λ times (an importance
weight), not λ real observations, so the sandwich's meat has λ² for it (`glm`); the
per-fit SE is the sampling SE of the λ-weighted estimator given the twins, and the pooled T
(mixed rule) adds the peers' estimation noise that the between-twin spread b carries. So
the intervals are for the true coefficients if the twins come from a faithful (calibrated)
generator, whatever λ; λ does not make the twins count as real data, it trades the
twins' noise and bias against the local rows' noise. Pure functions: no files, no sockets.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from scipy.special import gammaln

from twinnode.analysis.arrays import BoolArray, FloatArray, IntArray
from twinnode.analysis.design import Block, Design, Rows, Stack, make_design, stack_blocks
from twinnode.analysis.glm import BatchFit, fit_poisson_columns
from twinnode.analysis.options import (
    DEFAULT_AGREEMENT_ALPHA,
    DEFAULT_COV_TYPE,
    DEFAULT_DRAWS,
    DEFAULT_FALLBACK,
    DEFAULT_HETEROGENEITY,
    DEFAULT_INTERVAL,
    DEFAULT_LEVEL,
    DEFAULT_ON_DISAGREEMENT,
    DEFAULT_RULE,
    DEFAULT_SEED,
)
from twinnode.analysis.heterogeneity import Heterogeneity
from twinnode.analysis.pooling import Pooled, pool, widen
from twinnode.analysis.usable import MIN_K, Peers, PeerSet, common_k, one_peer, usable_peers
from twinnode.atomic import jsonable
from twinnode.data import frame_to_arrays
from twinnode.errors import AnalysisError
from twinnode.schema import Schema
from twinnode.twins import Twin

Builder = Callable[[Sequence[int], Optional[Stack]], Stack]
"""Stacks the given replicates (into the stack passed, when it fits: `stack_blocks`)."""
MAX_ELEMENTS = 1_500_000
"""Replicates are fitted in chunks of about this many design-matrix cells (12 MB), which
bounds the memory of a stack. The fitter iterates one replicate at a time (`newton`), so a
chunk's size only sets how often its per-chunk work runs (the shared first Hessian, the
start, the rank certificate, the batched sandwich algebra): on randhie, K = 100, 1.5 and 3
million cells took 11% less CPU than 0.5 million (11 and 22 replicates a chunk against 3;
measured, issue 16)."""


@dataclass(frozen=True)
class AnalysisOptions:
    """The analysis model and pooling choices every fit at a party shares."""

    covariates: tuple[str, ...] | None = None
    reference: Mapping[str, str] = field(default_factory=dict)
    rule: str = DEFAULT_RULE
    fallback: str = DEFAULT_FALLBACK
    level: float = DEFAULT_LEVEL
    interval: str = DEFAULT_INTERVAL
    cov_type: str = DEFAULT_COV_TYPE
    heterogeneity: str = DEFAULT_HETEROGENEITY  # applied by `sites.add_between_release`
    agreement_alpha: float = DEFAULT_AGREEMENT_ALPHA  # `agreement`, via `sites.twins_agreement`
    on_disagreement: str = DEFAULT_ON_DISAGREEMENT    # applied by `disagreement.local_where`

    def design(self, schema: Schema) -> Design:
        return make_design(schema, self.covariates, self.reference)

    def to_dict(self) -> dict[str, Any]:
        return {"covariates": None if self.covariates is None else list(self.covariates),
                "reference": dict(self.reference), "rule": self.rule,
                "fallback": self.fallback, "level": self.level, "interval": self.interval,
                "cov_type": self.cov_type, "heterogeneity": self.heterogeneity,
                "agreement_alpha": self.agreement_alpha,
                "on_disagreement": self.on_disagreement}


@dataclass(frozen=True)
class Replicates:
    """The K fits behind a pooled result (NaN where excluded), so they can be re-pooled."""

    coef: FloatArray        # (K, p)
    se: FloatArray          # (K, p)
    var_part: FloatArray    # (K, p) the twin rows' part of se**2
    cov: FloatArray         # (K, p, p) sandwich covariance matrices (diagonal se**2)
    cov_part: FloatArray    # (K, p, p) their twin rows' part (diagonal var_part)


@dataclass(frozen=True)
class PooledFit:
    """One analysis result: pooled coefficients plus what was excluded, dropped or odd."""

    kind: str                       # combined | local | oracle | twins
    design: Design
    pooled: Pooled
    k: int                          # replicates fitted
    failed: int                     # replicates that did not converge (excluded)
    dropped: Mapping[str, int]      # term -> replicates in which it was not estimable
    peers: tuple[str, ...]
    rows: Mapping[str, int]         # "local" and each peer -> rows per replicate
    weight: float
    options: AnalysisOptions
    warnings: tuple[str, ...] = ()
    replicates: Replicates | None = field(default=None, repr=False)
    heterogeneity: Heterogeneity | None = None  # the between-release term, when added

    @property
    def terms(self) -> tuple[str, ...]:
        return self.design.terms

    @property
    def estimate(self) -> FloatArray:
        return self.pooled.estimate

    @property
    def se(self) -> FloatArray:
        return self.pooled.se

    @property
    def fallback_count(self) -> int:
        return int(self.pooled.fallback.sum())

    def coefficient(self, term: str) -> dict[str, Any]:
        """One term's pooled values as a JSON-ready dict."""
        j = self.terms.index(term)
        p = self.pooled
        row: dict[str, Any] = jsonable({
            "estimate": p.estimate[j], "se": p.se[j], "lower": p.lower[j], "upper": p.upper[j],
            "df": p.df[j], "u_bar": p.u_bar[j], "b": p.b[j], "total_variance": p.total[j],
            "fallback": bool(p.fallback[j]), "k_used": int(p.k_used[j]),
            "dropped_in": int(self.dropped.get(term, 0)),
            "between_variance": None if self.heterogeneity is None else
            self.heterogeneity.added[j]})
        return row

    def pooling_dict(self) -> dict[str, Any]:
        """How the replicates were pooled, and what went wrong with which."""
        out: dict[str, Any] = jsonable({
            "kind": self.kind, "rule": self.pooled.rule if self.k > 1 else "single",
            "fallback_rule": self.pooled.fallback_rule, "fallback_count": self.fallback_count,
            "covariance_fallback": self.pooled.covariance_fallback,
            "fallback_terms": [t for t, f in zip(self.terms, self.pooled.fallback) if f],
            "k": self.k, "failed_replicates": self.failed, "dropped": dict(self.dropped),
            "level": self.pooled.level, "interval": self.pooled.interval,
            "cov_type": self.options.cov_type, "weight": self.weight,
            "peers": list(self.peers), "rows": dict(self.rows),
            "warnings": list(self.warnings), "heterogeneity": None if self.heterogeneity is None
            else self.heterogeneity.to_dict(self.terms)})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"design": self.design.to_dict(), "pooling": self.pooling_dict(),
                "coefficients": {t: self.coefficient(t) for t in self.terms}}


@dataclass(frozen=True)
class Evaluation:
    """Mean test log-likelihood per record: Monte Carlo over w ~ N(q̄, T), and plug-in."""

    samples: FloatArray
    plugin: float
    n_test: int
    seed: int
    unestimated: tuple[str, ...] = ()

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples))

    def to_dict(self) -> dict[str, Any]:
        q = np.quantile(self.samples, [0.05, 0.5, 0.95])
        out: dict[str, Any] = jsonable({
            "mean": self.mean, "plugin": self.plugin, "sd": np.std(self.samples), "q05": q[0],
            "median": q[1], "q95": q[2], "draws": len(self.samples), "seed": self.seed,
            "n_test": self.n_test, "unestimated_terms": list(self.unestimated),
            "samples": list(self.samples)})
        return out


# ----------------------------------------------------------------------- the fits
def combined_fit(schema: Schema, local_frame: pd.DataFrame | None, peers: Peers | PeerSet,
                 *, weight: float = 1.0, options: AnalysisOptions | None = None) -> PooledFit:
    """Pool K fits of D_k = local rows ∪ twin k of each peer (twin rows weighted `weight`)."""
    options = options or AnalysisOptions()
    if not 0.0 <= weight <= 1.0:
        raise AnalysisError(f"peer weight must be in [0, 1], got {weight}")
    design = options.design(schema)
    twins, k, warnings = align_peers(schema, peers)
    if twins and k < MIN_K:  # align_peers leaves such peers out; never pool them as synthetic
        raise AnalysisError(f"synthetic pooling needs K >= {MIN_K} twins per peer, got {k}")
    local = None if local_frame is None else _local_block(schema, design, local_frame)
    if not twins:
        if local is None:
            raise AnalysisError("nothing to fit: no local rows and no peer twins")
        warnings.append("no peer twins: the combined fit is the local fit")
        return _local_run(design, options, "combined", local, weight, warnings)
    names = tuple(twins)

    def build(ks: Sequence[int], out: Stack | None = None) -> Stack:
        blocks = []
        for i in ks:
            row: list[Block | Rows] = [] if local is None else [local]
            row += [Rows(twins[name][i].arrays, weight, True) for name in names]
            blocks.append(row)
        return stack_blocks(blocks, design, out)

    rows = {"local": 0 if local is None else len(local.y)}
    rows |= {name: twins[name][0].rows for name in names}
    kind = "combined" if local is not None else "twins"
    return _run(design, options, kind, k, build, names, rows, weight, warnings)


def local_fit(schema: Schema, local_frame: pd.DataFrame,
              options: AnalysisOptions | None = None) -> PooledFit:
    """The party's own rows alone, reported like a combined fit with K = 1."""
    options = options or AnalysisOptions()
    design = options.design(schema)
    local = _local_block(schema, design, local_frame)
    return _local_run(design, options, "local", local, 1.0, [])


def oracle_fit(schema: Schema, frames: Sequence[pd.DataFrame],
               options: AnalysisOptions | None = None) -> PooledFit:
    """The pooled real rows of every party (an experiment's upper reference, never a node's)."""
    if not frames:
        raise AnalysisError("the oracle fit needs at least one data set")
    fit = local_fit(schema, pd.concat(list(frames), ignore_index=True), options)
    return replace(fit, kind="oracle")


def twins_fit(schema: Schema, twins: Sequence[Twin],
              options: AnalysisOptions | None = None) -> PooledFit:
    """One peer's twins alone, pooled as fully synthetic data (what screening compares)."""
    return combined_fit(schema, None, one_peer(schema, twins), options=options)


def evaluate(fit: PooledFit, schema: Schema, test_frame: pd.DataFrame,
             draws: int = DEFAULT_DRAWS, seed: int = DEFAULT_SEED) -> Evaluation:
    """Mean Poisson log-likelihood per test record for `draws` seeded w ~ N(q̄, T).

    T is the pooled covariance matrix (`Pooled.covariance`), so the draws keep the
    correlations between coefficients (an intercept and a slope, the levels of one factor);
    drawing them independently would overstate the spread of the linear predictor and
    penalise a fit for correlations it does not have. A term without an estimate (dropped
    in every replicate) counts as 0, i.e. its rows get the reference level's rate, with no
    spread; it is listed in the result.
    """
    if draws < 1:
        raise AnalysisError(f"draws must be at least 1, got {draws}")
    X, y = fit.design.frame_matrix(schema, test_frame)
    if len(y) == 0:
        raise AnalysisError("the test set has no rows")
    est = fit.pooled.estimate
    missing = ~np.isfinite(est)
    mean = np.where(missing, 0.0, est)
    rng = np.random.default_rng(seed)
    w = mean + rng.standard_normal((draws, len(mean))) @ _root(fit.pooled.covariance,
                                                               ~missing).T
    const = gammaln(y + 1.0)

    def mean_ll(coefs: FloatArray) -> FloatArray:
        eta = np.clip(coefs @ X.T, -700.0, 700.0)
        ll: FloatArray = (y * eta - np.exp(eta) - const).mean(axis=-1)
        return ll

    unestimated = tuple(t for t, m in zip(fit.terms, missing) if m)
    return Evaluation(samples=mean_ll(w), plugin=float(mean_ll(mean[None])[0]), n_test=len(y),
                      seed=seed, unestimated=unestimated)


def _root(cov: FloatArray, present: BoolArray) -> FloatArray:
    """L with L L' = cov on the present terms (zero elsewhere), for positive semi-definite
    cov: from its eigen-decomposition, so a singular matrix (a term with no spread) works."""
    p = len(present)
    out = np.zeros((p, p))
    idx = np.flatnonzero(present)
    if idx.size == 0:
        return out
    sub = np.nan_to_num(np.asarray(cov, np.float64)[np.ix_(idx, idx)])
    vals, vecs = np.linalg.eigh((sub + sub.T) / 2)
    out[np.ix_(idx, idx)] = vecs * np.sqrt(np.maximum(vals, 0.0))
    return out


# --------------------------------------------------------------------- internals
def align_peers(schema: Schema, peers: Peers | PeerSet
                ) -> tuple[dict[str, list[Twin]], int, list[str]]:
    """The usable peers' twins cut to their common K, and warnings about the rest.

    A peer whose release is defective, incomplete or too small is left out (`usable`);
    K is shared by these peers only, never by peers outside the fit."""
    checked = usable_peers(schema, peers)
    twins, k, warnings = common_k(checked.twins)
    return twins, k, checked.warnings() + warnings


def _local_block(schema: Schema, design: Design, frame: pd.DataFrame) -> Block:
    if len(frame) == 0:
        raise AnalysisError("the local data set has no rows")
    Xt, y = design.columns(frame_to_arrays(schema, frame))
    return Block(Xt, y, 1.0, False)


def _local_run(design: Design, options: AnalysisOptions, kind: str, local: Block,
               weight: float, warnings: list[str]) -> PooledFit:
    """The local rows as one replicate (K = 1)."""
    def build(ks: Sequence[int], out: Stack | None = None) -> Stack:
        return stack_blocks([[local]], design)

    return _run(design, options, kind, 1, build, (),
                {"local": len(local.y)}, weight, warnings)


def _run(design: Design, options: AnalysisOptions, kind: str, k: int,
         build: Builder, peers: tuple[str, ...],
         rows: Mapping[str, int], weight: float, warnings: list[str]) -> PooledFit:
    """Fit all replicates, pool them, and write down what went wrong."""
    fits = _fit_replicates(options, k, build, max(1, sum(rows.values()) * design.p))

    def joined(part: Callable[[BatchFit], FloatArray]) -> FloatArray:
        return np.concatenate([part(f) for f in fits])

    reps = Replicates(coef=joined(lambda f: f.coef), se=joined(lambda f: f.se),
                      var_part=joined(lambda f: f.var_part), cov=joined(lambda f: f.cov),
                      cov_part=joined(lambda f: f.cov_part))
    converged = np.concatenate([f.converged for f in fits])
    dropped = np.concatenate([f.dropped & f.converged[:, None] for f in fits])
    min_k = MIN_K if peers else 1
    pooled = _pool(reps, options, min_k)
    failed = int((~converged).sum())
    counts = {t: int(c) for t, c in zip(design.terms, dropped.sum(axis=0)) if c}
    warnings = list(warnings)
    if failed:
        warnings.append(f"{failed} of {k} replicate fit(s) did not converge and were excluded")
    warnings += _dropped_warnings(design, counts, np.isfinite(reps.coef).sum(axis=0), pooled,
                                  k, min_k)
    return PooledFit(kind=kind, design=design, pooled=pooled, k=k, failed=failed,
                     dropped=counts, peers=peers, rows=dict(rows), weight=weight,
                     options=options, warnings=tuple(warnings), replicates=reps)


def _fit_replicates(options: AnalysisOptions, k: int, build: Builder,
                    cells: int) -> list[BatchFit]:
    """The K replicates' fits, in chunks of about MAX_ELEMENTS design cells (`cells` per
    replicate), each chunk started from the first replicate's estimate."""
    chunk = max(1, MAX_ELEMENTS // cells)
    # replicates differ little: the first one's estimate is a start from which Newton
    # needs ~3 steps for the others (and the first step shares one Hessian, `glm`)
    X, y, w, part = build([0], None)
    fits = [fit_poisson_columns(X, y, w, part=part, cov_type=options.cov_type)]
    warm = fits[0].coef[0] if fits[0].converged[0] else None
    stack = None  # one buffer for every chunk (stack_blocks fills it again)
    for start in range(1, k, chunk):
        stack = build(range(start, min(k, start + chunk)), stack)
        X, y, w, part = stack
        fits.append(fit_poisson_columns(X, y, w, part=part, cov_type=options.cov_type,
                                        start=warm))
    return fits


def _dropped_warnings(design: Design, counts: Mapping[str, int], estimated: IntArray,
                      pooled: Pooled, k: int, min_k: int) -> list[str]:
    """One line per term not estimable in some replicates: missing, or pooled over fewer."""
    warnings = []
    for term, c in counts.items():
        j = design.terms.index(term)
        if estimated[j] == 0:
            warnings.append(f"term {term!r} could not be estimated (no variation or "
                            "collinear in every fit): reported as missing")
        elif pooled.k_used[j] == 0:
            warnings.append(f"term {term!r} was estimable in only {estimated[j]} of {k} "
                            f"fit(s), too few to pool twins (at least {min_k}): reported "
                            "as missing")
        else:
            warnings.append(f"term {term!r} was not estimable in {c} of {k} fit(s) and is "
                            "pooled over the others")
    return warnings


def _pool(r: Replicates, options: AnalysisOptions, min_k: int) -> Pooled:
    return pool(r.coef, r.se, rule=options.rule, var_part=r.var_part, cov=r.cov,
                cov_part=r.cov_part, fallback=options.fallback, level=options.level,
                interval=options.interval, min_k=min_k)


def repool(fit: PooledFit, **changes: Any) -> PooledFit:
    """The same K fits pooled with other options (rule, fallback, level, interval)."""
    unknown = set(changes) - {"rule", "fallback", "level", "interval"}
    if unknown:
        raise AnalysisError(f"repool can change rule, fallback, level, interval; not "
                            f"{', '.join(sorted(unknown))}")
    if fit.replicates is None:
        raise AnalysisError("this fit kept no replicates to re-pool")
    options = replace(fit.options, **changes)
    pooled = _pool(fit.replicates, options, MIN_K if fit.peers else 1)
    if fit.heterogeneity is not None:  # the same between-release term on the new T
        pooled = widen(pooled, fit.heterogeneity.added, fit.heterogeneity.df)
    return replace(fit, pooled=pooled, options=options)
