"""`twinnode card`: this site's self-signed public card; `--show` its fingerprints;
`--rotate` new keys, with a card the old key signs (peers that pinned the old key take it)."""
from __future__ import annotations

import argparse
import datetime
import tomllib
from pathlib import Path

from twinnode.errors import CardError, KeyFileError
from twinnode.node.config import Site, read_site
from twinnode.trust.cards import CARD_SUFFIX, Card, make_card, parse_card, render_card
from twinnode.trust.identity import Identity, KeyPaths, save_identity


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("card", help="write (or show) this site's public peer card",
                       description="Write this site's peer card: its name, both public keys, "
                                   "the addresses of node.toml's [network] and their "
                                   "fingerprints, signed by its own key. Send the card to every "
                                   "peer (it holds nothing secret); they pin it with `twinnode "
                                   "peers add CARD` after comparing the fingerprints (--show) "
                                   "with you out of band. --rotate makes new keys (the old ones "
                                   "move to KEYS/retired/) and a card signed by the old key too: "
                                   "peers that pinned the old key accept it, then refuse the "
                                   "old key. Restart the node afterwards (it signs with the new "
                                   "key from then on).",
                       epilog="examples: twinnode card --show; twinnode card --config "
                              "node.toml --out alice.card.toml; twinnode card --rotate")
    p.add_argument("--config", type=Path, default=Path("node.toml"),
                   help="this site's node.toml (default ./node.toml)")
    p.add_argument("--out", type=Path, help="where to write the card (default: "
                   f"NAME{CARD_SUFFIX} beside node.toml)")
    p.add_argument("--show", action="store_true",
                   help="only print the fingerprints to compare out of band")
    p.add_argument("--rotate", action="store_true",
                   help="make new keys and a card signed by the old key as well")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    site = read_site(args.config)
    out = args.out or site.config.parent / f"{site.name}{CARD_SUFFIX}"
    identity = Identity.load(site.keys_dir, site.name)
    if args.show:
        card = make_card(identity, site.pub, site.router)
        print(f"{site.name}")
        print(f"  signing key fingerprint  {card.sign_fingerprint}")
        print(f"  CURVE key fingerprint    {card.curve_fingerprint}")
        print(f"  addresses                {site.pub}  {site.router}")
        return 0
    serial = _serial(out, site.name) + 1
    if args.rotate:
        old = identity
        retired = _retire(site, old)
        identity = Identity.generate(site.name)
        save_identity(identity, site.keys_dir)
        card = make_card(identity, site.pub, site.router, serial=serial,
                         previous=old.sign_secret)
        print(f"moved the old keys to {retired}/ and wrote new ones to {site.keys_dir}/")
    else:
        card = make_card(identity, site.pub, site.router, serial=serial)
    out.write_text(render_card(card), encoding="utf-8")
    print(f"wrote {out} (public: send it to every peer; they run "
          f"`twinnode peers add {out.name}`)")
    _fingerprints(card)
    if args.rotate:
        print("\nrotation: peers that pinned the old key accept this card (it is signed by "
              "the old key too)\nand refuse the old key from then on. Restart this node now: "
              "it signs with the new key.")
    return 0


def _fingerprints(card: Card) -> None:
    print(f"  signing key fingerprint  {card.sign_fingerprint}")
    print(f"  CURVE key fingerprint    {card.curve_fingerprint}")
    print("Peers compare these with you out of band (phone, in person) before pinning.")


def _serial(path: Path, name: str) -> int:
    """The serial of this site's card at `path`, 0 when there is none (or not ours)."""
    try:
        card = parse_card(path.read_text(encoding="utf-8"), str(path))
    except (OSError, CardError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return 0
    return card.serial if card.name == name else 0


def _retire(site: Site, old: Identity) -> Path:
    """Move the four key files to KEYS/retired/<UTC time>/ (kept: the old key can still
    prove which twins it signed); refuse if they are not all there."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = site.keys_dir / "retired" / stamp
    paths, moved = KeyPaths.of(site.keys_dir, old.name), KeyPaths.of(target, old.name)
    missing = [str(p) for p in paths.all() if not p.is_file()]
    if missing:
        raise KeyFileError(f"cannot rotate: missing key file(s) {', '.join(missing)}")
    target.mkdir(parents=True, mode=0o700)
    for src, dst in zip(paths.all(), moved.all()):
        src.rename(dst)
    return target
