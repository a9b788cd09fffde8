"""Combining K fits into one estimate, variance and interval per coefficient.

With q_k the K estimates of one coefficient and u_k their squared standard errors:
q̄ = mean q_k, ū = mean u_k, b = sample variance of q_k (ddof = 1), and the total
variance T by the chosen rule:

- ``mixed`` (the default; our extension for D_k = local real rows ∪ twins, not in the
  paper): the replicates differ only in their synthetic rows, so b carries no trace of the
  local rows' sampling variance, while ū holds both parts. Splitting ū = ū_L + ū_S by the
  rows' share of the sandwich meat (`var_part` = the synthetic rows' part),
  T = (1 + 1/K) b - ū_S + ū_L: Raghunathan–Reiter on the synthetic part plus the local part
  as it is. With no local rows it is reiter's rule; with no twins (or twin weight 0) it is
  the local fit's own variance. Why, with twin rows of weight λ: linearised,
  q_k - β ≈ H⁻¹ (S_L + λ S_k), H = H_L + λ H_T, S_L and S_k the local and twin scores. Twin k
  is drawn at a parameter θ_k around the peers' estimate, so λ S_k ≈ λ H_T (θ_k - β) + its
  own sampling noise, and b ≈ λ² H⁻¹ (H_T V H_T + M_T) H⁻¹, V the spread of θ_k, M_T the twin
  rows' meat; ū_S = λ² H⁻¹ M_T H⁻¹ (the weighted sandwich's twin part). So b - ū_S is the
  peers' estimation noise as it reaches q̄, ū_L = H⁻¹ M_L H⁻¹ the local rows' own, and b/K
  the Monte Carlo noise of averaging K twins: T = ū_L + (b - ū_S) + b/K, for every λ.
- ``reiter`` (Raghunathan, Reiter & Rubin 2003, fully synthetic data, the paper's rule):
  T = (1 + 1/K) b - ū. On D_k it subtracts ū_L where it should add it: it under-covers when
  the local rows carry a large share of the weight (a large party, or a small λ); at λ = 0
  T = -ū_L and every term falls back.
- ``rubin`` (Rubin 1987, multiple imputation; an option, not the paper's rule):
  T = ū + (1 + 1/K) b. Always positive and larger than reiter's, so wider intervals.

Degrees of freedom: every rule's T has b as its only random part, so Satterthwaite gives
ν = (K - 1) (T / ((1 + 1/K) b))^2; for reiter this is Reiter (2002)'s
(K - 1)(1 - ū / ((1 + 1/K) b))^2 and for rubin Rubin's (K - 1)(1 + ū / ((1 + 1/K) b))^2.
Intervals use the t distribution with ν (``interval="t"``, default) or the normal.

Fallback when T <= 0 (b smaller than the rule subtracts: the between-twin spread is too
small to carry the variance): ``rubin`` (default) takes Rubin's T = ū + (1 + 1/K) b with
Rubin's ν — the paper's code does the same with a population variance (ddof = 0) for b, we
keep ddof = 1 so the two rules see the same b; ``within`` takes T = ū with ν = ∞
(Reiter 2002's conservative alternative with synthetic size = original size). Which
coefficients fell back is reported. Replicates with a NaN estimate (a failed fit, or the
term dropped there) are left out of that coefficient's pooling; `k_used` says how many
remained. With one replicate T = ū and ν = ∞: a single fit (the local fit). A fit with
twins passes `min_k=2`: a coefficient estimated in fewer replicates than that has no
between-twin variance to pool (b is undefined), so it is reported missing rather than
given T = ū, which would drop the peers' noise and claim ν = ∞.

The covariance matrix (`Pooled.covariance`, what `analysis.evaluate` draws the
coefficients from): the same rules applied matrix-wise, with Ū = mean of the K sandwich
covariance matrices, Ū_S the twin rows' part of it, and B = the sample covariance of the K
estimate vectors (ddof = 1; pairwise over the replicates where both terms were estimated).
Its diagonal is exactly the per-coefficient T above when the rule's matrix is positive
definite. Otherwise (a term fell back, or the off-diagonals make the matrix indefinite)
the matrix keeps the reported per-coefficient variances on its diagonal and takes its
correlations from the fallback's matrix (rubin: Ū + (1 + 1/K) B; within: Ū), which is
positive semi-definite, projected onto the nearest correlation matrix by clipping negative
eigenvalues if pairwise NaNs broke that; `covariance_fallback` says so. So draws from it
have the reported standard errors as their marginal spread and a coherent correlation.
Per-coefficient values (SEs, intervals, ν, fallback counts) do not depend on it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from twinnode.analysis.arrays import BoolArray, FloatArray, IntArray
from twinnode.analysis.options import (
    DEFAULT_FALLBACK,
    DEFAULT_INTERVAL,
    DEFAULT_LEVEL,
    DEFAULT_RULE,
    FALLBACKS,
    INTERVALS,
    RULES,
)
from twinnode.errors import AnalysisError


@dataclass(frozen=True)
class Pooled:
    """Per-coefficient pooled values (arrays of length p)."""

    estimate: FloatArray
    u_bar: FloatArray
    u_part: FloatArray        # synthetic rows' part of ū (0 when not split)
    b: FloatArray
    total: FloatArray         # T, after any fallback
    df: FloatArray            # inf for the normal reference
    lower: FloatArray
    upper: FloatArray
    fallback: BoolArray       # bool: T <= 0 under the rule, the fallback was used
    k_used: IntArray          # replicates with a finite estimate
    rule: str
    fallback_rule: str
    level: float
    interval: str             # "t" or "normal"
    covariance: FloatArray    # (p, p) T as a matrix (NaN rows/columns for missing terms)
    covariance_fallback: bool  # the matrix took the fallback rule's correlations

    @property
    def se(self) -> FloatArray:
        return np.sqrt(self.total)


def pool(coef: FloatArray, se: FloatArray, *, rule: str = DEFAULT_RULE,
         var_part: FloatArray | None = None, cov: FloatArray | None = None,
         cov_part: FloatArray | None = None, fallback: str = DEFAULT_FALLBACK,
         level: float = DEFAULT_LEVEL, interval: str = DEFAULT_INTERVAL,
         min_k: int = 1) -> Pooled:
    """Pool K estimates (K, p) with their standard errors (K, p) by `rule`.

    `cov` / `cov_part` (K, p, p) are the replicates' covariance matrices and their twin
    part (diagonals se**2 and var_part); without them the matrix is built from the
    diagonals alone. A coefficient with fewer than `min_k` finite replicates is missing."""
    if rule not in RULES:
        raise AnalysisError(f"unknown pooling rule {rule!r}; expected one of {', '.join(RULES)}")
    if fallback not in FALLBACKS:
        raise AnalysisError(f"unknown fallback {fallback!r}; expected one of "
                            f"{', '.join(FALLBACKS)}")
    if interval not in INTERVALS:
        raise AnalysisError(f"unknown interval reference {interval!r}; expected 't' or 'normal'")
    if not 0 < level < 1:
        raise AnalysisError(f"interval level must be in (0, 1), got {level}")
    coef = np.atleast_2d(np.asarray(coef, np.float64))
    u = np.atleast_2d(np.asarray(se, np.float64)) ** 2
    part = np.zeros_like(u) if var_part is None else np.atleast_2d(np.asarray(var_part, float))
    ok = np.isfinite(coef) & np.isfinite(u) & np.isfinite(part)
    m = ok.sum(axis=0)
    few = m < max(1, min_k)
    ok &= ~few[None, :]
    m = np.where(few, 0, m)
    with np.errstate(invalid="ignore", divide="ignore"):
        q_bar = np.where(ok, coef, 0.0).sum(axis=0) / m
        u_bar = np.where(ok, u, 0.0).sum(axis=0) / m
        u_s = np.where(ok, part, 0.0).sum(axis=0) / m
        dev = np.where(ok, coef - q_bar, 0.0)
        b = np.where(m > 1, (dev ** 2).sum(axis=0) / (m - 1), 0.0)
        infl = (1.0 + 1.0 / m) * b
        total = _rule_total(rule, infl, u_bar, u_s)
        single = m == 1
        total = np.where(single, u_bar, total)
        fell = (m > 1) & ~(total > 0)
        rubin_t = infl + u_bar
        total = np.where(fell, rubin_t if fallback == "rubin" else u_bar, total)
        df = (m - 1) * (total / infl) ** 2
        # b negligible against T (e.g. twin weight 0: the replicates agree to rounding)
        flat = infl <= 1e-12 * np.abs(total)
        df = np.where(single | flat | (fell & (fallback == "within")), np.inf, df)
    empty = m == 0
    for arr in (q_bar, u_bar, u_s, b, total, df):
        arr[empty] = np.nan
    matrix, matrix_fell = _covariance(coef, ok, q_bar, total, fell, rule, fallback,
                                      _matrices(u, cov), _matrices(part, cov_part))
    if interval == "normal":
        df = np.where(empty, np.nan, np.inf)
    alpha = (1.0 + level) / 2.0
    crit = np.where(np.isinf(df), stats.norm.ppf(alpha), stats.t.ppf(alpha, np.where(
        np.isfinite(df), df, 1.0)))
    half = crit * np.sqrt(total)
    return Pooled(estimate=q_bar, u_bar=u_bar, u_part=u_s, b=b, total=total, df=df,
                  lower=q_bar - half, upper=q_bar + half, fallback=fell, k_used=m, rule=rule,
                  fallback_rule=fallback, level=level, interval=interval,
                  covariance=matrix, covariance_fallback=matrix_fell)


def widen(pooled: Pooled, added: FloatArray, added_df: FloatArray) -> Pooled:
    """`pooled` with `added` (p,) more variance per term (the between-release term), its
    df combined with T's by Satterthwaite: 1/ν = (T/T')²/ν + (added/T')²/added_df.

    The matrix gets `added` on its diagonal (the term's cross-term correlations are not
    estimated); adding a non-negative diagonal keeps it positive semi-definite."""
    added = np.where(np.isfinite(pooled.total), np.nan_to_num(np.asarray(added, float)), 0.0)
    if np.any(added < 0):
        raise AnalysisError("the added variance must be non-negative")
    total = pooled.total + added
    with np.errstate(invalid="ignore", divide="ignore"):
        inv = ((pooled.total / total) ** 2 / pooled.df
               + np.where(added > 0, (added / total) ** 2 / added_df, 0.0))
        df = np.where(added > 0, 1.0 / inv, pooled.df)
    if pooled.interval == "normal":
        df = pooled.df
    alpha = (1.0 + pooled.level) / 2.0
    crit = np.where(np.isinf(df), stats.norm.ppf(alpha),
                    stats.t.ppf(alpha, np.where(np.isfinite(df), df, 1.0)))
    half = crit * np.sqrt(total)
    cov = pooled.covariance + np.diag(added)
    return replace(pooled, total=total, df=df, lower=pooled.estimate - half,
                   upper=pooled.estimate + half, covariance=cov)


def _rule_total(rule: str, infl: FloatArray, u: FloatArray, u_synth: FloatArray) -> FloatArray:
    """T of one rule from (1 + 1/K) b, the within-replicate variance and its twin-row part
    (vectors or matrices alike)."""
    if rule == "reiter":
        return infl - u
    if rule == "rubin":
        return infl + u
    return infl - u_synth + (u - u_synth)  # mixed


def _matrices(diagonal: FloatArray, full: FloatArray | None) -> FloatArray:
    """(K, p, p) per-replicate matrices: `full` as given, or diagonal ones from (K, p)."""
    if full is not None:
        return np.asarray(full, np.float64).reshape(diagonal.shape + diagonal.shape[-1:])
    K, p = diagonal.shape
    out = np.zeros((K, p, p))
    out[:, np.arange(p), np.arange(p)] = diagonal
    return out


def _covariance(coef: FloatArray, ok: BoolArray, q_bar: FloatArray, total: FloatArray,
                fell: BoolArray, rule: str, fallback: str, cov: FloatArray,
                cov_part: FloatArray) -> tuple[FloatArray, bool]:
    """T as a (p, p) matrix: the rule's matrix when positive definite, else the reported
    variances with the fallback matrix's correlations (see the module docstring)."""
    p = coef.shape[1]
    pair = ok[:, :, None] & ok[:, None, :]
    m2 = pair.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        U = np.where(pair, cov, 0.0).sum(axis=0) / m2
        U_s = np.where(pair, cov_part, 0.0).sum(axis=0) / m2
        dev = np.where(ok, coef - q_bar, 0.0)
        B = np.where(m2 > 1, dev.T @ dev / (m2 - 1), 0.0)
        infl = (1.0 + 1.0 / m2) * B
    T = np.where(m2 == 1, U, _rule_total(rule, infl, U, U_s))
    backup = U + infl if fallback == "rubin" else U
    out = np.full((p, p), np.nan)
    valid = np.flatnonzero(np.isfinite(total))
    if valid.size == 0:
        return out, False
    ix = np.ix_(valid, valid)
    Tv = np.nan_to_num((T[ix] + T[ix].T) / 2)
    if not fell[valid].any() and _positive_definite(Tv):
        out[ix] = Tv
        return out, False
    sd = np.sqrt(np.maximum(total[valid], 0.0))
    out[ix] = _correlation(np.nan_to_num(backup[ix])) * sd[:, None] * sd[None, :]
    return out, True


def _positive_definite(a: FloatArray) -> bool:
    try:
        np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        return False
    return True


def _correlation(a: FloatArray) -> FloatArray:
    """The correlation matrix of symmetric `a`, made positive semi-definite by clipping
    negative eigenvalues and rescaling to a unit diagonal; a zero-variance term gets none."""
    d = np.diag(a).copy()
    pos = d > 0
    s = np.where(pos, np.sqrt(np.where(pos, d, 1.0)), 1.0)
    c: FloatArray = a / s[:, None] / s[None, :]
    c[~pos, :] = 0.0
    c[:, ~pos] = 0.0
    c = (c + c.T) / 2
    np.fill_diagonal(c, 1.0)
    w, v = np.linalg.eigh(c)
    if w.min() < 0:
        c = (v * np.maximum(w, 0.0)) @ v.T
        scale = np.sqrt(np.diag(c))
        c = c / scale[:, None] / scale[None, :]
    return c
