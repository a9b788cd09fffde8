"""`twinnode ctl JOB wait=true`: wait for a job, showing its progress, and never call a job that
is still running a failure.

The request (with `wait=true`) goes out on its own connection in a thread; meanwhile `status`
is asked every second and the job's progress printed to stderr (a line when it changes, at
most every 2 s; one line rewritten in place on a terminal). When the job ends the node's reply
is printed as usual. When `--timeout` passes first, the node is asked once more: a job still
running is said to be so, with the commands to follow it, and ctl exits 0 (STILL_RUNNING_EXIT):
the job goes on, nothing failed, and asking again would only start a second one.
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

from twinnode.errors import ReplyTimeout, TwinnodeError
from twinnode.node.control_client import request_sync

STILL_RUNNING_EXIT = 0  # documented: `wait` gave up waiting, the job goes on
POLL = 1.0              # seconds between status requests
LINE_EVERY = 2.0        # seconds between progress lines when stderr is not a terminal


def wait_for_job(path: Path, cmd: str, params: dict[str, Any], timeout: float, where: str,
                 err: TextIO | None = None) -> tuple[Mapping[str, Any] | None, str | None]:
    """Send `cmd` with wait=true and show progress until it answers or `timeout` passes.

    Returns (result, None) when the job ended, or (None, message) when it is still running
    at the timeout. A job that failed raises its error, as the node reported it."""
    box: dict[str, Any] = {}

    def ask() -> None:
        try:
            box["result"] = request_sync(path, cmd, params, timeout=timeout)
        except TwinnodeError as exc:
            box["error"] = exc

    started = time.time()
    thread = threading.Thread(target=ask, name=f"ctl-{cmd}", daemon=True)
    thread.start()
    show = _Progress(err or sys.stderr)
    while thread.is_alive():
        thread.join(POLL)
        if thread.is_alive():
            show(_job_of(path, cmd, started))
    show.close()
    if "result" in box:
        return box["result"], None
    error = box["error"]
    if not isinstance(error, ReplyTimeout):
        raise error
    job = _job_of(path, cmd, started)
    if job is None or job.get("state") != "running":
        raise error  # the node did not answer and runs no such job: a real failure
    return None, still_running(cmd, job, timeout, where)


def still_running(cmd: str, job: Mapping[str, Any], timeout: float, where: str) -> str:
    """The message for a job that outlived ctl's wait."""
    return (f"{cmd} is still running after {timeout:g} s: {describe(job)}\n"
            f"The node goes on with it; nothing failed, and asking again would start nothing "
            f"new. Follow it with `twinnode ctl {where}status` (its job line), or wait longer "
            f"with --timeout SECONDS.")


def describe(job: Mapping[str, Any]) -> str:
    """'train running 40% (train: step 200/500, ELBO/row -3.1)'."""
    text = f"{job.get('name')} {job.get('state', '?')}"
    if job.get("progress") is not None:
        text += f" {100 * float(job['progress']):.0f}%"
    if job.get("detail"):
        text += f" ({job['detail']})"
    return text


def _job_of(path: Path, cmd: str, since: float) -> Mapping[str, Any] | None:
    """The node's current job if it is `cmd` and started after `since`; None otherwise or
    when the node does not answer status quickly."""
    try:
        job = request_sync(path, "status", {}, timeout=5.0).get("job")
    except TwinnodeError:
        return None
    if not isinstance(job, Mapping) or job.get("name") != cmd or \
            float(job.get("started") or 0) < since - 1.0:
        return None
    return job


class _Progress:
    """Prints a job's progress to `err`: in place on a terminal, else a line on each change
    (at most every LINE_EVERY seconds)."""

    def __init__(self, err: TextIO) -> None:
        self.err, self.tty = err, err.isatty()
        self.last, self.when, self.width = "", -LINE_EVERY, 0
        self.clock: Callable[[], float] = time.monotonic

    def __call__(self, job: Mapping[str, Any] | None) -> None:
        if job is None:
            return
        text = describe(job)
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
        if self.tty and self.width:
            self.err.write("\n")
            self.err.flush()
