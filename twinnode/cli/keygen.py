"""`twinnode keygen NAME`: make this node's signing and CURVE key pairs, print fingerprints."""
from __future__ import annotations

import argparse
from pathlib import Path

from twinnode.trust.certs import curve_raw, format_curve_key
from twinnode.trust.identity import (
    Identity,
    check_name,
    fingerprint,
    format_sign_key,
    save_identity,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keygen", help="create this node's key pairs (Ed25519 + CURVE)",
                       description="Write NAME.sign / NAME.sign_secret (Ed25519 signing keys) and "
                                   "NAME.key / NAME.key_secret (ZeroMQ CURVE certificates) into "
                                   "DIR. Secret files are created 0600; existing keys are never "
                                   "overwritten. Compare the printed fingerprints with each peer "
                                   "out of band before pinning their keys.",
                       epilog="example: twinnode keygen alice   (writes keys/alice.*; then "
                              "send keys/alice.sign and keys/alice.key to every peer)")
    p.add_argument("name", help="node name (1-64 letters, digits, '_', '.', '-')")
    p.add_argument("--dir", type=Path, default=Path("keys"),
                   help="directory for the key files (default: keys, where [keys] dir of "
                        "node.toml looks by default)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    identity = Identity.generate(name)
    paths = save_identity(identity, args.dir)
    sign_key = format_sign_key(identity.sign_public)
    curve_key = format_curve_key(identity.curve_public)
    print(f"wrote {paths.sign_public} and {paths.curve_public} (public: share them)")
    print(f"wrote {paths.sign_secret} and {paths.curve_secret} (SECRET: mode 0600, never share "
          "or commit)")
    print()
    print(f"signing key fingerprint  {fingerprint(identity.sign_public)}")
    print(f"CURVE key fingerprint    {fingerprint(curve_raw(identity.curve_public))}")
    print()
    print("Peers compare both fingerprints with you out of band (phone, in person) before")
    print("they pin this entry in their node config (fill in your addresses):")
    print()
    print("[[peers]]")
    print(f'name = "{name}"')
    print(f'sign_key = "{sign_key}"')
    print(f'curve_key = "{curve_key}"')
    print('pub_address = "tcp://HOST:PORT"')
    print('router_address = "tcp://HOST:PORT"')
    return 0
