"""Key files as text: read only when safe, created with their mode from the first byte, and
parsed strictly.

Both key file formats (`identity` for Ed25519, `certs` for CURVE) are lines of
`key = "value"`, with `#` comments and, in CURVE certificates, bare section names. A secret
file that group or others can read is refused, never silently fixed; a file is written with
O_EXCL|O_NOFOLLOW, so neither an existing key nor a planted symlink is ever overwritten.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Callable, TypeVar

from twinnode.errors import KeyFileError

MAX_KEY_FILE_BYTES = 16 * 1024

T = TypeVar("T")


def write_new(path: Path, text: str, mode: int) -> None:
    """Create `path` exclusively with `mode` from the first byte on, and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_key_file(path: Path, secret: bool, hint: str) -> str:
    """The text of a key file, after checking it exists, is a file, and (secret) is 0600."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: key file not found; {hint}") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path}: not a regular file")
    if secret and st.st_mode & 0o077:
        raise KeyFileError(f"{path}: secret key file is accessible by group/others "
                           f"(mode {stat.S_IMODE(st.st_mode):04o}); it must be 0600 or "
                           f"stricter. Fix with: chmod 600 {path}")
    if st.st_size > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path}: {st.st_size} bytes is too large for a key file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: malformed key file (not UTF-8 text)") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc.strerror}") from None


def parse_fields(text: str, path: Path, allowed: set[str],
                 sections: frozenset[str] = frozenset()) -> dict[str, str]:
    """`key = "value"` lines (comments, blanks and bare section names skipped), strictly."""
    out: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#") or s in sections:
            continue
        key, sep, value = s.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or len(value) < 2 or value[0] != '"' or value[-1] != '"' or key not in allowed:
            raise KeyFileError(f"{path}: malformed key file at line {lineno}: {s[:60]!r}")
        if key in out:
            raise KeyFileError(f"{path}: malformed key file: '{key}' given twice")
        out[key] = value[1:-1]
    return out


def in_file(path: Path, parse: Callable[..., T], *args: Any) -> T:
    """Call a parser; a KeyFileError it raises gets the file's path in front."""
    try:
        return parse(*args)
    except KeyFileError as exc:
        raise KeyFileError(f"{path}: malformed key file: {exc}") from None
