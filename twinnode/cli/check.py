"""`twinnode check --config node.toml`: a node's config, schema, data, keys, peers, state and
ports, checked offline; exit 0 when all pass, else the first failure's exit code."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check a node's config, data, keys, peers and ports offline",
                       description="Check what `twinnode run --config` would use, without "
                                   "starting a node: the config file, the schema (it must name "
                                   "an outcome), every row of the data file, this node's key "
                                   "files, the pinned peers (with the fingerprints to compare "
                                   "out of band), the state directory and its privacy ledger, "
                                   "and whether the pub and router addresses can be bound "
                                   "here. Every check runs even when one fails; nothing is "
                                   "written.",
                       epilog="example: twinnode check --config node.toml\n"
                              "exit codes: 0 all checks passed; otherwise the first failure's "
                              "(3 config, 4 schema, 5 data, 6 ledger, 9 keys, 11 state, "
                              "12 ports)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, type=Path, help="node config (TOML)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from twinnode.node.config import load_config
    from twinnode.node.preflight import first_failure, run_checks

    config = load_config(args.config)  # a ConfigError ends it here: nothing else is known
    print(f"checking {args.config} (node {config.name})")
    print(f"  ok    config     {config.path}")
    checks = run_checks(config)
    for c in checks:
        mark = "note" if c.note else ("ok" if c.ok else "FAIL")
        print(f"  {mark:<5} {c.name:<10} {c.detail}")
    failure = first_failure(checks)
    if failure is None:
        print("all checks passed: `twinnode run --config "
              f"{args.config}` should start")
        return 0
    failed = sum(not c.ok for c in checks)
    print(f"{failed} check(s) failed")
    return failure.exit_code
