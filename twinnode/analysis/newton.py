"""The Newton iterations of the batched Poisson fitter (`glm`): K fits at once on (K, p, n).

Newton steps are IRLS steps for the canonical log link; a step that would lower the
log-likelihood is halved. Where the Hessian comes from is what makes the batch fast
(measured on randhie, K = 100: most of the time is Gram products X' diag(v) X):
- the first step of a batch uses its first replicate's Hessian for every replicate (the
  replicates are alike, so this is almost a Newton step, for 1/K of the products);
- a replicate whose linear predictor has moved by less than CHORD since its Hessian was
  formed reuses it (a chord step, cutting the error by a factor of about that move);
- the Hessian of the last step is the sandwich's bread when that step moved no linear
  predictor by more than REUSE; otherwise `glm` forms it again at the estimate.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from twinnode.analysis.arrays import BoolArray, FloatArray, IntArray
from twinnode.analysis.spd import gram, spd_inverse, tdot, xdot

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


def run_newton(Xt: FloatArray, y: FloatArray, w: FloatArray, keep: BoolArray,
               beta: FloatArray, tol: float, max_iter: int) -> Newton:
    """Newton steps with step halving until a full step is below `tol` (relative).

    Where the Hessian is formed: the first step of a batch uses its first replicate's for
    all (replicates are alike, so it is almost a Newton step for 1/K of the cost); later, a
    replicate whose linear predictor has moved by less than CHORD since its last Hessian
    reuses that one (a chord step: each cuts the error by a factor of about that move, for
    no Gram product) until the step is below REUSE, where a fresh Hessian at the estimate
    becomes the sandwich's bread. The products with a replicate's design (score, Hessian,
    the step's change of the linear predictor and the trial points) run one replicate at
    a time (`_ScoreStep`), so its design and vectors stay in cache; only the p x p algebra
    is batched."""
    K, p, n = Xt.shape
    both = keep[:, :, None] & keep[:, None, :]
    eta = linear_predictor(Xt, beta)
    mu_all = np.exp(eta)
    wy = w * y
    ll = loglik_kernel(wy, eta, mu_all, w)
    converged, failed = np.zeros(K, bool), ~np.isfinite(ll)
    iterations, since = np.zeros(K, int), np.full(K, np.inf)
    prev = np.full(K, np.inf)
    bread, hdiag = np.full((K, p, p), np.nan), np.full((K, p), np.nan)
    kernel = _ScoreStep(Xt, wy, w, eta, mu_all, ll)
    for it in range(max_iter):
        active = np.flatnonzero(~converged & ~failed)
        if active.size == 0:
            break
        if it == 0:  # the first replicate's Hessian for all (see inverse_hessian)
            fresh, moved_before = active[:1], np.full(active.size, np.inf)
            moved_before[0] = 0.0
            grad, hess = kernel.score(active, fresh)
        else:  # the score and due Hessians were formed at the end of the last step
            moved_before = since[active]
            due = kernel.due[active]
            fresh, grad, hess = active[due], kernel.grad[active], kernel.hess[active[due]]
            moved_before[due] = 0.0
        grad *= keep[active]
        if fresh.size:
            chord = it == 0 and active.size > 1
            hinv, hd = inverse_hessian(Xt, kernel, fresh, hess, keep[fresh], both[fresh],
                                       active if chord else None, keep[active], both[active])
            bread[active if chord else fresh], hdiag[active if chord else fresh] = hinv, hd
        ka = keep[active]
        step = np.where(ka, np.einsum("kij,kj->ki", bread[active], grad), 0.0)
        step = np.where(np.isfinite(step), step, 0.0)
        t, prev[active], done = kernel.advance(active, step, beta[active], moved_before, tol)
        new_b = beta[active] + t[:, None] * step
        beta[active] = new_b
        iterations[active] += 1
        since[active] = moved_before + prev[active]
        bad = (~np.isfinite(ll[active]) | ~np.isfinite(new_b).all(axis=1)
               | (np.abs(new_b).max(axis=1) > DIVERGED))
        failed[active] = bad
        converged[active] = ~bad & done
    return Newton(beta, mu_all, ll, converged, iterations, bread, hdiag, since)


class _ScoreStep:
    """The per-replicate products of the Newton iterations, in place on the fit's state
    (eta, mu, ll: (K, n), (K, n), (K,)), one replicate at a time with scratch vectors.

    `advance` takes a step and, while the replicate's design is still in cache, forms the
    score at the new point and, where the next step is due one (`due`), the Hessian: one
    pass over each design per iteration instead of three (measured, issue 16)."""

    def __init__(self, Xt: FloatArray, wy: FloatArray, w: FloatArray, eta: FloatArray,
                 mu: FloatArray, ll: FloatArray) -> None:
        self.Xt, self.wy, self.w, self.eta, self.mu, self.ll = Xt, wy, w, eta, mu, ll
        K, p, n = Xt.shape
        self.r, self.d, self.trial = np.empty(n), np.empty(n), np.empty(n)
        self.scratch = np.empty((p, n))
        self.grad, self.hess = np.zeros((K, p)), np.zeros((K, p, p))
        self.due = np.zeros(K, bool)

    def score(self, rows: IntArray, fresh: IntArray) -> tuple[FloatArray, FloatArray]:
        """(m, p) scores X'(wy - w mu) of `rows`; (f, p, p) Hessians X' diag(w mu) X of
        `fresh` (a subset of rows), formed from the same weights while X is in cache."""
        due = set(fresh.tolist())
        for i in rows.tolist():
            self._products(i, i in due)
        return self.grad[rows], self.hess[fresh]

    def hessian(self, rows: IntArray) -> FloatArray:
        """(m, p, p) Hessians at the current point of `rows`."""
        return self.score(rows, rows)[1]

    def _products(self, i: int, hessian: bool) -> None:
        """Replicate i's score (and Hessian) at its current mean, into grad[i] (hess[i])."""
        r, X = self.r, self.Xt[i]
        np.multiply(self.w[i], self.mu[i], out=r)  # v, the Hessian's weights
        if hessian:
            np.sqrt(r, out=self.d)
            np.multiply(X, self.d, out=self.scratch)
            np.matmul(self.scratch, self.scratch.T, out=self.hess[i])
        np.subtract(self.wy[i], r, out=r)
        np.matmul(X, r, out=self.grad[i])

    def advance(self, rows: IntArray, step: FloatArray, beta: FloatArray,
                moved_before: FloatArray, tol: float
                ) -> tuple[FloatArray, FloatArray, BoolArray]:
        """Move each replicate of `rows` by its `step` (m, p) from `beta` (m, p), halved
        while the log-likelihood would fall; (m,) the step lengths t, the largest change
        of a linear predictor, and whether the replicate converged: a full step below
        `tol` (relative), which leaves an error of order its square. The linear predictor
        is linear in t, so a shorter trial needs no new product with X. A replicate that
        goes on gets its next score, and its Hessian where one is due: it has moved by
        more than CHORD since its last (`moved_before` + this move) or this move was
        below REUSE (the next Hessian is then the sandwich's bread)."""
        t, moved = np.ones(len(rows)), np.empty(len(rows))
        # converged if the full step is taken (t = 1) and it is this small
        small = (np.abs(step).max(axis=1, initial=0.0)
                 <= tol * (1.0 + np.abs(beta + step).max(axis=1, initial=0.0))).tolist()
        done = np.zeros(len(rows), bool)
        for j, i in enumerate(rows.tolist()):
            t[j], moved[j] = self._step(i, step[j])
            done[j] = t[j] == 1.0 and small[j]
            if not done[j]:
                self.due[i] = not (moved[j] > REUSE and moved_before[j] + moved[j] <= CHORD)
                self._products(i, bool(self.due[i]))
        return t, moved, done

    def _step(self, i: int, step: FloatArray, tries: int = 30) -> tuple[float, float]:
        """Replicate i moved along `step`: (step length, largest change of eta)."""
        d, trial, t = self.d, self.trial, 1.0
        np.matmul(step, self.Xt[i], out=d)
        eta, mu, ll = self.eta[i], self.mu[i], self.ll[i]
        for attempt in range(tries + 1):  # t = 1, 1/2, ..., 2^-tries (taken as it is)
            if attempt:
                np.multiply(d, t, out=trial)
                np.add(eta, trial, out=trial)
            else:
                np.add(eta, d, out=trial)
            np.clip(trial, -700.0, 700.0, out=trial)
            np.exp(trial, out=mu)  # the old mean is not needed again
            new_ll = float(self.wy[i] @ trial - self.w[i] @ mu)
            if new_ll >= ll - 1e-12 * abs(ll) or attempt == tries:
                break
            t /= 2
        moved = t * max(float(d.max(initial=0.0)), -float(d.min(initial=0.0)))
        eta[:], self.ll[i] = trial, new_ll
        return t, moved


def inverse_hessian(Xt: FloatArray, kernel: _ScoreStep, rows: IntArray, hess: FloatArray,
                    keep: BoolArray, both: BoolArray, chord: IntArray | None,
                    keep_all: BoolArray, both_all: BoolArray
                    ) -> tuple[FloatArray, FloatArray]:
    """Inverses and diagonals ((m, p, p), (m, p)) of the Hessians `hess` of `rows`, a
    dropped column's row and column replaced by the identity (so its step is 0). With
    `chord` (the active replicates; `rows` is then its first), that first replicate's H
    stands in for every one's, except where it is singular on that replicate's columns
    (keep_all and both_all are the active replicates'); those get their own."""
    p = Xt.shape[1]
    if chord is not None:
        hess = np.broadcast_to(hess[:1], (len(chord), p, p))
        keep, both = keep_all, both_all
    H = hess * both + np.eye(p) * (~keep)[:, :, None]
    hinv = spd_inverse(H)
    if chord is not None:
        own = np.flatnonzero(~np.isfinite(hinv).all(axis=(1, 2)))
        if own.size:
            H[own] = kernel.hessian(chord[own]) * both[own] + np.eye(p) * (~keep[own])[:, :, None]
            hinv[own] = spd_inverse(H[own])
    return hinv, np.einsum("kpp->kp", H)


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


def loglik_kernel(wy: FloatArray, eta: FloatArray, mu: FloatArray, w: FloatArray
                   ) -> FloatArray:
    """Weighted log-likelihood without the constant log y! terms (mu = exp(eta), wy = w y)."""
    ll: FloatArray = np.einsum("kn,kn->k", wy, eta) - np.einsum("kn,kn->k", w, mu)
    return ll


def linear_predictor(Xt: FloatArray, beta: FloatArray) -> FloatArray:
    """Linear predictor, clipped so exp() stays finite while a bad step is being halved."""
    eta: FloatArray = np.matmul(beta[:, None, :], Xt)[:, 0]
    return np.clip(eta, -700.0, 700.0)
