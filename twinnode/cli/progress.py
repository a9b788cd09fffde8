"""Progress at the terminal: a tqdm bar for offline training (silent when not a tty), and
`JobBar`, the line `ctl watch` and `ctl JOB wait=true` draw for a node's job (standard library
only: ctl stays light)."""
from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any, Callable, Mapping, TextIO


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
        if elbo == elbo:  # NaN before the first step
            self.bar.set_postfix_str(f"ELBO/row {elbo:.3f}", refresh=False)
        self.bar.refresh()

    def __exit__(self, exc_type: type | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.close()


LINE_EVERY = 1.0  # seconds between progress lines when the output is not a terminal
BAR = 24          # characters of the bar


def job_line(job: Mapping[str, Any]) -> str:
    """One line for a node's job (a `status` reply's "job"): name, state, a bar and, while
    training, step, ELBO per row and ETA; otherwise its detail.

    'train [#########...............]  38%  step 1520/4000  ELBO/row -3.104  ETA 0:41'"""
    text = f"{job.get('name')}"
    if job.get("state") != "running":
        text += f" {job.get('state', '?')}"
    progress = job.get("progress")
    if progress is not None:
        filled = int(round(BAR * min(max(float(progress), 0.0), 1.0)))
        text += f" [{'#' * filled}{'.' * (BAR - filled)}] {100 * float(progress):3.0f}%"
    steps = job.get("steps")
    if steps and job.get("elbo") is not None:
        text += f"  step {steps[0]}/{steps[1]}  ELBO/row {float(job['elbo']):.3f}"
        text += f"  ETA {clock(job['eta'])}" if job.get("eta") is not None else ""
    elif job.get("detail"):
        text += f"  {job['detail']}"
    return text


def clock(seconds: Any) -> str:
    """Seconds as m:ss, or h:mm:ss past an hour."""
    s = max(0, int(round(float(seconds))))
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class JobBar:
    """Shows a job's progress on `err`: one line redrawn in place on a terminal, else a line
    when it changes, at most every LINE_EVERY seconds."""

    def __init__(self, err: TextIO) -> None:
        self.err, self.tty = err, err.isatty()
        self.last, self.when, self.width = "", -LINE_EVERY, 0
        self.clock: Callable[[], float] = time.monotonic

    def __call__(self, job: Mapping[str, Any] | None) -> None:
        if job is None:
            return
        text = job_line(job)
        if text == self.last or (not self.tty and self.clock() - self.when < LINE_EVERY):
            return
        self.last, self.when = text, self.clock()
        if self.tty:
            self.err.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            self.err.write(text + "\n")
        self.err.flush()

    def close(self) -> None:
        """End the line drawn in place (nothing to do when not a terminal)."""
        if self.tty and self.width:
            self.err.write("\n")
            self.err.flush()
            self.width = 0
