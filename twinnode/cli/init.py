"""`twinnode init NAME`: a new site in one go: keys, a commented node.toml with this machine's
addresses, an empty peers file and the site's card. Refuses to overwrite anything."""
from __future__ import annotations

import argparse
import datetime
import socket
from pathlib import Path

from twinnode.analysis.options import (
    DEFAULT_HETEROGENEITY,
    DEFAULT_ON_DISAGREEMENT,
    DEFAULT_WEIGHT,
    HETEROGENEITIES,
)
from twinnode.errors import ConfigError
from twinnode.node import peersfile
from twinnode.trust.cards import CARD_SUFFIX, make_card, render_card
from twinnode.trust.identity import Identity, KeyPaths, check_name, save_identity

NODE_TOML = """\
# node.toml of "{name}", written by `twinnode init` on {date}. Every key: docs/NODE.md.
# Check the site offline with: twinnode check --config node.toml

[node]
name = "{name}"
state_dir = "state"            # store, ledger, reports, control socket: keep it private

[data]
path = "{data}"{data_note}
schema = "{schema}"{schema_note}

[network]
# Peers connect to these (they travel in your card): this machine's address as the other
# sites reach it, and two free ports. Changed them? Run `twinnode card` and resend the card.
pub = "tcp://{host}:{port}"
router = "tcp://{host}:{port2}"

[privacy]
epsilon = 1.0                  # the privacy cost of one training run
# cap_epsilon = 3.0            # the ledger refuses any run past this total

[twins]
k = 100                        # twins per release (the paper's K)

[training]
auto = false                   # true: at start, train and publish if nothing is published yet

[analysis]
# Defaults of `twinnode ctl analyze` (its arguments override them); more keys: docs/NODE.md
weight = "{weight}"                # the peers' twin weight: "auto" (cross-validated) or 0..1
heterogeneity = "{heterogeneity}"          # between-release term of the variance: {heterogeneities}
on_disagreement = "{on_disagreement}"       # a term whose twins disagree: keep or local

[keys]
dir = "keys"                   # {name}.sign_secret and {name}.key_secret (0600, never shared)
peers_file = "peers.toml"      # the pinned peers: twinnode peers add CARD / list / remove NAME
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="set up a new site: keys, node.toml, peers file and card",
                       description="Create a new site in DIR: its keys (keys/NAME.*, secrets "
                                   "0600), a commented node.toml with this machine's "
                                   "addresses, an empty peers.toml and the site's card "
                                   f"(NAME{CARD_SUFFIX}, public: send it to every peer). "
                                   "Nothing existing is ever overwritten.",
                       epilog="example: twinnode init alice --data alice.csv --schema "
                              "schema.toml; then send alice.card.toml to the other sites and "
                              "pin theirs with twinnode peers add CARD")
    p.add_argument("name", help="the site's node name (1-64 letters, digits, '_', '.', '-')")
    p.add_argument("--dir", type=Path, default=Path("."), help="where to write (default .)")
    p.add_argument("--host", help="the address peers reach this machine at (default: this "
                                  "machine's outbound IPv4 address)")
    p.add_argument("--port", type=int, default=5550,
                   help="the PUB port; the ROUTER takes the next one (default 5550)")
    p.add_argument("--data", default=None, help="the private CSV (default NAME.csv)")
    p.add_argument("--schema", default="schema.toml", help="the shared schema (default "
                                                          "schema.toml)")
    p.set_defaults(func=run)


def this_host() -> str:
    """This machine's outbound IPv4 address (no packet is sent), else 127.0.0.1."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the route
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def run(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    if not 1 <= args.port <= 65534:
        raise ConfigError(f"--port must be in 1..65534, got {args.port}")
    host = args.host or this_host()
    pub, router = f"tcp://{host}:{args.port}", f"tcp://{host}:{args.port + 1}"
    root: Path = args.dir
    config, card_path, peers = (root / "node.toml", root / f"{name}{CARD_SUFFIX}",
                                root / "peers.toml")
    keys = KeyPaths.of(root / "keys", name)
    existing = [str(p) for p in (config, card_path, peers, *keys.all()) if p.exists()]
    if existing:
        raise ConfigError(f"refusing to overwrite {', '.join(existing)} (this directory "
                          "holds a site already; use another --dir)")
    data = args.data or f"{name}.csv"
    identity = Identity.generate(name)
    card = make_card(identity, pub, router)  # checks the addresses before anything is written
    root.mkdir(parents=True, exist_ok=True)
    save_identity(identity, root / "keys")
    text = NODE_TOML.format(
        name=name, date=datetime.date.today().isoformat(), host=host, port=args.port,
        port2=args.port + 1, data=data, schema=args.schema, weight=DEFAULT_WEIGHT,
        heterogeneity=DEFAULT_HETEROGENEITY, heterogeneities=", ".join(HETEROGENEITIES),
        on_disagreement=DEFAULT_ON_DISAGREEMENT,
        data_note="" if (root / data).exists() else
        "          # your private CSV (not there yet): it never leaves this machine",
        schema_note="" if (root / args.schema).exists() else
        "   # the schema every site shares (not there yet)")
    with open(config, "x", encoding="utf-8") as fh:
        fh.write(text)
    peersfile.write(peers, name, [])
    with open(card_path, "x", encoding="utf-8") as fh:
        fh.write(render_card(card))
    print(f"wrote {keys.sign_secret.parent}/{name}.* (secrets 0600), {config}, {peers}, "
          f"{card_path}")
    print(f"  addresses                {pub}  {router}")
    print(f"  signing key fingerprint  {card.sign_fingerprint}")
    print(f"  CURVE key fingerprint    {card.curve_fingerprint}")
    print("next: send the card to every other site and pin theirs: twinnode peers add "
          "THEIR.card.toml\n(compare fingerprints out of band); then twinnode check "
          "--config node.toml; twinnode run --config node.toml")
    return 0
