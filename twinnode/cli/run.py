"""`twinnode run --config node.toml`: run one party's node until SIGTERM, SIGINT or `shutdown`."""
from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from twinnode.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run this party's node (long-lived)",
                       description="Start the node described by --config: bind its sockets, "
                                   "connect to the pinned peers, serve the control socket in "
                                   "its state directory, and exchange signed twins until "
                                   "SIGTERM/SIGINT or `twinnode ctl shutdown` (exit 0). "
                                   "First it checks the schema and every row of the data "
                                   "file, and exits with the error (4 schema, 5 data) before "
                                   "binding anything. docs/NODE.md describes every config key.",
                       epilog="example: twinnode run --config node.toml --log-format json "
                              "2>> node.log   (check it first: twinnode check --config "
                              "node.toml)")
    p.add_argument("--config", required=True, type=Path, help="node config (TOML)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="override [node] log_level")
    p.add_argument("--log-format", choices=["kv", "json"], help="override [node] log_format")
    p.add_argument("--recovered-state", action="store_true",
                   help="this node's state directory was lost (its keys were kept): state "
                        "what it spent before with --spent-epsilon; it publishes only once "
                        "its peers' copies of its twins are fetched back (docs/NODE.md, "
                        "'Losing the state directory')")
    p.add_argument("--spent-epsilon", type=float, metavar="X",
                   help="with --recovered-state: the epsilon this site spent before the "
                        "loss, from your records (the releases peers hold are added when "
                        "they show more)")
    p.add_argument("--spent-delta", type=float, default=0.0, metavar="D",
                   help="with --recovered-state: the delta spent before (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from twinnode.eventlog import configure
    from twinnode.node.config import load_config

    if args.recovered_state != (args.spent_epsilon is not None):
        raise ConfigError("--recovered-state and --spent-epsilon go together: a node whose "
                          "state directory was lost states what it spent before")
    config = load_config(args.config)
    from twinnode.node.preflight import check_inputs

    # a bad schema or CSV stops here (exit 4 or 5), before a socket, the store or the ledger
    # is touched: `twinnode check` runs the same checks offline
    check_inputs(config)
    configure(args.log_level or config.node.log_level,
              args.log_format or config.node.log_format)
    stated = None
    if args.recovered_state:
        from twinnode.node.recovery import Stated
        stated = Stated(args.spent_epsilon, args.spent_delta)
    asyncio.run(_serve(config, stated))
    return 0


async def _serve(config, stated=None) -> None:
    from twinnode.node.core import Node

    node = Node(config, stated=stated)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.request_stop, sig.name)
    await node.run_until_stopped()
