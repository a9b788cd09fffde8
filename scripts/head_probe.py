#!/usr/bin/env python3
"""Where does the outcome head's error come from? Train variants on one simulated party.

A research probe (docs/results/head/README.md), not a product path: it repeats
`release.train_posterior`'s steps without a ledger so that it can scale the DP noise
(`"noise": 0.01` keeps the clipping and removes 99% of the noise; such a run is not private).
Per seed: one party of N rows of the simulated population (`simtwins.simulate_small`), its
real fit, then each variant (GeneratorSettings / TrainPlan overrides) trained at epsilon 1,
K = 20 twins drawn with and without noise-awareness, and per term the twins' pooled estimate
minus the real one in real SEs, the noise-aware interval's coverage of the real estimate and
its width against the real SE. One JSON line per (seed, variant).

    .venv/bin/python scripts/head_probe.py '[{"name":"default"},{"name":"hw4","settings":{"head_weight":4}}]' 1,2,3
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from twinnode.analysis.fit import local_fit, twins_fit  # noqa: E402
from twinnode.data import frame_to_arrays  # noqa: E402
from twinnode.generator.accounting import calibrate_split  # noqa: E402
from twinnode.generator.layout import Layout  # noqa: E402
from twinnode.generator.posterior import Posterior  # noqa: E402
from twinnode.generator.release import draw_release, fit_release  # noqa: E402
from twinnode.generator.settings import GeneratorSettings, TrainPlan  # noqa: E402
from twinnode.lab.simtwins import simulate_small, small_schema  # noqa: E402
from twinnode.schema import Schema  # noqa: E402


def probe_posterior(schema: Schema, frame: pd.DataFrame, plan: TrainPlan,
                    settings: GeneratorSettings, seed: int, noise: float) -> Posterior:
    """train_posterior's steps, no ledger, the DP noise scaled by `noise` (1: as calibrated)."""
    layout = Layout.from_schema(schema)
    n = len(frame)
    cal = calibrate_split(plan.epsilon, 1.0 / n, n, plan.q, plan.steps(), plan.batching,
                          plan.share())
    cal = replace(cal, sigma=cal.sigma * noise,
                  marginal_multiplier=cal.marginal_multiplier * noise)
    data = layout.encode(frame_to_arrays(schema, frame))
    return replace(fit_release(data, layout, cal, settings, seed), schema_hash=schema.hash,
                   release="probe")


def main() -> int:
    schema = small_schema()
    variants = json.loads(sys.argv[1])  # [{name, eps?, noise?, settings?: {}, plan?: {}}]
    seeds = [int(s) for s in sys.argv[2].split(",")]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 3000
    for seed in seeds:
        frame = simulate_small(schema, n, seed=100 + seed)
        real = local_fit(schema, frame)
        est, se = real.pooled.estimate, np.sqrt(real.pooled.total)
        for v in variants:
            t0 = time.time()
            post = probe_posterior(schema, frame, TrainPlan(epsilon=v.get("eps", 1.0),
                                                            **v.get("plan", {})),
                                   GeneratorSettings(**v.get("settings", {})), seed,
                                   v.get("noise", 1.0))
            out = {}
            for aware in (False, True):
                p = replace(post, settings=replace(post.settings, noise_aware=aware))
                f = twins_fit(schema, draw_release(p, schema, 20, "p", seed=seed).twins)
                total = np.sqrt(f.pooled.total)
                out[aware] = ((f.pooled.estimate - est) / se,
                              np.abs(f.pooled.estimate - est) <= 1.96 * total, total / se)
            terms = real.terms
            print(json.dumps({
                "seed": seed, "v": v["name"], "secs": round(time.time() - t0, 1),
                "z_plain": dict(zip(terms, np.round(out[False][0], 2).tolist())),
                "z_na": dict(zip(terms, np.round(out[True][0], 2).tolist())),
                "cover_na": int(out[True][1].sum()),
                "width_na": dict(zip(terms, np.round(out[True][2], 2).tolist()))}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
