"""Element-type conversions with ADCore's semantics, shared by every plugin that changes type.

ADCore converts with C casts: float to integer truncates toward zero and integers wrap modulo
2**bits. numpy's astype wraps integers the same way, but a float outside the integer range is
undefined there, so floats go through int64 first. `DataTypeOut` (ROI, Process) adds
"Automatic" to ADCore's ten types: keep the input's type.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .adcore import DATA_TYPES, NUMPY_DTYPES

#: the DataTypeOut enum of NDROI/NDProcess: the ten types, then Automatic (raw value -1)
DATA_TYPES_OUT = DATA_TYPES + ("Automatic",)
AUTOMATIC = len(DATA_TYPES)


def c_cast(values: np.ndarray, dtype: np.dtype | str) -> np.ndarray:
    """`values` converted to `dtype` as a C cast would (truncate, then wrap)."""
    dtype = np.dtype(dtype)
    if values.dtype == dtype:
        return values
    if dtype.kind in "iu" and values.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            return np.trunc(values).astype(np.int64).astype(dtype)
    return values.astype(dtype)


def c_cast_scalar(value: float, dtype: np.dtype | str) -> Any:
    """One number converted to `dtype` as a C cast would (a numpy scalar)."""
    return c_cast(np.asarray([value], dtype=np.float64), dtype)[0]


def output_dtype(data_type_out: int, input_dtype: np.dtype) -> np.dtype:
    """The element type a DataTypeOut choice gives for an input of `input_dtype`."""
    if data_type_out >= AUTOMATIC:
        return np.dtype(input_dtype)
    return NUMPY_DTYPES[data_type_out]
