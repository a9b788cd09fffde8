#!/usr/bin/env python3
"""Signed error of each cached DP release of the simulated population, in its own SEs.

For every posterior that coverage_study.py cached (`--cache DIR`), draw K twins and pool
them alone (`twins_fit`). The signed error is z = (estimate − true coefficient) / √T. If z
has the same sign across releases, the error is a bias that every release shares. The
twins' spread cannot show such a bias, and neither can the between-release term.

    .venv/bin/python scripts/release_bias.py docs/results/coverage/posteriors --k 5
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from twinnode.analysis.fit import twins_fit  # noqa: E402
from twinnode.generator.posterior import Posterior  # noqa: E402
from twinnode.generator.release import draw_release  # noqa: E402
from twinnode.lab.simtwins import SMALL_TRUE_COEFFICIENTS, small_schema  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache", type=Path, help="a coverage_study.py --cache directory")
    ap.add_argument("--k", type=int, default=5, help="twins per release")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    schema = small_schema()
    files = sorted(args.cache.glob("*.npz"))
    if not files:
        raise SystemExit(f"{args.cache}: no cached posteriors (*.npz)")
    zs, terms = [], ()
    for f in files:
        release = draw_release(Posterior.load(f, schema), schema, args.k, "p", seed=args.seed)
        fit = twins_fit(schema, release.twins)
        terms = fit.terms
        truth = np.array([SMALL_TRUE_COEFFICIENTS[t] for t in terms])
        zs.append((fit.pooled.estimate - truth) / np.sqrt(fit.pooled.total))
    z = np.array(zs)
    print(f"{len(files)} releases, K = {args.k}; z = (estimate - truth) / sqrt(T)")
    print(f"{'term':<16}{'mean z':>8}{'sd z':>8}{'share z > 0':>13}")
    for j, term in enumerate(terms):
        print(f"{term:<16}{z[:, j].mean():>8.2f}{z[:, j].std():>8.2f}"
              f"{(z[:, j] > 0).mean():>13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
