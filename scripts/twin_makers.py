"""Twin makers for the study scripts: simulated posterior twins, or the DP generator's.

Each maker has the `simtwins.TwinMaker` signature
`(schema, frame, *, sender, k, epsilon, seed) -> Sequence[Twin]`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import pandas as pd

from twinnode.lab.simtwins import TwinMaker, posterior_twins
from twinnode.releasedir import load_release, save_release
from twinnode.schema import Schema
from twinnode.twins import Twin

MAKERS = ("posterior", "dp")


def make(name: str, inflate: float = 1.0, epochs: float | None = None,
         ledger_root: str | None = None, cache_dir: str | None = None,
         noise_aware: bool | None = None) -> TwinMaker:
    """The named maker: 'posterior' (simulated, not DP) or 'dp' (train + sample, slow).

    With `cache_dir`, the dp maker keeps each release on disk (keyed by party, seed, K, ε,
    epochs and a hash of the rows), so a later study run re-screens the same twins without
    training again. `noise_aware` (posterior maker only) is `posterior_twins`': True or
    False marks the releases so, False also hides the release noise from the twins' spread."""
    if name == "posterior":
        def posterior(schema: Schema, frame: pd.DataFrame, *, sender: str, k: int,
                      epsilon: float, seed: int) -> Sequence[Twin]:
            return posterior_twins(schema, frame, sender=sender, k=k, epsilon=epsilon,
                                   seed=seed, inflate=inflate, noise_aware=noise_aware)
        return posterior
    if name == "dp":
        root = Path(ledger_root or tempfile.mkdtemp(prefix="twinnode-study-ledgers-"))
        cache: dict[tuple, Sequence[Twin]] = {}  # the same party and seed under several attacks

        def dp(schema: Schema, frame: pd.DataFrame, *, sender: str, k: int,
               epsilon: float, seed: int) -> Sequence[Twin]:
            from twinnode.generator.privacy import Ledger
            from twinnode.generator.release import draw_release, train_posterior
            from twinnode.generator.settings import TrainPlan

            key = (sender, seed, k, epsilon, pd.util.hash_pandas_object(frame).sum())
            stored = None if cache_dir is None else Path(cache_dir) / (
                f"{sender}-s{seed}-k{k}-e{epsilon:g}-ep{epochs or 'default'}-{key[-1]:x}")
            if key not in cache and stored is not None and (stored / "receipt.json").exists():
                cache[key] = load_release(stored, schema).twins
            if key not in cache:
                # a fresh ledger per (party, seed): each study run is its own data release
                ledger = Ledger(root / f"{sender}-{seed}")
                plan = TrainPlan(epsilon=epsilon, **({} if epochs is None else
                                                     {"epochs": epochs}))
                post = train_posterior(schema, frame, plan, ledger, seed=seed)
                release = draw_release(post, schema, k, sender, seed=seed)
                if stored is not None:
                    save_release(release, stored, schema)
                cache[key] = release.twins
            return cache[key]
        return dp
    raise ValueError(f"unknown twin maker {name!r}; expected one of {MAKERS}")
