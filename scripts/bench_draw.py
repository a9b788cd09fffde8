#!/usr/bin/env python3
"""Drawing twins: the model's rows compiled once per shape (sample.draw_rows) next to a
Predictive built and traced for every group of draws (the way before 2026-12-03).

Both draw the same K groups of parameter draws from one briefly trained randhie posterior
(training is not measured); the methods take turns for --rounds rounds after a warm-up each,
and the best round counts, since this machine is shared and noisy. Only the rows are timed
(Predictive's output for every group), not calibration or decoding, which both share.

    .venv/bin/python scripts/bench_draw.py [--rows 3000] [--twins 100] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

os.environ.setdefault("JAX_PLATFORMS", "cpu")
warnings.filterwarnings("ignore")

GROUP = 10  # sample_twins' default group of draws


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--twins", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    from numpyro.infer import Predictive

    from twinnode.data import frame_to_arrays, randhie
    from twinnode.generator.accounting import calibrate_split
    from twinnode.generator.layout import Layout
    from twinnode.generator.models import set_up
    from twinnode.generator.release import fit_release
    from twinnode.generator.sample import draw_rows, row_sites
    from twinnode.generator.settings import GeneratorSettings

    schema, frame = randhie()
    frame = frame.sample(n=args.rows, replace=args.rows > len(frame), random_state=1)
    layout, settings, n = Layout.from_schema(schema), GeneratorSettings(), args.rows
    cal = calibrate_split(4.0, 1.0 / n, n, 0.1, 50, "poisson", 0.1)
    post = fit_release(layout.encode(frame_to_arrays(schema, frame)), layout, cal, settings,
                       seed=1)
    model, guide = set_up(layout, n, settings)
    thetas = guide.sample_posterior(jax.random.PRNGKey(0),
                                    {k: jnp.asarray(v) for k, v in post.params.items()},
                                    sample_shape=(args.twins,))
    groups = [{k: v[s:s + GROUP] for k, v in thetas.items()}
              for s in range(0, args.twins, GROUP)]
    sites = row_sites(layout)

    def traced_per_group() -> None:
        for i, part in enumerate(groups):
            out = Predictive(model, posterior_samples=part, return_sites=sites)(
                jax.random.PRNGKey(i))
            jax.block_until_ready(out)

    def compiled_once() -> None:
        rows = draw_rows(layout, n, settings)
        for i, part in enumerate(groups):
            jax.block_until_ready(rows(jax.random.PRNGKey(i), part))

    methods = {"Predictive per group": traced_per_group, "draw_rows (compiled once)": compiled_once}
    best = {name: float("inf") for name in methods}
    for fn in methods.values():
        fn()  # warm-up (draw_rows compiles here; the per-group path compiles every time)
    for _ in range(args.rounds):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    print(f"rows of {args.twins} twins x {n} rows, best of {args.rounds} alternating rounds:")
    for name, seconds in best.items():
        print(f"  {name:28s} {seconds:7.2f} s  ({seconds / args.twins * 1000:6.1f} ms per twin)")
    base = best["Predictive per group"]
    print(f"  ratio (per group / compiled once): {base / best['draw_rows (compiled once)']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
