"""Training and sampling in a separate process, pinned to a CPU set.

JAX training is CPU-heavy: on the event loop it would stall heartbeats and the control
socket, and unpinned JAX processes on a small machine slow each other down many times over
(shared/DESIGN.md has the measurements). So a node runs each job in a fresh spawned process
pinned to its CPUs and reads progress and the result from a pipe.
"""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import threading
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from twinnode.errors import GeneratorError, TwinnodeError
from twinnode.generator.settings import GeneratorSettings, TrainPlan
from twinnode.twins import Release

Progress = Callable[[int, int, float], None]


@dataclass(frozen=True)
class Job:
    """One unit of generator work; `kind` is "train" (costs privacy) or "sample" (free)."""

    kind: str
    schema_text: str
    state_dir: str
    posterior_path: str
    k: int
    sender: str
    data_path: str = ""
    plan: TrainPlan = TrainPlan()
    settings: GeneratorSettings = GeneratorSettings()
    cap_epsilon: float | None = None
    cpus: tuple[int, ...] | None = None
    seed: int | None = None


def run_job(job: Job, progress: Progress | None = None) -> Release:
    """Do the job in this process (the worker's body; also usable directly)."""
    from twinnode.data import read_table
    from twinnode.generator.posterior import Posterior
    from twinnode.generator.privacy import Ledger
    from twinnode.generator.release import draw_release, train_and_release
    from twinnode.schema import Schema

    schema = Schema.from_toml(job.schema_text, "node schema")
    ledger = Ledger(job.state_dir, cap_epsilon=job.cap_epsilon)
    if job.kind == "train":
        return train_and_release(schema, read_table(job.data_path, schema), job.plan, ledger,
                                 job.posterior_path, job.k, job.sender, job.settings, job.seed,
                                 progress)
    if job.kind == "sample":
        posterior = Posterior.load(job.posterior_path, schema)
        return draw_release(posterior, schema, job.k, job.sender, job.seed, ledger)
    raise GeneratorError(f"unknown job kind {job.kind!r}")


def _child(job: Job, conn: Any) -> None:
    from twinnode.generator.cpus import pin_to_cpus

    try:
        pin_to_cpus(set(job.cpus) if job.cpus else None)
        release = run_job(job, lambda d, t, e: conn.send(("progress", d, t, e)))
        conn.send(("done", release))
    except TwinnodeError as exc:
        conn.send(("error", type(exc).__name__, str(exc)))
    except BaseException:  # report, never hang the parent
        conn.send(("error", "internal", traceback.format_exc()))
    finally:
        conn.close()


class Worker:
    """Runs one job at a time in a spawned, CPU-pinned process; `cancel()` abandons it."""

    def __init__(self) -> None:
        self._proc: mp.process.BaseProcess | None = None

    @property
    def busy(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    async def run(self, job: Job, progress: Progress | None = None) -> Release:
        """Start the job and wait for its release; raises the job's error as GeneratorError."""
        if self.busy:
            raise GeneratorError("a generator job is already running")
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_child, args=(job, child), daemon=True,
                                 name=f"twinnode-{job.kind}")
        self._proc.start()
        child.close()
        idle = threading.Event()  # set while no thread is reading `parent`
        idle.set()

        def recv() -> Any:
            try:
                return parent.recv()
            finally:
                idle.set()

        try:
            while True:
                idle.clear()
                try:
                    msg = await asyncio.to_thread(recv)
                except EOFError:
                    raise GeneratorError(f"{job.kind} worker exited without a result "
                                         f"(exit code {self._proc.exitcode})") from None
                if msg[0] == "progress":
                    if progress is not None:
                        progress(*msg[1:])
                elif msg[0] == "done":
                    return msg[1]
                else:
                    raise _job_error(msg[1], msg[2])
        except asyncio.CancelledError:
            self.cancel()
            raise
        finally:
            if not idle.is_set():  # abandoned mid-read: end the child so the read returns
                self.cancel()
            # the pipe is closed only after the reader thread is done with it: closing it under
            # a read would let that read's next os.read hit a reused descriptor. Shielded, so a
            # second cancellation cannot leave the pipe open or the child unreaped.
            await asyncio.shield(asyncio.to_thread(self._wind_down, parent, idle))

    def cancel(self) -> None:
        """Abandon the running job (its ledger charge, if any, stays recorded)."""
        if self._proc is not None and self._proc.is_alive():
            self._proc.terminate()

    def _wind_down(self, parent: Any, idle: threading.Event) -> None:
        """Reap the child, wait for the reader thread to leave the pipe, then close it."""
        self._reap()
        if idle.wait(timeout=30):  # the child is gone, so its end is closed and the read ends
            parent.close()
        # else: leave the pipe open (one descriptor leaked) rather than close it under a read

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
            self._proc = None


def _job_error(kind: str, message: str) -> TwinnodeError:
    from twinnode import errors

    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, TwinnodeError):
        return cls(message)
    return GeneratorError(f"generator job failed: {message}")

