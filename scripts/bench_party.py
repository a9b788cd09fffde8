"""The default `twinnode analyze` (analyze_party, --weight auto) on randhie-sized data, K = 100.

randhie split into a test set and 5 parties; party 0 (3,230 rows) is local, the 4 others
publish K simulated twins each (`simtwins.posterior_twins`, NOT DP: the fit cost does not
depend on how twins were made; `--inflate` only changes the chosen λ). Times, side by side
in one run: the default analysis (screening + adaptive λ + fits), the same with a fixed
λ = 1 (validated against local only: grid (0, 1)), and a single plain `combined_fit` (the
paper's analysis alone); prints each step's seconds and the ratios. Then the node's input path:
the same twins signed and stored in a node store, read back as a node's analysis reads them
(`node.stored_twins`: verified and decoded on the first read, from the cache after).

    .venv/bin/python scripts/bench_party.py [--k 100] [--repeat 2]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from twinnode.analysis.fit import combined_fit  # noqa: E402
from twinnode.analysis.party import analyze_party  # noqa: E402
from twinnode.data import randhie, split_parties  # noqa: E402
from twinnode.lab.simtwins import posterior_twins  # noqa: E402
from twinnode.node.stored_twins import StoredTwins  # noqa: E402
from twinnode.store.store import Store  # noqa: E402
from twinnode.trust.identity import Identity, TrustStore  # noqa: E402
from twinnode.wire import Signer, WireLimits, encode_twin, limits_for  # noqa: E402


def store_read(schema, peers) -> tuple[float, float, int]:
    """Seconds to read every peer's latest twins from a node store: first (verify and decode),
    then again (cached); and the twins read."""
    ids = {name: Identity.generate(name) for name in peers}
    trust = TrustStore([i.peer("tcp://127.0.0.1:1", "tcp://127.0.0.1:2") for i in ids.values()])
    with tempfile.TemporaryDirectory() as tmp, Store.open(tmp) as store:
        for name, twins in peers.items():
            for seq, twin in enumerate(twins, start=1):
                frames = encode_twin(twin, schema, seq, Signer(ids[name]))
                store.put(name, seq, hashlib.sha256(frames[2]).digest(), frames,
                          k=twin.provenance.index, release=twin.provenance.release)
        reader = StoredTwins(trust, schema, limits_for(schema, 1_000_000, WireLimits()))
        t0 = time.perf_counter()
        read = reader.latest(store, own="party0")
        t1 = time.perf_counter()
        reader.latest(store, own="party0")
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1, sum(len(t) for t in read.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--inflate", type=float, default=4.0)
    ap.add_argument("--cv-replicates", type=int, default=None)
    args = ap.parse_args()
    schema, frame = randhie()
    part = split_parties(frame, parties=5, seed=0)
    local = part.parties[0]
    peers = {f"party{i + 1}": posterior_twins(schema, f, sender=f"party{i + 1}", k=args.k,
                                              seed=i, inflate=args.inflate)
             for i, f in enumerate(part.parties[1:])}
    print(f"randhie: local {len(local)} rows, {len(peers)} peers x {len(part.parties[1])} rows, "
          f"K = {args.k}, {len(schema.covariates)} covariates, test {len(part.test)} rows")
    best: dict[str, float] = {}
    report = fixed = None
    for r in range(args.repeat):  # alternate, keep each one's best time
        t0 = time.perf_counter()
        report = analyze_party(schema, local, peers, test_frame=part.test,
                               replicates=args.cv_replicates)
        t1 = time.perf_counter()
        fixed = analyze_party(schema, local, peers, weight=1.0, test_frame=part.test,
                              replicates=args.cv_replicates)
        t2 = time.perf_counter()
        combined_fit(schema, local, peers)
        t3 = time.perf_counter()
        for name, sec in (("auto", t1 - t0), ("fixed", t2 - t1), ("plain", t3 - t2)):
            best[name] = min(best.get(name, float("inf")), sec)
    assert report is not None and fixed is not None
    print(f"default analyze (weight auto):   {best['auto']:6.2f} s   last run's steps "
          f"{dict(report.timing)}")
    print(f"analyze --weight 1:              {best['fixed']:6.2f} s   last run's steps "
          f"{dict(fixed.timing)}")
    print(f"plain combined_fit (paper):      {best['plain']:6.2f} s")
    print(f"ratios: auto / plain {best['auto'] / best['plain']:.1f}, fixed / plain "
          f"{best['fixed'] / best['plain']:.1f}, auto / fixed {best['auto'] / best['fixed']:.1f}")
    w = report.weight
    print(f"chosen λ = {w.chosen:g} ({w.folds} folds, {w.replicates} twins per validation fit); "
          f"{w.verdict}")
    print(f"test log-likelihood per record: local {report.evaluation['local'].mean:.5f}, "
          f"combined (auto) {report.evaluation['combined'].mean:.5f}, combined (λ = 1) "
          f"{fixed.evaluation['combined'].mean:.5f}")
    first, again, n = store_read(schema, peers)
    print(f"node store read of the peers' latest twins ({n}): first {first:.2f} s (verify + "
          f"decode), again {again:.2f} s (decoded once, from the cache)")


if __name__ == "__main__":
    main()
