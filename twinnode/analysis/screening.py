"""Screening peers' twins: against the party's own rows and the consensus of the others.

A peer that publishes twins from a shifted model (a scaled outcome, a flipped coding) can
pull the combined fit anywhere. Each peer is judged by statistics of its twins alone
(`peerstats`: its own pooled Poisson coefficients and per-column marginal summaries), each
averaged over its K twins with a noise variance v: max(T, ū), Raghunathan–Reiter T from
its K twins with the within-twin variance ū as its floor. This module judges statistics
it is given; it fits nothing. Two references, each a t test per statistic:

**The consensus** (with at least `min_peers` = 3 peers): peer p against the n other peers,

    center  c = Σ_q x_q / v_q / Σ_q 1 / v_q              (precision-weighted mean)
    s²      = Σ_q (x_q - c)² / v_q / (n - 1)             (the others' spread over their noise)
    t       = (x_p - c) / sqrt(s̃²_p v_p + s̃²_c Var c),  Var c = 1 / Σ_q 1 / v_q

with s̃² the inflation (`inflation`): v is not the whole noise when a release's twins share
one draw of its DP error (releases that are not noise-aware: on randhie at ε = 1 honest
parties' twins disagreed 2.5-6 times more, in sd, than their v said). For such a peer s̃²_p
is s² moderated toward a prior fitted over its family's statistics (coefficients,
marginals; limma's moderated t, Smyth 2004), with d0 + n - 1 df: the rule of issue 9. For a
noise-aware peer (its twins each carry their own draw of the DP error: `generator
["noise_aware"]` in their provenance) v already includes that error, so s̃²_p is s² shrunk
toward 1 under a fixed prior (`inflation.noise_aware`: 10 prior df). s̃²_c is the
noise-aware rule when every other peer is noise-aware, else the fitted one. s̃² is never
below 1. A peer's extra spread (heterogeneous parties, a shifted peer) shows in the
others' s², so it widens everyone's tolerance rather than getting an honest peer flagged.

**The local rows** (when the party's rows are given: `LocalStatistics`, the same
statistics from the real rows with their sampling variances v_L; the party's own rows need
no trust, and this works with one peer):

    t = (x_p - x_L) / sqrt(s̃²_p v_p + v_L),   df = df_p (1 + v_L / (s̃²_p v_p))²

with the peer's own inflation s̃²_p and its df_p as above, carried to the sum by
Satterthwaite (v_L, from the real rows, is taken as known). With fewer than 3 peers nothing
estimates a peer's release noise from the others: a noise-aware peer takes the prior alone
(s̃²_p = 1, t with 10 df); a peer whose release is not noise-aware is not judged (its v
omits an error of unknown size, 6-30 times v on randhie) and the verdict says so. The
local rows' v_L is not inflated: it is the real rows' own sampling variance (robust HC1
for the coefficients). What this assumes: the party's rows and the peer's come from one
population; a party whose own population differs (a real site effect) sees honest peers
far from its rows, which the consensus would not (both p-values are reported, so "far
from my rows" and "far from the others" can be told apart).

What a peer merely claims never widens its own tolerance: v_p = max(its own v, the
median over others q of v_q · (m_q / m_p) · h(ε̃_p) / h(ε_q)), with m the twins' row count
(measured; N is shown beside it), h(ε) = 1 + 1/ε² (`inflation.h`) and ε̃_p = max(ε_p,
median ε of the others). So a peer cannot make its twins look precise by publishing K
identical copies, a small peer is judged with the larger noise of its small twins, and
claiming a tiny ε (or N) leaves its scale where the others' noise puts it.

Each test's p-value is Bonferroni over its m statistics, min(1, m · min_s p_s). Where both
tests ran, the peer's p-value is Bonferroni over the two, min(1, 2 · min(p_consensus,
p_local)) (valid whatever their dependence); a peer is flagged when it is below the
threshold, and the reason names the statistics of each test with p_s below its share of
the threshold. Policies: ``off`` (nothing is computed, every peer is used), ``flag``
(flags are reported, every peer is used), and ``exclude`` (flagged peers are left out of
the combined fit). With neither reference (fewer than 3 peers and no local rows) no peer
is judged: the report says so (`screening_status` says beforehand whether statistics are
needed). Peers whose twins are not one whole release (`usable`) are not judged and not
accepted; the report lists them under `left_out`. `party.screen` is the whole step.
Measured power and false flags, with simulated and with DP twins: docs/ANALYSIS.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from twinnode.analysis import inflation
from twinnode.analysis.arrays import BoolArray, FloatArray
from twinnode.analysis.options import MIN_PEERS, POLICIES
from twinnode.atomic import jsonable
from twinnode.errors import AnalysisError

FAMILIES = inflation.FAMILIES
REFERENCES = ("local", "consensus")


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
    noise_aware: bool = False   # its twins each carry their own draw of the release's error


@dataclass(frozen=True)
class LocalStatistics:
    """The same statistics from the party's own rows, with their sampling variances
    (`peerstats.local_statistics`): the reference that needs no trust."""

    names: tuple[str, ...]
    values: FloatArray
    variances: FloatArray
    rows: int


@dataclass(frozen=True)
class Check:
    """One statistic of one peer against a reference: the others' consensus or the local rows."""

    name: str
    value: float
    reference: float
    scale: float
    z: float
    df: float = float("inf")   # of the t reference (inf: normal)
    inflation: float = 1.0     # s̃² applied to the peer's own noise (≥ 1)
    against: str = "consensus"  # or "local"

    @property
    def consensus(self) -> float:
        """The reference value (the name from before the local anchor)."""
        return self.reference

    @property
    def p(self) -> float:
        """Two-sided p-value of z under t with df degrees of freedom."""
        return float(2 * stats.t.sf(abs(self.z), self.df))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = jsonable({
            "name": self.name, "value": self.value, self.against: self.reference,
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
    score: float            # the largest |t| over both tests
    p_value: float          # Bonferroni over the tests that ran
    flagged: bool
    reason: str
    checks: tuple[Check, ...]          # against the consensus
    rows: int = 0                      # its twins' row count (what its noise is scaled by)
    judged_epsilon: float = float("nan")  # ε its expected noise was transferred to
    p_consensus: float = float("nan")  # NaN: not run (fewer than 3 peers)
    p_local: float = float("nan")      # NaN: not run (no local rows, or not judgeable)
    local_checks: tuple[Check, ...] = ()
    noise_aware: bool = False

    def to_dict(self, all_checks: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = jsonable({
            "peer": self.peer, "n": self.n, "epsilon": self.epsilon, "rows": self.rows,
            "judged_epsilon": self.judged_epsilon, "k": self.k,
            "noise_aware": self.noise_aware, "score": self.score, "p_value": self.p_value,
            "p_consensus": self.p_consensus, "p_local": self.p_local,
            "flagged": self.flagged, "reason": self.reason})
        if all_checks:
            out["checks"] = [c.to_dict() for c in self.checks]
            out["local_checks"] = [c.to_dict() for c in self.local_checks]
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
    references: tuple[str, ...] = ()     # what the peers were judged against (REFERENCES)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``with_flagged`` and ``without_flagged`` are null here: the party
        analysis, which fits them, fills them in (`party.PartyReport.to_dict`)."""
        return {"policy": self.policy, "threshold": self.threshold, "status": self.status,
                "message": self.message, "references": list(self.references),
                "flagged": list(self.flagged),
                "accepted": list(self.accepted), "left_out": dict(self.left_out),
                "dispersion": jsonable(dict(self.dispersion)),
                "peers": [p.to_dict() for p in self.peers],
                "with_flagged": None, "without_flagged": None}


def screening_status(policy: str, threshold: float, peers: int,
                     min_peers: int = MIN_PEERS, local: bool = False) -> str:
    """off | insufficient-peers | screened: whether `peers` usable peers are judged (only
    then are their statistics needed): with the party's rows (`local`) any peer is, without
    them at least `min_peers`. A policy or threshold out of range is an error."""
    if policy not in POLICIES:
        raise AnalysisError(f"unknown screening policy {policy!r}; expected one of "
                            f"{', '.join(POLICIES)}")
    if not 0 < threshold < 1:
        raise AnalysisError(f"screening threshold must be in (0, 1), got {threshold}")
    if policy == "off":
        return "off"
    enough = peers >= 1 if local else peers >= min_peers
    return "screened" if enough else "insufficient-peers"


def screening_report(peers: Sequence[str], statistics: Mapping[str, PeerStatistics],
                     policy: str, threshold: float, *, left_out: Mapping[str, str],
                     min_peers: int = MIN_PEERS, local: LocalStatistics | None = None
                     ) -> ScreeningReport:
    """The verdicts on the usable `peers` (in order) from their `statistics` (needed when
    `screening_status` is "screened") and, given, the `local` rows' statistics; the peers
    the policy keeps, and those left out."""
    status = screening_status(policy, threshold, len(peers), min_peers, local is not None)
    verdicts: tuple[PeerScreen, ...] = ()
    dispersion: dict[str, float] = {}
    references: tuple[str, ...] = ()
    if status == "off":
        message = "screening is off: every peer is used"
    elif status == "insufficient-peers":
        message = (f"screening needs at least {min_peers} peers to form a consensus, or the "
                   f"local rows, got {len(peers)} peer(s): no peer judged, none flagged")
    else:
        verdicts, dispersion = judge({name: statistics[name] for name in peers}, threshold,
                                     local=local, min_peers=min_peers)
        references = tuple(r for r in REFERENCES
                           if (r == "local" and local is not None)
                           or (r == "consensus" and len(peers) >= min_peers))
        message = _message(verdicts, references, threshold, min_peers)
    flagged = tuple(v.peer for v in verdicts if v.flagged)
    accepted = tuple(n for n in peers if policy != "exclude" or n not in flagged)
    if left_out:
        message += f"; {len(left_out)} left out (twins not usable)"
    return ScreeningReport(policy=policy, threshold=threshold, status=status,
                           message=message, peers=verdicts, flagged=flagged,
                           accepted=accepted, dispersion=dispersion, left_out=dict(left_out),
                           references=references)


def _message(verdicts: Sequence[PeerScreen], references: Sequence[str], threshold: float,
             min_peers: int) -> str:
    against = {("local", "consensus"): "against the local rows and the consensus of the "
                                       "others (Bonferroni over the two)",
               ("consensus",): "against the consensus of the others",
               ("local",): f"against the local rows only (a consensus needs {min_peers} "
                           "peers)"}[tuple(references)]
    n_flag = sum(v.flagged for v in verdicts)
    message = f"{len(verdicts)} peers screened {against}, {n_flag} flagged (p < {threshold:g})"
    unjudged = [v.peer for v in verdicts if np.isnan(v.p_local) and np.isnan(v.p_consensus)]
    if unjudged:
        message += (f"; {len(unjudged)} not judged ({', '.join(unjudged)}: release not "
                    f"noise-aware, its noise cannot be estimated from fewer than {min_peers} "
                    "peers)")
    return message


def judge(statistics: Mapping[str, PeerStatistics], threshold: float, *,
          local: LocalStatistics | None = None, min_peers: int = MIN_PEERS
          ) -> tuple[tuple[PeerScreen, ...], dict[str, float]]:
    """Per peer, the t test of each statistic against the consensus (with at least
    `min_peers` peers) and against the `local` rows (given), Bonferroni p-values, the flag.

    Also returns, per family, the median over judged peers of the fitted prior inflation
    s0² and of its df d0 (the rule for releases that are not noise-aware)."""
    names = list(statistics)
    stat_names = statistics[names[0]].names
    if any(statistics[n].names != stat_names for n in names):
        raise AnalysisError("peers' statistics do not line up (different designs?)")
    if local is not None and local.names != stat_names:
        raise AnalysisError("the local rows' statistics do not line up with the peers'")
    values = np.array([statistics[n].values for n in names])        # (P, S)
    own_var = np.array([statistics[n].variances for n in names])    # (P, S)
    aware = np.array([statistics[n].noise_aware for n in names], bool)
    family = np.array(statistics[names[0]].families)
    verdicts: list[PeerScreen] = []
    priors: dict[str, list[tuple[float, float]]] = {}
    for i, name in enumerate(names):
        judged_eps, v_i = _own_noise(statistics, names, own_var, i)
        checks: list[Check] = []
        own: FloatArray | None = None
        df = np.full(len(stat_names), np.nan)
        if len(names) >= min_peers:
            checks, own, df, fitted = _consensus(values, own_var, v_i, i, family, aware,
                                                 stat_names)
            for fam, prior in fitted.items():
                priors.setdefault(fam, []).append(prior)
        elif aware[i]:  # no others to learn from: the noise-aware prior alone
            own, df = inflation.noise_aware(np.full(len(stat_names), np.nan),
                                            np.zeros(len(stat_names)))
        anchor: list[Check] = []
        if local is not None and own is not None:
            anchor = _against_local(values[i], v_i, own, df, local, stat_names)
        verdicts.append(_verdict(name, statistics[name], checks, anchor, threshold,
                                 judged_eps, local is not None, min_peers))
    dispersion = {}
    for fam, pairs in priors.items():
        d0s, s0s = np.array(pairs).T
        dispersion[f"{fam}_inflation"] = float(np.median(s0s))
        dispersion[f"{fam}_df"] = float(np.median(d0s))
    if aware.any():
        dispersion["noise_aware_prior_df"] = inflation.NOISE_AWARE_PRIOR_DF
    return tuple(verdicts), dispersion


def _own_noise(statistics: Mapping[str, PeerStatistics], names: Sequence[str],
               own_var: FloatArray, i: int) -> tuple[float, FloatArray]:
    """Peer i's judged ε and noise v_i: its own v, floored by the others' noise transferred
    to its row count and ε (a claimed ε below the others' median buys nothing)."""
    eps = np.array([statistics[n].epsilon for n in names])
    size = np.array([statistics[n].rows for n in names], float)   # measured, not claimed
    others = np.arange(len(names)) != i
    if not others.any():
        return float(eps[i]), own_var[i]
    judged_eps = max(float(eps[i]), float(np.median(eps[others])))
    transfer = (own_var[others] * (size[others] / size[i])[:, None]
                * (inflation.h(judged_eps) / inflation.h(eps[others]))[:, None])
    return judged_eps, np.fmax(own_var[i], np.nanmedian(transfer, axis=0))


def _consensus(values: FloatArray, own_var: FloatArray, v_i: FloatArray, i: int,
               family: NDArray[np.str_], aware: BoolArray, stat_names: Sequence[str]
               ) -> tuple[list[Check], FloatArray, FloatArray, dict[str, tuple[float, float]]]:
    """Peer i against the others: its checks, its own inflation s̃²_p and df per statistic
    (NaN where not judged), and each family's fitted prior."""
    others = np.arange(len(values)) != i
    center, center_var, s2, d = inflation.others_spread(values[others], own_var[others])
    usable = np.isfinite(values[i]) & np.isfinite(v_i) & (d >= 1)
    fitted_rule, fitted_df, fitted = inflation.moderate(s2, d, family, usable)
    aware_rule, aware_df = inflation.noise_aware(s2, d)
    own, df = (aware_rule, aware_df) if aware[i] else (fitted_rule, fitted_df)
    center_inflation = aware_rule if aware[others].all() else fitted_rule
    scale = np.sqrt(own * v_i + center_inflation * center_var)
    checks = _checks(stat_names, values[i], center, scale, df, own, usable, "consensus")
    return checks, np.where(usable, own, np.nan), df, fitted


def _against_local(x: FloatArray, v: FloatArray, own: FloatArray, df: FloatArray,
                   local: LocalStatistics, stat_names: Sequence[str]) -> list[Check]:
    """The peer's statistics against the local rows': t = (x - x_L) / sqrt(s̃² v + v_L),
    with Satterthwaite's df (only s̃² v is uncertain; v_L is the real rows' own)."""
    lv, lvar = np.asarray(local.values, float), np.asarray(local.variances, float)
    usable = (np.isfinite(x) & np.isfinite(v) & np.isfinite(own) & np.isfinite(lv)
              & np.isfinite(lvar) & (own * v > 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.sqrt(own * v + lvar)
        df = df * (scale ** 2 / (own * v)) ** 2
    return _checks(stat_names, x, lv, scale, df, own, usable, "local")


def _checks(stat_names: Sequence[str], x: FloatArray, ref: FloatArray, scale: FloatArray,
            df: FloatArray, own: FloatArray, usable: BoolArray, against: str) -> list[Check]:
    out = []
    for s in np.flatnonzero(usable):
        diff = float(x[s] - ref[s])
        z = (diff / scale[s] if scale[s] > 0 else
             0.0 if diff == 0 else float(np.inf * np.sign(diff)))
        out.append(Check(stat_names[s], float(x[s]), float(ref[s]), float(scale[s]), z,
                         float(df[s]), float(own[s]), against))
    return out


def _bonferroni(checks: Sequence[Check]) -> float:
    """min(1, m · min p) over the checks; NaN when there are none."""
    return float(min(1.0, len(checks) * min(c.p for c in checks))) if checks else float("nan")


def _verdict(name: str, st: PeerStatistics, checks: list[Check], anchor: list[Check],
             threshold: float, judged_eps: float, anchored: bool, min_peers: int
             ) -> PeerScreen:
    p_consensus, p_local = _bonferroni(checks), _bonferroni(anchor)
    tests = [p for p in (p_local, p_consensus) if not np.isnan(p)]
    base = PeerScreen(peer=name, n=st.n, epsilon=st.epsilon, k=st.k, score=float("nan"),
                      p_value=1.0, flagged=False, reason="", checks=tuple(checks),
                      rows=st.rows, judged_epsilon=judged_eps, p_consensus=p_consensus,
                      p_local=p_local, local_checks=tuple(anchor), noise_aware=st.noise_aware)
    if not tests:
        why = ("not judged: its release is not noise-aware, and fewer than "
               f"{min_peers} peers cannot show its release noise"
               if anchored and not st.noise_aware else "no statistic could be compared")
        return replace(base, reason=why)
    p_value = float(min(1.0, len(tests) * min(tests)))
    reason = ""
    if p_value < threshold:
        share = threshold / len(tests)
        parts = [_offending(group, share, label) for group, label in
                 ((anchor, "local"), (checks, "consensus"))]
        reason = "; ".join(p for p in parts if p)
    return replace(base, score=float(np.max(np.abs([c.z for c in checks + anchor]))),
                   p_value=p_value, flagged=p_value < threshold, reason=reason)


def _offending(checks: Sequence[Check], share: float, label: str) -> str:
    """The checks below their share of the threshold (Bonferroni), named, at most three."""
    off = sorted((c for c in checks if c.p < share / len(checks)), key=lambda c: c.p)
    text = "; ".join(f"{c.name} = {c.value:.4g} vs {label} {c.reference:.4g} "
                     f"(t = {c.z:+.1f}, df {c.df:.0f})" for c in off[:3])
    if len(off) > 3:
        text += f"; and {len(off) - 3} more"
    return text
