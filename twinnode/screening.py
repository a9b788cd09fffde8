"""Screening peers' twins against the leave-one-out consensus of the other peers.

A peer that publishes twins from a shifted model (a scaled outcome, a flipped coding) can
pull the combined fit anywhere. For each peer we compute statistics of its twins alone:
its own pooled Poisson coefficients (`analysis.twins_fit`) and per-column marginal
summaries (the mean of each continuous or count column, the rate of 1 of each binary
column, the rate of each level of each categorical column), each averaged over its K twins
with a variance v. For each statistic, z = (value - median of the others) / scale, where

    scale² = φ (v_p + (π/2) median(v_others) / n_others) + τ²,
    τ² = max(0, (1.4826 MAD(values of the others))² - φ median(v_others)),

i.e. the peer's own noise, the noise of the consensus (the median of n values has about
π/2 times the variance of their mean), and the spread between honest parties beyond their
noise (robustly, from the others). The noise v of a statistic is
max(v_own, v_expected): v_own = max(T, ū) from the peer's own K twins (Raghunathan–Reiter
T; ū, the within-twin variance, as its floor), and v_expected transfers the others' v_own
to this peer: median over others q of v_q · (m_q / m_p) · h(ε̃_p) / h(ε_q), with m the
twins' row count, h(ε) = 1 + 1/ε² (the variance grows as ε falls; an assumed shape, which
cancels when all peers use one ε) and ε̃_p = max(ε_p, median ε of the others). So a peer
cannot make its twins look precise by publishing K identical copies, a small peer is
judged with the larger noise of its small twins, and a peer whose twins really are
noisier (a low ε) shows it in v_own.

What a peer merely claims never widens its own tolerance: its N is not used (its twins'
row count is measured; N is shown beside it), and its ε is floored at the others' median,
so claiming a tiny ε (or N) leaves its scale where the others' noise puts it, while a
larger ε than the others' can only narrow it. Measured before this rule (small schema,
5 honest peers, a peer with the smoker coding flipped): p = 6e-40 claiming ε = 1, p = 1
claiming ε = 0.001, score 13.4 -> 3.5 claiming N = 20; with it, the same p = 6e-40 for
all three. The cost: an honest low-ε peer whose generator understates its own noise (its
twins agree more than its DP noise warrants) is judged like the others and may be
flagged; `flag`, the default policy, only reports it.

The twins' noise reflects the generator's model, and real parties differ more than that
(e.g. an overdispersed outcome fitted as Poisson). So each family of statistics
(outcome: the coefficients and the outcome's mean, which the generator's outcome model
makes; covariates: the covariates' marginals) gets a dispersion factor
φ = max(1, median z₀² / 0.455), where z₀ uses the noise terms alone (0.455 is the median
of χ²₁; "genomic control" over all peers and statistics of the family, robust to the few
large z of a shifted peer, and never below 1); the noise terms are multiplied by φ and τ²
becomes the spread beyond φ times the noise. Measured on randhie split 7 ways with simulated twins, honest parties were
flagged in 5-8% of cases without φ.

Score = max |z|; the p-value-like measure is Bonferroni over the statistics judged under a
normal reference, min(1, m · 2 (1 - Φ(score))); a peer is flagged when it is below the
threshold. The reason names the statistics that are off. Policies: ``off`` (nothing is
computed, every peer is used), ``flag`` (flags are reported, every peer is used), and
``exclude`` (flagged peers are left out of the combined fit). With a local data set the
report always carries the combined fit with and without the flagged peers. With fewer than
`min_peers` (3) peers there is no consensus to judge by: the report says so and flags none.
Peers whose twins are not one whole release (`peerset`: incomplete, duplicated indices, K <
2, ...) are not judged and not accepted; the report lists them under `left_out`. Each
judged peer's statistics use all of its own K twins (no common K is needed to judge).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .analysis import AnalysisOptions, Peers, PooledFit, combined_fit, twins_fit
from .atomic import jsonable
from .errors import AnalysisError
from .peerset import usable_peers
from .schema import Schema
from .twins import Twin

POLICIES = ("off", "flag", "exclude")
MIN_PEERS = 3
MAD_TO_SD = 1.4826
CHI2_1_MEDIAN = float(stats.chi2.ppf(0.5, 1))  # 0.4549


@dataclass(frozen=True)
class Check:
    """One statistic of one peer against the consensus of the others."""

    name: str
    value: float
    consensus: float
    scale: float
    z: float

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"name": self.name, "value": self.value,
                           "consensus": self.consensus, "scale": self.scale, "z": self.z})


@dataclass(frozen=True)
class PeerScreen:
    """The verdict on one peer."""

    peer: str
    n: int                  # as claimed in its provenance (not used to judge it)
    epsilon: float          # as claimed
    k: int
    score: float
    p_value: float
    flagged: bool
    reason: str
    checks: tuple[Check, ...]
    rows: int = 0                      # its twins' row count (what its noise is scaled by)
    judged_epsilon: float = float("nan")  # ε its expected noise was transferred to

    def to_dict(self, all_checks: bool = True) -> dict[str, Any]:
        out = jsonable({"peer": self.peer, "n": self.n, "epsilon": self.epsilon,
                        "rows": self.rows, "judged_epsilon": self.judged_epsilon,
                        "k": self.k, "score": self.score, "p_value": self.p_value,
                        "flagged": self.flagged, "reason": self.reason})
        if all_checks:
            out["checks"] = [c.to_dict() for c in self.checks]
        return out


@dataclass(frozen=True)
class ScreeningReport:
    """Per-peer verdicts, the peers the policy keeps, and fits with and without the flagged."""

    policy: str
    threshold: float
    status: str                          # off | insufficient-peers | screened
    message: str
    peers: tuple[PeerScreen, ...]
    flagged: tuple[str, ...]
    accepted: tuple[str, ...]
    dispersion: Mapping[str, float] = field(default_factory=dict)
    left_out: Mapping[str, str] = field(default_factory=dict)  # peer -> why not usable
    with_flagged: PooledFit | None = None
    without_flagged: PooledFit | None = None

    @property
    def chosen(self) -> PooledFit | None:
        """The combined fit the policy selects (without the flagged only under exclude)."""
        return self.without_flagged if self.policy == "exclude" else self.with_flagged

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"policy": self.policy, "threshold": self.threshold,
                               "status": self.status, "message": self.message,
                               "flagged": list(self.flagged), "accepted": list(self.accepted),
                               "left_out": dict(self.left_out),
                               "dispersion": dict(self.dispersion),
                               "peers": [p.to_dict() for p in self.peers]}
        for key, fit in (("with_flagged", self.with_flagged),
                         ("without_flagged", self.without_flagged)):
            out[key] = None if fit is None else {
                "peers": list(fit.peers),
                "coefficients": {t: jsonable({"estimate": e, "se": s})
                                 for t, e, s in zip(fit.terms, fit.estimate, fit.se)}}
        return out


@dataclass(frozen=True)
class PeerStatistics:
    """A peer's statistics averaged over its twins, with the noise variance of each."""

    names: tuple[str, ...]
    families: tuple[str, ...]   # "outcome" (coefficients, outcome mean) or "covariates"
    values: np.ndarray
    variances: np.ndarray
    n: int          # claimed
    epsilon: float  # claimed
    k: int
    rows: int       # measured: the mean row count of its twins


def screen(schema: Schema, peers: Peers, policy: str = "flag", threshold: float = 0.01, *,
           local_frame: pd.DataFrame | None = None, options: AnalysisOptions | None = None,
           weight: float = 1.0, min_peers: int = MIN_PEERS) -> ScreeningReport:
    """Judge each peer against the others; with `local_frame`, fit with and without flags."""
    if policy not in POLICIES:
        raise AnalysisError(f"unknown screening policy {policy!r}; expected one of "
                            f"{', '.join(POLICIES)}")
    if not 0 < threshold < 1:
        raise AnalysisError(f"screening threshold must be in (0, 1), got {threshold}")
    options = options or AnalysisOptions()
    checked = usable_peers(schema, peers)
    twins = checked.twins
    names = tuple(twins)
    if policy == "off":
        status, message, verdicts = "off", "screening is off: every peer is used", ()
        dispersion: dict[str, float] = {}
    elif len(names) < min_peers:
        status = "insufficient-peers"
        message = (f"screening needs at least {min_peers} peers to form a consensus, got "
                   f"{len(names)}: no peer judged, none flagged")
        verdicts, dispersion = (), {}
    else:
        statistics = {name: peer_statistics(schema, twins[name], options) for name in names}
        verdicts, dispersion = judge(statistics, threshold)
        n_flag = sum(v.flagged for v in verdicts)
        status = "screened"
        message = f"{len(names)} peers screened, {n_flag} flagged (p < {threshold:g})"
    flagged = tuple(v.peer for v in verdicts if v.flagged)
    accepted = tuple(n for n in names if policy != "exclude" or n not in flagged)
    if checked.left_out:
        message += f"; {len(checked.left_out)} left out (twins not usable)"
    report = ScreeningReport(policy=policy, threshold=threshold, status=status,
                             message=message, peers=tuple(verdicts), flagged=flagged,
                             accepted=accepted, dispersion=dispersion,
                             left_out=dict(checked.left_out))
    if local_frame is None:
        return report
    # each fit checks its peers and shares K among them only
    with_all = combined_fit(schema, local_frame, peers, weight=weight, options=options)
    without = with_all if not flagged else combined_fit(
        schema, local_frame, {n: t for n, t in peers.items() if n not in flagged},
        weight=weight, options=options)
    return replace(report, with_flagged=with_all, without_flagged=without)


def peer_statistics(schema: Schema, twins: Sequence[Twin],
                    options: AnalysisOptions | None = None) -> PeerStatistics:
    """One peer's pooled coefficients and marginal summaries, each with its noise variance."""
    options = options or AnalysisOptions()
    fit = twins_fit(schema, twins, replace(options, rule="reiter", fallback="within"))
    names = [f"coef:{t}" for t in fit.terms]
    values = [fit.estimate]
    variances = [np.maximum(fit.pooled.total, fit.pooled.u_bar)]
    per_twin_value, per_twin_var = [], []
    for twin in twins:
        v, u, labels = _marginals(schema, twin.arrays)
        per_twin_value.append(v)
        per_twin_var.append(u)
    vals, within = np.array(per_twin_value), np.array(per_twin_var)
    k = len(twins)
    u_bar = within.mean(axis=0)
    b = vals.var(axis=0, ddof=1) if k > 1 else np.zeros_like(u_bar)
    rr = (1 + 1 / k) * b - u_bar
    names += labels
    values.append(vals.mean(axis=0))
    variances.append(np.maximum(np.where(rr > 0, rr, 0.0), u_bar))
    prov = twins[0].provenance
    outcome = f"mean:{schema.outcome_column().name}"
    families = tuple("outcome" if n.startswith("coef:") or n == outcome else "covariates"
                     for n in names)
    return PeerStatistics(names=tuple(names), families=families,
                          values=np.concatenate(values),
                          variances=np.concatenate(variances), n=int(prov.n),
                          epsilon=float(prov.epsilon), k=k,
                          rows=int(round(np.mean([t.rows for t in twins]))))


def judge(statistics: Mapping[str, PeerStatistics], threshold: float
          ) -> tuple[tuple[PeerScreen, ...], dict[str, float]]:
    """Leave-one-out robust z-scores per statistic, Bonferroni p-value, flag per peer.

    Also returns the dispersion factor φ applied to each family of statistics."""
    names = list(statistics)
    stat_names = statistics[names[0]].names
    if any(statistics[n].names != stat_names for n in names):
        raise AnalysisError("peers' statistics do not line up (different designs?)")
    values = np.array([statistics[n].values for n in names])        # (P, S)
    own_var = np.array([statistics[n].variances for n in names])    # (P, S)
    size = np.array([statistics[n].rows for n in names], float)     # measured, not claimed
    eps = np.array([statistics[n].epsilon for n in names])
    h = 1.0 + 1.0 / eps ** 2
    judged_eps = np.empty(len(names))
    P, S = values.shape
    # per peer and statistic: distance to the consensus, noise variance, extra spread
    diff, noise, spread, med_noise = (np.full((P, S), np.nan) for _ in range(4))
    center = np.full((P, S), np.nan)
    for i in range(P):
        others = np.arange(P) != i
        # a claimed ε below the others' median buys no wider tolerance (module docstring)
        judged_eps[i] = max(eps[i], float(np.median(eps[others])))
        h_i = 1.0 + 1.0 / judged_eps[i] ** 2
        transfer = own_var[others] * (size[others] / size[i])[:, None] * (h_i / h[others])[:, None]
        v_p = np.fmax(own_var[i], np.nanmedian(transfer, axis=0))
        for s in range(S):
            ov, oq = values[others, s], own_var[others, s]
            good = np.isfinite(ov) & np.isfinite(oq)
            if not np.isfinite(values[i, s]) or good.sum() < 2 or not np.isfinite(v_p[s]):
                continue
            ov, oq = ov[good], oq[good]
            center[i, s] = np.median(ov)
            med_noise[i, s] = np.median(oq)
            diff[i, s] = values[i, s] - center[i, s]
            noise[i, s] = v_p[s] + np.pi / 2 * med_noise[i, s] / len(ov)
            spread[i, s] = (MAD_TO_SD * np.median(np.abs(ov - center[i, s]))) ** 2
    family = np.array(statistics[names[0]].families)
    dispersion = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        z2 = diff ** 2 / noise
        for fam in ("outcome", "covariates"):
            vals = z2[:, family == fam]
            vals = vals[np.isfinite(vals)]
            dispersion[fam] = (float(max(1.0, np.median(vals) / CHI2_1_MEDIAN))
                               if vals.size else 1.0)
    phi = np.array([dispersion[f] for f in family])[None, :]
    tau2 = np.maximum(0.0, spread - phi * med_noise)
    scale = np.sqrt(phi * noise + tau2)
    verdicts = []
    for i, name in enumerate(names):
        checks = []
        for s, stat in enumerate(stat_names):
            if not np.isfinite(diff[i, s]):
                continue
            d, sc = float(diff[i, s]), float(scale[i, s])
            z = d / sc if sc > 0 else (0.0 if d == 0 else float(np.inf * np.sign(d)))
            checks.append(Check(stat, float(values[i, s]), float(center[i, s]), sc, z))
        verdicts.append(replace(_verdict(name, statistics[name], checks, threshold),
                                rows=statistics[name].rows,
                                judged_epsilon=float(judged_eps[i])))
    return tuple(verdicts), dispersion


def _verdict(name: str, st: PeerStatistics, checks: list[Check], threshold: float
             ) -> PeerScreen:
    if not checks:
        return PeerScreen(name, st.n, st.epsilon, st.k, float("nan"), 1.0, False,
                          "no statistic could be compared", ())
    zs = np.abs([c.z for c in checks])
    score = float(zs.max())
    m = len(checks)
    p_value = float(min(1.0, m * 2 * stats.norm.sf(score)))
    flagged = p_value < threshold
    reason = ""
    if flagged:
        critical = stats.norm.isf(threshold / (2 * m))
        off = sorted((c for c in checks if abs(c.z) > critical), key=lambda c: -abs(c.z))
        reason = "; ".join(f"{c.name} = {c.value:.4g} vs consensus {c.consensus:.4g} "
                           f"(z = {c.z:+.1f})" for c in off[:3])
        if len(off) > 3:
            reason += f"; and {len(off) - 3} more"
    return PeerScreen(name, st.n, st.epsilon, st.k, score, p_value, flagged, reason,
                      tuple(checks))


def _marginals(schema: Schema, arrays: Mapping[str, np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-column summaries of one twin, the variance of each, and their names."""
    values, variances, labels = [], [], []
    for col in schema.columns:
        a = np.asarray(arrays[col.name])
        n = len(a)
        if col.type in ("continuous", "count"):
            x = a.astype(np.float64)
            values.append(x.mean())
            variances.append(max(x.var(ddof=1) if n > 1 else 0.0, _unit_floor(col)) / n)
            labels.append(f"mean:{col.name}")
            continue
        levels = ("1",) if col.type == "binary" else col.levels
        codes = (1,) if col.type == "binary" else range(len(col.levels))
        for code, level in zip(codes, levels):
            count = float(np.sum(a == code))
            r = (count + 0.5) / (n + 1.0)  # keeps the variance positive at rate 0 or 1
            values.append(count / n)
            variances.append(r * (1 - r) / n)
            labels.append(f"rate:{col.name}={level}")
    return np.array(values), np.array(variances), labels


def _unit_floor(col) -> float:
    """A tiny variance floor so a constant column cannot give a zero scale."""
    if col.type == "count":
        return 0.25
    return ((col.upper - col.lower) / 1000.0) ** 2
