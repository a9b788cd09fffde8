"""CURVE keys as ZeroMQ uses them: Z85 text, key pairs, and the certificate files.

ZeroMQ's CURVE is Curve25519 (X25519, RFC 7748): a secret key is 32 random bytes, its public
key the clamped scalar times the base point, and both travel as 40-character Z85 strings
(ZeroMQ RFC 32). The certificate files are the `zmq.auth` format:

    metadata
        name = "alice"
    curve
        public-key = "<40 Z85 characters>"
        secret-key = "<40 Z85 characters>"      (only in NAME.key_secret, mode 0600)

Nothing here needs ZeroMQ itself: Z85 is a 30-line codec and the key arithmetic is
`cryptography`'s X25519, the curve and clamping libzmq's `zmq_curve_keypair` and
`zmq_curve_public` use (tests/test_identity.py holds both equal to pyzmq's). So the identity
layer can make and check CURVE keys without loading libzmq, and the node's sockets, which do
load it, take these keys unchanged.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from twinnode.errors import KeyFileError
from twinnode.trust.keyfiles import in_file, parse_fields

CURVE_Z85_CHARS = 40
CURVE_KEY_BYTES = 32
Z85_ALPHABET = (b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                b".-:+=^!/*?&<>()[]{}@%$#")
_Z85_VALUE = {c: i for i, c in enumerate(Z85_ALPHABET)}
_SECTIONS = frozenset({"metadata", "curve"})


# ------------------------------------------------------------------ Z85 (ZeroMQ RFC 32)
def z85_encode(raw: bytes) -> bytes:
    """Bytes (a multiple of 4) -> Z85 text, 5 characters per big-endian 32-bit word."""
    if len(raw) % 4:
        raise ValueError(f"Z85 encodes multiples of 4 bytes, not {len(raw)}")
    out = bytearray()
    for (word,) in struct.iter_unpack(">I", raw):
        out += bytes(Z85_ALPHABET[word // 85**p % 85] for p in (4, 3, 2, 1, 0))
    return bytes(out)


def z85_decode(text: bytes) -> bytes:
    """Z85 text (a multiple of 5 characters) -> bytes; ValueError on any invalid input."""
    if len(text) % 5:
        raise ValueError(f"Z85 text is a multiple of 5 characters, not {len(text)}")
    out = bytearray()
    for i in range(0, len(text), 5):
        word = 0
        for char in text[i:i + 5]:
            digit = _Z85_VALUE.get(char)
            if digit is None:
                raise ValueError(f"{chr(char)!r} is not a Z85 character")
            word = word * 85 + digit
        if word > 0xFFFFFFFF:
            raise ValueError("a Z85 group exceeds 32 bits")
        out += word.to_bytes(4, "big")
    return bytes(out)


# ------------------------------------------------------------------ text forms of keys
def format_curve_key(z85_key: bytes) -> str:
    """Z85 CURVE public key (bytes, as zmq socket options take it) -> its config string."""
    return z85_key.decode("ascii")


def parse_curve_key(text: Any) -> bytes:
    """40-character Z85 CURVE key string -> the Z85 bytes zmq socket options take."""
    if isinstance(text, str):
        text = text.encode("ascii", "replace")
    if not isinstance(text, bytes) or len(text) != CURVE_Z85_CHARS:
        raise KeyFileError(f"CURVE key must be a {CURVE_Z85_CHARS}-character Z85 string, "
                           f"got {text!r:.60}")
    try:
        raw = z85_decode(text)
    except ValueError:
        raise KeyFileError(f"CURVE key {text!r} is not valid Z85") from None
    if len(raw) != CURVE_KEY_BYTES or z85_encode(raw) != text:
        raise KeyFileError(f"CURVE key {text!r} is not a canonical 32-byte Z85 key")
    return text


def curve_raw(z85_key: bytes) -> bytes:
    """Z85 CURVE key -> its raw 32 bytes (what ZAP hands a handler)."""
    return z85_decode(z85_key)


# ------------------------------------------------------------------ key pairs
def curve_keypair() -> tuple[bytes, bytes]:
    """A fresh CURVE key pair as (Z85 public, Z85 secret), like `zmq.curve_keypair()`."""
    secret = X25519PrivateKey.generate()
    raw_public = secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    raw_secret = secret.private_bytes_raw()
    return z85_encode(raw_public), z85_encode(raw_secret)


def curve_public(z85_secret: bytes) -> bytes:
    """The Z85 public key of a Z85 CURVE secret key, like `zmq.curve_public(secret)`."""
    secret = X25519PrivateKey.from_private_bytes(z85_decode(z85_secret))
    return z85_encode(secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


# ------------------------------------------------------------------ certificate files
def render_certificates(name: str, public: bytes, secret: bytes, banner: str,
                        fingerprint: str) -> tuple[str, str]:
    """The texts of NAME.key and NAME.key_secret; `banner` is the generated-on comment."""
    cert = ("metadata\n"
            f'    name = "{name}"\n'
            "curve\n"
            f'    public-key = "{public.decode("ascii")}"\n')
    public_text = (banner + "#   ZeroMQ CURVE Public Certificate\n"
                   f"#   fingerprint: {fingerprint}\n"
                   "#   Exchange securely, or compare the fingerprint out of band.\n\n" + cert)
    secret_text = (banner + "#   ZeroMQ CURVE **Secret** Certificate\n"
                   "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions "
                   "(0600).\n\n"
                   + cert + f'    secret-key = "{secret.decode("ascii")}"\n')
    return public_text, secret_text


def parse_public_certificate(text: str, path: Path) -> bytes:
    """The Z85 public key of a NAME.key file."""
    doc = parse_fields(text, path, {"public-key", "name"}, _SECTIONS)
    return _public_key(doc, path)


def parse_secret_certificate(text: str, path: Path) -> tuple[bytes, bytes]:
    """(Z85 public, Z85 secret) of a NAME.key_secret file, checked to belong together."""
    doc = parse_fields(text, path, {"public-key", "secret-key", "name"}, _SECTIONS)
    public = _public_key(doc, path)
    if "secret-key" not in doc:
        raise KeyFileError(f"{path}: malformed CURVE certificate: no secret-key line")
    secret = in_file(path, parse_curve_key, doc["secret-key"])
    if curve_public(secret) != public:
        raise KeyFileError(f"{path}: public-key does not belong to secret-key (file corrupted?)")
    return public, secret


def _public_key(doc: dict[str, str], path: Path) -> bytes:
    if "public-key" not in doc:
        raise KeyFileError(f"{path}: malformed CURVE certificate: no public-key line")
    return in_file(path, parse_curve_key, doc["public-key"])
