"""The paper's experiment on real nodes: `twinnode demo` (what `make demo` runs).

Splits the bundled randhie data into a held-out test set and M parties of different sizes,
starts M real `twinnode run` processes on 127.0.0.1 (CURVE, signatures, control sockets),
has each train its DP generator and publish K twins, waits until every node holds every
other's twins, then asks each node for its combined analysis scored on the test set. The
pooled real data of all parties (the oracle, which no real party could compute) is fitted
here, through the same analysis code. With `malicious=N`, the last N parties publish twins
whose outcome is multiplied by `shift`, made offline with `twinnode train`, to show screening.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from twinnode.data import SPLITS, Partition, randhie, read_table, split_parties, write_table
from twinnode.errors import ConfigError, TwinnodeError
from twinnode.generator.settings import TrainPlan
from twinnode.lab.harness import LocalCluster, PartySpec
from twinnode.releasedir import load_release, save_release
from twinnode.schema import Schema
from twinnode.twins import Release, Twin

Say = Callable[[str], None]
DEMO_FRACTIONS = (0.1, 0.25, 0.5, 1.0, 1.0)
_PLAN = TrainPlan()


@dataclass(frozen=True)
class DemoSettings:
    """Everything `twinnode demo` can be told; the defaults are what `make demo` runs."""

    parties: int = 5
    epsilon: float = 1.0
    epochs: float = _PLAN.epochs
    q: float = _PLAN.q
    twins: int = 20
    split: str = "iid"
    fractions: tuple[float, ...] = DEMO_FRACTIONS
    seed: int = 0
    out: Path = Path("demo-out")
    malicious: int = 0
    shift: float = 2.0
    timeout: float = 1800.0
    curve: bool = True

    def __post_init__(self) -> None:
        if self.parties < 2:
            raise ConfigError("--parties: the demo needs at least 2 parties")
        if self.split not in SPLITS:
            raise ConfigError(f"--split must be one of {', '.join(SPLITS)}")
        if not 0 <= self.malicious < self.parties:
            raise ConfigError(f"--malicious must be in 0..{self.parties - 1}")
        if self.twins < 2:
            raise ConfigError("--twins: pooling needs at least 2 twins")
        if not (self.epsilon > 0 and self.epochs > 0 and 0 < self.q <= 1):
            raise ConfigError("--epsilon and --epochs must be positive and --q in (0, 1]")

    def party_fractions(self) -> list[float]:
        """One size fraction per party: the given list, cycled, or a single value for all."""
        fr = list(self.fractions)
        return [fr[i % len(fr)] for i in range(self.parties)]


@dataclass
class Party:
    """One party's facts as the demo tracks them."""

    name: str
    rows: int
    data: Path
    malicious: bool
    result: dict[str, Any] = field(default_factory=dict)


def run_demo(settings: DemoSettings, say: Say = print) -> dict[str, Any]:
    """Run the whole experiment; write results.json and figures under `settings.out`."""
    t0 = time.monotonic()
    out = settings.out.resolve()
    if (out / "results.json").exists():
        raise ConfigError(f"{out} already holds a demo (results.json); choose another --out")
    schema, frame = randhie()
    split = split_parties(frame, parties=settings.parties, split=settings.split,
                          fractions=settings.party_fractions(), seed=settings.seed)
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "schema.toml").write_text(schema.to_toml(), encoding="utf-8")
    test_path = data_dir / "test.csv"
    write_table(split.test, test_path, schema)
    parties = []
    for i, df in enumerate(split.parties):
        name = f"party{i}"
        path = data_dir / f"{name}.csv"
        write_table(df, path, schema)
        parties.append(Party(name, len(df), path, i >= settings.parties - settings.malicious))
    say(f"randhie split (seed {settings.seed}, {settings.split}): test set {len(split.test)} "
        f"rows; parties " + ", ".join(f"{p.name} {p.rows}" + (" (malicious)" if p.malicious
                                                                 else "") for p in parties))
    privacy = {"epsilon": settings.epsilon, "epochs": settings.epochs, "q": settings.q}
    with LocalCluster(out / "cluster", [PartySpec(p.name, p.data) for p in parties],
                      data_dir / "schema.toml", k=settings.twins, privacy=privacy,
                      screening={"policy": "flag"}, heartbeat_interval=0.5) as cluster:
        cluster.start(timeout=120)
        cluster.wait_connected(timeout=120)
        say(f"[{_t(t0)}] {len(parties)} nodes up on 127.0.0.1 and connected "
            "(CURVE-encrypted, Ed25519-signed twins, control sockets in each state dir)")
        offline = _start_training(cluster, parties, settings, out, say)
        _watch(cluster, parties, settings, offline, t0, say)
        say(f"[{_t(t0)}] every node holds all {settings.parties * settings.twins} twins; "
            "each node now runs its combined analysis on the held-out test set")
        _analyze(cluster, parties, test_path, say, t0)
        if settings.curve:
            _join_curves(cluster, parties, test_path, settings, say, t0)
    oracle = _oracle(schema, split, [p for p in parties if not p.malicious])
    from twinnode.generator.release import versions

    results = _results(settings, parties, oracle, versions(), time.monotonic() - t0)
    from twinnode.lab.report import write_report

    results["figures"] = write_report(results, out)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=_json_default)
                                      + "\n", encoding="utf-8")
    for line in table_lines(results):
        say(line)
    say(f"report: {out / 'results.json'}; figures: "
        + ", ".join(str(out / f) for f in results["figures"]))
    return results


def _t(t0: float) -> str:
    return f"{time.monotonic() - t0:6.1f}s"


def _start_training(cluster: LocalCluster, parties: list[Party], settings: DemoSettings,
                    out: Path, say: Say) -> dict[str, subprocess.Popen]:
    """Honest nodes train and publish; malicious parties train offline, to shift their twins."""
    offline = {}
    for p in parties:
        if not p.malicious:
            cluster.ctl(p.name, "train")
            continue
        work = out / "malicious" / p.name
        work.mkdir(parents=True, exist_ok=True)
        with open(work / "train.log", "wb") as log:
            offline[p.name] = subprocess.Popen(
                [sys.executable, "-m", "twinnode.cli", "train", "--data", str(p.data),
                 "--schema", str(out / "data" / "schema.toml"), "--out", str(work / "release"),
                 "--epsilon", str(settings.epsilon), "--epochs", str(settings.epochs),
                 "--q", str(settings.q), "--twins", str(settings.twins), "--sender", p.name,
                 "--cpus", str(cluster.members[p.name].cpu), "--state", str(work)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    say(f"training started: {len(parties) - len(offline)} nodes at epsilon={settings.epsilon:g} "
        f"({settings.epochs:g} epochs, q={settings.q:g}; the paper used 4000 epochs)"
        + (f"; {len(offline)} malicious parties train offline" if offline else ""))
    return offline


def _watch(cluster: LocalCluster, parties: list[Party], settings: DemoSettings,
           offline: dict[str, subprocess.Popen], t0: float, say: Say) -> None:
    """Poll the nodes, print progress, publish shifted twins when an offline run ends."""
    expected = {p.name: settings.twins for p in parties}
    shown: dict[str, str] = {}
    last_holdings = ""
    deadline = time.monotonic() + settings.timeout
    while True:
        statuses = {p.name: cluster.status(p.name) for p in parties}
        for name, proc in list(offline.items()):
            if proc.poll() is None:
                continue
            del offline[name]
            if proc.returncode != 0:
                raise TwinnodeError(f"offline training of {name} failed "
                                    f"(exit {proc.returncode}); see its train.log")
            release_dir = settings.out.resolve() / "malicious" / name / "release"
            shift_outcome(release_dir, cluster.schema, settings.shift)
            cluster.ctl(name, "publish", release=str(release_dir))
            say(f"[{_t(t0)}] {name} (malicious) publishes twins with the outcome x{settings.shift:g}")
        for name, st in statuses.items():
            job = st.get("job") or {}
            line = _job_line(job)
            if line and line != shown.get(name):
                shown[name] = line
                say(f"[{_t(t0)}] {name}: {line}")
        held = ", ".join(f"{n} {sum(st['twins'].values())}/{settings.parties * settings.twins}"
                         for n, st in statuses.items())
        if held != last_holdings:
            last_holdings = held
            say(f"[{_t(t0)}] twins held: {held}")
        if not offline and all(all(st["twins"].get(s, 0) >= c for s, c in expected.items())
                               for st in statuses.values()):
            for p in parties:
                p.result["held"] = dict(statuses[p.name]["twins"])
            return
        if time.monotonic() > deadline:
            raise TwinnodeError(f"the demo did not converge in {settings.timeout:g} s; node "
                                f"logs are under {cluster.workdir}")
        time.sleep(1.0)


def _job_line(job: dict[str, Any]) -> str:
    if not job:
        return ""
    progress = job.get("progress")
    if job.get("state") == "running" and progress is not None and job.get("name") == "train":
        phase = "publishing" if str(job.get("detail", "")).startswith("publishing") \
            else "training"
        return f"{phase} {int(25 * math.floor(4 * progress))}%"  # a line per quarter
    if job.get("state") == "failed":
        return f"{job['name']} failed: {job.get('error')}"
    return f"{job['name']} {job['state']}"


def shift_outcome(release_dir: Path, schema_path: Path, factor: float) -> None:
    """Poison a release: multiply every twin's outcome by `factor` (within the bound)."""
    schema = Schema.load(schema_path)
    release = load_release(release_dir, schema)
    out = schema.outcome_column()
    twins = []
    for t in release.twins:
        arrays = dict(t.arrays)
        upper = out.cardinality - 1  # the outcome is a count: 0..upper
        arrays[out.name] = np.minimum(np.rint(arrays[out.name] * factor), upper).astype(np.int64)
        twins.append(Twin(t.provenance, arrays))
    save_release(Release(release.receipt, tuple(twins)), release_dir, schema)


def _analyze(cluster: LocalCluster, parties: list[Party], test: Path, say: Say, t0: float) -> None:
    """Every node analyses at once (default: screening, adaptive weight), scored on `test`."""
    results = _on_all(cluster, {p.name: {"test": str(test)} for p in parties})
    for p in parties:
        report = json.loads(Path(results[p.name]["report"]).read_text(encoding="utf-8"))
        p.result |= {"report": results[p.name]["report"], "analysis": report}
        say(f"[{_t(t0)}] {p.name}: {results[p.name]['verdict']}")


def _join_curves(cluster: LocalCluster, parties: list[Party], test: Path,
                 settings: DemoSettings, say: Say, t0: float) -> None:
    """Fig. 2 of the paper: the test log-likelihood as peers join one at a time (λ = 1)."""
    rng = np.random.default_rng(settings.seed)
    orders = {p.name: [parties[i].name for i in rng.permutation(len(parties))
                       if parties[i].name != p.name] for p in parties}
    for p in parties:
        p.result["join_order"] = orders[p.name]
        p.result["join_curve"] = [p.result["analysis"]["ll_local"]]
    for m in range(1, len(parties)):
        results = _on_all(cluster, {p.name: {"test": str(test), "weight": 1.0, "policy": "off",
                                             "peers": orders[p.name][:m]} for p in parties})
        for p in parties:
            p.result["join_curve"].append(results[p.name]["ll_combined"])
    say(f"[{_t(t0)}] join curves done (peers added one at a time, plain concatenation)")


def _on_all(cluster: LocalCluster, args: dict[str, dict[str, Any]],
            timeout: float = 900.0) -> dict[str, dict[str, Any]]:
    """Run `analyze` on the named nodes at once (each in its own process); their results."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(args)) as pool:
        futures = {name: pool.submit(cluster.ctl, name, "analyze", timeout, wait=True, **a)
                   for name, a in args.items()}
        return {name: f.result() for name, f in futures.items()}


def _oracle(schema: Schema, split: Partition, honest: list[Party]) -> dict[str, Any]:
    """The pooled real data of the honest parties, fitted and scored like a party's analysis."""
    from twinnode.analysis.fit import evaluate, oracle_fit

    fit = oracle_fit(schema, [read_table(p.data, schema) for p in honest])
    ev = evaluate(fit, schema, split.test)
    return {"ll": float(ev.mean), "ll_plugin": float(ev.plugin), "samples": ev.samples.tolist(),
            "coefficients": {t: fit.coefficient(t) for t in fit.terms}}


def _results(settings: DemoSettings, parties: list[Party], oracle: dict[str, Any],
             versions: dict[str, str], seconds: float) -> dict[str, Any]:
    out_parties = []
    for p in parties:
        a = p.result["analysis"]
        ll_local, ll_comb = a["ll_local"], a["ll_combined"]
        pl_local, pl_comb = a["ll_local_plugin"], a["ll_combined_plugin"]
        gap, pl_gap = oracle["ll"] - ll_local, oracle["ll_plugin"] - pl_local
        out_parties.append({
            "name": p.name, "rows": p.rows, "malicious": p.malicious,
            # the headline is the plug-in score (at the pooled estimate); the Monte Carlo
            # score over w ~ N(q̄, T) also charges for T's width and is given beside it
            "ll_local_plugin": pl_local, "ll_combined_plugin": pl_comb,
            "ll_oracle_plugin": oracle["ll_plugin"], "gain_plugin": pl_comb - pl_local,
            "gap_closed_plugin": (pl_comb - pl_local) / pl_gap if pl_gap > 0 else None,
            "ll_local": ll_local, "ll_combined": ll_comb, "ll_oracle": oracle["ll"],
            "gain": ll_comb - ll_local,
            "gap_closed": (ll_comb - ll_local) / gap if gap > 0 else None,
            "weight": a["weight"]["chosen"], "verdict": a["weight"]["verdict"],
            "twins_received": sum(c for s, c in p.result["held"].items() if s != p.name),
            "twins_expected": (settings.parties - 1) * settings.twins,
            "flagged_peers": a["screening"]["flagged"],
            "screening": a["screening"]["message"],
            "ll_local_samples": a["ll_local_samples"],
            "ll_combined_samples": a["ll_combined_samples"],
            "coefficients": a["coefficients"],
            "moved_outside_local": a.get("moved_outside_local", []),
            "disagreeing": (a.get("agreement") or {}).get("disagreeing", []),
            "join_order": p.result.get("join_order"), "join_curve": p.result.get("join_curve"),
            "report": p.result["report"]})
    s = asdict(settings)
    s["out"] = str(settings.out)
    return {"settings": s, "versions": versions, "seconds": seconds,
            "oracle": oracle, "parties": out_parties}


def table_lines(results: dict[str, Any]) -> list[str]:
    """The summary table the demo prints."""
    rows = ["", f"{'party':8s} {'rows':>5s} {'local':>8s} {'combined':>9s} {'oracle':>8s} "
                f"{'gain':>7s} {'gap closed':>10s} {'(MC)':>6s} {'λ':>5s} {'moved':>5s}  "
                "flagged peers", "-" * 91]
    for p in results["parties"]:
        closed = _signed(p.get("gap_closed_plugin"))
        moved = f"{len(p.get('moved_outside_local', []))}/{len(p['coefficients'])}"
        rows.append(f"{p['name'] + ('*' if p['malicious'] else ''):8s} {p['rows']:5d} "
                    f"{p['ll_local_plugin']:8.4f} {p['ll_combined_plugin']:9.4f} "
                    f"{p['ll_oracle_plugin']:8.4f} {p['gain_plugin']:+7.4f} {closed:>10s} "
                    f"{_signed(p['gap_closed']):>6s} {p['weight']:5.2f} {moved:>5s}  "
                    f"{', '.join(p['flagged_peers']) or '-'}")
    rows.append("mean test log-likelihood per record at the pooled estimate (plug-in; higher "
                "is better); gap closed = (combined - local) / (oracle - local); (MC): the "
                "same by the Monte Carlo score over w ~ N(q̄, T), which also charges for T")
    rows.append("moved: terms whose combined interval lies wholly outside the party's "
                "local-only interval, of all terms")
    rows.append("λ: the twins' weight each party chose by cross-validation on its own rows; "
                "flagged peers: screening's verdict (policy flag: reported, twins still used)")
    if any(p["malicious"] for p in results["parties"]):
        rows.append("* malicious: publishes twins with a shifted outcome")
    return rows


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f}"


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")
