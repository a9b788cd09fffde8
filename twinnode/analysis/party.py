"""One party's whole analysis, as the CLI and the node run it: `analyze_party` -> `PartyReport`.

Steps: check the peers' twins once (`usable.usable_peers`; the `PeerSet` goes to every
step below); screen them against the local rows and each other (`screen`: their
statistics from `peerstats`, judged by `screening`; policy off | flag | exclude); choose the weight λ of the twin rows the policy
keeps (`weighting.choose_weight`, or a fixed λ validated against local only); fit local
rows ∪ λ-weighted twins for every k and pool (`fit.combined_fit`), with and without the
flagged peers (this module does every combined fit; screening fits none); fit the local
rows alone; fit each peer's twins alone and add the between-release term to the
combined fits' T (`sites`, `heterogeneity`); test the twins alone against the local fit
per term (`agreement`), and report the local fit's values for the terms that disagree when
asked (`disagreement`); with a test set, score both. `twinnode analyze` and the node both call
`analyze_party`, so they give the same report.

Peers are taken as given: a peer whose release is defective, incomplete or has K < 2 is
left out with the reason (`usable`; in ``screening.left_out`` and the fits' warnings),
and each fit shares K among its own peers only, so a peer outside a fit (flagged and
excluded, or left out) never changes it. Screening runs here under the analysis's own
policy and threshold: the statuses a node's `screen` job wrote on its stored twins are
not read.

`PartyReport.to_dict()`, the JSON report (NaN and ±inf become null):

- ``schema``: the schema hash.
- ``design``: ``outcome``, ``covariates``, ``reference`` (categorical -> reference level),
  ``terms`` (the coefficients' order).
- ``options``: covariates, reference, rule, fallback, level, interval, cov_type,
  heterogeneity, agreement_alpha, on_disagreement.
- ``weight``: ``mode`` (auto | fixed | no-peers | unvalidated), ``chosen`` (λ used),
  ``best`` (the grid's best mean), ``selection`` (best | guarded | one-se | fixed),
  ``grid``, ``curve`` (per λ: ``weight``, ``mean`` held-out log-likelihood per record,
  ``se``, ``gain`` over local only, ``gain_se``), ``verdict`` (one sentence: does joining
  help?, starting "yes:", "no:", "unclear:" or "cannot judge:"), ``helps`` (true, false,
  or null when not judged or within one standard error), ``folds``,
  ``replicates`` (twins per validation fit), ``n_local``, ``seed``, ``fold_means``
  (per fold, per λ), ``score`` (what the curve measures).
- ``coefficients``: per term, the combined fit's ``estimate``, ``se``, ``lower``,
  ``upper``, ``df``, ``u_bar``, ``b``, ``total_variance``, ``fallback``, ``k_used``,
  ``dropped_in``, ``between_variance`` (the between-release term in ``total_variance``;
  null when off), and the local fit's ``local_estimate``, ``local_se``, ``local_lower``,
  ``local_upper``; ``local_only`` (true: the twins disagree and ``on_disagreement`` is
  local, so the term's values above are the local fit's; `disagreement`).
- ``pooling`` / ``local_pooling``: how the combined / local fit was pooled: ``kind``,
  ``rule``, ``fallback_rule``, ``fallback_count``, ``fallback_terms``,
  ``covariance_fallback`` (the covariance matrix took the fallback's correlations), ``k``,
  ``failed_replicates``, ``dropped``, ``level``, ``interval``, ``cov_type``, ``weight``,
  ``peers``, ``rows``, ``warnings``, ``heterogeneity`` (null when off, else ``method``,
  ``note`` and per term ``tau2``, ``q``, ``sites``, ``df``, ``peer_share2``,
  ``added_variance``; `heterogeneity`).
- ``agreement``: null without peers, else ``test``, ``alpha``, ``correction`` (holm),
  ``peers``, ``tested``, ``disagreeing`` and per term ``twins_estimate``, ``twins_se``,
  ``z``, ``p``, ``p_holm``, ``disagree`` (`agreement`).
- ``moved_outside_local``: the terms whose combined interval lies wholly outside the
  local-only interval.
- ``replaced_by_local``: the terms reported local only (empty unless ``on_disagreement``
  is local).
- ``screening``: ``policy``, ``threshold``, ``status``, ``message``, ``references``
  (what the peers were judged against: ``local``, ``consensus``), ``flagged``,
  ``accepted``, ``left_out`` (peer -> why its twins are not usable), ``dispersion`` (per
  family, the fitted prior inflation and its df; ``noise_aware_prior_df`` when a peer is
  noise-aware), ``peers`` (per peer: ``noise_aware``, ``p_value`` (Bonferroni over the tests
  that ran), ``p_local``, ``p_consensus`` (null: not run), ``reason``, ``checks`` against
  the consensus and ``local_checks`` against the local rows),
  ``with_flagged`` / ``without_flagged`` (peers and per-term estimate and se, at the same λ).
- With a test set: ``evaluation`` {``local``, ``combined``} (mean, plug-in, sd, quantiles
  and samples of the Monte Carlo test log-likelihood per record), and, as before this
  module, ``ll_local``, ``ll_combined``, ``ll_local_samples``, ``ll_combined_samples``,
  ``ll_local_plugin``, ``ll_combined_plugin``.
- ``summary``: the console's summary table, statsmodels style (`summary`): ``header``
  (``outcome``, ``rows``, ``peers``, ``k``, ``weight``, ``weight_mode``, ``verdict``,
  ``rule``, ``interval``, ``level``, ``cov_type``, ``agreement_alpha``,
  ``on_disagreement``, ``screening``) and
  ``terms`` (per term: ``term``, ``estimate``, ``se``, ``rate_ratio`` and its
  ``rate_ratio_lower`` / ``_upper``, ``p``, ``lower``, ``upper``, ``fallback``,
  ``local_estimate``, ``local_lower``, ``local_upper``, ``agreement_p`` (Holm), ``agrees``,
  ``local_only``).
- ``timing``: seconds per step (screening, weight, fits, evaluation, total).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pandas as pd

from twinnode.analysis.agreement import Agreement
from twinnode.analysis.disagreement import local_where_disagreeing
from twinnode.analysis.fit import (
    AnalysisOptions,
    Evaluation,
    PooledFit,
    combined_fit,
    evaluate,
    local_fit,
)
from twinnode.analysis.options import (
    DEFAULT_DRAWS,
    DEFAULT_FOLDS,
    DEFAULT_GRID,
    DEFAULT_POLICY,
    DEFAULT_SEED,
    DEFAULT_SELECTION,
    DEFAULT_THRESHOLD,
    DEFAULT_WEIGHT,
    MIN_PEERS,
)
from twinnode.analysis.peerstats import local_statistics, statistics_by_peer
from twinnode.analysis.screening import ScreeningReport, screening_report, screening_status
from twinnode.analysis.sites import add_between_release, peer_fits, twins_agreement
from twinnode.analysis.summary import summary
from twinnode.analysis.usable import Peers, PeerSet, usable_peers
from twinnode.analysis.weighting import WeightChoice, choose_weight, fixed_weight, parse_weight
from twinnode.atomic import jsonable
from twinnode.schema import Schema


@dataclass(frozen=True)
class PartyReport:
    """Everything one party's analysis found; `to_dict` is the JSON report."""

    schema_hash: str
    options: AnalysisOptions
    weight: WeightChoice
    with_flagged: PooledFit         # every usable peer, at the chosen λ
    without_flagged: PooledFit      # the same without the flagged peers (the same fit if none)
    local: PooledFit
    screening: ScreeningReport
    evaluation: Mapping[str, Evaluation] | None = None
    agreement: Agreement | None = None  # the combined fit's peers' twins vs the local rows
    noise_aware: Mapping[str, bool] = field(default_factory=dict)  # peer -> its release is
    timing: Mapping[str, float] = field(default_factory=dict)
    replaced: tuple[str, ...] = ()  # terms `combined` reports local only (`disagreement`)
    reported: PooledFit | None = None  # the policy's fit with those terms' local values

    @property
    def combined(self) -> PooledFit:
        """The combined fit the policy selects (without the flagged only under exclude), with
        the local values of the `replaced` terms."""
        if self.reported is not None:
            return self.reported
        return self.without_flagged if self.screening.policy == "exclude" else self.with_flagged

    def to_dict(self) -> dict[str, Any]:
        screening = self.screening.to_dict() | {
            "with_flagged": _estimates(self.with_flagged),
            "without_flagged": _estimates(self.without_flagged)}
        out: dict[str, Any] = {
            "schema": self.schema_hash, "design": self.combined.design.to_dict(),
            "options": self.options.to_dict(), "weight": self.weight.to_dict(),
            "coefficients": side_by_side(self.combined, self.local, self.replaced),
            "pooling": self.combined.pooling_dict(),
            "local_pooling": self.local.pooling_dict(), "screening": screening,
            "agreement": None if self.agreement is None else self.agreement.to_dict(),
            "moved_outside_local": moved_outside(self.combined, self.local),
            "replaced_by_local": list(self.replaced),
            "noise_aware": dict(self.noise_aware)}
        if self.evaluation is not None:
            loc, comb = self.evaluation["local"], self.evaluation["combined"]
            out |= jsonable({"ll_local": loc.mean, "ll_combined": comb.mean,
                             "ll_local_samples": loc.samples,
                             "ll_combined_samples": comb.samples,
                             "ll_local_plugin": loc.plugin, "ll_combined_plugin": comb.plugin})
            out["evaluation"] = {"local": loc.to_dict(), "combined": comb.to_dict()}
        out["summary"] = summary(out)
        out["timing"] = jsonable(dict(self.timing))
        return out


def analyze_party(schema: Schema, local_frame: pd.DataFrame, peers: Peers | PeerSet, *,
                  weight: str | float = DEFAULT_WEIGHT, test_frame: pd.DataFrame | None = None,
                  options: AnalysisOptions | None = None, policy: str = DEFAULT_POLICY,
                  threshold: float = DEFAULT_THRESHOLD, grid: Sequence[float] = DEFAULT_GRID,
                  folds: int = DEFAULT_FOLDS, replicates: int | None = None,
                  selection: str = DEFAULT_SELECTION, seed: int = DEFAULT_SEED,
                  draws: int = DEFAULT_DRAWS) -> PartyReport:
    """Screening, twin weight, combined and local fits (and test scores): one report.

    `weight` is "auto" (cross-validated, see `weighting`) or a λ in [0, 1] (1: the paper's
    plain concatenation; still validated against local only, for the verdict). `seed`
    seeds the folds and the Monte Carlo draws of the evaluation."""
    options = options or AnalysisOptions()
    weight = parse_weight(weight)
    clock = _Clock()
    checked = usable_peers(schema, peers)  # once: every step below takes the PeerSet as it is
    report = screen(schema, checked, policy, threshold, options=options,
                    local_frame=local_frame)
    clock.lap("screening")
    used = checked.only(report.accepted)
    if weight == "auto":
        choice = choose_weight(schema, local_frame, used, grid=grid, folds=folds, seed=seed,
                               options=options, replicates=replicates, selection=selection)
    else:
        choice = fixed_weight(schema, local_frame, used, float(weight), folds=folds,
                              seed=seed, options=options, replicates=replicates)
    clock.lap("weight")
    fits = _fits(schema, local_frame, checked, report, choice.chosen, options)
    clock.lap("fits")
    evaluation = None
    if test_frame is not None:
        evaluation = {"local": evaluate(fits.local, schema, test_frame, draws, seed),
                      "combined": evaluate(fits.reported, schema, test_frame, draws, seed)}
        clock.lap("evaluation")
    return PartyReport(schema_hash=schema.hash, options=options, weight=choice,
                       with_flagged=fits.with_flagged, without_flagged=fits.without_flagged,
                       local=fits.local, screening=report, evaluation=evaluation,
                       agreement=fits.agreement, noise_aware=checked.noise_aware(),
                       timing=clock.laps(), replaced=fits.replaced, reported=fits.reported)


@dataclass(frozen=True)
class _Fits:
    with_flagged: PooledFit
    without_flagged: PooledFit
    local: PooledFit
    agreement: Agreement | None
    reported: PooledFit  # the policy's fit, the replaced terms with the local values
    replaced: tuple[str, ...]


def _fits(schema: Schema, local_frame: pd.DataFrame, checked: PeerSet,
          report: ScreeningReport, lam: float, options: AnalysisOptions) -> _Fits:
    """The combined fits at λ (with and without the flagged peers), the local fit, the
    between-release term, the agreement test, and the policy's fit as reported: local only
    for the terms that disagree when `options.on_disagreement` is "local" (`disagreement`;
    the with / without fits stay as fitted, so screening compares like with like)."""
    # each fit shares K among its own peers only
    with_all = combined_fit(schema, local_frame, checked, weight=lam, options=options)
    without = (with_all if not report.flagged else
               combined_fit(schema, local_frame, checked.without(report.flagged), weight=lam,
                            options=options))
    alone = local_fit(schema, local_frame, options)
    singles = peer_fits(schema, checked, options) if options.heterogeneity != "off" else {}
    with_all = add_between_release(with_all, alone, singles)
    without = (with_all if not report.flagged else
               add_between_release(without, alone, singles))
    kept = without if report.policy == "exclude" else with_all
    agree = twins_agreement(schema, alone, checked.only(list(kept.peers)), options)
    reported, replaced = local_where_disagreeing(kept, alone, agree, options.on_disagreement)
    return _Fits(with_all, without, alone, agree, reported, replaced)


def screen(schema: Schema, peers: Peers | PeerSet, policy: str = DEFAULT_POLICY,
           threshold: float = DEFAULT_THRESHOLD, *, options: AnalysisOptions | None = None,
           min_peers: int = MIN_PEERS, local_frame: pd.DataFrame | None = None
           ) -> ScreeningReport:
    """Judge each usable peer against the party's own rows (`local_frame`, when given) and
    the consensus of the others: the peers checked (`usable`), their statistics computed
    when they are judged (`peerstats`), the verdicts (`screening`)."""
    checked = usable_peers(schema, peers)
    names = tuple(checked.twins)
    status = screening_status(policy, threshold, len(names), min_peers,
                              local=local_frame is not None)
    statistics, local = {}, None
    if status == "screened":
        statistics = statistics_by_peer(schema, checked, options)
        if local_frame is not None:
            local = local_statistics(schema, local_frame, options)
    return screening_report(names, statistics, policy, threshold, left_out=checked.left_out,
                            min_peers=min_peers, local=local)


def side_by_side(combined: PooledFit, alone: PooledFit,
                 replaced: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Per term: the combined pooled values and the local-only ones beside them; a term in
    `replaced` reports the local values as its own (``local_only``)."""
    out = {}
    for term in combined.terms:
        row = combined.coefficient(term)
        loc = alone.coefficient(term)
        row |= {"local_estimate": loc["estimate"], "local_se": loc["se"],
                "local_lower": loc["lower"], "local_upper": loc["upper"],
                "local_only": term in replaced}
        if term in replaced:
            row["between_variance"] = None
        out[term] = row
    return out


def moved_outside(combined: PooledFit, alone: PooledFit) -> list[str]:
    """The terms whose combined interval lies wholly outside the local-only interval."""
    c, a = combined.pooled, alone.pooled
    return [t for j, t in enumerate(combined.terms)
            if c.lower[j] > a.upper[j] or c.upper[j] < a.lower[j]]


def _estimates(fit: PooledFit) -> dict[str, Any]:
    """A fit's peers and per-term estimate and se (the report's with / without flagged)."""
    return {"peers": list(fit.peers),
            "coefficients": {t: jsonable({"estimate": e, "se": s})
                             for t, e, s in zip(fit.terms, fit.estimate, fit.se)}}


class _Clock:
    """Seconds per named step, and their total."""

    def __init__(self) -> None:
        self._start = self._last = time.perf_counter()
        self._laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self._laps[name] = round(now - self._last, 3)
        self._last = now

    def laps(self) -> dict[str, float]:
        return self._laps | {"total": round(self._last - self._start, 3)}
