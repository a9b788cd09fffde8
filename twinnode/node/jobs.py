"""The node's jobs: generator runs in a worker process, publishing, and analyses of stored twins.

Each job body is `async fn(ctx, job, args) -> result dict` and runs as the node's one
background job (`NodeContext.start_job`); CPU work happens in the generator's spawned worker
or in a thread, never on the event loop. JAX is imported only inside the worker process. Jobs
see the node through `node.context.NodeContext`, never the core.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from twinnode.atomic import write_json_atomic
from twinnode.errors import ControlError, PrivacyError
from twinnode.eventlog import event
from twinnode.generator.privacy import Ledger
from twinnode.generator.settings import TrainPlan
from twinnode.generator.worker import Job, Worker
from twinnode.node.context import NodeContext
from twinnode.node.slot import JobState
from twinnode.releasedir import load_release
from twinnode.schema import Schema
from twinnode.store.store import Store
from twinnode.twins import Release, Twin

if TYPE_CHECKING:
    from twinnode.analysis.fit import AnalysisOptions
    from twinnode.node.config import AnalysisSection

log = logging.getLogger("twinnode.node")


def posterior_path(ctx: NodeContext) -> Path:
    """Where the node keeps its latest trained posterior (sampling from it is free)."""
    return ctx.layout.posterior


# ---- generator ------------------------------------------------------------------------------

async def generate(ctx: NodeContext, job: JobState, kind: str, args: Mapping[str, Any]) -> Release:
    """Train (kind "train", charges the ledger) or sample ("sample", free) K twins in a
    spawned worker pinned to [training] cpus; progress goes to `job`."""
    cfg = ctx.config
    plan = TrainPlan(epsilon=float(args.get("epsilon", cfg.privacy.epsilon)),
                     delta=cfg.privacy.delta, epochs=float(args.get("epochs", cfg.privacy.epochs)),
                     q=cfg.privacy.q, batching=cfg.privacy.batching,
                     marginal_share=cfg.privacy.marginal_share)
    spec = Job(kind=kind, schema_text=ctx.schema.to_toml(), state_dir=str(ctx.layout.root),
               posterior_path=str(posterior_path(ctx)), k=int(args.get("k", cfg.k)),
               sender=ctx.name, data_path=str(cfg.data.path), plan=plan,
               settings=cfg.generator,
               cap_epsilon=cfg.privacy.cap_epsilon, cpus=cfg.training.cpus)
    job.detail = f"{kind}: starting the worker (loading JAX and the data)"
    release = await Worker().run(spec, StepProgress(job, kind))
    rid, created = release.receipt.get("release"), float(release.receipt.get("created", 0))
    receipt = await asyncio.to_thread(_new_receipt_path, ctx.layout.receipts,
                                      f"{rid}-{created:.0f}")  # one per draw
    await asyncio.to_thread(write_json_atomic, receipt, release.receipt)
    spent = release.receipt.get("epsilon") if kind == "train" else 0.0  # sampling is free
    event(log, f"generator.{kind}", release=release.receipt.get("release"),
          k=len(release.twins), epsilon_spent=spent,
          release_epsilon=release.receipt.get("epsilon"))
    return release


class StepProgress:
    """The worker's (done, total, ELBO/row) reports onto the job: progress, steps, ELBO, and
    the seconds left at the rate since the first step (the first chunk also compiles)."""

    def __init__(self, job: JobState, kind: str, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.job, self.kind, self.clock = job, kind, clock
        self.first: tuple[float, int] | None = None  # (when, done) of the first report

    def __call__(self, done: int, total: int, elbo: float) -> None:
        job, now = self.job, self.clock()
        job.progress = done / total if total else None
        job.steps = (done, total)
        job.elbo = elbo if math.isfinite(elbo) else None
        if self.first is None and done > 0:  # past the compile
            self.first = (now, done)
        when, start = self.first or (now, done)
        job.eta = (now - when) * (total - done) / (done - start) if done > start else None
        job.detail = (f"{self.kind}: step {done}/{total}, ELBO/row {elbo:.3f}"
                      if job.elbo is not None else
                      f"{self.kind}: compiling the model ({total} steps to run)")
        if done >= total:
            job.detail += "; drawing the twins"


def _new_receipt_path(directory: Path, stem: str) -> Path:
    """`<stem>.json`, or `<stem>-2.json`, ... if taken: two draws in one second keep both
    receipts (only one job runs at a time, so checking then writing does not race)."""
    path, n = directory / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = directory / f"{stem}-{n}.json"
    return path


async def recovered(ctx: NodeContext, job: JobState, args: Mapping[str, Any]) -> None:
    """Before anything is charged or signed: wait (bounded) while a lost state is being
    recovered (`node.recovery`); ControlError when publishing is refused."""
    def report(text: str) -> None:
        job.detail = text

    await ctx.recovery.ready(ctx.own_latest, report, bool(args.get("accept_silent")))


async def train_job(ctx: NodeContext, job: JobState, args: Mapping[str, Any]) -> dict[str, Any]:
    """Train, draw K twins, and (unless publish=false) publish them."""
    await recovered(ctx, job, args)
    release = await generate(ctx, job, "train", args)
    if not args.get("publish", True):
        return {"message": f"trained release {release.receipt.get('release')} "
                           "(not published; `publish` samples from it for free)",
                "release": release.receipt.get("release")}
    return await _publish(ctx, job, release)


async def publish_job(ctx: NodeContext, job: JobState, args: Mapping[str, Any]) -> dict[str, Any]:
    """Publish `release` (a directory from `twinnode train`), or fresh twins: sampled from
    the saved posterior when there is one (free), else trained (charges the ledger)."""
    await recovered(ctx, job, args)
    if "release" in args:
        directory = Path(args["release"])
        if not directory.is_absolute():
            raise ControlError(f"publish: release must be an absolute path (the node does not "
                               f"know your working directory), got {str(directory)!r}")
        job.detail = f"loading {directory}"
        release = await asyncio.to_thread(load_release, directory, ctx.schema)
        await asyncio.to_thread(charge_import, ctx.ledger, release, ctx.name)
    else:
        kind = "sample" if posterior_path(ctx).exists() else "train"
        release = await generate(ctx, job, kind, args)
    return await _publish(ctx, job, release)


def earlier_release(ctx: NodeContext) -> dict[str, Any] | None:
    """The ledger entry of a finished training run on the node's data as they are now (same
    rows by content, or for an imported release the same schema and row count), or None.
    Reads and checks the data file, so a bad CSV is refused here, before anything is charged."""
    from twinnode.data import data_fingerprint, read_table

    frame = read_table(ctx.config.data.path, ctx.schema)
    digest, rows = data_fingerprint(frame), len(frame)
    for entry in reversed(ctx.ledger.snapshot()["entries"]):
        if entry.get("kind") == "train" and entry.get("status") == "trained" and \
                entry.get("data", digest) == digest and entry.get("n", rows) == rows:
            return entry
        if entry.get("kind") == "import" and entry.get("n") == rows and \
                entry.get("schema_hash") == ctx.schema.hash:
            return entry
    return None


def auto_publish_blocker(ctx: NodeContext) -> str | None:
    """Why [training] auto must not publish at start (None: it may). Sampling a saved
    posterior is free; training again after a charged run that left no posterior (cancelled,
    killed, failed) would spend ε without anyone asking, so that waits for `ctl train`."""
    if posterior_path(ctx).exists():
        return None
    try:
        entries = ctx.ledger.snapshot()["entries"]
    except PrivacyError as exc:
        return str(exc)
    charged = [e for e in entries if e.get("kind") == "train" and e.get("epsilon", 0) > 0]
    if not charged:
        return None
    last = charged[-1]
    return (f"an earlier training run here (ledger entry {last.get('id')}, status "
            f"{last.get('status')}, epsilon {last.get('epsilon'):g}) left no posterior; "
            "[training] auto does not spend privacy budget again on its own: run "
            "`twinnode ctl train` to train again")


def charge_import(ledger: Ledger, release: Release, own: str) -> None:
    """A release trained elsewhere (e.g. offline with `twinnode train`) counts against this
    node's budget: charged once, when first published, unless its run is in our ledger."""
    r = release.receipt
    if release.sender != own:  # checked again when publishing; here so nothing is charged
        raise ControlError(f"this release is from {release.sender!r}, not {own!r}; "
                           f"make it with --sender {own}")
    if not ledger.has_release(str(r.get("release"))):
        ledger.charge(float(r["epsilon"]), float(r["delta"]), kind="import",
                      release=str(r.get("release")), n=r.get("n"), sigma=r.get("sigma"),
                      relation=r.get("relation"), schema_hash=r.get("schema_hash"),
                      status_note="trained elsewhere; charged when first published here")


async def _publish(ctx: NodeContext, job: JobState, release: Release) -> dict[str, Any]:
    def progress(done: int, total: int) -> None:
        job.progress, job.detail = done / total, f"publishing twin {done}/{total}"

    job.progress, job.steps, job.elbo, job.eta = 0.0, None, None, None
    seqs = await ctx.publish_release(release, progress)
    return {"message": f"published {len(seqs)} twins (seqs {seqs[0]}-{seqs[-1]})",
            "release": release.receipt.get("release"), "seqs": [seqs[0], seqs[-1]]}


# ---- analyses over stored twins ---------------------------------------------------------------

def screen_report(schema: Schema, peers: Mapping[str, list[Twin]], policy: str,
                  threshold: float, local: Any = None) -> Any:
    """party.screen against the local rows (when given) and the others' consensus,
    imported on use (it pulls in the statistics stack)."""
    from twinnode.analysis.party import screen

    return screen(schema, peers, policy, threshold, local_frame=local)


async def _inputs(ctx: NodeContext, with_local: bool) -> tuple[dict[str, list[Twin]], Any]:
    """Each peer's latest twins (decoded once per process: `node.stored_twins`), and the
    local rows when asked."""
    reader, store = ctx.stored_twins, ctx.require_store()
    before = reader.decoded
    peers = await asyncio.to_thread(reader.latest, store, ctx.name)
    if reader.decoded > before:
        ctx.counters["twins_decoded"] += reader.decoded - before
    local = None
    if with_local:
        from twinnode.data import read_table
        local = await asyncio.to_thread(read_table, ctx.config.data.path, ctx.schema)
    return peers, local


async def screen_job(ctx: NodeContext, job: JobState, args: Mapping[str, Any]) -> dict[str, Any]:
    """Screen each peer's twins against the local rows and the others; mark stored twins
    flagged/excluded."""
    policy = args.get("policy", ctx.config.screening.policy)
    threshold = float(args.get("threshold", ctx.config.screening.threshold))
    job.detail = "loading local data and stored twins"
    peers, local = await _inputs(ctx, with_local=True)
    job.detail = f"screening {len(peers)} peers"
    report = await asyncio.to_thread(screen_report, ctx.schema, peers, policy, threshold,
                                     local)
    mark = "excluded" if policy == "exclude" else "flagged"
    statuses = {name: mark if name in report.flagged else "accepted" for name in peers}
    await asyncio.to_thread(_set_statuses, ctx.require_store(), statuses)
    path = report_path(ctx, "screening")
    await asyncio.to_thread(write_json_atomic, path, report.to_dict())
    return {"message": report.message, "flagged": list(report.flagged), "report": str(path),
            "peers": [p.to_dict(all_checks=False) for p in report.peers]}


def report_path(ctx: NodeContext, kind: str) -> Path:
    """state/reports/<kind>-<UTC time>.json"""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return ctx.layout.reports / f"{kind}-{stamp}.json"


def _set_statuses(store: Store, statuses: Mapping[str, str]) -> None:
    for entry in store.list():
        wanted = statuses.get(entry.sender)
        if wanted is not None and entry.status != wanted:
            store.set_status(entry.sender, entry.seq, wanted)


ANALYSIS_ARGS = ("rule", "heterogeneity", "interval", "level", "agreement_alpha",
                 "on_disagreement")
"""`ctl analyze` arguments that override [analysis] keys of the same name (and `weight`)."""


def analysis_options(config: AnalysisSection, args: Mapping[str, Any]
                     ) -> tuple[AnalysisOptions, str | float]:
    """The analysis options and weight of one `ctl analyze`: its arguments over the config's
    [analysis] section (`twinnode analyze`'s defaults where neither says)."""
    from twinnode.analysis.fit import AnalysisOptions

    chosen = {key: args.get(key, getattr(config, key)) for key in ANALYSIS_ARGS}
    return AnalysisOptions(**chosen), args.get("weight", config.weight)


async def analyze_job(ctx: NodeContext, job: JobState, args: Mapping[str, Any]) -> dict[str, Any]:
    """`analysis.party.analyze_party` (what `twinnode analyze` runs) over the local rows and each
    peer's latest twins; the full report is written to state/reports/."""
    from twinnode.analysis.party import analyze_party

    policy = args.get("policy", ctx.config.screening.policy)
    threshold = float(args.get("threshold", ctx.config.screening.threshold))
    job.detail = "loading local data and stored twins"
    peers, local = await _inputs(ctx, with_local=True)
    if "peers" in args:  # a subset, e.g. to see what each peer adds
        unknown = sorted(set(args["peers"]) - set(peers))
        if unknown:
            raise ControlError(f"analyze: no twins held from {', '.join(unknown)}")
        peers = {name: peers[name] for name in args["peers"]}
    test = None
    if "test" in args:
        from twinnode.data import read_table
        test = await asyncio.to_thread(read_table, args["test"], ctx.schema)
    job.detail = f"screening, choosing the twin weight and fitting over {len(peers)} peers"
    options, requested = analysis_options(ctx.config.analysis, args)
    party = await asyncio.to_thread(analyze_party, ctx.schema, local, peers, weight=requested,
                                    options=options, policy=policy, threshold=threshold,
                                    test_frame=test)
    report = party.to_dict()
    path = report_path(ctx, "analysis")
    await asyncio.to_thread(write_json_atomic, path, report)
    summary = {term: {key: c[key] for key in ("estimate", "se", "local_estimate", "local_se")}
               for term, c in report["coefficients"].items()}
    pooling, weight = report["pooling"], report["weight"]
    return {"message": f"analysis over {len(pooling['peers'])} peer(s), K = {pooling['k']}, "
                       f"twin weight {weight['chosen']:g} ({weight['mode']}); "
                       f"{report['screening']['message']}",
            "verdict": weight["verdict"], "report": str(path), "peers": pooling["peers"],
            "coefficients": summary, "summary": report["summary"],
            "disagreeing": (report["agreement"] or {}).get("disagreeing", []),
            "moved_outside_local": report["moved_outside_local"],
            "replaced_by_local": report["replaced_by_local"],
            "options": report["options"] | {"weight": requested},
            **({"ll_local": report["ll_local"], "ll_combined": report["ll_combined"]}
               if test is not None else {})}
