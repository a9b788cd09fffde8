"""Network-fault scenarios on real nodes in namespaces (NetLab), each ending in full convergence.

    with NetLab(names, workdir / "net") as lab:
        lab.up()
        with netns_cluster(lab, workdir / "nodes", parties, schema, k=2) as c:
            c.start(); c.wait_connected()
            run = Scenarios(c, lab, release_of, k=2)
            outcome = run.partition({"a", "b"}, {"c", "d", "e"}, seconds=60)

Every scenario publishes one new release on every node, holds its fault for a while, ends it and
then waits until every node holds every sender's twins with the sender's own (seq, digest)
list, and counts what was refused meanwhile. Its time to converge is measured from the end of
the fault (0 when all held everything before it ended); the time from the publish is kept too.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from twinnode.data import write_table
from twinnode.lab.harness import ClusterError, LocalCluster, PartySpec
from twinnode.lab.netns import NetLab
from twinnode.lab.simtwins import as_release, posterior_twins, simulate_small, small_schema
from twinnode.releasedir import save_release

# refusals an honest federation makes by design: a twin arriving twice (live and by catch-up,
# or from two peers) is stored once and counted here
BENIGN = frozenset({"replay", "duplicate"})
POLL = 0.25


@dataclass
class Outcome:
    """One scenario's result."""

    scenario: str
    fault: str
    fault_s: float  # how long the fault was on
    converge_after_fault_s: float  # from the fault's end until every node held every twin
    converge_after_publish_s: float
    twins_per_node: int
    converged_during_fault: bool  # a partition must make this False (the cut bites)
    fault_seen: bool | None  # the scenario's own check at the fault's end (partition: each
    # side held its own side's new twins and none of the other's); None: no such check
    converge_after_link_up_s: float | None  # flap: from the links' last return before it
    refused: dict[str, dict[str, int]]  # per node, refusals other than BENIGN (must be empty)
    benign: dict[str, dict[str, int]] = field(default_factory=dict)  # replay/duplicate counts
    relays: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(self.refused.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}


def netns_cluster(lab: NetLab, workdir: str | Path, parties: Sequence[PartySpec],
                  schema: str | Path, **kw: Any) -> LocalCluster:
    """A LocalCluster whose nodes run in the lab's namespaces, behind its relays."""
    return LocalCluster(workdir, parties, schema, endpoints=lab.endpoints,
                        launcher=lab.exec_prefix, **kw)


class Scenarios:
    """Runs fault scenarios one after another on one running cluster."""

    def __init__(self, cluster: LocalCluster, lab: NetLab, release_of: Callable[[str, int], str],
                 k: int, timeout: float = 180.0) -> None:
        self.c = cluster
        self.lab = lab
        self.names = list(cluster.members)
        self.release_of = release_of
        self.k = k
        self.rounds = 0
        self.timeout = timeout
        self.links_up: list[float] = []  # when a flapping node's links last came back

    # ---- the scenarios ----

    def baseline(self) -> Outcome:
        """No fault: the reference time."""
        return self.run("baseline", "none", lambda: None, lambda: None, 0.0)

    def partition(self, side: Iterable[str], other: Iterable[str], seconds: float) -> Outcome:
        """Every link between the two sides down for `seconds`, then up."""
        side, other = sorted(side), sorted(other)
        return self.run("partition", f"{{{','.join(side)}}} | {{{','.join(other)}}} links down",
                        lambda: self.lab.partition(side, other), self.lab.heal, seconds,
                        probe=lambda: self.split([side, other]))

    def split(self, sides: Sequence[Sequence[str]]) -> bool:
        """Whether each side holds all of its own side's twins and not the other's latest."""
        want = self.k * self.rounds
        holdings = {n: held(self.c, n) for side in sides for n in side}
        for side in sides:
            for n in side:
                for s, h in holdings.items():
                    mine = h.get(s, [])
                    theirs = holdings[n].get(s, [])
                    if (s in side and theirs != mine) or (s not in side and len(theirs) >= want):
                        return False
        return True

    def flap(self, name: str, cycles: int, down_s: float, up_s: float) -> Outcome:
        """All of one node's links down `down_s`, up `up_s`, `cycles` times (in a thread, while
        the nodes publish); the fault ends when the last cycle's links come back."""
        errors: list[BaseException] = []

        def flapping() -> None:
            try:
                for i in range(cycles):
                    self.lab.isolate(name)
                    time.sleep(down_s)
                    self.lab.heal()
                    self.links_up.append(time.monotonic())
                    if i < cycles - 1:
                        time.sleep(up_s)
            except BaseException as e:  # re-raised in the caller's thread by done()
                errors.append(e)
                self.lab.heal()

        thread = threading.Thread(target=flapping, name=f"flap-{name}", daemon=True)

        def done() -> None:
            thread.join()
            if errors:
                raise errors[0]

        return self.run("flap", f"{name}'s links {cycles} x ({down_s:g} s down, {up_s:g} s up)",
                        thread.start, done, cycles * (down_s + up_s) - up_s)

    def relay(self, scenario: str, rules: Mapping[str, Mapping[str, float]],
              seconds: float) -> Outcome:
        """The relays apply `rules` (twinnode.lab.relay) for `seconds`, then pass bytes clean."""
        text = "; ".join(f"{pair}: " + ", ".join(f"{k}={v:g}" for k, v in r.items())
                         for pair, r in rules.items())
        return self.run(scenario, f"relay {text}", lambda: self.lab.set_faults(rules),
                        lambda: self.lab.set_faults({}), seconds)

    def netem(self, spec: str, seconds: float) -> Outcome:
        """`tc netem SPEC` on every link for `seconds` (kernels that have netem)."""
        pairs = [(a, b) for i, a in enumerate(self.names) for b in self.names[i + 1:]]

        def on(spec: str | None) -> None:
            for a, b in pairs:
                self.lab.netem(a, b, spec)

        return self.run("netem", f"netem {spec}", lambda: on(spec), lambda: on(None), seconds)

    # ---- the common frame ----

    def run(self, scenario: str, fault: str, start: Callable[[], Any], end: Callable[[], Any],
            hold: float, probe: Callable[[], bool] | None = None) -> Outcome:
        """Start the fault, publish a new release everywhere, hold, `probe` what the fault
        did, end it, converge."""
        before = {n: self.c.status(n)["rejected"] for n in self.names}
        relays_before = self.lab.relay_stats()
        t0 = time.monotonic()
        self.links_up = []
        start()
        self.rounds += 1
        t_pub = time.monotonic()
        for name in self.names:
            self.c.ctl(name, "publish", release=self.release_of(name, self.rounds))
        converged_at = None
        while time.monotonic() < t0 + hold:
            if converged_at is None and self.converged():
                converged_at = time.monotonic()
            time.sleep(POLL)
        bit = probe() if probe else None
        end()
        t_end = time.monotonic()
        if converged_at is None:
            self.wait_converged()
            converged_at = time.monotonic()
        after = {n: self.c.status(n)["rejected"] for n in self.names}
        delta = {n: {r: c - before[n].get(r, 0) for r, c in after[n].items()
                     if c != before[n].get(r, 0)} for n in self.names}
        relays = self.lab.relay_stats()
        return Outcome(
            scenario, fault, round(t_end - t0, 1), round(max(0.0, converged_at - t_end), 1),
            round(converged_at - t_pub, 1), self.k * self.rounds * len(self.names),
            converged_at <= t_end, bit,
            round(converged_at - max((t for t in self.links_up if t <= converged_at),
                                     default=t_end), 1) if self.links_up else None,
            {n: {r: c for r, c in d.items() if r not in BENIGN} for n, d in delta.items()},
            {n: {r: c for r, c in d.items() if r in BENIGN} for n, d in delta.items()},
            {n: {k: v - relays_before.get(n, {}).get(k, 0) for k, v in s.items()}
             for n, s in relays.items()})

    def converged(self) -> bool:
        """Every node holds every sender's K x rounds twins, each with the sender's digest."""
        want = self.k * self.rounds
        holdings = {n: held(self.c, n) for n in self.names}
        for sender in self.names:
            own = holdings[sender].get(sender, [])
            if len(own) != want:
                return False
            if any(h.get(sender) != own for h in holdings.values()):
                return False
        return True

    def wait_converged(self) -> None:
        self.c.wait_until(self.converged, self.timeout,
                          f"every node to hold {self.k} x {self.rounds} twins of each sender",
                          names=self.names)


def held(c: LocalCluster, name: str) -> dict[str, list[tuple[int, str]]]:
    """(seq, digest) per sender, as the node lists them."""
    return {s["sender"]: sorted((e["seq"], e["digest"]) for e in s["entries"])
            for s in c.ctl(name, "twins", detail=True)["senders"]}


def digests_agree(c: LocalCluster, names: Sequence[str]) -> bool:
    """Whether every node lists the same (seq, digest) for every sender (a final check)."""
    views = [held(c, n) for n in names]
    return all(v == views[0] for v in views)


def check(outcome: Outcome) -> None:
    """ClusterError if the scenario refused anything it should not have."""
    if not outcome.ok:
        raise ClusterError(f"{outcome.scenario}: refused wrongly {outcome.refused}")


def make_world(root: str | Path, names: Sequence[str], k: int, rounds: int,
               rows: int = 200) -> tuple[Path, list[PartySpec], Callable[[str, int], str]]:
    """The small test schema, each party's rows and `rounds` releases of K simulated twins
    each (not DP: twinnode.lab.simtwins); (schema path, parties, release_of(name, round))."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    schema = small_schema()
    (root / "schema.toml").write_text(schema.to_toml())
    parties = []
    for i, name in enumerate(names):
        frame = simulate_small(schema, rows, seed=i)
        write_table(frame, root / f"{name}.csv", schema)
        parties.append(PartySpec(name, root / f"{name}.csv"))
        for r in range(1, rounds + 1):
            twins = posterior_twins(schema, frame, sender=name, k=k, seed=1000 * r + i)
            save_release(as_release(twins), root / f"release-{name}-{r}", schema)
    return root / "schema.toml", parties, lambda name, r: str(root / f"release-{name}-{r}")
