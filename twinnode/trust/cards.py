"""Peer cards: a site's public identity in one self-signed file, and the rules for pinning one.

A card (`NAME.card.toml`, made by `twinnode init` and `twinnode card`) holds a site's name,
both public keys, its two addresses, their fingerprints, a creation time and a serial, and an
Ed25519 signature by the card's own signing key over all of it (domain-separated,
length-prefixed: `card_body`). A card that replaces an earlier key (`twinnode card --rotate`)
also names the previous signing key and carries that key's signature over the same body: the
old key vouches for the new one.

`admit(card, pinned)` decides what pinning a card does against the entry already pinned under
its name (or none): `new`, `same` (nothing changes), `addresses` (the same keys moved: the card
is signed by the pinned key), `rotation` (new keys, signed by the pinned key; the old signing
key is kept as retired, good only for re-reading twins stored before), and otherwise a
CardError: a card under a pinned name with other keys and no signature of the pinned key is
someone else's card, whatever it says. Pure: no files, no network (the CLI reads and writes).
"""
from __future__ import annotations

import base64
import binascii
import datetime
import struct
import tomllib
from dataclasses import dataclass, replace
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from twinnode.errors import CardError, ConfigError, KeyFileError
from twinnode.trust.certs import curve_raw, format_curve_key, parse_curve_key
from twinnode.trust.identity import (
    ADDRESS_RE,
    SIGNATURE_BYTES,
    Identity,
    Peer,
    check_name,
    fingerprint,
    format_sign_key,
    parse_sign_key,
    verify,
)

CARD_FORMAT = "twinnode-card/1"
CARD_SUFFIX = ".card.toml"
_DOMAIN = b"twinnode-card/1\x00"
_FIELDS = ("format", "name", "sign_key", "curve_key", "pub_address", "router_address",
           "created", "serial", "sign_fingerprint", "curve_fingerprint", "signature",
           "previous_sign_key", "previous_signature")
MAX_CARD_BYTES = 8 * 1024

Admission = Literal["new", "same", "addresses", "rotation"]


@dataclass(frozen=True)
class Card:
    """A site's public card; `signature` is by `sign_key`, `previous_signature` (a rotation)
    by `previous_sign_key`, both over `card_body(card)`."""

    name: str
    sign_key: bytes
    curve_key: bytes
    pub_address: str
    router_address: str
    created: str
    serial: int
    signature: bytes = b""
    previous_sign_key: bytes | None = None
    previous_signature: bytes | None = None

    @property
    def sign_fingerprint(self) -> str:
        return fingerprint(self.sign_key)

    @property
    def curve_fingerprint(self) -> str:
        return fingerprint(curve_raw(self.curve_key))

    def peer(self, retired: tuple[bytes, ...] = ()) -> Peer:
        """The pinned-peer entry this card makes."""
        return Peer(self.name, self.sign_key, self.curve_key, self.pub_address,
                    self.router_address, retired)


def card_body(card: Card) -> bytes:
    """The exact bytes both signatures cover: every field but the signatures, in order."""
    parts = (card.name, format_sign_key(card.sign_key), format_curve_key(card.curve_key),
             card.pub_address, card.router_address, card.created, str(card.serial),
             format_sign_key(card.previous_sign_key) if card.previous_sign_key else "")
    out = bytearray(_DOMAIN)
    for part in parts:
        raw = part.encode("utf-8")
        out += struct.pack(">I", len(raw)) + raw
    return bytes(out)


def make_card(identity: Identity, pub_address: str, router_address: str, *, serial: int = 1,
              previous: Ed25519PrivateKey | None = None) -> Card:
    """This site's card, signed by its key (and, for a rotation, by the `previous` key too)."""
    for address in (pub_address, router_address):
        _check_address(address, "address")
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    prev_pub = (previous.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
                if previous is not None else None)
    card = Card(identity.name, identity.sign_public, identity.curve_public, pub_address,
                router_address, created, serial, previous_sign_key=prev_pub)
    body = card_body(card)
    return replace(card, signature=identity.sign(body),
                   previous_signature=previous.sign(body) if previous is not None else None)


def render_card(card: Card) -> str:
    """The card as TOML, with a comment saying what to compare out of band."""
    lines = [f'# twinnode peer card of "{card.name}": public, send it to every peer.',
             f"# Peers pin it with: twinnode peers add {card.name}{CARD_SUFFIX}",
             f"# and first compare these fingerprints with {card.name} out of band "
             "(phone, in person):",
             f"#   signing key  {card.sign_fingerprint}",
             f"#   CURVE key    {card.curve_fingerprint}", "",
             f'format = "{CARD_FORMAT}"', f'name = "{card.name}"',
             f'sign_key = "{format_sign_key(card.sign_key)}"',
             f'curve_key = "{format_curve_key(card.curve_key)}"',
             f'pub_address = "{card.pub_address}"', f'router_address = "{card.router_address}"',
             f'created = "{card.created}"', f"serial = {card.serial}",
             f'sign_fingerprint = "{card.sign_fingerprint}"',
             f'curve_fingerprint = "{card.curve_fingerprint}"',
             f'signature = "{_b64(card.signature)}"']
    if card.previous_sign_key is not None and card.previous_signature is not None:
        lines += ["", f"# rotation: the key below, pinned by peers until now, signed this card",
                  f'previous_sign_key = "{format_sign_key(card.previous_sign_key)}"',
                  f'previous_signature = "{_b64(card.previous_signature)}"']
    return "\n".join(lines) + "\n"


def parse_card(text: str, where: str = "card") -> Card:
    """Read a card and check it: fields, keys, fingerprints, its own signature and (a
    rotation) the previous key's. CardError names `where` and what is wrong."""
    if len(text.encode("utf-8")) > MAX_CARD_BYTES:
        raise CardError(f"{where}: too large for a card")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CardError(f"{where}: not a card (not valid TOML: {exc})") from None
    try:
        card = _card_from(doc)
    except (CardError, ConfigError, KeyFileError) as exc:
        raise CardError(f"{where}: {exc}") from None
    body = card_body(card)
    if not verify(card.peer().verifier, card.signature, body):
        raise CardError(f"{where}: the card's signature does not verify under its own "
                        "signing key (the card was altered, or is not what it claims)")
    if card.previous_sign_key is not None:
        previous = Peer(card.name, card.previous_sign_key, card.curve_key).verifier
        if not verify(previous, card.previous_signature or b"", body):
            raise CardError(f"{where}: the previous key's signature does not verify: not a "
                            "valid rotation")
    return card


def admit(card: Card, pinned: Peer | None) -> tuple[Admission, Peer]:
    """What pinning `card` does, given the entry pinned under its name; the entry to pin.

    Raises CardError for another site's card under a pinned name: new keys that the pinned
    key did not sign (a rotation must be signed by the key peers pinned), or the same
    signing key with another CURVE key."""
    if pinned is None:
        return "new", card.peer()
    if card.sign_key == pinned.sign_key:
        if card.curve_key != pinned.curve_key:
            raise CardError(f"{card.name}: the card has the pinned signing key but another "
                            "CURVE key; keys change only by rotation (twinnode card --rotate)")
        if (card.pub_address, card.router_address) == (pinned.pub_address,
                                                         pinned.router_address):
            return "same", pinned
        return "addresses", card.peer(pinned.retired_sign_keys)
    if card.sign_key in pinned.retired_sign_keys:
        raise CardError(f"{card.name}: the card's signing key was retired by a rotation; "
                        "an old card is refused")
    if card.previous_sign_key != pinned.sign_key:
        raise CardError(
            f"{card.name} is pinned with other keys (signing key {pinned.sign_fingerprint}) "
            "and this card is not signed by that key. If the site really made new keys "
            "without a rotation card, compare the new fingerprints with it out of band, "
            f"then: twinnode peers remove {card.name}; twinnode peers add CARD")
    return "rotation", card.peer((*pinned.retired_sign_keys, pinned.sign_key))


def _card_from(doc: dict[str, Any]) -> Card:
    unknown = sorted(set(doc) - set(_FIELDS))
    if unknown:
        raise CardError(f"unknown field(s) {', '.join(unknown)}")
    if doc.get("format") != CARD_FORMAT:
        raise CardError(f'not a card: expected format = "{CARD_FORMAT}"')
    for key in ("name", "sign_key", "curve_key", "pub_address", "router_address", "created",
                "serial", "signature"):
        if key not in doc:
            raise CardError(f"missing field '{key}'")
    name = check_name(doc["name"])
    sign_key, curve_key = parse_sign_key(doc["sign_key"]), parse_curve_key(doc["curve_key"])
    serial = doc["serial"]
    if type(serial) is not int or serial < 1:
        raise CardError(f"field 'serial' must be a positive integer, got {serial!r:.40}")
    if not isinstance(doc["created"], str):
        raise CardError("field 'created' must be a string")
    previous = doc.get("previous_sign_key")
    if (previous is None) != ("previous_signature" not in doc):
        raise CardError("previous_sign_key and previous_signature come together")
    card = Card(name, sign_key, curve_key,
                _check_address(doc["pub_address"], "pub_address"),
                _check_address(doc["router_address"], "router_address"),
                doc["created"], serial, _signature(doc["signature"], "signature"),
                parse_sign_key(previous) if previous is not None else None,
                _signature(doc["previous_signature"], "previous_signature")
                if previous is not None else None)
    for key, value in (("sign_fingerprint", card.sign_fingerprint),
                       ("curve_fingerprint", card.curve_fingerprint)):
        if key in doc and doc[key] != value:
            raise CardError(f"field '{key}' does not match the key it names")
    return card


def _check_address(value: Any, key: str) -> str:
    if not isinstance(value, str) or not ADDRESS_RE.match(value) or \
            value.startswith("inproc://"):
        raise CardError(f"field '{key}': {value!r:.60} is not an address like "
                        "tcp://HOST:PORT")
    return value


def _signature(value: Any, key: str) -> bytes:
    try:
        raw = base64.b64decode(str(value).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise CardError(f"field '{key}' is not valid base64") from None
    if len(raw) != SIGNATURE_BYTES:
        raise CardError(f"field '{key}' is {len(raw)} bytes, not a signature")
    return raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
