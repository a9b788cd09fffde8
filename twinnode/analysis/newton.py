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
from twinnode.analysis.spd import gram, spd_inverse

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
    becomes the sandwich's bread."""
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
    for it in range(max_iter):
        active = np.flatnonzero(~converged & ~failed)
        if active.size == 0:
            break
        sel = slice(None) if active.size == K else active
        Xa, wya, wa, ka, ea = Xt[sel], wy[sel], w[sel], keep[sel], eta[sel]
        v = wa * mu_all[sel]  # the Hessian's row weights; the score's are wy - v
        grad = np.matmul(Xa, (wya - v)[:, :, None])[:, :, 0] * ka
        if it == 0:
            hinv, hd = inverse_hessian(Xa, v, ka, both[sel], active.size > 1)
            moved_before = np.zeros(active.size)
            moved_before[1:] = np.inf  # the first replicate's Hessian is not the others'
        else:
            hinv, hd = bread[sel], hdiag[sel]
            moved_before = since[sel]
            fresh = np.flatnonzero(~((prev[sel] > REUSE) & (moved_before <= CHORD)))
            if fresh.size:
                hinv[fresh], hd[fresh] = inverse_hessian(
                    Xa[fresh], v[fresh], ka[fresh], both[sel][fresh], False)
                moved_before[fresh] = 0.0
        step = np.where(ka, np.einsum("kij,kj->ki", hinv, grad), 0.0)
        d_eta = np.matmul(np.where(np.isfinite(step), step, 0.0)[:, None, :], Xa)[:, 0]
        t, new_eta, new_mu, new_ll = _halve_until_better(wya, wa, ea, d_eta, ll[sel])
        new_b = beta[sel] + t[:, None] * step
        iterations[sel] += 1
        moved = np.abs(t[:, None] * step).max(axis=1)
        beta[sel], eta[sel], mu_all[sel], ll[sel] = new_b, new_eta, new_mu, new_ll
        bread[sel], hdiag[sel] = hinv, hd
        prev[sel] = t * np.abs(d_eta).max(axis=1)
        since[sel] = moved_before + prev[sel]
        size = np.abs(new_b).max(axis=1)
        bad = ~np.isfinite(new_ll) | ~np.isfinite(new_b).all(axis=1) | (size > DIVERGED)
        failed[sel] = bad
        # a full Newton step this small leaves an error of order its square
        converged[sel] = ~bad & (t == 1.0) & (moved <= tol * (1.0 + size))
    return Newton(beta, mu_all, ll, converged, iterations, bread, hdiag, since)


def inverse_hessian(Xt: FloatArray, v: FloatArray, keep: BoolArray, both: BoolArray,
                     chord: bool) -> tuple[FloatArray, FloatArray]:
    """(K, p, p) inverses of H = X' diag(v) X and (K, p) H's diagonal, a dropped column's row
    and column replaced by the identity (so its step is 0). With `chord`, the first
    replicate's H stands in for every replicate's, except where it is singular on that
    replicate's columns."""
    eye = np.eye(Xt.shape[1]) * (~keep)[:, :, None]
    hess = gram(Xt[:1] if chord else Xt, v[:1] if chord else v) * both + eye
    hinv = spd_inverse(hess)
    if chord:
        own = np.flatnonzero(~np.isfinite(hinv).all(axis=(1, 2)))
        if own.size:
            hess[own] = gram(Xt[own], v[own]) * both[own] + eye[own]
            hinv[own] = spd_inverse(hess[own])
    return hinv, np.einsum("kpp->kp", hess)


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


def _halve_until_better(wy: FloatArray, w: FloatArray, eta: FloatArray, d_eta: FloatArray,
                        ll: FloatArray, tries: int = 30
                        ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Step length t per replicate: 1, halved where the log-likelihood would fall.

    The linear predictor is linear in t, so trying a shorter step needs no new product.
    Returns t, and the linear predictor, mean and log-likelihood after the step.
    """
    t = np.ones(len(eta))
    new_eta = np.clip(eta + d_eta, -700.0, 700.0)
    new_mu = np.exp(new_eta)
    new_ll = loglik_kernel(wy, new_eta, new_mu, w)
    for _ in range(tries):
        worse = ~(new_ll >= ll - 1e-12 * np.abs(ll))
        if not worse.any():
            break
        idx = np.flatnonzero(worse)
        t[idx] /= 2
        new_eta[idx] = np.clip(eta[idx] + t[idx, None] * d_eta[idx], -700.0, 700.0)
        new_mu[idx] = np.exp(new_eta[idx])
        new_ll[idx] = loglik_kernel(wy[idx], new_eta[idx], new_mu[idx], w[idx])
    return t, new_eta, new_mu, new_ll
