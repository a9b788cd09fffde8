"""One accountant for a release that spends part of its budget on noisy marginals.

A release with marginal anchoring runs two mechanisms on the same rows: the Gaussian
mechanism on the one-way histograms of every column (marginals.py), and DPVI's T
Poisson-subsampled Gaussian steps. Both are composed in one privacy-loss-distribution (PLD)
accountant (Google's dp-accounting, add/remove relation), so the pair is (epsilon, delta)-DP
as one release; the ledger charges it once.

The split: in Gaussian-DP terms a mechanism's privacy cost is mu^2, and mu^2 of composed
mechanisms add. `share` is the marginals' part of the release's mu^2: with sigma_0 the noise
that DPVI alone would need, the marginals get noise multiplier z with 1/z^2 = share * mu_0^2
(mu_0 from the CLT for subsampled Gaussians, mu = q sqrt(T (exp(1/sigma^2) - 1))) and DPVI
sigma_0 / sqrt(1 - share); then one common factor is searched until the PLD of the pair
meets (epsilon, delta). The receipt states each part's stand-alone epsilon beside it.
"""
from __future__ import annotations

import math
from dataclasses import replace

from twinnode.errors import AccountingError, PrivacyError
from twinnode.generator.privacy import Calibration, calibrate

DISCRETISATION = 1e-4  # PLD grid; finer than the 1% the calibration is allowed to lose
ACCOUNTANT = ("dp-accounting PLD, add/remove relation: Gaussian marginals composed with "
              "Poisson-subsampled Gaussian DPVI steps")


def check_share(share: float) -> float:
    """A marginal share is in [0, 1): 0 turns anchoring off."""
    if not (isinstance(share, (int, float)) and math.isfinite(share) and 0 <= share < 1):
        raise PrivacyError(f"marginal share must be in [0, 1) (0: no marginals), got {share!r}")
    return float(share)


def composed_epsilon(sigma: float, z: float, q: float, steps: int, delta: float) -> float:
    """Epsilon at `delta` of DPVI (sigma, q, steps) composed with a Gaussian of multiplier z."""
    from dp_accounting import dp_event as ev

    events: list[ev.DpEvent] = [
        ev.SelfComposedDpEvent(ev.PoissonSampledDpEvent(q, ev.GaussianDpEvent(sigma)), steps)]
    if z > 0:
        events.append(ev.GaussianDpEvent(z))
    return _pld_epsilon(ev.ComposedDpEvent(events), delta)


def gaussian_epsilon(z: float, delta: float) -> float:
    """Epsilon at `delta` of one Gaussian mechanism with noise multiplier z."""
    from dp_accounting import dp_event as ev

    return _pld_epsilon(ev.GaussianDpEvent(z), delta)


def _pld_epsilon(event: object, delta: float) -> float:
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant as pld

    acc = pld.PLDAccountant(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
                            value_discretization_interval=DISCRETISATION)
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def calibrate_split(epsilon: float, delta: float, n: int, q: float, steps: int,
                    batching: str, share: float) -> Calibration:
    """Noise for DPVI and for the marginals so that the pair is (epsilon, delta)-DP.

    With `share` 0 this is `calibrate` unchanged (d3p's Fourier accountant, no marginals).
    """
    share = check_share(share)
    base = calibrate(epsilon, delta, n, q, steps, batching)
    if share == 0:
        return base
    if batching != "poisson":
        raise PrivacyError("marginal anchoring needs Poisson batching (the add/remove "
                           "relation both mechanisms are accounted in); set marginal share 0 "
                           "for fixed batches")
    mu0 = q * math.sqrt(steps * math.expm1(1.0 / base.sigma ** 2))
    sigma0, z0 = base.sigma / math.sqrt(1.0 - share), 1.0 / (math.sqrt(share) * mu0)
    d_acc = base.delta_accountant

    def eps_at(c: float) -> float:
        return composed_epsilon(c * sigma0, c * z0, q, steps, d_acc)

    lo, hi = 0.97, 1.03  # the CLT's split is close: bracket it, widen if needed
    while eps_at(hi) > epsilon:
        lo, hi = hi, hi * 1.2
        if hi > 100:
            raise AccountingError(f"no noise levels meet epsilon={epsilon} with marginal "
                                  f"share {share}")
    while eps_at(lo) <= epsilon and lo > 1e-3:
        hi, lo = lo, lo / 1.2
    while hi - lo > 1e-3 * hi:  # the smallest common factor that still meets the target
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if eps_at(mid) <= epsilon else (mid, hi)
    sigma, z = hi * sigma0, hi * z0
    return replace(base, sigma=sigma, epsilon_accountant=eps_at(hi), marginal_share=share,
                   marginal_multiplier=z, accountant=ACCOUNTANT,
                   epsilon_dpvi_alone=composed_epsilon(sigma, 0.0, q, steps, d_acc),
                   epsilon_marginals_alone=gaussian_epsilon(z, d_acc))

