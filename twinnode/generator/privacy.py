"""Noise calibration for DP training, and the persistent privacy ledger.

Two batchings, each with its own neighbouring relation (never mixed):
- "poisson": each record joins a step's batch independently with probability q; add/remove
  relation; sigma from d3p's `approximate_sigma_remove_relation`. The batch is padded to a
  fixed maximum size so shapes stay static under jit. If more than that many records are
  drawn (an overflow), the batch is truncated. The truncated mechanism differs from the ideal
  one only on that event, so it is (eps, delta_acc + (1 + e^eps) * T * P[Bin(N+1, q) > B])-DP;
  B is chosen so that term is at most 1% of delta, and sigma is calibrated for the rest.
- "fixed": batches of exactly round(qN) records drawn without replacement; substitute
  relation; sigma from d3p's `approximate_sigma`.

The record count N is treated as public, as in the paper: every twin has N rows.
"""
from __future__ import annotations

import fcntl
import json
import math
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from twinnode.atomic import write_json_atomic
from twinnode.errors import AccountingError, BudgetExceeded, PrivacyError
from twinnode.generator.settings import BATCHINGS
from twinnode.store.layout import LEDGER_NAME, StateLayout

OVERFLOW_SHARE = 0.01  # share of delta allowed for Poisson batch overflow
LEDGER_FORMAT = "twinnode-ledger/1"
LEDGER_FILE = LEDGER_NAME  # the file name, for messages


@dataclass(frozen=True)
class Calibration:
    """The noise level for one training run and the privacy it buys."""

    batching: str
    relation: str
    epsilon: float           # target epsilon; the accountant's value is at most this
    delta: float             # total delta, overflow term included
    sigma: float             # noise std / clipping threshold
    epsilon_accountant: float
    delta_accountant: float  # delta the accountant was run with
    delta_overflow: float    # bound on the Poisson overflow term (0 for fixed batches)
    q: float
    steps: int
    n: int
    batch_size: int          # padded maximum (poisson) or exact size (fixed)
    expected_batch: float    # q * n: the divisor of the noisy gradient sum
    # marginal anchoring (accounting.py); the defaults describe a release without it
    marginal_share: float = 0.0           # the marginals' part of the release's mu^2
    marginal_multiplier: float = 0.0      # their Gaussian noise / L2 sensitivity
    accountant: str = "d3p Fourier accountant (fourier-accountant)"
    epsilon_dpvi_alone: float | None = None
    epsilon_marginals_alone: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def overflow_bound(n: int, q: float, steps: int, epsilon: float, max_batch: int) -> float:
    """(1 + e^eps) * T * P[Bin(n + 1, q) > max_batch]: delta lost to truncating batches."""
    from scipy.stats import binom

    return (1.0 + math.exp(epsilon)) * steps * float(binom.sf(max_batch, n + 1, q))


def poisson_max_batch(n: int, q: float, steps: int, epsilon: float, delta: float) -> int:
    """Smallest padded batch whose overflow term is within OVERFLOW_SHARE of delta."""
    budget = OVERFLOW_SHARE * delta
    b = max(1, math.ceil(q * n))
    while b < n + 1 and overflow_bound(n, q, steps, epsilon, b) > budget:
        b += max(1, b // 32)
    while b > 1 and overflow_bound(n, q, steps, epsilon, b - 1) <= budget:
        b -= 1
    return min(b, n)


def calibrate(epsilon: float, delta: float, n: int, q: float, steps: int,
              batching: str = "poisson") -> Calibration:
    """Find sigma for (epsilon, delta) after `steps` subsampled Gaussian steps."""
    from d3p.dputil import approximate_sigma, approximate_sigma_remove_relation

    if batching not in BATCHINGS:
        raise PrivacyError(f"unknown batching {batching!r}; expected poisson or fixed")
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise PrivacyError(f"epsilon must be a positive finite number, got {epsilon}")
    if not 0 < delta < 1:
        raise PrivacyError(f"delta must be in (0, 1), got {delta}")
    if not 0 < q <= 1 or steps < 1 or n < 2:
        raise PrivacyError(f"need 0 < q <= 1, steps >= 1 and n >= 2 (q={q}, steps={steps}, n={n})")
    if batching == "poisson":
        max_batch = poisson_max_batch(n, q, steps, epsilon, delta)
        d_over = overflow_bound(n, q, steps, epsilon, max_batch)
        d_acc, q_acc, find = delta - d_over, q, approximate_sigma_remove_relation
    else:
        max_batch = max(1, round(q * n))
        d_over, d_acc, q_acc, find = 0.0, delta, max_batch / n, approximate_sigma
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # a search that fails says so below
            sigma, eps, _ = find(epsilon, d_acc, q_acc, steps, force_smaller=True, maxeval=30)
    except (AssertionError, ValueError, FloatingPointError, OverflowError, RuntimeError) as exc:
        raise AccountingError(f"no noise level found for epsilon={epsilon}, delta={delta}, "
                              f"q={q_acc}, steps={steps}: {exc}") from None
    if not (math.isfinite(sigma) and sigma > 0 and eps <= epsilon):
        raise AccountingError(f"accountant returned sigma={sigma}, epsilon={eps} for target "
                              f"epsilon={epsilon}")
    return Calibration(batching=batching, relation=BATCHINGS[batching], epsilon=epsilon,
                       delta=delta, sigma=float(sigma), epsilon_accountant=float(eps),
                       delta_accountant=d_acc, delta_overflow=d_over, q=q_acc, steps=steps,
                       n=n, batch_size=max_batch, expected_batch=q_acc * n)


def epsilon_for(sigma: float, delta: float, q: float, steps: int, relation: str) -> float:
    """The epsilon d3p's Fourier accountant gives for a noise level (for checks and receipts)."""
    from fourier_accountant.compute_eps import get_epsilon_R, get_epsilon_S

    fn = get_epsilon_R if relation == "add-remove" else get_epsilon_S
    return float(fn(target_delta=delta, sigma=sigma, q=q, ncomp=steps))


# ------------------------------------------------------------------------ ledger
RECOVERED = "recovered"                   # the operator's statement of earlier spending
RECOVERED_RELEASE = "recovered-release"   # a release of ours rebuilt from peers' copies


def _rebuilt(doc: dict[str, Any]) -> tuple[float, float]:
    """The full (epsilon, delta) of every release rebuilt so far."""
    rows = [e for e in doc["entries"] if e.get("kind") == RECOVERED_RELEASE]
    return (sum(e["release_epsilon"] for e in rows), sum(e["release_delta"] for e in rows))


class Ledger:
    """Append-only record of privacy spent from one data set, with a cap on total epsilon.

    Runs compose by basic composition (epsilons and deltas add): conservative, and valid
    whatever the runs were. A charge is written to disk (atomically, under a file lock)
    before the run starts, so nothing derived from it can leave before it is recorded; a run
    that fails stays charged. A missing ledger beside traces of earlier training (a
    posterior, receipts) is an error, never a fresh budget.
    """

    def __init__(self, state_dir: str | Path, cap_epsilon: float | None = None) -> None:
        self.dir = Path(state_dir)
        self.path = StateLayout.of(self.dir).ledger
        if cap_epsilon is not None and not (cap_epsilon > 0 and math.isfinite(cap_epsilon)):
            raise PrivacyError(f"budget cap must be a positive number, got {cap_epsilon}")
        self._cap_override = cap_epsilon

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(StateLayout.of(self.dir).ledger_lock, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self._read()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            traces = self.history_traces()
            if traces:
                raise PrivacyError(
                    f"{self.dir}: no {LEDGER_FILE}, but {traces[0]} shows that training ran "
                    "here before; a lost ledger would reset the budget, so nothing trains "
                    f"until {self.path} is restored")
            return {"format": LEDGER_FORMAT, "cap_epsilon": None, "entries": []}
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PrivacyError(f"{self.path}: privacy ledger unreadable ({exc}); refusing to "
                               "train until it is restored") from None
        if not isinstance(doc, dict) or doc.get("format") != LEDGER_FORMAT:
            raise PrivacyError(f"{self.path}: not a {LEDGER_FORMAT} file")
        return doc

    def history_traces(self) -> list[Path]:
        """Files that only exist once something was trained with this ledger beside them."""
        layout = StateLayout.of(self.dir)
        found = [p for p in (layout.posterior, layout.receipts) if p.exists()]
        return found + sorted(self.dir.glob("*/receipt.json"))[:1]

    def has_release(self, release: str) -> bool:
        """Whether a training run (or an imported or recovered release) with this id is
        charged here."""
        with self._locked() as doc:
            return any(e.get("id") == release or e.get("release") == release
                       for e in doc["entries"]
                       if e["epsilon"] > 0 or e.get("kind") == RECOVERED_RELEASE)

    # ---- state-loss recovery (docs/NODE.md, "Losing the state directory") ----

    def fresh(self) -> bool:
        """No ledger file and no trace of training: what a lost state directory leaves."""
        return not self.path.exists() and not self.history_traces()

    def statement(self) -> dict[str, Any] | None:
        """The operator's recovery statement (`run --recovered-state`), or None."""
        with self._locked() as doc:
            return next((dict(e) for e in doc["entries"] if e.get("kind") == RECOVERED), None)

    def rebuilt_only(self) -> bool:
        """Whether every entry was rebuilt from our releases that peers hold (or there is
        none): a ledger the operator may still state the earlier spending into."""
        with self._locked() as doc:
            return all(e.get("kind") == RECOVERED_RELEASE for e in doc["entries"])

    def state_recovery(self, epsilon: float, delta: float) -> dict[str, Any]:
        """Record what the operator states was spent before the state was lost; it counts
        only what the releases rebuilt so far do not already show (`_recount`)."""
        if not (math.isfinite(epsilon) and epsilon >= 0 and 0 <= delta < 1):
            raise PrivacyError(f"the spent epsilon must be >= 0 and delta in [0, 1), got "
                               f"{epsilon}, {delta}")
        with self._locked() as doc:
            if any(e.get("kind") == RECOVERED for e in doc["entries"]):
                raise PrivacyError(f"{self.path}: the earlier spending was stated already")
            shown = _rebuilt(doc)
            entry = {"id": uuid.uuid4().hex[:16], "kind": RECOVERED, "time": time.time(),
                     "epsilon": max(0.0, epsilon - shown[0]),
                     "delta": max(0.0, delta - shown[1]), "stated_epsilon": float(epsilon),
                     "stated_delta": float(delta), "status": "recovering",
                     "note": "spent before the state directory was lost, as the operator "
                             "stated it (run --recovered-state)"}
            doc["entries"].append(entry)
            write_json_atomic(self.path, doc)
            return entry

    def recover_release(self, release: str, epsilon: float, delta: float,
                        **details: Any) -> dict[str, Any] | None:
        """Record one of our releases that a peer served back (its signed twins carry its
        epsilon and delta); None if it is in the ledger already. Under a statement it
        counts only what goes past the stated total, so the ledger shows
        max(stated, sum of recovered releases) for what was spent before."""
        with self._locked() as doc:
            if any(e.get("id") == release or e.get("release") == release
                   for e in doc["entries"]):
                return None
            before = _rebuilt(doc)
            stated = next(((e["stated_epsilon"], e["stated_delta"]) for e in doc["entries"]
                           if e.get("kind") == RECOVERED), (0.0, 0.0))
            after = (before[0] + epsilon, before[1] + delta)
            counted = [max(0.0, a - s) - max(0.0, b - s)
                       for a, b, s in zip(after, before, stated)]
            entry = {"id": uuid.uuid4().hex[:16], "kind": RECOVERED_RELEASE,
                     "time": time.time(), "epsilon": counted[0], "delta": counted[1],
                     "release": release, "release_epsilon": float(epsilon),
                     "release_delta": float(delta), "status": "rebuilt from the twins a "
                     "peer served back", **details}
            doc["entries"].append(entry)
            write_json_atomic(self.path, doc)
            return entry

    def snapshot(self) -> dict[str, Any]:
        """Spent, cap and left, plus every entry: what `budget` commands show."""
        with self._locked() as doc:
            return self._summary(doc)

    def _summary(self, doc: dict[str, Any]) -> dict[str, Any]:
        cap = self._cap_override if self._cap_override is not None else doc.get("cap_epsilon")
        spent_e = sum(e["epsilon"] for e in doc["entries"])
        spent_d = sum(e["delta"] for e in doc["entries"])
        return {"spent_epsilon": spent_e, "spent_delta": spent_d, "cap_epsilon": cap,
                "left_epsilon": None if cap is None else max(0.0, cap - spent_e),
                "entries": list(doc["entries"])}

    def check(self, epsilon: float) -> None:
        """Raise BudgetExceeded now if a run at `epsilon` would pass the cap."""
        with self._locked() as doc:
            self._refuse_past_cap(self._summary(doc), epsilon)

    @staticmethod
    def _refuse_past_cap(summary: dict[str, Any], epsilon: float) -> None:
        cap = summary["cap_epsilon"]
        if cap is not None and summary["spent_epsilon"] + epsilon > cap + 1e-12:
            raise BudgetExceeded(
                f"a release at epsilon={epsilon:g} would bring the total to "
                f"{summary['spent_epsilon'] + epsilon:g}, over the cap of {cap:g} "
                f"(spent {summary['spent_epsilon']:g}, left {summary['left_epsilon']:g}); "
                "sampling more twins from a trained posterior costs nothing")

    def charge(self, epsilon: float, delta: float, kind: str = "train",
               **details: Any) -> dict[str, Any]:
        """Record a run's cost before it starts; refuse (writing nothing) past the cap."""
        with self._locked() as doc:
            summary = self._summary(doc)
            self._refuse_past_cap(summary, epsilon)
            cap = summary["cap_epsilon"]
            entry = {"id": uuid.uuid4().hex[:16], "kind": kind, "time": time.time(),
                     "epsilon": float(epsilon), "delta": float(delta), "status": "charged",
                     **details}
            doc["entries"].append(entry)
            doc["cap_epsilon"] = cap
            write_json_atomic(self.path, doc)
            return entry

    def record_free(self, kind: str, **details: Any) -> dict[str, Any]:
        """Record a zero-cost event, such as sampling from a stored posterior (post-processing)."""
        with self._locked() as doc:
            entry = {"id": uuid.uuid4().hex[:16], "kind": kind, "time": time.time(),
                     "epsilon": 0.0, "delta": 0.0, "status": "free (post-processing)",
                     **details}
            doc["entries"].append(entry)
            write_json_atomic(self.path, doc)
            return entry

    def set_status(self, entry_id: str, status: str) -> None:
        """Mark a charged run finished or failed; its cost stays charged either way."""
        with self._locked() as doc:
            for e in doc["entries"]:
                if e["id"] == entry_id:
                    e["status"] = status
            write_json_atomic(self.path, doc)
