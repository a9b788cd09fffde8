"""From a private table to a privacy receipt and K twins: the generator's public entry points.

`train_and_release` is the one train -> save -> draw flow, used by a node's worker and by
`twinnode train` alike. Its steps: `train_posterior` calibrates the noise, charges the ledger
(before training starts), and trains; `draw_release` samples K twins from a posterior, which
costs no privacy (and is all a `sample` job or `twinnode sample` does).
"""
from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twinnode.data import data_fingerprint, frame_to_arrays
from twinnode.errors import PrivacyError
from twinnode.generator.layout import Layout, ModelData
from twinnode.generator.posterior import Posterior
from twinnode.generator.accounting import calibrate_split
from twinnode.generator.anchor import anchored_start, head_center
from twinnode.generator.headnoise import head_information, head_noise_cov, newton_head
from twinnode.generator.marginals import Marginals, measure
from twinnode.generator.privacy import Calibration, Ledger
from twinnode.generator.sample import sample_twins
from twinnode.generator.settings import GeneratorSettings, TrainPlan
from twinnode.generator.trace import TraceTail
from twinnode.generator.train import ProgressFn, fit
from twinnode.schema import Schema
from twinnode.twins import RECEIPT_FORMAT, Provenance, Release, Twin


def train_and_release(schema: Schema, frame: pd.DataFrame, plan: TrainPlan, ledger: Ledger,
                      posterior_file: str | Path, k: int, sender: str,
                      settings: GeneratorSettings = GeneratorSettings(),
                      seed: int | None = None, progress: ProgressFn | None = None) -> Release:
    """Train on `frame` (the ledger charged first), save the posterior, draw K twins."""
    posterior = train_posterior(schema, frame, plan, ledger, settings, seed, progress)
    posterior.save(posterior_file)
    return draw_release(posterior, schema, k, sender, seed, ledger)


def train_posterior(schema: Schema, frame: pd.DataFrame, plan: TrainPlan, ledger: Ledger,
                    settings: GeneratorSettings = GeneratorSettings(), seed: int | None = None,
                    progress: ProgressFn | None = None) -> Posterior:
    """Train the generator on a validated frame under `plan`, charging `ledger` first."""
    layout = Layout.from_schema(schema)
    n = len(frame)
    delta = plan.delta if plan.delta is not None else 1.0 / n
    ledger.check(plan.epsilon)
    cal = calibrate_split(plan.epsilon, delta, n, plan.q, plan.steps(), plan.batching,
                          plan.share())
    data = layout.encode(frame_to_arrays(schema, frame))
    entry = ledger.charge(cal.epsilon, cal.delta, n=n, sigma=cal.sigma, q=cal.q,
                          steps=cal.steps, clip=settings.clip, relation=cal.relation,
                          schema_hash=schema.hash, data=data_fingerprint(frame),
                          **privacy_split(cal))
    try:
        posterior = fit_release(data, layout, cal, settings, seed, progress)
    except BaseException:
        ledger.set_status(entry["id"], "failed (still charged)")
        raise
    ledger.set_status(entry["id"], "trained")
    return replace(posterior, schema_hash=schema.hash, release=entry["id"])


def fit_release(data: ModelData, layout: Layout, cal: Calibration,
                settings: GeneratorSettings, seed: int | None = None,
                progress: ProgressFn | None = None) -> Posterior:
    """The release's mechanisms on encoded rows, as calibrated (nothing charged here): the
    noisy marginals, the anchored start, DP training; the posterior's schema hash and
    release id are left for the caller to fill in."""
    n = int(data.y.shape[0])
    marginals = (measure(data, layout, cal.marginal_multiplier, seed)
                 if cal.marginal_share > 0 else None)
    start = None if marginals is None else anchored_start(layout, settings, marginals)
    if marginals is not None and settings.center_head:
        settings = replace(settings, head_center=head_center(layout, marginals))
    result = fit(data, layout, cal, settings, seed, progress, start)
    params = result.params
    if settings.head_newton and result.loc_gradient is not None:
        params = newton_head(params, result.loc_gradient, layout, n, settings, marginals)
    return Posterior(params=params, schema_hash="", n=n, settings=settings,
                     calibration=cal, release="", created=time.time(),
                     loc_noise_sd=result.loc_noise_sd,
                     marginals=None if marginals is None else marginals.to_dict())


def privacy_split(cal: Calibration) -> dict[str, Any]:
    """How one release's (epsilon, delta) is spent, for the ledger and the receipt."""
    if cal.marginal_share == 0:
        return {}
    return {"marginal_share": cal.marginal_share,
            "marginal_multiplier": cal.marginal_multiplier,
            "epsilon_dpvi_alone": cal.epsilon_dpvi_alone,
            "epsilon_marginals_alone": cal.epsilon_marginals_alone}


def draw_release(posterior: Posterior, schema: Schema, k: int, sender: str,
                 seed: int | None = None, ledger: Ledger | None = None) -> Release:
    """K twins of N rows from `posterior`, with provenance and a receipt."""
    if k < 1:
        raise PrivacyError(f"need at least one twin, got k={k}")
    layout = Layout.from_schema(schema)
    aware = posterior.noise_aware
    arrays = sample_twins(posterior.params, layout, posterior.n, k, posterior.settings, seed,
                          loc_noise_sd=posterior.loc_noise_sd if aware else None,
                          head_cov=head_error(posterior, layout) if aware else None,
                          marginals=None if posterior.marginals is None
                          else Marginals.from_dict(posterior.marginals))
    cal = posterior.calibration
    generator = generator_summary(posterior)
    created = time.time()
    twins = tuple(
        Twin(Provenance(sender=sender, schema_hash=schema.hash, epsilon=cal.epsilon,
                        delta=cal.delta, n=posterior.n, k=k, index=i, relation=cal.relation,
                        release=posterior.release, created=created, generator=generator),
             arrays=a)
        for i, a in enumerate(arrays))
    receipt = {
        "format": RECEIPT_FORMAT, "sender": sender, "release": posterior.release,
        "created": created, "trained": posterior.created, "schema_hash": schema.hash,
        "epsilon": cal.epsilon, "delta": cal.delta, "sigma": cal.sigma,
        "epsilon_accountant": cal.epsilon_accountant, "delta_accountant": cal.delta_accountant,
        "delta_overflow": cal.delta_overflow, "relation": cal.relation,
        "batching": cal.batching, "q": cal.q, "steps": cal.steps,
        "batch_size": cal.batch_size, "clip": posterior.settings.clip, "n": posterior.n,
        "k": k, "generator": generator, "versions": versions(),
        "accountant": cal.accountant + (
            "" if cal.marginal_share else ", add/remove relation" if cal.relation == "add-remove"
            else ", substitute relation"),
        "method": method(posterior), "noise_aware": posterior.noise_aware,
        "privacy_split": privacy_split(cal) or {"marginal_share": 0.0},
        "neighbours": neighbours_note(cal.relation),
        "replace_one": replace_one(cal.epsilon, cal.delta, cal.relation),
        "composition": "basic (epsilons and deltas of runs add up in the ledger)",
    }
    if ledger is not None:
        ledger.record_free("sample", release=posterior.release, k=k)
    return Release(receipt=receipt, twins=twins)


def head_error(posterior: Posterior, layout: Layout) -> np.ndarray:
    """The averaged head's DP error covariance (headnoise.py), from released values only: its
    information from the mixture's rows calibrated to the noisy marginals where they were
    measured, as the twins' are (uncalibrated, the mixture's too-wide continuous columns
    under-state the error up to 3.9-fold; calibrated, 1.1-1.8-fold on randhie)."""
    s, c = posterior.settings, posterior.calibration
    marginals = None if posterior.marginals is None else Marginals.from_dict(posterior.marginals)
    info = head_information(posterior.params, layout, posterior.n, s, marginals=marginals)
    return head_noise_cov(info, c.sigma, s.clip, c.q, s.head_weight if s.variant == "aligned"
                          else 1.0, TraceTail(c.steps, s.average).steps)


def neighbours_note(relation: str) -> str:
    """What the (epsilon, delta) protects, in words, for the receipt."""
    if relation == "add-remove":
        return ("data sets differing by one row added or removed; the row count N is "
                "disclosed (every twin has N rows), as in the paper")
    return "data sets of the same size N differing in one row"


def replace_one(epsilon: float, delta: float, relation: str) -> dict[str, Any]:
    """The guarantee for neighbours of equal size (one row replaced)."""
    if relation == "substitute":
        return {"epsilon": epsilon, "delta": delta, "basis": "the accountant's relation"}
    return {"epsilon": 2 * epsilon, "delta": (1 + math.exp(epsilon)) * delta,
            "basis": "group privacy: a replacement is a removal and an addition"}


def generator_summary(posterior: Posterior) -> dict[str, Any]:
    """The settings that travel with every twin (small, JSON-able)."""
    s, c = asdict(posterior.settings), posterior.calibration
    return {"model": "mixture+glm", "components": s["components"], "outcome": s["outcome"],
            "clip": s["clip"], "learning_rate": s["learning_rate"], "q": c.q,
            "steps": c.steps, "sigma": c.sigma, "batching": c.batching,
            "noise_aware": posterior.noise_aware, "marginal_share": c.marginal_share,
            "average": s["average"]}


def method(posterior: Posterior) -> str:
    """The release's method in words, for the receipt."""
    s, c = posterior.settings, posterior.calibration
    parts = [f"{'aligned DPVI (DPVIm)' if s.variant == 'aligned' else 'DPSVI'}, "
             f"{s.components}-component mixture with a {s.outcome} head"]
    if c.marginal_share:
        parts.append(f"anchored on noisy one-way marginals ({c.marginal_share:g} of mu^2)")
    if s.head_center:
        parts.append("the head's features centred at the noisy marginal means")
    if s.head_learning_rate is not None:
        parts.append(f"the head's own Adam step {s.head_learning_rate:g}")
    if s.average:
        parts.append(f"iterates averaged over the last {s.average:g} of the steps")
    if s.average and s.head_newton:
        parts.append("the averaged head moved one Newton step along the window's mean gradient")
    parts.append("each twin drawn with the DP noise of the averaged locations (noise-aware)"
                 if posterior.noise_aware else "twins share the release's DP noise (not noise-aware)")
    return "; ".join(parts)


def versions() -> dict[str, str]:
    """Versions of the packages that determine what a twin means."""
    out = {"python": platform.python_version()}
    for pkg in ("twinnode", "d3p", "jax", "jaxlib", "numpyro", "numpy", "fourier-accountant",
                "dp-accounting"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out
