#!/usr/bin/env python3
"""DP training speed: d3p DPSVI steps/s next to plain numpyro SVI, same model, same batch.

All methods train the twin model on the same randhie rows as jitted `lax.scan` chunks, with
the same batch selection (d3p's sampler, ChaCha20). Compile time is excluded (a warm-up run
each; DPSVI times include its init, a second or so); the methods take turns for --rounds
rounds and the best round counts, since this machine is shared and noisy. DPSVI pays for per-example gradients (vmap), clipping and
noise; Poisson batching adds a padded batch (its maximum size) and the secure count draw.

    .venv/bin/python scripts/bench_train.py [--rows 3000] [--q 0.01] [--steps 2000]
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings

warnings.filterwarnings("ignore")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--q", type=float, default=0.01)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--components", type=int, default=16)
    args = ap.parse_args(argv)

    import d3p.random as secure_rng
    import jax
    import jax.numpy as jnp
    import numpyro
    from d3p.minibatch import subsample_batchify_data
    from numpyro.infer import SVI, Trace_ELBO

    from twinnode.data import frame_to_arrays, randhie
    from twinnode.generator.layout import Layout
    from twinnode.generator.models import make_guide, make_model
    from twinnode.generator.privacy import calibrate
    from twinnode.generator.settings import GeneratorSettings
    from twinnode.generator.train import fit

    schema, frame = randhie()
    frame = frame.iloc[: args.rows]
    layout = Layout.from_schema(schema)
    data = layout.encode(frame_to_arrays(schema, frame))
    n, batch = len(frame), max(1, round(args.q * len(frame)))
    settings = GeneratorSettings(components=args.components, chunk=500)
    chunks = max(1, args.steps // settings.chunk)
    steps = chunks * settings.chunk

    model = make_model(layout, n, settings)
    svi = SVI(model, make_guide(model, layout, settings), numpyro.optim.Adam(1e-3), Trace_ELBO())
    arrays = tuple(jnp.asarray(a) for a in data)
    _, get_batch = subsample_batchify_data(arrays, batch_size=batch, rng_suite=secure_rng)
    batch_key = secure_rng.PRNGKey(1)

    @jax.jit
    def plain_chunk(state, start):
        def step(state, i):
            return svi.update(state, *get_batch(i, batch_key))
        return jax.lax.scan(step, state, start + jnp.arange(settings.chunk, dtype=jnp.uint32))

    def run_plain() -> float:
        state = svi.init(jax.random.PRNGKey(0), *(a[:batch] for a in arrays))
        t0 = time.perf_counter()
        for c in range(chunks):
            state, losses = plain_chunk(state, c * settings.chunk)
        jax.block_until_ready(losses)
        return steps / (time.perf_counter() - t0)

    methods = {f"numpyro SVI (no clipping, no noise), batch {batch}": run_plain}
    for batching in ("fixed", "poisson"):
        cal = calibrate(1.0, 1 / n, n, args.q, steps, batching)
        label = f"d3p DPSVI {batching} batches of {cal.batch_size} ({cal.relation})"
        methods[label] = (lambda cal=cal: steps / fit(data, layout, cal, settings, seed=1).seconds)
    for run in methods.values():  # warm-up: compile
        run()
    best = {name: 0.0 for name in methods}
    for _ in range(args.rounds):
        for name, run in methods.items():
            best[name] = max(best[name], run())

    plain = next(iter(best.values()))
    print(f"randhie, {n} rows, q={args.q}, {args.components} components, {steps} steps, "
          f"best of {args.rounds} alternating rounds, compile excluded")
    print(f"{'method':60s} {'steps/s':>8s} {'ratio':>7s}")
    for name, rate in best.items():
        print(f"{name:60s} {rate:8.0f} {rate / plain:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
