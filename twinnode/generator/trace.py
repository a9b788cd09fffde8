"""The tail of the DP parameter trace: its average (what is released) and that average's noise.

DPVIm (Jalko, Prediger, Honkela, Kaski 2022): every iterate of DP-SGD is already private, so
averaging the last part of the trace costs no privacy and removes much of the noise the
last iterate carries. The same trace shows how much noise is left: the window is cut into
consecutive batches, and the spread of the batch means, divided by their number, estimates
the variance of the average (the batch-means estimator for a correlated series). That sd is
what makes the twins noise-aware (sample.py adds it to the guide's own sd).

The tail also keeps each series' values at the two edges of the window (the step before it
and its last step), which turn a trace of Adam's first moment into the window's mean
gradient (`mean_gradient`).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

BATCHES = 20  # batch means in the averaging window


class TraceTail:
    """Batch sums of the last `share` of `total` steps, fed one chunk of the trace at a time."""

    def __init__(self, total: int, share: float) -> None:
        window = int(round(total * share))
        self.batches = min(BATCHES, window)
        self.length = window // self.batches if self.batches else 0
        self.first = total - self.batches * self.length
        self.total = total
        self._sums: dict[str, np.ndarray] = {}
        self._edges: dict[str, list[np.ndarray | None]] = {}

    @property
    def steps(self) -> int:
        return self.batches * self.length

    def add(self, start: int, chunk: Mapping[str, np.ndarray]) -> None:
        """Chunk rows are the steps start, start + 1, ...; rows outside the window are ignored."""
        if not self.steps:
            return
        rows = next(iter(chunk.values())).shape[0]
        index = np.arange(start, start + rows)
        for name, values in chunk.items():
            edges = self._edges.setdefault(name, [None, None])
            for side, row in enumerate((self.first - 1, self.total - 1)):
                if start <= row < start + rows:
                    edges[side] = np.asarray(values[row - start], np.float64)
        keep = (index >= self.first) & (index < self.total)
        if not keep.any():
            return
        batch = (index[keep] - self.first) // self.length
        for name, values in chunk.items():
            sums = self._sums.setdefault(
                name, np.zeros((self.batches,) + values.shape[1:], np.float64))
            np.add.at(sums, batch, np.asarray(values, np.float64)[keep])

    def mean(self) -> dict[str, np.ndarray]:
        """The average over the window, per parameter."""
        return {k: (s.sum(axis=0) / self.steps).astype(np.float32) for k, s in self._sums.items()}

    def mean_sd(self) -> dict[str, np.ndarray]:
        """The batch-means estimate of each average's standard deviation."""
        out = {}
        for k, s in self._sums.items():
            means = s / self.length
            var = means.var(axis=0, ddof=1) / self.batches if self.batches > 1 else 0 * means[0]
            out[k] = np.sqrt(var).astype(np.float32)
        return out

    def mean_gradient(self, name: str, beta1: float) -> np.ndarray | None:
        """The window's mean gradient from a trace of Adam's first moment m (m_t = b1 m_(t-1)
        + (1 - b1) g_t, so the g's sum is the m's sum plus b1 / (1 - b1) times m's change
        over the window); None when the window or an edge is missing."""
        before, last = self._edges.get(name, [None, None])
        if before is None and self.first == 0 and last is not None:
            before = np.zeros_like(last)  # Adam's moments start at zero
        if not self.steps or name not in self._sums or before is None or last is None:
            return None
        total = self._sums[name].sum(axis=0) + beta1 / (1 - beta1) * (last - before)
        return total / self.steps
