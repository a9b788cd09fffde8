"""The peers file: the pinned peers `twinnode peers add/remove` keep, beside node.toml.

Same TOML as node.toml's `[[peers]]` entries (name, sign_key, curve_key, pub_address,
router_address, and `retired_sign_keys` after a rotation), written whole and atomically, with
each peer's fingerprints as comments. `[keys] peers_file` names it (default `peers.toml`);
a missing file pins nobody. The node reads it at start and again on `ctl peers reload` or
when the file changes (`Stamp`).
"""
from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from twinnode.atomic import atomic_open
from twinnode.errors import ConfigError
from twinnode.trust.identity import Peer

HEADER = """\
# Peers of "{name}": written by `twinnode peers add CARD` and `twinnode peers remove NAME`.
# Pinning is by card: compare each card's fingerprints with its site out of band first.
# A running node reads this file again when it changes (or on `twinnode ctl peers reload`).
"""


def read_entries(path: Path) -> list[dict[str, Any]]:
    """The `[[peers]]` entries of the peers file; none when it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the peers file: {exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - {"peers"})
    if unknown:
        raise ConfigError(f"{path}: a peers file holds only [[peers]] entries, not "
                          f"{', '.join(unknown)}")
    entries = doc.get("peers", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: peers must be an array of tables (write [[peers]])")
    return entries


def render(own: str, peers: Sequence[Peer]) -> str:
    """The peers file's text: a header, then one commented `[[peers]]` entry per peer."""
    lines = [HEADER.format(name=own)]
    for peer in sorted(peers, key=lambda p: p.name):
        lines += ["[[peers]]", f"# signing key {peer.sign_fingerprint}",
                  f"# CURVE key   {peer.curve_fingerprint}"]
        for key, value in peer.to_entry().items():
            if isinstance(value, list):
                lines.append(f"{key} = [{', '.join(_quote(v) for v in value)}]")
            else:
                lines.append(f"{key} = {_quote(value)}")
        lines.append("")
    return "\n".join(lines)


def write(path: Path, own: str, peers: Sequence[Peer]) -> None:
    """Replace the peers file with exactly `peers` (atomically: a reader sees old or new)."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(render(own, peers))


@dataclass(frozen=True)
class Stamp:
    """What the peers file looks like on disk, to notice a change without parsing it."""

    digest: str

    @classmethod
    def of(cls, path: Path) -> "Stamp":
        try:
            return cls(hashlib.sha256(path.read_bytes()).hexdigest())
        except OSError:
            return cls("")


def _quote(value: Any) -> str:
    text = str(value)
    if any(c in text for c in '"\\\n'):
        raise ConfigError(f"cannot write {text!r:.60} into the peers file")
    return f'"{text}"'
