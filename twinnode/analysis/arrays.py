"""Names for the numpy arrays the analysis passes around, so signatures say the dtype.

Shapes are in the docstrings and comments ((K, p, n) and so on): numpy's typing does not
check them.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.signedinteger[Any]]
Columns = Mapping[str, NDArray[Any]]
"""A data set as numeric arrays in the schema's layout (`Schema.check_arrays`, `Twin.arrays`)."""
