"""A synthetic twin data set with its provenance, and a release of K twins.

A *release* is what one training run produces: K twins, each the size of the local data,
plus a receipt (the privacy facts). A twin is numeric arrays in the schema's layout
(`Schema.check_arrays`): this module needs numpy only, so the bytes layer (`wire`) can carry
twins. As a data frame a twin is `data.twin_frame`'s; on disk a release is `releasedir`'s.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

from twinnode.errors import DataError

RECEIPT_FORMAT = "twinnode-receipt/1"
RELATIONS = ("add-remove", "substitute")


@dataclass(frozen=True)
class Provenance:
    """Where a twin comes from: who, under which schema, at what privacy cost."""

    sender: str
    schema_hash: str
    epsilon: float
    delta: float
    n: int
    k: int
    index: int
    relation: str
    release: str
    created: float
    generator: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (0 <= self.index < self.k):
            raise DataError(f"twin index {self.index} outside 0..{self.k - 1}")
        if self.relation not in RELATIONS:
            raise DataError(f"unknown neighbouring relation {self.relation!r}")
        if not (self.epsilon > 0 and 0 <= self.delta < 1 and self.n > 0):
            raise DataError(f"invalid privacy facts: epsilon={self.epsilon}, "
                            f"delta={self.delta}, n={self.n}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"generator": dict(self.generator)}


@dataclass(frozen=True)
class Twin:
    """One synthetic data set: numeric arrays in the schema's layout (`Schema.check_arrays`)."""

    provenance: Provenance
    arrays: Mapping[str, np.ndarray]

    @property
    def rows(self) -> int:
        return len(next(iter(self.arrays.values())))


@dataclass(frozen=True)
class Release:
    """K twins from one training run, and the receipt that describes them."""

    receipt: Mapping[str, Any]
    twins: tuple[Twin, ...]

    @property
    def sender(self) -> str:
        return str(self.receipt.get("sender", ""))
