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
remained. With one replicate T = ū and ν = ∞: a single fit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from .errors import AnalysisError

RULES = ("reiter", "rubin", "mixed")
DEFAULT_RULE = "mixed"
"""The default (see docs/ANALYSIS.md): with D_k = local rows ∪ twins, reiter's T subtracts
the local rows' variance that b never saw, and with a λ chosen below 1 the local rows carry
a large share; mixed is reiter on the twins' share and is exact at both ends (no local
rows; λ = 0)."""
FALLBACKS = ("rubin", "within")
INTERVALS = ("t", "normal")


@dataclass(frozen=True)
class Pooled:
    """Per-coefficient pooled values (arrays of length p)."""

    estimate: np.ndarray
    u_bar: np.ndarray
    u_part: np.ndarray        # synthetic rows' part of ū (0 when not split)
    b: np.ndarray
    total: np.ndarray         # T, after any fallback
    df: np.ndarray            # inf for the normal reference
    lower: np.ndarray
    upper: np.ndarray
    fallback: np.ndarray      # bool: T <= 0 under the rule, the fallback was used
    k_used: np.ndarray        # replicates with a finite estimate
    rule: str
    fallback_rule: str
    level: float
    interval: str             # "t" or "normal"

    @property
    def se(self) -> np.ndarray:
        return np.sqrt(self.total)


def pool(coef: np.ndarray, se: np.ndarray, *, rule: str = DEFAULT_RULE,
         var_part: np.ndarray | None = None, fallback: str = "rubin", level: float = 0.95,
         interval: str = "t") -> Pooled:
    """Pool K estimates (K, p) with their standard errors (K, p) by `rule`."""
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
    with np.errstate(invalid="ignore", divide="ignore"):
        q_bar = np.where(ok, coef, 0.0).sum(axis=0) / m
        u_bar = np.where(ok, u, 0.0).sum(axis=0) / m
        u_s = np.where(ok, part, 0.0).sum(axis=0) / m
        dev = np.where(ok, coef - q_bar, 0.0)
        b = np.where(m > 1, (dev ** 2).sum(axis=0) / (m - 1), 0.0)
        infl = (1.0 + 1.0 / m) * b
        if rule == "reiter":
            total = infl - u_bar
        elif rule == "rubin":
            total = infl + u_bar
        else:
            total = infl - u_s + (u_bar - u_s)
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
    if interval == "normal":
        df = np.where(empty, np.nan, np.inf)
    alpha = (1.0 + level) / 2.0
    crit = np.where(np.isinf(df), stats.norm.ppf(alpha), stats.t.ppf(alpha, np.where(
        np.isfinite(df), df, 1.0)))
    half = crit * np.sqrt(total)
    return Pooled(estimate=q_bar, u_bar=u_bar, u_part=u_s, b=b, total=total, df=df,
                  lower=q_bar - half, upper=q_bar + half, fallback=fell, k_used=m, rule=rule,
                  fallback_rule=fallback, level=level, interval=interval)
