"""One party's whole analysis, as the CLI and the node run it: `analyze_party` -> `PartyReport`.

Steps: screen the peers (policy off | flag | exclude); choose the weight λ of the twin rows
the policy keeps (`weighting.choose_weight`, or a fixed λ validated against local only);
fit local rows ∪ λ-weighted twins for every k and pool (`analysis.combined_fit`), with and
without flagged peers; fit the local rows alone; with a test set, score both. `twinnode
analyze` and the node both call `analyze_party`, so they give the same report.

Peers are taken as given: a peer whose release is defective, incomplete or has K < 2 is
left out with the reason (`peerset`; in ``screening.left_out`` and the fits' warnings),
and each fit shares K among its own peers only, so a peer outside a fit (flagged and
excluded, or left out) never changes it. Screening runs here under the analysis's own
policy and threshold: the statuses a node's `screen` job wrote on its stored twins are
not read.

`PartyReport.to_dict()`, the JSON report (NaN and ±inf become null):

- ``schema``: the schema hash.
- ``design``: ``outcome``, ``covariates``, ``reference`` (categorical -> reference level),
  ``terms`` (the coefficients' order).
- ``options``: covariates, reference, rule, fallback, level, interval, cov_type.
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
  ``dropped_in``, and the local fit's ``local_estimate``, ``local_se``, ``local_lower``,
  ``local_upper``.
- ``pooling`` / ``local_pooling``: how the combined / local fit was pooled: ``kind``,
  ``rule``, ``fallback_rule``, ``fallback_count``, ``fallback_terms``,
  ``covariance_fallback`` (the covariance matrix took the fallback's correlations), ``k``,
  ``failed_replicates``, ``dropped``, ``level``, ``interval``, ``cov_type``, ``weight``,
  ``peers``, ``rows``, ``warnings``.
- ``screening``: ``policy``, ``threshold``, ``status``, ``message``, ``flagged``,
  ``accepted``, ``left_out`` (peer -> why its twins are not usable), ``dispersion`` (per
  family, the prior inflation and its df),
  ``peers`` (per-peer verdicts and checks),
  ``with_flagged`` / ``without_flagged`` (peers and per-term estimate and se, at the same λ).
- With a test set: ``evaluation`` {``local``, ``combined``} (mean, plug-in, sd, quantiles
  and samples of the Monte Carlo test log-likelihood per record), and, as before this
  module, ``ll_local``, ``ll_combined``, ``ll_local_samples``, ``ll_combined_samples``,
  ``ll_local_plugin``, ``ll_combined_plugin``.
- ``timing``: seconds per step (screening, weight, fits, evaluation, total).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import pandas as pd

from twinnode.analysis.fit import (
    AnalysisOptions,
    Evaluation,
    Peers,
    PooledFit,
    combined_fit,
    evaluate,
    local_fit,
)
from twinnode.analysis.screening import ScreeningReport, screen
from twinnode.analysis.weighting import (
    DEFAULT_FOLDS,
    DEFAULT_GRID,
    WeightChoice,
    choose_weight,
    fixed_weight,
    parse_weight,
)
from twinnode.atomic import jsonable
from twinnode.schema import Schema


@dataclass(frozen=True)
class PartyReport:
    """Everything one party's analysis found; `to_dict` is the JSON report."""

    schema_hash: str
    options: AnalysisOptions
    weight: WeightChoice
    combined: PooledFit
    local: PooledFit
    screening: ScreeningReport
    evaluation: Mapping[str, Evaluation] | None = None
    timing: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": self.schema_hash, "design": self.combined.design.to_dict(),
            "options": self.options.to_dict(), "weight": self.weight.to_dict(),
            "coefficients": side_by_side(self.combined, self.local),
            "pooling": self.combined.pooling_dict(),
            "local_pooling": self.local.pooling_dict(),
            "screening": self.screening.to_dict()}
        if self.evaluation is not None:
            loc, comb = self.evaluation["local"], self.evaluation["combined"]
            out |= jsonable({"ll_local": loc.mean, "ll_combined": comb.mean,
                               "ll_local_samples": loc.samples,
                               "ll_combined_samples": comb.samples,
                               "ll_local_plugin": loc.plugin, "ll_combined_plugin": comb.plugin})
            out["evaluation"] = {"local": loc.to_dict(), "combined": comb.to_dict()}
        out["timing"] = jsonable(dict(self.timing))
        return out


def analyze_party(schema: Schema, local_frame: pd.DataFrame, peers: Peers, *,
                  weight: str | float = "auto", test_frame: pd.DataFrame | None = None,
                  options: AnalysisOptions | None = None, policy: str = "flag",
                  threshold: float = 0.01, grid: Sequence[float] = DEFAULT_GRID,
                  folds: int = DEFAULT_FOLDS, replicates: int | None = None,
                  selection: str = "best", seed: int = 0, draws: int = 100
                  ) -> PartyReport:
    """Screening, twin weight, combined and local fits (and test scores): one report.

    `weight` is "auto" (cross-validated, see `weighting`) or a λ in [0, 1] (1: the paper's
    plain concatenation; still validated against local only, for the verdict). `seed`
    seeds the folds and the Monte Carlo draws of the evaluation."""
    options = options or AnalysisOptions()
    weight = parse_weight(weight)
    clock = _Clock()
    report = screen(schema, peers, policy, threshold, options=options)
    used = {name: peers[name] for name in report.accepted}
    clock.lap("screening")
    if weight == "auto":
        choice = choose_weight(schema, local_frame, used, grid=grid, folds=folds, seed=seed,
                               options=options, replicates=replicates, selection=selection)
    else:
        choice = fixed_weight(schema, local_frame, used, float(weight), folds=folds,
                              seed=seed, options=options, replicates=replicates)
    clock.lap("weight")
    lam = choice.chosen
    # each fit checks the peers it is given and shares K among them only
    with_all = combined_fit(schema, local_frame, peers, weight=lam, options=options)
    unflagged = {n: t for n, t in peers.items() if n not in report.flagged}
    without = (with_all if not report.flagged else
               combined_fit(schema, local_frame, unflagged, weight=lam, options=options))
    report = replace(report, with_flagged=with_all, without_flagged=without)
    combined = report.chosen
    alone = local_fit(schema, local_frame, options)
    clock.lap("fits")
    evaluation = None
    if test_frame is not None:
        evaluation = {"local": evaluate(alone, schema, test_frame, draws, seed),
                      "combined": evaluate(combined, schema, test_frame, draws, seed)}
        clock.lap("evaluation")
    return PartyReport(schema_hash=schema.hash, options=options, weight=choice,
                       combined=combined, local=alone, screening=report,
                       evaluation=evaluation, timing=clock.laps())


def side_by_side(combined: PooledFit, alone: PooledFit) -> dict[str, dict[str, Any]]:
    """Per term: the combined pooled values and the local-only ones beside them."""
    out = {}
    for term in combined.terms:
        row = combined.coefficient(term)
        loc = alone.coefficient(term)
        row |= {"local_estimate": loc["estimate"], "local_se": loc["se"],
                "local_lower": loc["lower"], "local_upper": loc["upper"]}
        out[term] = row
    return out


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
