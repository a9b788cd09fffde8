"""The node's background job slot: one job at a time (train, publish, screen, analyze)."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from twinnode.errors import ControlError, TwinnodeError
from twinnode.eventlog import event

log = logging.getLogger("twinnode.node")


@dataclass
class JobState:
    """One job's name, state, progress and outcome; a training job also has its steps
    (done, total), the latest ELBO per row and an estimate of the seconds left (`eta`)."""

    name: str
    state: str = "running"
    progress: float | None = None
    detail: str = ""
    steps: tuple[int, int] | None = None
    elbo: float | None = None
    eta: float | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    result: dict[str, Any] = field(default_factory=dict)
    error: TwinnodeError | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "state": self.state, "progress": self.progress,
            "detail": self.detail, "started": self.started, "finished": self.finished}
        if self.steps is not None:
            out |= {"steps": list(self.steps), "elbo": self.elbo, "eta": self.eta}
        if self.error is not None:
            out["error"] = str(self.error)
        return out


Body = Callable[[JobState], Awaitable[dict[str, Any]]]


class JobSlot:
    """Runs one job body at a time as a task; a refusal names the job that is running."""

    def __init__(self) -> None:
        self.current: JobState | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, name: str, body: Body) -> JobState:
        """Start `body(job)`; ControlError if a job is running."""
        if self.busy:
            assert self.current is not None
            raise ControlError(f"a {self.current.name} job is already running "
                               f"({self.current.detail or 'started'}); wait for it to finish")
        job = JobState(name)
        self.current = job
        self._task = asyncio.create_task(self._run(job, body))
        event(log, "job.started", job=name)
        return job

    async def wait(self) -> JobState:
        """Wait for the current job to end (without cancelling it if the caller is)."""
        if self._task is not None:
            await asyncio.shield(self._task)
        assert self.current is not None
        return self.current

    async def cancel(self) -> None:
        """Abandon the running job (a training worker is terminated) and wait for it."""
        if self.busy:
            assert self._task is not None
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @staticmethod
    async def _run(job: JobState, body: Body) -> None:
        try:
            job.result = await body(job)
            job.state = "done"
            scalars: dict[str, Any] = {k: v for k, v in job.result.items()
                                       if isinstance(v, (str, int, float))}
            event(log, "job.done", job=job.name, **scalars)
        except asyncio.CancelledError:
            job.state, job.detail = "cancelled", "abandoned: the node stopped"
            raise
        except TwinnodeError as exc:
            job.state, job.error = "failed", exc
            event(log, "job.failed", str(exc), level=logging.ERROR, job=job.name,
                  reason=exc.reason)
        except Exception as exc:
            job.state = "failed"
            job.error = TwinnodeError(f"internal error in the {job.name} job: {exc!r}")
            log.exception("job %s failed", job.name)
        finally:
            job.finished = time.time()
