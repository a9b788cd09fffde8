"""Generator settings and training plans: plain data, importable without JAX."""
from __future__ import annotations

import math
from dataclasses import dataclass

from twinnode.errors import GeneratorError, PrivacyError

BATCHINGS = {"poisson": "add-remove", "fixed": "substitute"}
OUTCOME_LIKELIHOODS = ("poisson", "negbinomial")
VARIANTS = ("aligned", "dpsvi")
HEAD_ORIGINS = ("lower", "midpoint")
DEFAULT_MARGINAL_SHARE = 0.1  # docs/GENERATOR.md, "Faithful twins": the fidelity study


@dataclass(frozen=True)
class GeneratorSettings:
    """Model and optimiser settings (privacy lives in the calibration)."""

    components: int = 16
    outcome: str = "poisson"
    clip: float = 32.0          # study on public data: docs/GENERATOR.md, "Defaults"
    learning_rate: float = 1e-2
    head_learning_rate: float | None = None  # Adam's step on the outcome head (None: the same)
    init_scale: float = 0.1
    chunk: int = 500
    variant: str = "aligned"  # aligned: DPVIm (privatise locations only); dpsvi: d3p's DPSVI
    head_share: float = 0.0   # aligned: share of C^2 the outcome head is clipped to (0: joint)
    head_origin: str = "lower"  # where the head's features are 0: lower bound or midpoint
    head_weight: float = 1.0  # aligned: the head's gradient weight before clipping (dpsvi.py)
    average: float = 0.5      # share of the last steps whose iterates are averaged (0: last)
    noise_aware: bool = True  # twins' draws include the averaged locations' DP noise
    center_head: bool = False  # anchored: the head's features centred at the noisy marginal means
    head_center: tuple[float, ...] = ()  # those means, one per feature (set when trained)
    head_newton: bool = False  # averaged: one Newton step on the head from the window's gradient

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise GeneratorError(f"variant must be one of {', '.join(VARIANTS)}, "
                                 f"got {self.variant!r}")
        if self.components < 1:
            raise GeneratorError(f"components must be >= 1, got {self.components}")
        if self.outcome not in OUTCOME_LIKELIHOODS:
            raise GeneratorError(f"outcome likelihood must be one of "
                                 f"{', '.join(OUTCOME_LIKELIHOODS)}, got {self.outcome!r}")
        for name in ("clip", "learning_rate", "init_scale", "head_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise GeneratorError(f"{name} must be a positive number, got {value}")
        if self.head_learning_rate is not None and not (
                math.isfinite(self.head_learning_rate) and self.head_learning_rate > 0):
            raise GeneratorError(f"head_learning_rate must be a positive number, "
                                 f"got {self.head_learning_rate}")
        if self.head_origin not in HEAD_ORIGINS:
            raise GeneratorError(f"head_origin must be one of {', '.join(HEAD_ORIGINS)}, "
                                 f"got {self.head_origin!r}")
        if not 0 <= self.head_share < 1:
            raise GeneratorError(f"head_share must be in [0, 1), got {self.head_share}")
        if not 0 <= self.average < 1:
            raise GeneratorError(f"average must be in [0, 1) (0: the last iterate), "
                                 f"got {self.average}")
        center = tuple(float(c) for c in self.head_center)
        if not all(math.isfinite(c) for c in center):
            raise GeneratorError(f"head_center must be finite numbers, got {center}")
        object.__setattr__(self, "head_center", center)  # a JSON list back to a tuple
        if self.chunk < 1:
            raise GeneratorError(f"chunk must be >= 1, got {self.chunk}")


@dataclass(frozen=True)
class TrainPlan:
    """The privacy target and schedule of one training run."""

    epsilon: float = 1.0
    delta: float | None = None  # None: 1/N, the paper's choice
    epochs: float = 400.0       # study on public data: docs/GENERATOR.md, "Defaults"
    q: float = 0.1
    batching: str = "poisson"
    marginal_share: float | None = None  # privacy share spent on noisy marginals (None: default)

    def __post_init__(self) -> None:
        if self.batching not in BATCHINGS:
            raise PrivacyError(f"batching must be one of {', '.join(BATCHINGS)}")
        if not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise PrivacyError(f"epochs must be positive, got {self.epochs}")
        if not (0 < self.q <= 1):
            raise PrivacyError(f"q must be in (0, 1], got {self.q}")
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise PrivacyError(f"epsilon must be a positive finite number, got {self.epsilon}")
        share = self.marginal_share
        if share is not None and not (math.isfinite(share) and 0 <= share < 1):
            raise PrivacyError(f"marginal share must be in [0, 1) (0: no marginals), "
                               f"got {share}")
        if share and self.batching != "poisson":
            raise PrivacyError("marginal anchoring needs Poisson batching; set the marginal "
                               "share to 0 for fixed batches")
        if self.delta is not None and not 0 < self.delta < 1:
            raise PrivacyError(f"delta must be in (0, 1), got {self.delta}")

    def steps(self) -> int:
        return max(1, int(round(self.epochs / self.q)))

    def share(self) -> float:
        """The marginals' share: as given, else DEFAULT_MARGINAL_SHARE under Poisson batching
        (the add/remove relation both mechanisms are accounted in) and 0 with fixed batches."""
        if self.marginal_share is not None:
            return self.marginal_share
        return DEFAULT_MARGINAL_SHARE if self.batching == "poisson" else 0.0
