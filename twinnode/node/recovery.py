"""State-loss recovery: a node that lost its state directory but kept its keys must not sign
new twins under seqs its peers hold already, nor forget the privacy it spent.

How a node knows its identity existed before, though its state is empty (docs/NODE.md,
"Losing the state directory"): the operator says so (`twinnode run --recovered-state
--spent-epsilon X`), a marker beside the keys says so (`<keys.dir>/<name>.used`, written
after the first own twin is stored, where the keys directory is writable), or a peer's
signed heartbeat says it holds seqs of ours that we do not.

Modes, decided at start (`start_mode`) and changed by what peers say:

    off       our store holds our own twins: nothing to recover
    check     an empty state with no sign of an earlier life: the first publish waits for
              every pinned peer's heartbeat, at most `CHECK_WAIT` s (a new site may start
              before its peers); a peer holding seqs of ours turns it into `required`
    recover   `--recovered-state` (or a recovery the ledger says is unfinished): training
              and publishing wait until every pinned peer was heard (its heartbeat's
              holdings of our seqs) and caught up from (our own old twins fetched back,
              signature checked as any twin's), and we hold up to the highest watermark
              any peer reported; at most `[network] recovery_wait` s, then they are refused
              with the names of the silent peers unless the operator accepts them
              (`accept_silent=true`)
    required  a peer holds our seqs but this empty state was not started as a recovery:
              training and publishing are refused until the node is restarted with
              `--recovered-state`
    done      recovered (or checked): publish above every seq any peer reported

Loop-free and clock-injectable, like `node.catchup`; `node.core` feeds it heartbeats and
finished catch-up exchanges, and jobs await `ready`.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

from twinnode.atomic import write_json_atomic
from twinnode.errors import ControlError, PrivacyError
from twinnode.eventlog import event
from twinnode.generator.privacy import Ledger

if TYPE_CHECKING:
    from twinnode.wire import Envelope

log = logging.getLogger("twinnode.node")

CLAIM_SLACK = 10_000  # the most a peer's unbacked claim may lift our next seq above what we hold
CHECK_WAIT = 2.0  # seconds (plus 3 heartbeats) an empty state waits for peers when nothing
                  # says it lived before
POLL = 0.1


@dataclass(frozen=True)
class Stated:
    """What the operator states was spent before the state was lost."""

    epsilon: float
    delta: float = 0.0


def marker_path(keys_dir: Path, name: str) -> Path:
    """The file beside the keys that says these keys have published."""
    return keys_dir / f"{name}.used"


def mark_used(path: Path, state_dir: Path) -> None:
    """Write the marker once (best effort: a read-only keys directory, as under systemd's
    ProtectSystem=strict, leaves the peers' heartbeats as the only evidence)."""
    if path.exists():
        return
    try:
        write_json_atomic(path, {"first_use": time.time(), "state_dir": str(state_dir),
                                 "note": "these keys have published twins; an empty state "
                                         "beside them is a lost one (docs/NODE.md)"})
    except OSError as exc:
        event(log, "recovery.marker_unwritable", str(exc), level=logging.DEBUG)


def start_mode(*, own_twins: bool, ledger: Ledger, marker: Path,
               stated: Stated | None) -> str:
    """The mode at start; PrivacyError when the node must not start: an empty ledger
    beside keys that have published, without `--recovered-state`, or that flag beside a
    ledger that survived. Writes the operator's statement into the ledger."""
    statement = ledger.statement()
    if statement is not None and statement.get("status") == "recovering":
        if stated is not None:
            event(log, "recovery.resumed", "the earlier spending was stated already "
                  f"(epsilon {statement.get('stated_epsilon')}); --spent-epsilon is ignored")
        return "recover"
    rebuilt = ledger.rebuilt_only()  # no entry of its own: nothing trained or published here
    if stated is not None and statement is None:
        if not rebuilt:
            raise PrivacyError(
                f"--recovered-state is for a node whose privacy ledger was lost, but "
                f"{ledger.path} holds this site's entries: start without it (a lost store "
                "beside a kept ledger is recovered without a statement)")
        ledger.state_recovery(stated.epsilon, stated.delta)
        event(log, "recovery.stated", "earlier spending stated by the operator",
              epsilon=stated.epsilon, delta=stated.delta)
        return "recover"
    if stated is not None:
        event(log, "recovery.ignored", "this state directory was recovered already: "
              "--recovered-state is ignored", level=logging.WARNING)
    elif statement is None and (lost := lost_state(ledger, marker)) is not None:
        raise PrivacyError(lost)
    return "off" if own_twins else "check"


def lost_state(ledger: Ledger, marker: Path) -> str | None:
    """Why this state directory is a lost one that needs `--recovered-state` (no ledger of
    its own beside a marker, or beside our twins that peers served back), or None.
    `twinnode check` reports it too."""
    if ledger.path.exists():  # reads without creating anything (`twinnode check` writes none)
        if not ledger.rebuilt_only() or ledger.statement() is not None:
            return None
    elif not marker.exists() or ledger.history_traces():  # traces: the ledger refuses itself
        return None
    why = (f"these keys have published before ({_marker_text(marker)})" if marker.exists()
           else "peers served back twins of ours it had lost")
    return (f"{ledger.dir} has no privacy ledger of its own but {why}: the state directory "
            "was lost. A fresh ledger would forget the privacy spent, and new twins would "
            "reuse seqs peers hold. Restore it from a backup, or start with `twinnode run "
            "--config ... --recovered-state --spent-epsilon X` (X: the epsilon this site "
            "spent before, from your records; the releases peers hold are added when more)")


def _marker_text(marker: Path) -> str:
    try:
        first = json.loads(marker.read_text(encoding="utf-8")).get("first_use", 0)
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(float(first)))
    except (OSError, ValueError, TypeError, AttributeError):
        when = "time unknown"
    return f"{marker}, since {when}"


@dataclass
class Recovery:
    """One node's recovery state: what each peer said it holds of our seqs, who answered."""

    own: str
    peers: tuple[str, ...]
    mode: str = "off"
    wait: float = 60.0
    clock: Callable[[], float] = time.monotonic
    started: float = field(default_factory=time.monotonic)
    heard: dict[str, int] = field(default_factory=dict)   # peer -> watermark of ours
    caught_up: set[str] = field(default_factory=set)
    detail: str = ""
    ledger_intact: bool = False  # a lost store beside a kept ledger needs no statement
    releases_back: set[str] = field(default_factory=set)  # ours, served back by peers
    recovered: bool = False  # a recovery ran: publish above what peers said they hold
    check_wait: float = CHECK_WAIT  # the shorter wait of an empty state with no evidence

    @property
    def limit(self) -> float:
        """Seconds the current mode waits for the peers."""
        return min(self.wait, self.check_wait) if self.mode == "check" else self.wait

    def open(self, *, own_twins: bool, ledger: Ledger, marker: Path, stated: Stated | None,
             heartbeat_interval: float) -> None:
        """Decide the mode at start (`start_mode`; PrivacyError refuses the start)."""
        mode = start_mode(own_twins=own_twins, ledger=ledger, marker=marker, stated=stated)
        self.ledger_intact = not ledger.rebuilt_only()
        if mode == "off":
            mark_used(marker, ledger.dir)  # nodes that published before the marker existed
        self.begin(mode, heartbeat_interval)

    def begin(self, mode: str, heartbeat_interval: float) -> None:
        self.mode, self.started = mode, self.clock()
        self.check_wait = CHECK_WAIT + 3 * heartbeat_interval
        if mode in ("check", "recover"):
            event(log, f"recovery.{mode}", self.describe(0))

    def set_peers(self, peers: Iterable[str]) -> None:
        self.peers = tuple(peers)

    def on_heartbeat(self, peer: str, holdings: Mapping[str, int], own_held: int) -> None:
        """A peer's heartbeat: what it holds of our seqs (contiguous watermark)."""
        if peer not in self.peers:
            return
        held = int(holdings.get(self.own, 0))
        self.heard[peer] = max(self.heard.get(peer, 0), held)
        if self.mode == "check" and held > own_held:
            self.mode = "recover" if self.ledger_intact else "required"
            self.started = self.clock()  # the recovery's own wait starts now
            event(log, f"recovery.{self.mode}", self.describe(own_held),
                  level=logging.WARNING if self.ledger_intact else logging.ERROR,
                  peer=peer, holds=held)

    def on_caught_up(self, peer: str) -> None:
        """A catch-up exchange with `peer` ended: it sent all it holds that we lack."""
        self.caught_up.add(peer)

    def back(self, env: Envelope) -> bool:
        """One of our twins came back from a peer (our state was lost): True for the first
        of its release, whose charge the ledger then rebuilds (`own_release_back`)."""
        release = env.twin.provenance.release
        new = release not in self.releases_back
        self.releases_back.add(release)
        return new

    @property
    def floor(self) -> int:
        """The highest watermark of our seqs any peer reported."""
        return max(self.heard.values(), default=0)

    def next_seq(self, own_held: int) -> int:
        """The lowest seq a publish may take after a recovery: above every watermark of
        ours a peer reported, though never more than CLAIM_SLACK above what we hold (a
        pinned peer's claim alone must not push our seqs out of the others' window).
        Without a recovery our own store is the authority (1)."""
        return min(self.floor, own_held + CLAIM_SLACK) + 1 if self.recovered else 1

    def waiting_on(self) -> list[str]:
        need = self.caught_up if self.mode == "recover" else set(self.heard)
        return [p for p in self.peers if p not in self.heard or p not in need]

    def verdict(self, own_held: int, accept_silent: bool = False) -> bool | None:
        """True: publish (above `floor`); None: wait; ControlError: refused."""
        if self.mode in ("off", "done"):
            return True
        if self.mode == "required":
            raise ControlError(self.describe(own_held))
        waiting = self.waiting_on()
        if not waiting and own_held >= self.floor:
            self._finish(own_held, "every peer answered")
            return True
        if self.clock() - self.started < self.limit:
            return None
        if self.mode == "check" or accept_silent:
            self._finish(own_held, f"no answer from {', '.join(waiting) or 'nobody'} within "
                         f"{self.limit:g} s, our seqs held up to {own_held} of {self.floor}"
                         + (" (accepted by the operator)" if self.mode == "recover" else ""),
                         silent=waiting)
            return True
        raise ControlError(self.describe(own_held))

    def _finish(self, own_held: int, why: str, silent: list[str] | None = None) -> None:
        recovering = self.mode == "recover"
        if silent and not recovering:  # a new site whose peers are not up yet, most often
            event(log, "recovery.unchecked", f"first publish without a heartbeat of "
                  f"{', '.join(silent)}: had these keys published from a state directory "
                  "now lost, those peers would refuse the twins as equivocation",
                  level=logging.WARNING)
        self.detail, self.recovered = why, recovering
        self.mode = "done" if recovering else "off"  # a checked empty state: nothing to say
        if recovering or self.floor:
            event(log, "recovery.done", why, own_held=own_held, floor=self.floor,
                  peers=",".join(f"{p}:{w}" for p, w in sorted(self.heard.items())))

    def describe(self, own_held: int) -> str:
        """The status line."""
        heard = ", ".join(f"{p} holds our 1-{w}" if w else f"{p} holds none of ours"
                          for p, w in sorted(self.heard.items())) or "no peer heard yet"
        waiting = ", ".join(self.waiting_on()) or "nobody"
        left = max(0.0, self.limit - (self.clock() - self.started))
        if self.mode == "off":
            return "not needed (our store holds our twins, or no peer holds any)"
        if self.mode == "done":
            return f"done: {self.detail}; we hold our seqs up to {own_held}"
        if self.mode == "required":
            return ("peers hold twins of ours that this empty state directory does not "
                    f"({heard}): the state was lost. Training and publishing are refused "
                    "until the node is restarted with `twinnode run --recovered-state "
                    "--spent-epsilon X`")
        if self.mode == "check":
            return (f"new state: the first publish waits for every peer's heartbeat "
                    f"({heard}; waiting on {waiting}, {left:.0f} s left)")
        if left > 0:
            return (f"recovering: {heard}; we hold our seqs up to {own_held} of "
                    f"{self.floor}; waiting on {waiting} ({left:.0f} s left)")
        return (f"recovery incomplete: no answer from {waiting} within {self.wait:g} s "
                f"({heard}; we hold our seqs up to {own_held} of {self.floor}); publishing and training are refused: start the silent "
                "peers, or publish with accept_silent=true to number above what the others "
                "hold (a silent peer may hold later twins of ours)")

    def row(self, own_held: int) -> dict[str, object]:
        """What `status` shows."""
        return {"state": self.mode if self.mode != "recover" or
                self.clock() - self.started < self.limit else "incomplete",
                "detail": self.describe(own_held), "floor": self.floor}

    async def ready(self, own_held: Callable[[], int], report: Callable[[str], None],
                    accept_silent: bool = False) -> None:
        """Wait (bounded) until publishing is safe; ControlError when it is refused."""
        while (ok := self.verdict(own_held(), accept_silent)) is None:
            report(self.describe(own_held()))
            await asyncio.sleep(POLL)
        assert ok


async def watch(recovery: Recovery, own_held: Callable[[], int], ledger: Ledger) -> None:
    """Follow a recovery to its end: log once when it is incomplete, and mark the ledger's
    statement recovered once every peer answered (or the operator accepted the silence)."""
    logged = False
    while True:
        try:
            if recovery.verdict(own_held()):
                break
        except ControlError as exc:
            if not logged:
                event(log, "recovery.incomplete" if recovery.mode == "recover"
                      else "recovery.required", str(exc), level=logging.WARNING)
                logged = True
        await asyncio.sleep(5 * POLL)
    try:
        statement = await asyncio.to_thread(ledger.statement)
        if statement is not None and statement.get("status") == "recovering":
            await asyncio.to_thread(ledger.set_status, statement["id"], "recovered")
    except PrivacyError as exc:  # an unreadable ledger: training says so when asked
        event(log, "recovery.ledger", str(exc), level=logging.ERROR)


def own_release_back(ledger: Ledger, env: Envelope) -> None:
    """One of our twins a peer served back: its release, with the epsilon and delta its
    signed header carries, goes into the ledger once (`Ledger.recover_release`)."""
    p = env.twin.provenance
    try:
        ledger.recover_release(p.release, p.epsilon, p.delta, n=p.n, k=p.k, seq=env.seq)
    except PrivacyError as exc:
        event(log, "ledger.rebuild_failed", str(exc), level=logging.ERROR)
