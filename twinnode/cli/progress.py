"""A terminal progress bar for training that shows the current ELBO; silent when not a tty."""
from __future__ import annotations

import sys
from types import TracebackType
from typing import Any


class TrainProgress:
    """Context manager whose `update(done, total, elbo)` drives a tqdm bar on a terminal."""

    def __init__(self, desc: str = "DP training") -> None:
        self.desc = desc
        self.bar: Any = None  # a tqdm bar, made on the first update at a terminal

    def __enter__(self) -> "TrainProgress":
        return self

    def update(self, done: int, total: int, elbo: float) -> None:
        """Show `done` of `total` steps and the ELBO per row (nothing when not a tty)."""
        if not sys.stderr.isatty():
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="step", file=sys.stderr)
        self.bar.n = done
        self.bar.set_postfix_str(f"ELBO/row {elbo:.3f}", refresh=False)
        self.bar.refresh()

    def __exit__(self, exc_type: type | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.close()
