"""The Newton iterations of the batched Poisson fitter (`glm`): K fits on (K, p, n), one
replicate after another.

Newton steps are IRLS steps for the canonical log link; a step that would lower the
log-likelihood is halved. What makes the fits fast (measured on randhie, K = 100, issue 16;
docs/results/scale/analysis.md):
- each replicate is iterated to convergence before the next one starts, so its design
  (~1 MB) stays in cache through every pass, and its p x p algebra is a few small calls
  (LAPACK's Cholesky inverse, `spd.spd_inverse_one`): batched over chunks of 3 replicates,
  the stacked algebra's fixed cost per call was a fifth of a fit;
- the first step of every replicate after a batch's first uses that first replicate's
  Hessian at the start (the replicates are alike and start from the same point, so it is
  almost a Newton step, for no Gram product);
- a replicate whose linear predictor has moved by less than CHORD since its Hessian was
  formed reuses it (a chord step, cutting the error by a factor of about that move);
- a step that moves no linear predictor by more than TAYLOR updates the mean by a Taylor
  polynomial of exp instead of exp itself (`_exp_step`; exact to rounding, a third of the
  cost);
- the Hessian of the last step is the sandwich's bread when that step moved no linear
  predictor by more than REUSE; otherwise `glm` forms it again at the estimate.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from twinnode.analysis.arrays import BoolArray, FloatArray, IntArray
from twinnode.analysis.spd import spd_inverse_one

DIVERGED = 50.0
"""An |estimate| above this on the log scale (a rate ratio of e^50) means separation."""
CHORD = 1e-2
"""A replicate reuses its last Hessian while its linear predictor has moved by less than
this since that Hessian was formed (`run_newton`)."""
REUSE = 1e-8
"""The last Newton step's Hessian serves as the sandwich's bread when that step changed no
row's linear predictor by more than this: each row's weight mu then differs from the one at
the estimate by a factor within exp(±1e-8), so H does (in the Loewner order) and the SEs
are within a relative 1e-8 of those from H formed at the estimate. Otherwise H is formed
again at the estimate."""
TAYLOR = 1e-3
"""A step that changes no linear predictor by more than this updates the mean as
mu exp(d) with exp(d) from its Taylor polynomial (`taylor_degree`), not from exp."""
ROUNDING = 2.0 ** -55
"""`taylor_degree` truncates exp's series where the rest is below this, relative (a
quarter of float64's rounding)."""


class Newton(NamedTuple):
    """Where the iterations ended, per replicate: the estimate, its mean and log-likelihood
    kernel, the inverse Hessian of the last step (the sandwich's bread where `fresh`)."""

    beta: FloatArray        # (K, p)
    mu: FloatArray          # (K, n) at beta
    ll: FloatArray          # (K,) without the log y! terms
    converged: BoolArray    # (K,)
    iterations: IntArray    # (K,)
    bread: FloatArray       # (K, p, p) the inverse Hessian the last step used
    hdiag: FloatArray       # (K, p) that Hessian's diagonal
    moved: FloatArray       # (K,) largest change of a linear predictor since it was formed

    @property
    def fresh(self) -> BoolArray:
        """(K,) replicates whose bread may serve at the estimate (see REUSE)."""
        ok: BoolArray = self.moved <= REUSE
        return ok


class _Shared(NamedTuple):
    """A batch's first Hessian (at its first replicate's start), for the others' first step."""

    hess: FloatArray        # (p, p) as formed, no column dropped
    keep: BoolArray         # (p,) the columns its inverse was formed with
    hinv: FloatArray        # (p, p)
    hdiag: FloatArray       # (p,)


def run_newton(Xt: FloatArray, y: FloatArray, w: FloatArray, keep: BoolArray,
               beta: FloatArray, tol: float, max_iter: int) -> Newton:
    """Newton steps with step halving until a full step is below `tol` (relative), for
    each replicate in turn from its row of `beta` (see the module docstring for where the
    Hessians come from)."""
    K, p, n = Xt.shape
    out = Newton(beta=np.array(beta, np.float64).reshape(K, p), mu=np.empty((K, n)),
                 ll=np.full(K, np.nan), converged=np.zeros(K, bool),
                 iterations=np.zeros(K, int), bread=np.full((K, p, p), np.nan),
                 hdiag=np.full((K, p), np.nan), moved=np.full(K, np.inf))
    fit = _Replicate(p, n, tol, max_iter)
    shared: _Shared | None = None
    for i in range(K):
        shared = fit.run(Xt[i], w[i] * y[i], w[i], np.asarray(keep[i], bool), out, i, shared)
    return out


class _Replicate:
    """One replicate's iterations, on scratch vectors reused from one replicate to the
    next; every product with the design is one BLAS call or ufunc over all its rows."""

    def __init__(self, p: int, n: int, tol: float, max_iter: int) -> None:
        self.tol, self.max_iter = tol, max_iter
        self.eta, self.mu, self.trial, self.mu_new = (np.empty(n) for _ in range(4))
        self.d, self.r = np.empty(n), np.empty(n)
        self.scratch = np.empty((p, n))
        self.grad, self.hess = np.empty(p), np.empty((p, p))

    def run(self, X: FloatArray, wy: FloatArray, w: FloatArray, keep: BoolArray,
            out: Newton, i: int, shared: _Shared | None) -> _Shared | None:
        """Fit replicate i (design X (p, n)) from out.beta[i], writing its row of `out`;
        the batch's shared first Hessian (formed here if there is none yet)."""
        beta, ll = out.beta[i], self._start(X, wy, w, out.beta[i])
        first = _first_inverse(shared, keep)
        hinv, hd, since = (first[0], first[1], np.inf) if first else (None, None, 0.0)
        due, it, converged = first is None, 0, False
        if np.isfinite(ll):
            self._products(X, wy, w, due)
        while np.isfinite(ll) and it < self.max_iter:
            if due:
                hinv, hd = _inverse(self.hess, keep)
                since = 0.0
                if not np.isfinite(hinv).all():  # singular: no step, not converged (the
                    break                          # caller's rank check drops the column)
                if shared is None:
                    shared = _Shared(self.hess.copy(), keep.copy(), hinv, hd)
            assert hinv is not None  # formed above or taken from the shared Hessian
            step = _newton_step(hinv, self.grad, keep)
            small = (np.abs(step).max(initial=0.0)
                     <= self.tol * (1.0 + np.abs(beta + step).max(initial=0.0)))
            t, moved, ll = self._step(X, wy, w, step, ll)
            beta += t * step
            it, since = it + 1, since + moved
            if (not np.isfinite(ll) or not np.isfinite(beta).all()
                    or np.abs(beta).max(initial=0.0) > DIVERGED):
                break
            if t == 1.0 and small:
                converged = True
                break
            due = not (moved > REUSE and since <= CHORD)
            self._products(X, wy, w, due)
        out.mu[i], out.ll[i], out.converged[i], out.iterations[i] = self.mu, ll, converged, it
        if hinv is not None:
            out.bread[i], out.hdiag[i], out.moved[i] = hinv, hd, since
        return shared

    def _start(self, X: FloatArray, wy: FloatArray, w: FloatArray, beta: FloatArray
               ) -> float:
        """The linear predictor, mean and log-likelihood kernel at the start `beta`."""
        np.matmul(beta, X, out=self.eta)
        _clip(self.eta)
        np.exp(self.eta, out=self.mu)
        return float(wy @ self.eta - w @ self.mu)

    def _products(self, X: FloatArray, wy: FloatArray, w: FloatArray, hessian: bool) -> None:
        """The score X'(wy - w mu) at the current mean into `grad`, and with `hessian` the
        Hessian X' diag(w mu) X into `hess` (BLAS syrk on X diag(sqrt(w mu)), formed from
        the same weights while X is in cache)."""
        r = self.r
        np.multiply(w, self.mu, out=r)
        if hessian:
            np.sqrt(r, out=self.d)
            np.multiply(X, self.d, out=self.scratch)
            np.matmul(self.scratch, self.scratch.T, out=self.hess)
        np.subtract(wy, r, out=r)
        np.matmul(X, r, out=self.grad)

    def _step(self, X: FloatArray, wy: FloatArray, w: FloatArray, step: FloatArray,
              ll: float, tries: int = 30) -> tuple[float, float, float]:
        """Move along `step`, halved while the log-likelihood kernel would fall below `ll`:
        (step length t, largest change of a linear predictor, the new kernel). The linear
        predictor is linear in t, so a shorter trial needs no new product with X."""
        d, trial, mu = self.d, self.trial, self.mu_new
        np.matmul(step, X, out=d)
        big = max(float(d.max(initial=0.0)), -float(d.min(initial=0.0)))
        t, new_ll = 1.0, ll
        for attempt in range(tries + 1):  # t = 1, 1/2, ..., 2^-tries (taken as it is)
            np.multiply(d, t, out=trial)
            np.add(self.eta, trial, out=trial)
            _clip(trial)
            if t * big <= TAYLOR:
                _exp_step(self.mu, d, t, t * big, out=mu)
            else:
                np.exp(trial, out=mu)
            new_ll = float(wy @ trial - w @ mu)
            if new_ll >= ll - 1e-12 * abs(ll) or attempt == tries:
                break
            t /= 2
        self.eta, self.trial = trial, self.eta
        self.mu, self.mu_new = mu, self.mu
        return t, t * big, new_ll


def _first_inverse(shared: _Shared | None, keep: BoolArray
                   ) -> tuple[FloatArray, FloatArray] | None:
    """The shared Hessian's inverse and diagonal on this replicate's columns, or None where
    there is none or it is singular there (the replicate then forms its own)."""
    if shared is None:
        return None
    if np.array_equal(keep, shared.keep):  # finite: only a finite inverse is shared
        return shared.hinv, shared.hdiag
    hinv, hd = _inverse(shared.hess, keep)
    return (hinv, hd) if np.isfinite(hinv).all() else None


def _inverse(hess: FloatArray, keep: BoolArray) -> tuple[FloatArray, FloatArray]:
    """The inverse and diagonal of a Hessian whose dropped columns' rows and columns are
    replaced by the identity (so their steps are 0); NaN where it is singular."""
    H = hess
    if not keep.all():
        H = np.where(keep[:, None] & keep[None, :], hess, 0.0) + np.diag((~keep).astype(float))
    return spd_inverse_one(H), np.diag(H).copy()


def _newton_step(hinv: FloatArray, grad: FloatArray, keep: BoolArray) -> FloatArray:
    """H^-1 g on the kept columns, 0 on dropped ones and where it is not finite."""
    step: FloatArray = hinv @ np.where(keep, grad, 0.0)
    step = np.where(keep, step, 0.0)
    if not np.isfinite(step).all():
        step = np.where(np.isfinite(step), step, 0.0)
    return step


def _clip(eta: FloatArray) -> None:
    """Clip a linear predictor in place to ±700, so exp() stays finite while a bad step is
    being halved (two ufuncs: np.clip's Python wrapper cost as much as exp, measured)."""
    np.minimum(eta, 700.0, out=eta)
    np.maximum(eta, -700.0, out=eta)


def taylor_degree(bound: float) -> int:
    """The degree m at which exp's Taylor series is exact to ROUNDING for |d| <= bound:
    the rest, below bound^(m+1) / (m+1)! * e^bound, is under ROUNDING."""
    m = 1
    while bound ** (m + 1) / math.factorial(m + 1) * math.exp(bound) > ROUNDING:
        m += 1
    return m


def _exp_step(mu: FloatArray, d: FloatArray, t: float, bound: float, out: FloatArray
              ) -> None:
    """out = mu exp(t d) for |t d| <= bound, exp by its Taylor polynomial (Horner): the
    mean after a small step without calling exp, exact to rounding like exp itself."""
    m = taylor_degree(bound)
    np.multiply(d, t / m, out=out)
    out += 1.0
    for k in range(m - 1, 0, -1):
        out *= d
        out *= t / k
        out += 1.0
    out *= mu


def start_values(y: FloatArray, w: FloatArray, keep: BoolArray, start: FloatArray | None
           ) -> FloatArray:
    """Warm start where given, else intercept = log weighted mean outcome.

    A start row with no finite value (a failed fit's) gets the default; a NaN entry in a
    usable row (a term dropped where the start came from) starts at 0."""
    K, p = keep.shape
    wsum = w.sum(axis=1)
    ybar = (w * y).sum(axis=1) / np.where(wsum > 0, wsum, 1.0)
    beta = np.zeros((K, p))
    beta[:, 0] = np.where(keep[:, 0] & (ybar > 0), np.log(np.maximum(ybar, 1e-300)), 0.0)
    if start is not None:
        s = np.broadcast_to(np.asarray(start, np.float64), (K, p))
        usable = np.isfinite(s).any(axis=1, keepdims=True)
        beta = np.where(keep, np.where(usable, np.nan_to_num(s, nan=0.0, posinf=0.0,
                                                             neginf=0.0), beta), 0.0)
    return beta
