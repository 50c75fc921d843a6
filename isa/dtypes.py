"""Element types the accelerator knows, with their encodings and numpy equivalents.

bf16 values are stored as their 16 bits (the upper half of an fp32) and computed with
through ml_dtypes.bfloat16, which rounds to nearest even as the hardware does.
"""

from __future__ import annotations

import enum

import ml_dtypes
import numpy as np


class DType(enum.IntEnum):
    """Element type; the value is its 3-bit encoding in instruction fields."""

    F32 = 0
    BF16 = 1
    I8 = 2
    U8 = 3
    I32 = 4
    I64 = 5  # storage only: model I/O, DMA and vcvt
    BOOL = 6  # storage only: one byte, 0 or 1
    F16 = 7  # storage only: IEEE half precision, converted by vcvt (computed in fp32)

    @property
    def size(self) -> int:
        return _SIZES[self]

    @property
    def numpy(self) -> np.dtype:
        return _NUMPY[self]

    @property
    def is_float(self) -> bool:
        return self in (DType.F32, DType.BF16, DType.F16)

    @property
    def asm_name(self) -> str:
        return self.name.lower()

    @classmethod
    def from_name(cls, name: str) -> DType:
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown dtype {name!r} (known: {', '.join(d.asm_name for d in cls)})") from None

    @classmethod
    def from_numpy(cls, dtype: np.dtype) -> DType:
        for member, np_dtype in _NUMPY.items():
            if np.dtype(dtype) == np_dtype:
                return member
        raise ValueError(f"no accelerator dtype for numpy {np.dtype(dtype)}")


_SIZES = {DType.F32: 4, DType.BF16: 2, DType.I8: 1, DType.U8: 1, DType.I32: 4, DType.I64: 8, DType.BOOL: 1,
          DType.F16: 2}
_NUMPY = {
    DType.F32: np.dtype(np.float32),
    DType.BF16: np.dtype(ml_dtypes.bfloat16),
    DType.I8: np.dtype(np.int8),
    DType.U8: np.dtype(np.uint8),
    DType.I32: np.dtype(np.int32),
    DType.I64: np.dtype(np.int64),
    DType.BOOL: np.dtype(np.bool_),
    DType.F16: np.dtype(np.float16),
}

INT_RANGES = {DType.I8: (-128, 127), DType.U8: (0, 255), DType.I32: (-(2**31), 2**31 - 1),
              DType.I64: (-(2**63), 2**63 - 1), DType.BOOL: (0, 1)}
STORAGE_ONLY = (DType.I64, DType.BOOL, DType.F16)  # no arithmetic; moved by DMA and converted by vcvt
