"""CPU sets: parse them from settings and pin a process to one (before JAX starts threads)."""
from __future__ import annotations

import os

from twinnode.errors import ConfigError


def parse_cpus(text: str | None, where: str = "--cpus") -> set[int] | None:
    """'0' or '0,1' -> {0} or {0, 1}; None or '' -> None (no pinning)."""
    if text is None or not str(text).strip():
        return None
    try:
        cpus = {int(x) for x in str(text).split(",") if x.strip()}
    except ValueError:
        raise ConfigError(f"{where} must be a comma list of CPU numbers, got {text!r}") from None
    if any(c < 0 for c in cpus):
        raise ConfigError(f"{where}: CPU numbers are >= 0, got {text!r}")
    return cpus or None


def pin_to_cpus(cpus: set[int] | None) -> set[int]:
    """Restrict this process to `cpus` (None: leave as is); return the CPUs it may use."""
    if cpus:
        try:
            os.sched_setaffinity(0, cpus)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot pin to CPUs {sorted(cpus)}: {exc}") from None
    return set(os.sched_getaffinity(0))
