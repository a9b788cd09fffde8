"""`twinnode example randhie`: write the bundled data as a test set plus party files."""
from __future__ import annotations

import argparse
from pathlib import Path

from twinnode.data import SPLITS, randhie, split_parties, write_table
from twinnode.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("example", help="write an example data set split into parties",
                       description="Write schema.toml, test.csv and party-<i>.csv for the "
                                   "bundled randhie data, split deterministically.",
                       epilog="example: twinnode example randhie --out example/")
    p.add_argument("dataset", choices=["randhie"])
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--parties", type=int, default=5, help="number of parties (default 5)")
    p.add_argument("--split", choices=SPLITS, default="iid",
                   help="iid, or skewed: party 0 under-represents idp = 1 (default iid)")
    p.add_argument("--fraction", default="1.0",
                   help="share of its part that party 0 keeps, or a comma list, one per party")
    p.add_argument("--test-fraction", type=float, default=0.2, help="held-out share (0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def parse_fractions(text: str) -> list[float]:
    """'0.1' or '0.1,1,1' -> floats, with a clear error."""
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--fraction must be a number or a comma list of numbers, "
                          f"got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    schema, frame = randhie()
    part = split_parties(frame, parties=args.parties, split=args.split,
                         fractions=parse_fractions(args.fraction), seed=args.seed,
                         test_fraction=args.test_fraction)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "schema.toml").write_text(schema.to_toml(), encoding="utf-8")
    write_table(part.test, out / "test.csv", schema)
    for i, df in enumerate(part.parties):
        write_table(df, out / f"party-{i}.csv", schema)
    print(f"wrote {out}/schema.toml (hash {schema.short_hash}), test.csv ({len(part.test)} rows)")
    for i, df in enumerate(part.parties):
        print(f"  party-{i}.csv: {len(df)} rows")
    return 0
