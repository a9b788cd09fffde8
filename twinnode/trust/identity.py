"""Who a node is and whom it trusts: key files, fingerprints, pinned peers, sign/verify.

Each node has two key pairs, both made by `twinnode keygen NAME --dir DIR`:

    DIR/NAME.sign          Ed25519 public signing key    (share it)
    DIR/NAME.sign_secret   Ed25519 secret signing key    (0600, never leaves the machine)
    DIR/NAME.key           CURVE public certificate      (zmq.auth format, share it)
    DIR/NAME.key_secret    CURVE secret certificate      (zmq.auth format, 0600)

The Ed25519 key signs every envelope (authenticity survives forwarding by other nodes); the
CURVE key encrypts and authenticates the ZeroMQ connections. Peers are pinned by name with
both public keys: the `TrustStore`. Public keys travel as text: `ed25519:<base64>` for signing
keys and the 40-character Z85 string ZeroMQ uses for CURVE keys. A fingerprint is the first
128 bits of SHA-256 of the raw 32-byte key in hex groups, read aloud to compare out of band.

The CURVE half (Z85 text, key pairs, certificate files) is `trust.certs`, the safe reading and
writing of key files `trust.keyfiles`; like them, this module needs `cryptography` and no
ZeroMQ, so the bytes layer (`wire`) can check signatures without loading a network library.
"""
from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from twinnode.atomic import fsync_dir, mkdir_durable
from twinnode.errors import ConfigError, KeyFileError, UnknownSender
from twinnode.trust.certs import (
    curve_keypair,
    curve_raw,
    format_curve_key,
    parse_curve_key,
    parse_public_certificate,
    parse_secret_certificate,
    render_certificates,
)
from twinnode.trust.keyfiles import in_file, parse_fields, read_key_file, write_new

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
SIGN_FORMAT = "twinnode-ed25519/1"
SIGN_PREFIX = "ed25519:"
SIGN_KEY_BYTES = 32
SIGNATURE_BYTES = 64
ADDRESS_RE = re.compile(r"^(tcp://[^\s/]+:\d{1,5}|ipc://\S+|inproc://\S+)$")
PEER_FIELDS = ("name", "sign_key", "curve_key", "pub_address", "router_address",
               "retired_sign_keys")
_KEYGEN_HINT = "create keys with: twinnode keygen {name} --dir {dir}"


# ------------------------------------------------------------------ text forms of keys
def check_name(name: Any) -> str:
    """A node name is 1-64 letters, digits, '_', '.', '-' (it ends up in topics and paths)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(f"invalid node name {name!r}: use 1-64 letters, digits, '_', '.', "
                          "'-', starting with a letter or digit")
    return name


def format_sign_key(raw: bytes) -> str:
    """Raw 32-byte Ed25519 public key -> `ed25519:<base64>` as written in configs."""
    return SIGN_PREFIX + base64.b64encode(raw).decode("ascii")


def parse_sign_key(text: Any) -> bytes:
    """`ed25519:<base64>` -> raw 32-byte public key; KeyFileError says what is wrong."""
    if not isinstance(text, str) or not text.startswith(SIGN_PREFIX):
        raise KeyFileError(f"signing key must be a string 'ed25519:<base64>', got {text!r:.60}")
    raw = _b64(text[len(SIGN_PREFIX):], "signing key")
    _ed25519_public(raw)  # rejects encodings OpenSSL will not load
    return raw


def fingerprint(raw: bytes) -> str:
    """First 128 bits of SHA-256 of a raw public key, as 8 groups of 4 hex digits."""
    h = hashlib.sha256(raw).hexdigest()[:32]
    return " ".join(h[i:i + 4] for i in range(0, 32, 4))


def _b64(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise KeyFileError(f"{what} is not valid base64") from None
    if len(raw) != SIGN_KEY_BYTES:
        raise KeyFileError(f"{what} decodes to {len(raw)} bytes, expected {SIGN_KEY_BYTES}")
    return raw


def _ed25519_public(raw: bytes) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise KeyFileError("not a valid Ed25519 public key") from None


# ------------------------------------------------------------------ sign / verify
def sign(secret: Ed25519PrivateKey, message: bytes) -> bytes:
    """Ed25519 signature (64 bytes) of `message`."""
    return secret.sign(message)


def verify(public: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    """True when `signature` is `public`'s Ed25519 signature of `message`."""
    if len(signature) != SIGNATURE_BYTES:
        return False
    try:
        public.verify(signature, message)
    except _CryptoInvalidSignature:
        return False
    return True


# ------------------------------------------------------------------ peers and trust
@dataclass(frozen=True)
class Peer:
    """A pinned peer: its name, both public keys, and where it listens (if anywhere)."""

    name: str
    sign_key: bytes                    # raw 32-byte Ed25519 public key
    curve_key: bytes                   # Z85 CURVE public key, as zmq socket options take it
    pub_address: str | None = None     # its PUB socket, e.g. tcp://10.0.0.2:5550
    router_address: str | None = None  # its ROUTER socket for catch-up
    retired_sign_keys: tuple[bytes, ...] = ()  # replaced by rotations: re-reading stored twins

    @cached_property
    def retired_verifiers(self) -> tuple[Ed25519PublicKey, ...]:
        """The retired signing keys, good only for twins stored before their rotation."""
        return tuple(_ed25519_public(k) for k in self.retired_sign_keys)

    @cached_property
    def verifier(self) -> Ed25519PublicKey:
        """The signing key as a cryptography object (built once)."""
        return _ed25519_public(self.sign_key)

    @property
    def sign_fingerprint(self) -> str:
        return fingerprint(self.sign_key)

    @property
    def curve_fingerprint(self) -> str:
        return fingerprint(curve_raw(self.curve_key))

    def to_entry(self) -> dict[str, Any]:
        """The config-entry form `TrustStore.from_entries` reads back."""
        out: dict[str, Any] = {"name": self.name, "sign_key": format_sign_key(self.sign_key),
                               "curve_key": format_curve_key(self.curve_key)}
        if self.pub_address:
            out["pub_address"] = self.pub_address
        if self.router_address:
            out["router_address"] = self.router_address
        if self.retired_sign_keys:
            out["retired_sign_keys"] = [format_sign_key(k) for k in self.retired_sign_keys]
        return out


class TrustStore:
    """The pinned peers by name; the sender field of a message decides which key checks it."""

    def __init__(self, peers: Iterable[Peer] = ()) -> None:
        self._peers: dict[str, Peer] = {}
        for peer in peers:
            self.add(peer)

    def add(self, peer: Peer) -> None:
        """Pin one more peer; a name or a key pinned twice is a configuration error."""
        if peer.name in self._peers:
            raise ConfigError(f"peer {peer.name!r} is pinned twice")
        for other in self._peers.values():
            if other.sign_key == peer.sign_key:
                raise ConfigError(f"peers {other.name!r} and {peer.name!r} share a signing key")
            if other.curve_key == peer.curve_key:
                raise ConfigError(f"peers {other.name!r} and {peer.name!r} share a CURVE key")
        self._peers[peer.name] = peer

    def reset(self, peers: Iterable[Peer]) -> None:
        """Pin exactly `peers` from now on (a peers reload); all checked before any change."""
        self._peers = TrustStore(peers)._peers

    @classmethod
    def from_entries(cls, entries: Iterable[Mapping[str, Any]]) -> "TrustStore":
        """Build from config entries (dicts with PEER_FIELDS); errors name the peer and field."""
        store = cls()
        for i, entry in enumerate(entries):
            store.add(peer_from_entry(entry, position=i))
        return store

    def get(self, name: str) -> Peer:
        """The pinned peer called `name`, or UnknownSender."""
        try:
            return self._peers[name]
        except (KeyError, TypeError):
            raise UnknownSender(f"sender {name!r:.80} is not a pinned peer") from None

    def __contains__(self, name: object) -> bool:
        return name in self._peers

    def __iter__(self) -> Iterator[Peer]:
        return iter(self._peers.values())

    def __len__(self) -> int:
        return len(self._peers)

    @property
    def names(self) -> list[str]:
        return sorted(self._peers)

    def curve_keys(self) -> set[bytes]:
        """Z85 CURVE public keys of every pinned peer: the ZAP allow-list."""
        return {p.curve_key for p in self._peers.values()}


def peer_from_entry(entry: Any, position: int = 0) -> Peer:
    """Validate one config entry into a Peer; ConfigError names the peer and the field."""
    if not isinstance(entry, Mapping):
        raise ConfigError(f"peer entry #{position + 1} must be a table, got {type(entry).__name__}")
    label = f"peer {entry['name']!r}" if isinstance(entry.get("name"), str) else \
        f"peer entry #{position + 1}"
    unknown = sorted(str(k) for k in entry if k not in PEER_FIELDS)
    if unknown:
        raise ConfigError(f"{label}: unknown field(s) {', '.join(unknown)} "
                          f"(allowed: {', '.join(PEER_FIELDS)})")
    for key in ("name", "sign_key", "curve_key"):
        if key not in entry:
            raise ConfigError(f"{label}: missing field '{key}'")
    try:
        name = check_name(entry["name"])
    except ConfigError as exc:
        raise ConfigError(f"{label}: field 'name': {exc}") from None
    keys: dict[str, bytes] = {}
    for key, parse in (("sign_key", parse_sign_key), ("curve_key", parse_curve_key)):
        try:
            keys[key] = parse(entry[key])
        except KeyFileError as exc:
            raise ConfigError(f"{label}: field '{key}': {exc}") from None
    addresses: dict[str, str | None] = {}
    for key in ("pub_address", "router_address"):
        value = entry.get(key)
        if value is not None and (not isinstance(value, str) or not ADDRESS_RE.match(value)):
            raise ConfigError(f"{label}: field '{key}': {value!r} is not an address like "
                              "tcp://HOST:PORT")
        addresses[key] = value
    retired = entry.get("retired_sign_keys", [])
    if not isinstance(retired, list):
        raise ConfigError(f"{label}: field 'retired_sign_keys': must be a list of keys")
    try:
        old = tuple(parse_sign_key(k) for k in retired)
    except KeyFileError as exc:
        raise ConfigError(f"{label}: field 'retired_sign_keys': {exc}") from None
    return Peer(name, keys["sign_key"], keys["curve_key"], addresses["pub_address"],
                addresses["router_address"], old)


# ------------------------------------------------------------------ own identity
@dataclass(frozen=True)
class KeyPaths:
    """Where the four key files of one node live."""

    sign_public: Path
    sign_secret: Path
    curve_public: Path
    curve_secret: Path

    @classmethod
    def of(cls, directory: str | Path, name: str) -> "KeyPaths":
        d = Path(directory)
        return cls(d / f"{name}.sign", d / f"{name}.sign_secret",
                   d / f"{name}.key", d / f"{name}.key_secret")

    def all(self) -> tuple[Path, Path, Path, Path]:
        return (self.sign_public, self.sign_secret, self.curve_public, self.curve_secret)


@dataclass(frozen=True)
class Identity:
    """This node's name and secret keys; repr never shows a secret."""

    name: str
    sign_secret: Ed25519PrivateKey = field(repr=False)
    curve_public: bytes
    curve_secret: bytes = field(repr=False)

    @classmethod
    def generate(cls, name: str) -> "Identity":
        """Fresh Ed25519 and CURVE key pairs, in memory only."""
        check_name(name)
        curve_public, curve_secret = curve_keypair()
        return cls(name, Ed25519PrivateKey.generate(), curve_public, curve_secret)

    @classmethod
    def load(cls, directory: str | Path, name: str) -> "Identity":
        """Read both secret key files, refusing missing, malformed or too-open ones."""
        check_name(name)
        paths = KeyPaths.of(directory, name)
        hint = _KEYGEN_HINT.format(name=name, dir=directory)
        sign_doc = read_key_file(paths.sign_secret, secret=True, hint=hint)
        secret = _parse_sign_secret(sign_doc, paths.sign_secret, name)
        curve_public, curve_secret = parse_secret_certificate(
            read_key_file(paths.curve_secret, secret=True, hint=hint), paths.curve_secret)
        return cls(name, secret, curve_public, curve_secret)

    @property
    def sign_public(self) -> bytes:
        """Raw 32-byte Ed25519 public key."""
        return self.sign_secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def peer(self, pub_address: str | None = None,
             router_address: str | None = None) -> Peer:
        """This node as a peer entry, for others to pin (and to verify its own forwarded twins)."""
        return Peer(self.name, self.sign_public, self.curve_public, pub_address, router_address)

    def sign(self, message: bytes) -> bytes:
        return sign(self.sign_secret, message)


def load_peer(directory: str | Path, name: str, pub_address: str | None = None,
              router_address: str | None = None) -> Peer:
    """A peer from its two public key files (`NAME.sign`, `NAME.key`)."""
    check_name(name)
    paths = KeyPaths.of(directory, name)
    hint = f"ask {name} for the public files {paths.sign_public.name} and {paths.curve_public.name}"
    doc = parse_fields(read_key_file(paths.sign_public, secret=False, hint=hint),
                       paths.sign_public, {"format", "name", "public-key"})
    _check_sign_doc(doc, paths.sign_public, name)
    sign_key = in_file(paths.sign_public, parse_sign_key, doc["public-key"])
    curve_key = parse_public_certificate(
        read_key_file(paths.curve_public, secret=False, hint=hint), paths.curve_public)
    return Peer(name, sign_key, curve_key, pub_address, router_address)


def save_identity(identity: Identity, directory: str | Path) -> KeyPaths:
    """Write the four key files; refuse if any exists; secrets are born 0600."""
    directory = Path(directory)
    paths = KeyPaths.of(directory, identity.name)
    existing = [str(p) for p in paths.all() if p.exists() or p.is_symlink()]
    if existing:
        raise KeyFileError(f"refusing to overwrite existing key file(s): {', '.join(existing)} "
                           "(move them away first if you really mean to replace this identity)")
    mkdir_durable(directory, mode=0o700)
    contents = _render_key_files(identity)
    written: list[Path] = []
    try:
        for path, (text, secret) in zip(paths.all(), contents):
            write_new(path, text, 0o600 if secret else 0o644)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    fsync_dir(directory)
    return paths


# ------------------------------------------------------------------ file formats
def _render_key_files(identity: Identity) -> list[tuple[str, bool]]:
    """The texts of the four key files, in `KeyPaths.all()` order, and whether each is secret."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    banner = f"#   ****  Generated on {now} by twinnode keygen  ****\n"
    name = identity.name
    sign_pub = format_sign_key(identity.sign_public)
    seed = identity.sign_secret.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    body = f'format = "{SIGN_FORMAT}"\nname = "{name}"\npublic-key = "{sign_pub}"\n'
    sign_public = (banner + f'#   twinnode Ed25519 public signing key of "{name}"\n'
                   f"#   fingerprint: {fingerprint(identity.sign_public)}\n"
                   "#   Share it; peers pin it after comparing the fingerprint out of band.\n\n"
                   + body)
    sign_secret = (banner + f'#   twinnode Ed25519 **SECRET** signing key of "{name}"\n'
                   "#   DO NOT share, copy, commit, or loosen the permissions (0600) of this "
                   "file.\n"
                   f'#   Whoever holds it can publish twins in the name of "{name}".\n\n'
                   + body + f'secret-key = "{base64.b64encode(seed).decode("ascii")}"\n')
    curve_public, curve_secret = render_certificates(
        name, identity.curve_public, identity.curve_secret, banner,
        fingerprint(curve_raw(identity.curve_public)))
    return [(sign_public, False), (sign_secret, True), (curve_public, False), (curve_secret, True)]


def _check_sign_doc(doc: dict[str, str], path: Path, name: str) -> None:
    if doc.get("format") != SIGN_FORMAT:
        raise KeyFileError(f"{path}: malformed key file: expected format = \"{SIGN_FORMAT}\"")
    if doc.get("name") != name:
        raise KeyFileError(f"{path}: key file is for {doc.get('name')!r}, not {name!r}")
    if "public-key" not in doc:
        raise KeyFileError(f"{path}: malformed key file: no public-key line")


def _parse_sign_secret(text: str, path: Path, name: str) -> Ed25519PrivateKey:
    doc = parse_fields(text, path, {"format", "name", "public-key", "secret-key"})
    _check_sign_doc(doc, path, name)
    if "secret-key" not in doc:
        raise KeyFileError(f"{path}: malformed key file: no secret-key line")
    seed = in_file(path, _b64, doc["secret-key"], "secret-key")
    secret = Ed25519PrivateKey.from_private_bytes(seed)
    public = in_file(path, parse_sign_key, doc["public-key"])
    if secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) != public:
        raise KeyFileError(f"{path}: public-key does not belong to secret-key (file corrupted?)")
    return secret
