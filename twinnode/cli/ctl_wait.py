"""`twinnode ctl JOB wait=true` and `twinnode ctl watch`: follow a node's job live, and never
call a job that is still running a failure.

`wait=true`: the request goes out on its own connection in a thread; meanwhile `status` is
asked every POLL seconds and the job's bar (`cli.progress.JobBar`: steps, ELBO, ETA) drawn on
stderr (in place on a terminal; else a line when it changes, at most every second). When the
job ends the node's reply is printed as usual. When `--timeout` passes first, the node is
asked once more: a job still running is said to be so, with the commands to follow it, and ctl
exits 0 (STILL_RUNNING_EXIT): the job goes on, nothing failed, and asking again would only
start a second one.

`watch`: follows the node's running job the same way until it ends, whoever started it, and
exits 0 when it is done (13 when it failed or was abandoned); with no job running it says
which job ran last and exits 0. `--timeout` bounds each status request, not the watch.
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping, TextIO

from twinnode.cli.progress import JobBar, clock
from twinnode.errors import ControlError, ReplyTimeout, TwinnodeError
from twinnode.node.control_client import request_sync

STILL_RUNNING_EXIT = 0  # documented: `wait` gave up waiting, the job goes on
POLL = 0.5              # seconds between status requests (the worker reports every 0.5 s)


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
    show = JobBar(err or sys.stderr)
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
            f"new. Follow it live with `twinnode ctl {where}watch` (or its job line in "
            f"`twinnode ctl {where}status`), or wait longer with --timeout SECONDS.")


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


def watch_job(path: Path, timeout: float, err: TextIO | None = None) -> str:
    """Follow the node's running job until it ends; its last line. Raises ControlError when
    it failed or was abandoned (ctl exits 13); a node that stops answering raises as any
    request does."""
    job = request_sync(path, "status", {}, timeout=timeout).get("job")
    if not isinstance(job, Mapping) or job.get("state") != "running":
        last = describe(job) if isinstance(job, Mapping) else "none since the node started"
        return f"no job running (last: {last})"
    show, started = JobBar(err or sys.stderr), job.get("started")
    try:
        while job.get("state") == "running":
            show(job)
            time.sleep(POLL)
            now = request_sync(path, "status", {}, timeout=timeout).get("job")
            if not isinstance(now, Mapping) or now.get("started") != started:
                return f"{job.get('name')} ended; a new {_name(now)} job is running"
            job = now
        show(job)
    finally:
        show.close()
    took = float(job.get("finished") or 0) - float(job.get("started") or 0)
    if job.get("state") != "done":
        raise ControlError(f"{job.get('name')} {job.get('state')} after {clock(took)}: "
                           f"{job.get('error') or job.get('detail') or 'no reason given'}")
    return f"{job.get('name')} done in {clock(took)}"


def _name(job: Any) -> str:
    return str(job.get("name")) if isinstance(job, Mapping) else "?"
