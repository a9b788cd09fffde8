"""Shared pieces of the randhie studies (utility_study.py, experiment.py).

Peers train the product's DP generator in worker processes, two at a time, each pinned to a
core (unpinned JAX processes on 2 cores slow each other down many times over); their twins
come back as `Twin`s. The split keeps the peers independent of the focal party, so one set
of trained peers serves every focal-party setting.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

os.environ.setdefault("JAX_PLATFORMS", "cpu")

TEST_SHARE = 0.2


@dataclass(frozen=True)
class PeerTask:
    """One peer's training run: which rows, at what privacy, with which generator."""

    seed: int
    epsilon: float
    peer: int
    rows: int
    k: int
    generator: str = "after"
    plan: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    cache: str | None = None   # a directory that keeps the trained posterior for the next run

    @property
    def key(self) -> tuple:
        return (self.seed, self.epsilon, self.generator, self.peer)

    def cache_file(self) -> Path | None:
        """Where this task's posterior is kept: named by everything that shapes the training."""
        if self.cache is None:
            return None
        spec = json.dumps([self.seed, self.epsilon, self.peer, self.rows, self.plan,
                           self.settings], sort_keys=True)
        digest = hashlib.sha256(spec.encode()).hexdigest()[:16]
        return Path(self.cache) / f"s{self.seed}-e{self.epsilon:g}-peer{self.peer}-{digest}.npz"


def split(frame: pd.DataFrame, seed: int, peers: int, peer_rows: int, n0: int,
          skewed: bool = False, skew: tuple[str, int, float] = ("idp", 1, 0.1)
          ) -> tuple[pd.DataFrame, pd.DataFrame, list[pd.DataFrame]]:
    """(test, focal party, peers): the peers depend only on the seed."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    n_test = int(round(TEST_SHARE * len(frame)))
    test, rest = order[:n_test], order[n_test:]
    peer_idx = [rest[i * peer_rows:(i + 1) * peer_rows] for i in range(peers)]
    pool = rest[peers * peer_rows:]
    if skewed:
        col, value, factor = skew
        group = frame[col].to_numpy()[pool] == value
        n_group = int(round(n0 * group.mean() * factor))
        own = np.concatenate([pool[group][:n_group], pool[~group][:n0 - n_group]])
    else:
        own = pool[:n0]
    if len(own) < n0:
        raise ValueError(f"only {len(own)} rows left for a focal party of {n0}")
    take = lambda idx: frame.iloc[np.sort(idx)].reset_index(drop=True)  # noqa: E731
    return take(test), take(own), [take(p) for p in peer_idx]


def train_peer(task: PeerTask, peers: int) -> dict[str, Any]:
    """Train one peer's generator in this (pinned) worker and draw its K twins."""
    from twinnode.data import randhie
    from twinnode.generator.posterior import Posterior
    from twinnode.generator.privacy import Ledger
    from twinnode.generator.release import draw_release, train_posterior
    from twinnode.generator.settings import GeneratorSettings, TrainPlan

    schema, frame = randhie()
    rows = split(frame, task.seed, peers, task.rows, 0)[2][task.peer]
    plan = TrainPlan(epsilon=task.epsilon, **task.plan)
    settings = GeneratorSettings(**task.settings)
    t0 = time.perf_counter()
    stored = task.cache_file()
    if stored is not None and stored.exists():
        post = Posterior.load(stored, schema)
    else:
        with tempfile.TemporaryDirectory() as state:  # each study run is its own data release
            post = train_posterior(schema, rows, plan, Ledger(state), settings, seed=None)
        if stored is not None:
            stored.parent.mkdir(parents=True, exist_ok=True)
            post.save(stored)
    release = draw_release(post, schema, task.k, f"peer{task.peer}",
                           seed=task.seed * 100 + task.peer)
    return {"task": task, "seconds": time.perf_counter() - t0, "sigma": post.calibration.sigma,
            "twins": release.twins}


def _pin(cores: list[int], counter: Any) -> None:
    with counter.get_lock():
        core = cores[counter.value % len(cores)]
        counter.value += 1
    os.sched_setaffinity(0, {core})


def train_all(tasks: Sequence[PeerTask], peers: int, workers: int = 2,
              say: Callable[[str], None] = print) -> dict[tuple, dict[str, Any]]:
    """Train every task, `workers` at a time on pinned cores; results keyed by task.key."""
    ctx = mp.get_context("spawn")
    counter = ctx.Value("i", 0)
    cores = sorted(os.sched_getaffinity(0))
    t0 = time.perf_counter()
    out: dict[tuple, dict[str, Any]] = {}
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_pin,
                             initargs=(cores, counter)) as pool:
        results = pool.map(train_peer, tasks, [peers] * len(tasks))
        for i, res in enumerate(results, 1):
            t = res["task"]
            out[t.key] = res
            say(f"[{time.perf_counter() - t0:6.0f}s] trained {i}/{len(tasks)}: seed {t.seed} "
                f"eps {t.epsilon:g} {t.generator} peer{t.peer} (sigma {res['sigma']:.2f}, "
                f"{res['seconds']:.0f}s)")
    return out


def peers_of(trained: dict[tuple, dict[str, Any]], seed: int, epsilon: float, generator: str,
             names: Iterable[int]) -> dict[str, list]:
    """The named peers' twins, as `analysis` takes them."""
    return {f"peer{p}": list(trained[(seed, epsilon, generator, p)]["twins"]) for p in names}


def markdown(df: pd.DataFrame) -> str:
    """A DataFrame as a GitHub table (floats to 2 decimals)."""
    cell = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def parse_setting(text: str) -> tuple[str, Any]:
    """A `--set KEY=VALUE` override of a TrainPlan / GeneratorSettings field, the value read
    as JSON where it parses (numbers, true/false, lists), else kept as text."""
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--set {text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value
