"""Screening peers' twins against the leave-one-out consensus of the other peers.

A peer that publishes twins from a shifted model (a scaled outcome, a flipped coding) can
pull the combined fit anywhere. Each peer is judged by statistics of its twins alone
(`peerstats`: its own pooled Poisson coefficients and per-column marginal summaries), each
averaged over its K twins with a noise variance v: max(T, ū), Raghunathan–Reiter T from
its K twins with the within-twin variance ū as its floor. This module judges statistics
it is given; it fits nothing.

v is not the whole noise. A DP generator's noise is drawn once per release, so all K twins
share it and their spread does not show it; on randhie at ε = 1 honest parties' twins
disagree 2.5-6 times more (in sd) than their v says, and by very different factors from one
statistic to the next (a rare binary's coefficient far more than a mean). So each
statistic s gets its own inflation, estimated from the other peers, with a t reference
for how few they are. For peer p and the n others q:

    center  c = Σ_q x_q / v_q / Σ_q 1 / v_q              (precision-weighted mean)
    s²      = Σ_q (x_q - c)² / v_q / (n - 1)             (the others' spread over their noise)
    s̃²      = max(1, (d0 s0² + (n - 1) s²) / (d0 + n - 1))
    t       = (x_p - c) / sqrt(s̃² (v_p + 1 / Σ_q 1 / v_q)),   df = d0 + n - 1

With 2-5 others one statistic's s² is a poor estimate, so it is moderated toward a prior
s0² d0 / χ²_d0 fitted to the s² of the statistics of its family (Smyth 2004, limma's
`fitFDist`: `prior_inflation`): d0 is large when the family's statistics inflate alike
(then the pooled s0² is used, with many df) and small when they do not (each keeps its own
s², with few df). The two families, coefficients and marginals, get separate priors: on
randhie at ε = 1 the coefficients' inflation was 15-33 and the marginals' 6-11, and one
prior for both made the marginals' tolerance too wide to see a flipped coding. s̃²
is never below 1: release noise cannot make twins agree better than their own noise. The t
reference is for the inflation, the larger unknown (v_p, estimated from K twins, is
bounded below by ū and by the others' noise, see below). A peer's extra spread
(heterogeneous parties, a skewed split) shows in the others' s², so it widens everyone's
tolerance; a shifted peer among the others does the same when an honest peer
is judged, so disagreeing with an honest peer widens that peer's tolerance rather than
getting it flagged.

What a peer merely claims never widens its own tolerance: v_p = max(its own v, the
median over others q of v_q · (m_q / m_p) · h(ε̃_p) / h(ε_q)), with m the twins' row count
(measured; N is shown beside it), h(ε) = 1 + 1/ε² (the variance grows as ε falls; an
assumed shape, which cancels when all peers use one ε) and ε̃_p = max(ε_p, median ε of the
others). So a peer cannot make its twins look precise by publishing K identical copies, a
small peer is judged with the larger noise of its small twins, and claiming a tiny ε (or
N) leaves its scale where the others' noise puts it. The cost: an honest low-ε peer whose
generator understates its own noise is judged like the others and may be flagged;
`flag`, the default policy, only reports it.

The p-value-like measure is Bonferroni over the m statistics judged, min(1, m · min_s
p_s) with p_s the two-sided t p-value; a peer is flagged when it is below the threshold,
and the reason names the statistics with p_s < threshold / m. Policies: ``off`` (nothing
is computed, every peer is used), ``flag`` (flags are reported, every peer is used), and
``exclude`` (flagged peers are left out of the combined fit). The party analysis
(`party.analyze_party`) reports the combined fit with and without the flagged peers. With
fewer than `min_peers` (3) peers there is no consensus to judge by: the report says so and
flags none (`screening_status` says beforehand whether statistics are needed). Peers whose
twins are not one whole release (`usable`: incomplete, duplicated indices, K < 2, ...) are
not judged and not accepted; the report lists them under `left_out`. `party.screen` is the
whole step: check the peers, compute their statistics, judge them.
Measured power and false flags, with simulated and with DP twins: docs/ANALYSIS.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import special, stats

from twinnode.analysis.arrays import BoolArray, FloatArray
from twinnode.analysis.options import MIN_PEERS, POLICIES
from twinnode.atomic import jsonable
from twinnode.errors import AnalysisError

FAMILIES = ("coefficients", "marginals")


@dataclass(frozen=True)
class PeerStatistics:
    """A peer's statistics averaged over its twins, with the noise variance of each
    (`peerstats.peer_statistics` computes them)."""

    names: tuple[str, ...]
    families: tuple[str, ...]   # "coefficients" or "marginals" (each has its own prior)
    values: FloatArray
    variances: FloatArray
    n: int          # claimed
    epsilon: float  # claimed
    k: int
    rows: int       # measured: the mean row count of its twins


@dataclass(frozen=True)
class Check:
    """One statistic of one peer against the consensus of the others."""

    name: str
    value: float
    consensus: float
    scale: float
    z: float
    df: float = float("inf")   # of the t reference (inf: normal)
    inflation: float = 1.0     # the others' spread over their noise, moderated (≥ 1)

    @property
    def p(self) -> float:
        """Two-sided p-value of z under t with df degrees of freedom."""
        return float(2 * stats.t.sf(abs(self.z), self.df))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = jsonable({
            "name": self.name, "value": self.value, "consensus": self.consensus,
            "scale": self.scale, "z": self.z, "df": self.df, "inflation": self.inflation,
            "p": self.p})
        return out


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
        out: dict[str, Any] = jsonable({
            "peer": self.peer, "n": self.n, "epsilon": self.epsilon, "rows": self.rows,
            "judged_epsilon": self.judged_epsilon, "k": self.k, "score": self.score,
            "p_value": self.p_value, "flagged": self.flagged, "reason": self.reason})
        if all_checks:
            out["checks"] = [c.to_dict() for c in self.checks]
        return out


@dataclass(frozen=True)
class ScreeningReport:
    """Per-peer verdicts, the peers the policy keeps, and the peers whose twins are unusable."""

    policy: str
    threshold: float
    status: str                          # off | insufficient-peers | screened
    message: str
    peers: tuple[PeerScreen, ...]
    flagged: tuple[str, ...]
    accepted: tuple[str, ...]
    dispersion: Mapping[str, float] = field(default_factory=dict)
    left_out: Mapping[str, str] = field(default_factory=dict)  # peer -> why not usable

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``with_flagged`` and ``without_flagged`` are null here: the party
        analysis, which fits them, fills them in (`party.PartyReport.to_dict`)."""
        return {"policy": self.policy, "threshold": self.threshold, "status": self.status,
                "message": self.message, "flagged": list(self.flagged),
                "accepted": list(self.accepted), "left_out": dict(self.left_out),
                "dispersion": jsonable(dict(self.dispersion)),
                "peers": [p.to_dict() for p in self.peers],
                "with_flagged": None, "without_flagged": None}


def screening_status(policy: str, threshold: float, peers: int,
                     min_peers: int = MIN_PEERS) -> str:
    """off | insufficient-peers | screened: whether `peers` usable peers are judged (only
    then are their statistics needed). A policy or threshold out of range is an error."""
    if policy not in POLICIES:
        raise AnalysisError(f"unknown screening policy {policy!r}; expected one of "
                            f"{', '.join(POLICIES)}")
    if not 0 < threshold < 1:
        raise AnalysisError(f"screening threshold must be in (0, 1), got {threshold}")
    if policy == "off":
        return "off"
    return "insufficient-peers" if peers < min_peers else "screened"


def screening_report(peers: Sequence[str], statistics: Mapping[str, PeerStatistics],
                     policy: str, threshold: float, *, left_out: Mapping[str, str],
                     min_peers: int = MIN_PEERS) -> ScreeningReport:
    """The verdicts on the usable `peers` (in order) from their `statistics` (needed when
    `screening_status` is "screened"), the peers the policy keeps, and those left out."""
    status = screening_status(policy, threshold, len(peers), min_peers)
    verdicts: tuple[PeerScreen, ...] = ()
    dispersion: dict[str, float] = {}
    if status == "off":
        message = "screening is off: every peer is used"
    elif status == "insufficient-peers":
        message = (f"screening needs at least {min_peers} peers to form a consensus, got "
                   f"{len(peers)}: no peer judged, none flagged")
    else:
        verdicts, dispersion = judge({name: statistics[name] for name in peers}, threshold)
        n_flag = sum(v.flagged for v in verdicts)
        message = f"{len(peers)} peers screened, {n_flag} flagged (p < {threshold:g})"
    flagged = tuple(v.peer for v in verdicts if v.flagged)
    accepted = tuple(n for n in peers if policy != "exclude" or n not in flagged)
    if left_out:
        message += f"; {len(left_out)} left out (twins not usable)"
    return ScreeningReport(policy=policy, threshold=threshold, status=status,
                           message=message, peers=verdicts, flagged=flagged,
                           accepted=accepted, dispersion=dispersion, left_out=dict(left_out))


def judge(statistics: Mapping[str, PeerStatistics], threshold: float
          ) -> tuple[tuple[PeerScreen, ...], dict[str, float]]:
    """Leave-one-out moderated t per statistic, Bonferroni p-value, flag per peer.

    Also returns, per family, the median over judged peers of the prior inflation s0² and
    of its df d0."""
    names = list(statistics)
    stat_names = statistics[names[0]].names
    if any(statistics[n].names != stat_names for n in names):
        raise AnalysisError("peers' statistics do not line up (different designs?)")
    values = np.array([statistics[n].values for n in names])        # (P, S)
    own_var = np.array([statistics[n].variances for n in names])    # (P, S)
    size = np.array([statistics[n].rows for n in names], float)     # measured, not claimed
    eps = np.array([statistics[n].epsilon for n in names])
    family = np.array(statistics[names[0]].families)
    verdicts: list[PeerScreen] = []
    priors: dict[str, list[tuple[float, float]]] = {}
    for i, name in enumerate(names):
        others = np.arange(len(names)) != i
        # a claimed ε below the others' median buys no wider tolerance (module docstring)
        judged_eps = max(eps[i], float(np.median(eps[others])))
        transfer = (own_var[others] * (size[others] / size[i])[:, None]
                    * (_h(judged_eps) / _h(eps[others]))[:, None])
        v_i = np.fmax(own_var[i], np.nanmedian(transfer, axis=0))
        center, center_var, s2, d = _others(values[others], own_var[others])
        usable = np.isfinite(values[i]) & np.isfinite(v_i) & (d >= 1)
        inflation, df, fitted = _moderate(s2, d, family, usable)
        for fam, prior in fitted.items():
            priors.setdefault(fam, []).append(prior)
        scale = np.sqrt(inflation * (v_i + center_var))
        checks = []
        for s in np.flatnonzero(usable):
            diff = float(values[i, s] - center[s])
            z = (diff / scale[s] if scale[s] > 0 else
                 0.0 if diff == 0 else float(np.inf * np.sign(diff)))
            checks.append(Check(stat_names[s], float(values[i, s]), float(center[s]),
                                float(scale[s]), z, float(df[s]), float(inflation[s])))
        verdicts.append(replace(_verdict(name, statistics[name], checks, threshold),
                                rows=statistics[name].rows, judged_epsilon=judged_eps))
    dispersion = {}
    for fam, pairs in priors.items():
        d0s, s0s = np.array(pairs).T
        dispersion[f"{fam}_inflation"] = float(np.median(s0s))
        dispersion[f"{fam}_df"] = float(np.median(d0s))
    return tuple(verdicts), dispersion


def _moderate(s2: FloatArray, d: FloatArray, family: NDArray[np.str_], usable: BoolArray
              ) -> tuple[FloatArray, FloatArray, dict[str, tuple[float, float]]]:
    """Each statistic's inflation s̃² (at least 1) and t df under its family's prior, and
    each family's fitted prior (d0, s0²)."""
    post, df = np.full(s2.shape, np.nan), np.full(s2.shape, np.nan)
    fitted: dict[str, tuple[float, float]] = {}
    for fam in FAMILIES:
        mine = usable & (family == fam)
        d0, s0 = fitted[fam] = prior_inflation(s2[mine], d[mine])
        post[mine] = s0 if np.isinf(d0) else (d0 * s0 + d[mine] * s2[mine]) / (d0 + d[mine])
        df[mine] = d0 + d[mine]
    return np.maximum(1.0, post), df, fitted


def _h(eps: float | FloatArray) -> FloatArray:
    """How a statistic's noise variance grows as ε falls (an assumed shape, see above)."""
    out: FloatArray = 1.0 + 1.0 / np.asarray(eps, float) ** 2
    return out


def _others(x: FloatArray, v: FloatArray
            ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Per statistic over the other peers: the precision-weighted mean, its noise variance,
    the inflation s² of their spread over their noise, and its degrees of freedom."""
    good = np.isfinite(x) & np.isfinite(v) & (v > 0)
    w = np.where(good, 1.0 / np.where(good, v, 1.0), 0.0)
    xs = np.where(good, x, 0.0)
    d = good.sum(axis=0) - 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        wsum = w.sum(axis=0)
        center = (w * xs).sum(axis=0) / wsum
        s2 = (w * (xs - center) ** 2).sum(axis=0) / d
    return center, 1.0 / wsum, s2, d


def prior_inflation(s2: FloatArray, d: FloatArray) -> tuple[float, float]:
    """Empirical-Bayes prior (d0, s0²) for per-statistic variances s2 with d df each.

    Smyth's (2004, limma `fitFDist`) moments of log s², for the model σ² ~ s0² d0 / χ²_d0
    across the statistics and s² ~ σ² χ²_d / d within each. d0 = inf when the s² vary no
    more than their own sampling allows (every statistic then uses s0²); with fewer than 3
    usable s², s0² is their geometric mean."""
    ok = np.isfinite(s2) & (s2 > 0) & (d >= 1)
    s2, d = np.asarray(s2[ok], float), np.asarray(d[ok], float)
    if s2.size == 0:
        return float("inf"), 1.0
    e = np.log(s2) - special.digamma(d / 2) + np.log(d / 2)
    if s2.size < 3:
        return float("inf"), float(np.exp(e.mean()))
    excess = e.var(ddof=1) - float(np.mean(special.polygamma(1, d / 2)))
    if excess <= 0:
        return float("inf"), float(np.exp(e.mean()))
    d0 = 2.0 * _trigamma_inverse(excess)
    return d0, float(np.exp(e.mean() + special.digamma(d0 / 2) - np.log(d0 / 2)))


def _trigamma_inverse(x: float) -> float:
    """y with trigamma(y) = x (Newton's method from limma's starting point)."""
    y = 0.5 + 1.0 / x
    for _ in range(50):
        tri = float(special.polygamma(1, y))
        step = tri * (1 - tri / x) / float(special.polygamma(2, y))
        y += step
        if abs(step) / y < 1e-8:
            break
    return y


def _verdict(name: str, st: PeerStatistics, checks: list[Check], threshold: float
             ) -> PeerScreen:
    if not checks:
        return PeerScreen(name, st.n, st.epsilon, st.k, float("nan"), 1.0, False,
                          "no statistic could be compared", ())
    score = float(np.max(np.abs([c.z for c in checks])))
    m = len(checks)
    p_value = float(min(1.0, m * min(c.p for c in checks)))
    flagged = p_value < threshold
    reason = ""
    if flagged:
        off = sorted((c for c in checks if c.p < threshold / m), key=lambda c: c.p)
        reason = "; ".join(f"{c.name} = {c.value:.4g} vs consensus {c.consensus:.4g} "
                           f"(t = {c.z:+.1f}, df {c.df:.0f})" for c in off[:3])
        if len(off) > 3:
            reason += f"; and {len(off) - 3} more"
    return PeerScreen(name, st.n, st.epsilon, st.k, score, p_value, flagged, reason,
                      tuple(checks))
