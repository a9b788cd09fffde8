"""Twin makers for the study scripts: simulated posterior twins, or the DP generator's.

Each maker has the `simtwins.TwinMaker` signature
`(schema, frame, *, sender, k, epsilon, seed) -> Sequence[Twin]`.
"""
from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import pandas as pd

from twinnode.generator.posterior import Posterior
from twinnode.generator.privacy import Ledger
from twinnode.generator.release import draw_release, train_posterior
from twinnode.generator.settings import TrainPlan
from twinnode.lab.simtwins import TwinMaker, posterior_twins
from twinnode.schema import Schema
from twinnode.twins import Twin

MAKERS = ("posterior", "dp")


def make(name: str, inflate: float = 1.0, epochs: float | None = None,
         ledger_root: str | None = None, cache_dir: str | None = None,
         noise_aware: bool | None = None) -> TwinMaker:
    """The named maker: 'posterior' (simulated, not DP) or 'dp' (train + sample, slow).

    With `cache_dir`, the dp maker keeps each release on disk (keyed by party, seed, K, ε,
    epochs and a hash of the rows), so a later study run re-screens the same twins without
    training again (the posterior is kept, a few hundred kB, and the K twins drawn from it
    afresh). `noise_aware` for the posterior maker is `posterior_twins`': True or False marks
    the releases so, False also hides the release noise from the twins' spread; for the dp
    maker False draws the twins of the same trained posterior without its DP noise (the
    generator's `--no-noise-aware`), None or True as trained."""
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
            digest = int(pd.util.hash_pandas_object(frame).sum()) & (2**64 - 1)
            key = (sender, seed, k, epsilon, noise_aware, digest)
            if key not in cache:
                post = _posterior(schema, frame, digest, sender=sender, epsilon=epsilon,
                                  seed=seed, epochs=epochs, ledgers=root, cache_dir=cache_dir)
                if noise_aware is False:  # the same training, twins that share its DP noise
                    post = replace(post, settings=replace(post.settings, noise_aware=False))
                cache[key] = draw_release(post, schema, k, sender, seed=seed).twins
            return cache[key]
        return dp
    raise ValueError(f"unknown twin maker {name!r}; expected one of {MAKERS}")


def _posterior(schema: Schema, frame: pd.DataFrame, digest: int, *, sender: str,
               epsilon: float, seed: int, epochs: float | None, ledgers: Path,
               cache_dir: str | None) -> Posterior:
    """The DP posterior of one party's rows (`digest`: of the rows, names the cache file):
    trained under a fresh ledger, or read from the cache."""
    stored = None if cache_dir is None else Path(cache_dir) / (
        f"{sender}-s{seed}-e{epsilon:g}-ep{epochs or 'default'}-{digest:x}.npz")
    if stored is not None and stored.exists():
        return Posterior.load(stored, schema)
    # a fresh ledger per (party, seed): each study run is its own data release
    ledger = Ledger(ledgers / f"{sender}-{seed}")
    plan = TrainPlan(epsilon=epsilon, **({} if epochs is None else {"epochs": epochs}))
    post = train_posterior(schema, frame, plan, ledger, seed=seed)
    if stored is not None:
        stored.parent.mkdir(parents=True, exist_ok=True)
        post.save(stored)
    return post
