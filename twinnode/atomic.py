"""Crash-safe file writes: temp file in the same directory, fsync, rename, fsync the directory.

After a crash at any point the path holds either the old content or the new, never half.
Directories that a write creates are made durable too (each new directory's entry is fsynced
in its parent), so a new state directory's first file cannot lose its path on power loss.
The temp file beside `path` is named `.<name>.<random>.tmp` (`is_temp_name`): the store's
recovery deletes such leftovers. This module is the one place that fsyncs directories.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

import numpy as np

TEMP_SUFFIX = ".tmp"


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, dir_mode: int = 0o777,
                **kwargs: Any) -> Iterator[IO]:
    """Open a temp file beside `path`; on clean exit it replaces `path` durably. Missing
    parent directories are created (with `dir_mode`, less the umask) durably."""
    path = Path(path)
    mkdir_durable(path.parent, mode=dir_mode)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of `atomic_open`'s temp files (a crash's leftover)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def write_bytes_atomic(path: str | Path, data: bytes, *, dir_mode: int = 0o777) -> None:
    """Replace `path` with `data` durably (see `atomic_open`)."""
    with atomic_open(path, "wb", dir_mode=dir_mode) as fh:
        fh.write(data)


def write_json_atomic(path: str | Path, doc: Any) -> None:
    """Replace `path` with `doc` as indented JSON durably (numpy values made plain)."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(jsonable(doc), fh, indent=2, sort_keys=True)
        fh.write("\n")


def fsync_dir(directory: str | Path) -> None:
    """fsync a directory so the names created or renamed in it survive a power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mkdir_durable(directory: str | Path, mode: int = 0o777) -> None:
    """Create `directory` and any missing parents, fsyncing each new one's parent, so the
    whole new path survives a power loss (mkdir -p alone leaves the entries in the cache)."""
    directory = Path(directory)
    missing = []
    d = directory
    while not d.is_dir():
        missing.append(d)
        if d.parent == d:
            break
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=mode)
        except FileExistsError:
            if not d.is_dir():
                raise
        fsync_dir(d.parent)


def jsonable(x: Any) -> Any:
    """numpy scalars/arrays and non-finite floats -> plain JSON values (NaN -> null)."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        return jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
