"""Envelope v1 against plain msgpack, side by side in one run, for randhie-shaped twins.

For a 2,000-row and a 20,000-row twin of the randhie schema (rows taken from the bundled data):
  encode   `encode_twin` (typed columns + SHA-256 + Ed25519 sign)
           vs `msgpack.packb({column: values as a float64 list})`
  decode   `Verifier.open` (limits, signature, replay check, digest, decode, schema checks)
           vs `msgpack.unpackb` + `np.asarray` per column
and, to price the signature and the checks alone, plain msgpack of the very same typed columns
(`encode_columns` / `msgpack.unpackb` + `np.frombuffer`, no header, no signature, no checks).
Throughput is in MB/s of the twin's float64 size (rows x columns x 8 bytes), so every method is
measured against the same amount of data; ratios > 1 mean the wire format is faster/larger.

    .venv/bin/python scripts/bench_wire.py [--repeat 7]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import msgpack
import numpy as np

from twinnode.data import frame_to_arrays, randhie
from twinnode.trust.identity import Identity, TrustStore
from twinnode.twins import Provenance, Twin
from twinnode.wire import ReplayGuard, Signer, Verifier, encode_twin
from twinnode.wire.columnar import _NUMPY, column_dtype, encode_columns


def best_rate(fn: Callable[[], object], megabytes: float, repeat: int) -> float:
    """MB/s of the median of `repeat` timed rounds (each round long enough to time)."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-6)
    loops = max(1, int(0.2 / one))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        times.append((time.perf_counter() - t0) / loops)
    return megabytes / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    schema, frame = randhie()
    all_arrays = frame_to_arrays(schema, frame)
    me = Identity.generate("alice")
    signer = Signer(me)
    verifier = Verifier(TrustStore([me.peer()]), schema, ReplayGuard())

    print(f"randhie schema: {len(schema.columns)} columns "
          f"({', '.join(f'{c.name}:{c.type}' for c in schema.columns)})")
    print(f"{'rows':>6} {'method':<26} {'encode MB/s':>12} {'decode MB/s':>12} "
          f"{'bytes/twin':>11} {'bytes/row':>10}")
    for rows in (2_000, 20_000):
        arrays = {k: v[:rows] for k, v in all_arrays.items()}
        prov = Provenance("alice", schema.hash, 1.0, 1.0 / rows, rows, 100, 0, "add-remove",
                          "bench", time.time(), {"components": 16})
        twin = Twin(prov, arrays)
        mb = rows * len(arrays) * 8 / 1e6

        frames = encode_twin(twin, schema, 1, signer)
        wire_bytes = sum(map(len, frames))
        enc_wire = best_rate(lambda: encode_twin(twin, schema, 1, signer), mb, args.repeat)
        dec_wire = best_rate(lambda: verifier.open(frames), mb, args.repeat)

        def plain_encode() -> bytes:
            return msgpack.packb({k: v.astype(np.float64).tolist() for k, v in arrays.items()})

        packed = plain_encode()

        def plain_decode() -> dict:
            return {k: np.asarray(v) for k, v in msgpack.unpackb(packed).items()}

        enc_plain = best_rate(plain_encode, mb, args.repeat)
        dec_plain = best_rate(plain_decode, mb, args.repeat)

        typed, _ = encode_columns(arrays, schema)
        dtypes = {c.name: column_dtype(c) for c in schema.columns}

        def typed_decode() -> dict:
            return {name: (np.unpackbits(np.frombuffer(data, np.uint8), count=rows,
                                         bitorder="little") if dtype == "bits"
                           else np.frombuffer(data, _NUMPY[dtype]))
                    for name, dtype, data in msgpack.unpackb(typed)}

        assert all(d == dtypes[n] for n, d, _ in msgpack.unpackb(typed))
        enc_typed = best_rate(lambda: encode_columns(arrays, schema), mb, args.repeat)
        dec_typed = best_rate(typed_decode, mb, args.repeat)

        print(f"{rows:>6} {'wire v1 (signed, checked)':<26} {enc_wire:>12.1f} {dec_wire:>12.1f} "
              f"{wire_bytes:>11,} {wire_bytes / rows:>10.2f}")
        print(f"{rows:>6} {'msgpack float64 lists':<26} {enc_plain:>12.1f} {dec_plain:>12.1f} "
              f"{len(packed):>11,} {len(packed) / rows:>10.2f}")
        print(f"{rows:>6} {'msgpack typed columns':<26} {enc_typed:>12.1f} {dec_typed:>12.1f} "
              f"{len(typed):>11,} {len(typed) / rows:>10.2f}")
        print(f"{rows:>6} {'ratio wire / float64 lists':<26} {enc_wire / enc_plain:>11.2f}x "
              f"{dec_wire / dec_plain:>11.2f}x {wire_bytes / len(packed):>10.3f}x")
        print(f"{rows:>6} {'ratio wire / typed columns':<26} {enc_wire / enc_typed:>11.2f}x "
              f"{dec_wire / dec_typed:>11.2f}x {wire_bytes / len(typed):>10.3f}x")
    print("(header + topic + signature are included in wire bytes; float64 raw would be "
          f"{len(schema.columns) * 8} bytes/row)")


if __name__ == "__main__":
    main()
