"""`twinnode peers add CARD | list | remove NAME`: the pinned peers, kept in the peers file.

`add` checks the card (its own signature; for a rotation the pinned key's too), prints the
fingerprints to compare out of band, and pins it (`trust.cards.admit` decides new, same,
moved or rotated; anything else is refused). A running node picks the change up within a few
seconds, or at once with `twinnode ctl peers reload`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from twinnode.errors import CardError, ConfigError
from twinnode.node import peersfile
from twinnode.node.config import Site, read_site
from twinnode.trust.cards import MAX_CARD_BYTES, admit, parse_card
from twinnode.trust.identity import Peer, peer_from_entry

_RELOAD = "the running node picks this up within a few seconds (or now: twinnode ctl peers reload)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("peers", help="pin peers from their cards; list or remove them",
                       description="Keep the peers this site pins, in the peers file of "
                                   "node.toml ([keys] peers_file, default peers.toml). add "
                                   "checks a card's signature and prints its fingerprints: "
                                   "compare them with the site out of band. A card with new "
                                   "keys for a pinned name is taken only when the pinned key "
                                   "signed it (twinnode card --rotate). A running node picks "
                                   "changes up by itself within a few seconds, or at once with "
                                   "`twinnode ctl peers reload`.",
                       epilog="examples: twinnode peers add bob.card.toml; twinnode peers "
                              "add bob.card.toml --fingerprint '1a2b 3c4d ...'; twinnode peers "
                              "list; twinnode peers remove bob")
    p.add_argument("--config", type=Path, default=Path("node.toml"),
                   help="this site's node.toml (default ./node.toml)")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = acts.add_parser("add", help="pin the peer of a card")
    add.add_argument("card", type=Path, help="the peer's card file (NAME.card.toml)")
    add.add_argument("--fingerprint", help="refuse unless the card's signing key has this "
                     "fingerprint (as read to you out of band)")
    acts.add_parser("list", help="the pinned peers and their fingerprints")
    rm = acts.add_parser("remove", help="unpin a peer (its stored twins stay)")
    rm.add_argument("name", help="the peer's name")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    site = read_site(args.config)
    pinned = _pinned(site)
    if args.action == "list":
        if not pinned:
            print(f"no peers pinned in {site.peers_file}")
        for peer in pinned:
            print(f"{peer.name:<16} {peer.pub_address}  {peer.router_address}")
            print(f"{'':<16} signing {peer.sign_fingerprint}  CURVE {peer.curve_fingerprint}")
        return 0
    if args.action == "remove":
        if args.name not in {p.name for p in pinned}:
            raise ConfigError(f"{site.peers_file}: no peer {args.name!r} to remove (pinned: "
                              f"{', '.join(p.name for p in pinned) or 'none'})")
        peersfile.write(site.peers_file, site.name, [p for p in pinned if p.name != args.name])
        print(f"removed {args.name} from {site.peers_file}; its stored twins stay (left out "
              f"of analyses);\n{_RELOAD}")
        return 0
    return _add(site, pinned, args.card, args.fingerprint)


def _add(site: Site, pinned: list[Peer], path: Path, expect: str | None) -> int:
    try:
        if path.stat().st_size > MAX_CARD_BYTES:
            raise CardError(f"{path}: too large for a card")
        card = parse_card(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise CardError(f"{path}: cannot read the card: {exc}") from None
    if card.name == site.name:
        raise CardError(f"{path}: this is this site's own card ({site.name}); a node pins "
                        "itself automatically")
    if expect is not None and " ".join(expect.split()).lower() != card.sign_fingerprint:
        raise CardError(f"{path}: the card's signing key fingerprint {card.sign_fingerprint} "
                        f"is not the expected {expect!r}: do not pin it")
    if card.pub_address in (site.pub, site.router) or \
            card.router_address in (site.pub, site.router):
        raise CardError(f"{path}: the card's addresses are this site's own [network] addresses")
    current = {p.name: p for p in pinned}
    kind, entry = admit(card, current.get(card.name))
    for other in pinned:
        if other.name != card.name and {other.sign_key, other.curve_key} & \
                {card.sign_key, card.curve_key}:
            raise CardError(f"{path}: its keys are pinned already, as {other.name!r}")
    if kind != "same":
        current[card.name] = entry
        peersfile.write(site.peers_file, site.name, list(current.values()))
    print(f"{card.name}: signature verified (card serial {card.serial}, made {card.created})")
    print(f"  signing key fingerprint  {card.sign_fingerprint}")
    print(f"  CURVE key fingerprint    {card.curve_fingerprint}")
    print(f"  addresses                {card.pub_address}  {card.router_address}")
    print({"new": f"pinned {card.name} in {site.peers_file}. Compare the fingerprints above "
                  f"with {card.name} out of band;\nif they differ: twinnode peers remove "
                  f"{card.name}",
           "same": f"{card.name} is pinned with exactly this card already: nothing changed",
           "addresses": f"{card.name} moved: its new addresses are pinned (same keys)",
           "rotation": f"rotation: {card.name}'s new keys replace the pinned ones (the card is "
                       f"signed by the pinned key);\nthe old key is refused from now on"}[kind])
    if kind != "same":
        print(_RELOAD)
    return 0


def _pinned(site: Site) -> list[Peer]:
    entries = peersfile.read_entries(site.peers_file)
    try:
        return [peer_from_entry(e, position=i) for i, e in enumerate(entries)]
    except ConfigError as exc:
        raise ConfigError(f"{site.peers_file}: {exc}") from None
