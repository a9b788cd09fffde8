"""Stacks of small symmetric matrices: weighted Gram products and positive-definite inverses.

The batched Poisson fitter (`glm`) spends its time here: X' diag(v) X for each of K designs
and the inverse of each p x p Hessian. numpy's `solve` and `inv` go through LAPACK's LU,
which numpy's OpenBLAS runs multi-threaded even for one 10 x 10 matrix (CPU time twice the
wall time with the other core busy, measured): on the 2-core development machine under
load, 30x slower than one thread (7 ms against 0.2 ms for K = 100). A Poisson Hessian is
positive definite once dropped columns are replaced by the identity, so the inverse comes
from a Cholesky factor instead: per matrix by LAPACK's potrf/potri up to LAPACK_P columns,
beyond that from numpy's batched Cholesky and a forward substitution vectorised over the
stack.
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import lapack

from twinnode.analysis.arrays import BoolArray, FloatArray, IntArray

LAPACK_P = 32
"""Up to this many columns `spd_inverse` inverts one matrix at a time by LAPACK's potrf and
potri (scipy): ~5 us for p = 10, where the stacked substitution's p steps of small numpy
calls cost ~250 us whether the stack holds 1 matrix or 3, and ~800 us for 99 (measured,
issue 16). OpenBLAS runs both calls single-threaded at these sizes (CPU time = wall time
with the other core busy, measured at p = 10 and 30; at p = 120 it threads), so scipy's
own OpenBLAS thread pool is never woken here."""


def gram(Xt: FloatArray, v: FloatArray, rows: IntArray | None = None) -> FloatArray:
    """(K, p, p) X' diag(v) X for X given as (K, p, n) and weights v >= 0 (K, n).

    With `rows` (m indices into Xt), the m products of Xt[rows[j]] and v[j]: the fitter
    asks for a subset of replicates without copying their designs out of the stack.
    One replicate at a time, as A A' with A = X diag(sqrt v) in one scratch array: numpy's
    matmul sees a matrix times its own transpose and calls BLAS syrk, which forms one
    triangle (10% faster than the general product, measured; every weight the fitter uses,
    w mu, r^2 and 0/1, is non-negative). A stacked (K, p, n) temporary instead was
    allocated and page-faulted afresh on every call: half of a whole fit's CPU time
    (measured, issue 16)."""
    idx = np.arange(len(Xt)) if rows is None else rows
    p, n = Xt.shape[1], Xt.shape[2]
    out: FloatArray = np.empty((len(idx), p, p))
    scratch, root = np.empty((p, n)), np.empty(n)
    for j, i in enumerate(idx):
        np.sqrt(v[j], out=root)
        np.multiply(Xt[i], root, out=scratch)
        np.matmul(scratch, scratch.T, out=out[j])
    return out


def grams(Xt: FloatArray, rows: IntArray, *weights: tuple[FloatArray, BoolArray]
          ) -> list[FloatArray]:
    """For each (v, wanted) pair, (m, p, p) X' diag(v[j]) X of Xt[rows[j]] where wanted[j]
    (zero elsewhere): several weightings of one replicate formed while its design is in
    cache (the sandwich's bread and meat)."""
    p, n = Xt.shape[1], Xt.shape[2]
    out = [np.zeros((len(rows), p, p)) for _ in weights]
    scratch, root = np.empty((p, n)), np.empty(n)
    for j, i in enumerate(rows):
        for (v, wanted), o in zip(weights, out):
            if wanted[j]:
                np.sqrt(v[j], out=root)
                np.multiply(Xt[i], root, out=scratch)
                np.matmul(scratch, scratch.T, out=o[j])
    return out


def cholesky(H: FloatArray) -> tuple[FloatArray, BoolArray]:
    """Lower Cholesky factors of a (K, p, p) stack and which exist (NaN where not PD)."""
    try:
        return np.linalg.cholesky(H), np.ones(len(H), bool)
    except np.linalg.LinAlgError:
        L = np.full_like(H, np.nan)
        ok = np.zeros(len(H), bool)
        for i in range(len(H)):
            try:
                L[i] = np.linalg.cholesky(H[i])
                ok[i] = True
            except np.linalg.LinAlgError:
                pass
        return L, ok


def spd_inverse(H: FloatArray) -> FloatArray:
    """(K, p, p) inverses of symmetric positive-definite matrices; NaN where one is not
    (numerically) positive definite. Per matrix by LAPACK up to LAPACK_P columns (see
    there), else stacked (`stacked_inverse`)."""
    H = np.asarray(H, np.float64)
    if H.shape[-1] > LAPACK_P:
        return stacked_inverse(H)
    out: FloatArray = np.empty_like(H)
    for k in range(len(H)):
        out[k] = spd_inverse_one(H[k])
    return out


def spd_inverse_one(H: FloatArray) -> FloatArray:
    """The inverse of one symmetric positive-definite p x p matrix, from its Cholesky factor
    (LAPACK potrf, potri); all NaN where H is not (numerically) positive definite."""
    low, info = lapack.dpotrf(H, lower=1, clean=1)
    if info == 0:
        low, info = lapack.dpotri(low, lower=1)  # the lower triangle of H^-1; zeros above
    if info != 0 or not np.isfinite(low).all():
        return np.full(H.shape, np.nan)
    inv: FloatArray = low + low.T
    inv.flat[::len(inv) + 1] *= 0.5
    return inv


def stacked_inverse(H: FloatArray) -> FloatArray:
    """`spd_inverse` for a whole stack at once, numpy only: H^-1 = L^-T L^-1 from H = L L'.

    For large p: scipy's LAPACK would wake a second OpenBLAS thread pool (scipy ships its
    own), and two pools spinning on 2 cores made a whole fit 10x slower (measured)."""
    L, _ = cholesky(np.asarray(H, np.float64))
    K, p, _ = L.shape
    Linv = np.zeros_like(L)
    for i in range(p):  # row i of L^-1 from L[i, :i+1] and the rows above it
        row = -np.einsum("kj,kjc->kc", L[:, i, :i], Linv[:, :i, :])
        row[:, i] += 1.0
        Linv[:, i, :] = row / L[:, i, i, None]
    inv: FloatArray = np.einsum("kji,kjl->kil", Linv, Linv)
    return inv
