"""The functional model of the accelerator: its memories and what each instruction does.

`Machine` holds DRAM, the local memory (scratchpad then accumulator) and the weights
loaded into the array. `EXEC` maps each mnemonic to an `exec_*` function whose docstring
repeats the semantics line of the ISA table; each one checks its operands (bounds,
alignment, memory region) before touching anything and returns the memory it read and
wrote, for the hazard check. Timing is not modelled here (see runtime/simulator.py).
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass

import numpy as np

from isa.config import AcceleratorConfig
from isa.dtypes import INT_RANGES, STORAGE_ONLY, DType
from isa.encoding import Instruction

DRAM, LOCAL = "dram", "local"


class OperandError(Exception):
    """An operand that is out of range, misaligned or in the wrong memory; the simulator
    turns it into a SimulationError naming the instruction."""


class Access:
    """The elements one operand touches: `shape` elements of `size` bytes at `address`, `strides`
    (in elements) apart, in `memory`."""

    __slots__ = ("memory", "address", "shape", "strides", "size", "write")

    def __init__(self, memory: str, address: int, shape: tuple[int, ...], strides: tuple[int, ...], size: int,
                 write: bool = False):
        self.memory, self.address, self.shape, self.strides, self.size, self.write = \
            memory, address, shape, strides, size, write

    @property
    def offsets(self) -> np.ndarray:
        """Byte offset of the first byte of every element (computed only when asked: hazard checks)."""
        return self.address + _element_offsets(self.shape, self.strides) * self.size


@dataclass(slots=True)
class Effects:
    accesses: list[Access]
    macs: int = 0
    macs_dtype: DType | None = None
    dram_read: int = 0
    dram_written: int = 0


class Machine:
    """One accelerator: DRAM, local memory and the array's weights.

    `runtime.simulator.run` makes a fresh one per run; passed one with `machine=`, it runs
    on that device, whose DRAM persists from run to run (a KV cache stays there)."""

    def __init__(self, config: AcceleratorConfig, dram_bytes: int):
        self.config = config
        self.dram = _zeroed_bytes(_dram_size(dram_bytes))
        self.local = np.zeros(config.local_bytes, dtype=np.uint8)
        self._spad_bytes, self._acc_base, self._local_bytes = config.spad_bytes, config.acc_base, config.local_bytes
        self.weights: np.ndarray | None = None  # float64 K x N: the array's active weights
        self.weights_dtype: DType | None = None
        self.loaded = None  # the Program whose constants DRAM holds (runtime/simulator.py loads it)

    def reserve_dram(self, dram_bytes: int) -> None:
        """Grow DRAM to hold at least `dram_bytes`, keeping what it holds (new bytes are zero)."""
        size = _dram_size(dram_bytes)
        if size > self.dram.size:
            grown = _zeroed_bytes(size)
            grown[:self.dram.size] = self.dram
            self.dram = grown

    def clear_chip(self) -> None:
        """Local memory zero and no weights in the array, as every run starts; DRAM is untouched."""
        self.local.fill(0)
        self.weights = self.weights_dtype = None

    def memory(self, name: str) -> np.ndarray:
        return self.dram if name == DRAM else self.local

    # Operand views ------------------------------------------------------------------------
    def region(self, address: int) -> tuple[int, int, str]:
        """(start, end, name) of the local region holding `address`."""
        if address < self.config.spad_bytes:
            return 0, self.config.spad_bytes, "scratchpad"
        return self.config.acc_base, self.config.local_bytes, "accumulator"

    def tile(self, memory: str, address: int, dtype_or_size, shape: tuple[int, ...],
             strides: tuple[int, ...], what: str, need: str | None = None,
             write: bool = False) -> tuple[np.ndarray, Access]:
        """A strided view of `shape` elements at `address` (strides in elements), checked; the
        Access says the operand is written when `write`."""
        # The hot path of the simulator: the common 1-, 2- and 3-dimensional shapes are
        # spelled out rather than looped over.
        dtype = _NUMPY[dtype_or_size] if dtype_or_size.__class__ is DType else _UINT[dtype_or_size]
        size = dtype.itemsize
        rank = len(shape)
        if rank == 3:
            n2, n1, n0 = shape
            s2, s1, s0 = strides
            if n2 < 1 or n1 < 1 or n0 < 1:
                raise OperandError(f"{what}: a dimension of {shape} is zero")
            span = (n2 - 1) * s2 + (n1 - 1) * s1 + (n0 - 1) * s0
            byte_strides = (s2 * size, s1 * size, s0 * size)
        elif rank == 2:
            n1, n0 = shape
            s1, s0 = strides
            if n1 < 1 or n0 < 1:
                raise OperandError(f"{what}: a dimension of {shape} is zero")
            span = (n1 - 1) * s1 + (n0 - 1) * s0
            byte_strides = (s1 * size, s0 * size)
        else:
            if min(shape) < 1:
                raise OperandError(f"{what}: a dimension of {shape} is zero")
            span = sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
            byte_strides = tuple(s * size for s in strides)
        if address % size:
            raise OperandError(f"{what}: address {address:#x} is not aligned to {size} bytes")
        last = address + span * size + size
        if memory == DRAM:
            buffer = self.dram
            start, end, region = 0, buffer.size, "DRAM"
        else:
            buffer = self.local
            if address < self._spad_bytes:
                start, end, region = 0, self._spad_bytes, "scratchpad"
            else:
                start, end, region = self._acc_base, self._local_bytes, "accumulator"
            if need is not None and region != need:
                raise OperandError(f"{what}: address {address:#x} is in the {region}, must be in the {need}")
        if address < start or last > end:
            raise OperandError(f"{what}: bytes {address:#x}..{last:#x} run past the end of the {region} "
                               f"({end:#x})")
        # A view straight onto the memory's buffer: the checks above keep it inside.
        tile = np.ndarray(shape, dtype, buffer, address, byte_strides)  # positional: twice as fast
        return tile, Access(memory, address, shape, strides, size, write)


_MAP_FROM, _POPULATE_UP_TO = 8 << 20, 512 << 20


def _dram_size(dram_bytes: int) -> int:
    """Rounded up to whole words so that every typed view covers all of it."""
    return max(4, -(-dram_bytes // 4) * 4)


def _zeroed_bytes(size: int) -> np.ndarray:
    """size zero bytes. A large memory is mapped with its pages populated up front (or, beyond
    _POPULATE_UP_TO, where a program may use little of what it declares, with transparent huge
    pages) where the OS offers it: faulting a model's weights and activations in 4 KiB page by
    page costs several times copying them (ResNet-50's 211 MB: 0.58 s)."""
    if size >= _MAP_FROM:
        populate = getattr(mmap, "MAP_POPULATE", 0) if size <= _POPULATE_UP_TO else 0
        try:
            mapped = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
            if not populate and hasattr(mmap, "MADV_HUGEPAGE"):
                mapped.madvise(mmap.MADV_HUGEPAGE)
        except (OSError, ValueError, AttributeError):
            pass
        else:
            return np.frombuffer(mapped, dtype=np.uint8)
    return np.zeros(size, dtype=np.uint8)


_UINT = {1: np.dtype(np.uint8), 2: np.dtype(np.uint16), 4: np.dtype(np.uint32)}
_NUMPY = {dtype: dtype.numpy for dtype in DType}


def _element_offsets(shape, strides) -> np.ndarray:
    index = np.zeros(1, dtype=np.int64)
    for n, s in zip(shape, strides, strict=True):
        index = (index[:, None] + np.arange(n, dtype=np.int64) * s).reshape(-1)
    return index


def _check_no_self_overlap(access: Access, what: str, region_bytes: int) -> None:
    """A destination must not write one element twice (the result would depend on order)."""
    if _nested_without_overlap(access.shape, access.strides):
        return
    count = math.prod(access.shape)
    if count * access.size > region_bytes or any(n > 1 and s == 0 for n, s in zip(access.shape, access.strides,
                                                                                  strict=True)):
        raise OperandError(f"{what}: the destination writes some elements more than once")
    offsets = access.offsets
    if offsets.size > 1 and np.unique(offsets).size != offsets.size:
        raise OperandError(f"{what}: the destination writes some elements more than once")
    if access.size > 1 and offsets.size > 1:
        ordered = np.sort(offsets)
        if np.any(np.diff(ordered) < access.size):
            raise OperandError(f"{what}: destination elements overlap")


def _nested_without_overlap(shape, strides) -> bool:
    """True when each dimension steps past the whole extent of the dimensions inside it (the
    common dense case); False means "check element by element"."""
    if len(shape) == 3:  # the loop below, unrolled for the DMA's three dimensions
        n2, n1, n0 = shape
        s2, s1, s0 = strides
        extent = 1
        if n0 != 1:
            if s0 < 1:
                return False
            extent = s0 * (n0 - 1) + 1
        if n1 != 1:
            if s1 < extent:
                return False
            extent = s1 * (n1 - 1) + extent
        return n2 == 1 or s2 >= extent
    if len(shape) == 2:  # and for the vector unit's two
        n1, n0 = shape
        s1, s0 = strides
        extent = 1
        if n0 != 1:
            if s0 < 1:
                return False
            extent = s0 * (n0 - 1) + 1
        return n1 == 1 or s1 >= extent
    extent = 1  # elements spanned by the inner dimensions
    for n, stride in zip(reversed(shape), reversed(strides), strict=True):
        if n == 1:
            continue
        if stride < extent:
            return False
        extent = stride * (n - 1) + extent
    return True


def _written(access: Access) -> Access:
    return Access(access.memory, access.address, access.shape, access.strides, access.size, True)


# Numerics -------------------------------------------------------------------------------------
def to_float64(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float64)


def store_float(values: np.ndarray, dtype: DType) -> np.ndarray:
    """Round float64 results once to fp32, then (for bf16) to bf16, nearest even."""
    result = values.astype(np.float32)
    return result.astype(dtype.numpy) if dtype is DType.BF16 else result


def wrap_int(values: np.ndarray, dtype: DType) -> np.ndarray:
    """Two's complement wrap of exact integer results to `dtype`."""
    return values.astype(np.int64).astype(dtype.numpy)


def saturate_to_int(values: np.ndarray, dtype: DType) -> np.ndarray:
    """Round half to even and saturate to `dtype`; NaN becomes 0."""
    low, high = INT_RANGES[dtype]
    rounded = np.rint(np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=high, neginf=low))
    return np.clip(rounded, low, high).astype(dtype.numpy)


_erf = np.frompyfunc(math.erf, 1, 1)

FLOAT_UNARY = {
    "mov": lambda a: a, "neg": np.negative, "abs": np.abs, "not": lambda a: (a == 0).astype(np.float64),
    "floor": np.floor, "ceil": np.ceil, "round": np.rint, "exp": np.exp, "log": np.log, "tanh": np.tanh,
    "erf": lambda a: _erf(a).astype(np.float64), "sigmoid": lambda a: 0.5 * (1.0 + np.tanh(0.5 * a)),
    "sqrt": np.sqrt, "rsqrt": lambda a: 1.0 / np.sqrt(a), "recip": lambda a: 1.0 / a,
}
INT_UNARY = {"mov": lambda a: a, "neg": np.negative, "abs": np.abs, "not": lambda a: (a == 0).astype(np.int64),
             "floor": lambda a: a, "ceil": lambda a: a, "round": lambda a: a}


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    safe = np.where(b == 0, 1, b)
    quotient = np.abs(a) // np.abs(safe) * np.sign(a) * np.sign(safe)
    return np.where(b == 0, 0, quotient)


BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "max": np.maximum, "min": np.minimum,
    "eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater,
    "ge": np.greater_equal, "and": lambda a, b: (a != 0) & (b != 0), "or": lambda a, b: (a != 0) | (b != 0),
}
FLOAT_ONLY = {"pow", "exp", "log", "tanh", "erf", "sigmoid", "sqrt", "rsqrt", "recip"}


def refuse_storage_only(dtype: DType, what: str) -> None:
    if dtype in STORAGE_ONLY:
        raise OperandError(f"{what} does not compute on {dtype.asm_name} (storage only: use vcvt)")


def elementwise(name: str, dtype: DType, *operands: np.ndarray) -> np.ndarray:
    """The element operation `name` of the ISA table on already-read operands."""
    refuse_storage_only(dtype, f"v{name}")
    if dtype.is_float:
        values = [to_float64(o) for o in operands]
        with np.errstate(all="ignore"):
            if len(values) == 1:
                result = FLOAT_UNARY[name](values[0])
            elif name == "div":
                result = values[0] / values[1]
            elif name == "pow":
                result = np.power(values[0], values[1])
            else:
                result = BINARY[name](values[0], values[1])
        return store_float(np.asarray(result, dtype=np.float64), dtype)
    if name in FLOAT_ONLY:
        raise OperandError(f"v{name} is defined for f32 and bf16 only, not {dtype.asm_name}")
    values = [o.astype(np.int64) for o in operands]
    if len(values) == 1:
        result = INT_UNARY[name](values[0])
    elif name == "div":
        result = _int_div(values[0], values[1])
    else:
        result = BINARY[name](values[0], values[1])
    return wrap_int(np.asarray(result).astype(np.int64), dtype)


# Instruction semantics --------------------------------------------------------------------------
def exec_nothing(machine: Machine, i: Instruction) -> Effects:
    """end / sync: no data is touched."""
    return Effects([])


def _dma_views(machine: Machine, i: Instruction, load: bool):
    """The DRAM and local views of a DMA; `load`: the local one is written, else the DRAM one."""
    f = i.fields
    esize = f["esize"]
    shape = (f["n2"], f["n1"], f["n0"])
    dram, dram_access = machine.tile(DRAM, f["dram"], esize, shape, (f["ds2"], f["ds1"], f["ds0"]), "dram",
                                     write=not load)
    local, local_access = machine.tile(LOCAL, f["local"], esize, shape, (f["ls2"], f["ls1"], 1), "local",
                                       write=load)
    return dram, dram_access, local, local_access


def exec_dma_load(machine: Machine, i: Instruction) -> Effects:
    """for i2 < n2, i1 < n1, i0 < n0: local[local + (i2*ls2 + i1*ls1 + i0)*esize]
    = dram[dram + (i2*ds2 + i1*ds1 + i0*ds0)*esize] (esize bytes each)"""
    dram, dram_access, local, local_access = _dma_views(machine, i, True)
    _check_no_self_overlap(local_access, "local", machine.local.size)
    local[...] = dram
    return Effects([dram_access, local_access], 0, None, dram.size * local_access.size)


def exec_dma_store(machine: Machine, i: Instruction) -> Effects:
    """for i2 < n2, i1 < n1, i0 < n0: dram[dram + (i2*ds2 + i1*ds1 + i0*ds0)*esize]
    = local[local + (i2*ls2 + i1*ls1 + i0)*esize] (esize bytes each)"""
    dram, dram_access, local, local_access = _dma_views(machine, i, False)
    _check_no_self_overlap(dram_access, "dram", machine.dram.size)
    dram[...] = local  # two memories: the source cannot overlap the destination
    return Effects([local_access, dram_access], 0, None, 0, dram.size * local_access.size)


def _gather_indices(machine: Machine, i: Instruction) -> tuple[np.ndarray, Access]:
    f = i.fields
    view, access = machine.tile(LOCAL, f["index"], DType.I32, (f["rows"],), (1,), "index")
    indices = view.astype(np.int64)
    outside = (indices < 0) | (indices >= f["limit"])
    if outside.any():
        row = int(np.argmax(outside))
        raise OperandError(f"index {indices[row]} (row {row}) is outside [0, {f['limit']})")
    return indices, access


def _gather_views(machine: Machine, i: Instruction):
    f = i.fields
    table, table_access = machine.tile(DRAM, f["dram"], f["esize"], (f["limit"], f["n0"]), (f["ds1"], 1), "dram")
    rows, rows_access = machine.tile(LOCAL, f["local"], f["esize"], (f["rows"], f["n0"]), (f["ls1"], 1), "local")
    return table, table_access, rows, rows_access


def exec_dma_gather(machine: Machine, i: Instruction) -> Effects:
    """for r < rows, i0 < n0: local[local + (r*ls1 + i0)*esize] = dram[dram + (idx[r]*ds1 + i0)*esize] with
    idx[r] the int32 at local index + 4r; an index outside [0, limit) stops the run"""
    indices, index_access = _gather_indices(machine, i)
    table, table_access, rows, rows_access = _gather_views(machine, i)
    _check_no_self_overlap(rows_access, "local", machine.local.size)
    rows[...] = table[indices]
    return Effects([index_access, table_access, _written(rows_access)], dram_read=rows.size * i["esize"])


def exec_dma_scatter(machine: Machine, i: Instruction) -> Effects:
    """for r < rows, i0 < n0: dram[dram + (idx[r]*ds1 + i0)*esize] = local[local + (r*ls1 + i0)*esize] with
    idx[r] the int32 at local index + 4r; an index outside [0, limit) stops the run; rows are written in order"""
    indices, index_access = _gather_indices(machine, i)
    table, table_access, rows, rows_access = _gather_views(machine, i)
    _check_no_self_overlap(table_access, "dram", machine.dram.size)
    values = rows.copy()
    if np.unique(indices).size == indices.size:
        table[indices] = values
    else:
        for row, index in enumerate(indices):  # a later row wins, as the instruction writes in order
            table[index] = values[row]
    return Effects([index_access, rows_access, _written(table_access)], dram_written=rows.size * i["esize"])


MATRIX_DTYPES = (DType.I8, DType.U8, DType.BF16, DType.F32)
_MATRIX_DTYPE_SET = frozenset(MATRIX_DTYPES)
_INTEGER_OPERANDS = frozenset((DType.I8, DType.U8))
# bf16 activations with i8 weights: an int8 value is exact in bf16 (8 significant bits), so the
# array's bf16 multipliers take the weights as they are and the products are the float ones.
_WEIGHT_ONLY_INT8 = (DType.BF16, DType.I8)


def exec_load_weights(machine: Machine, i: Instruction) -> Effects:
    """W[i, j] = spad[addr + (i*stride + j)*size] for i < k, j < n (transpose: spad[addr + (j*stride
    + i)*size]); W becomes the array's weights for the next matmuls"""
    f = i.fields
    dtype = f["dtype"]
    if dtype not in _MATRIX_DTYPE_SET:
        raise OperandError(f"the matrix unit takes i8, u8, bf16 or f32 weights, not {dtype.asm_name}")
    if not 1 <= f["k"] <= machine.config.array_rows or not 1 <= f["n"] <= machine.config.array_cols:
        raise OperandError(f"a {f['k']}x{f['n']} weight tile does not fit the "
                           f"{machine.config.array_rows}x{machine.config.array_cols} array")
    if f["transpose"]:
        stored, access = machine.tile(LOCAL, f["addr"], dtype, (f["n"], f["k"]), (f["stride"], 1), "addr",
                                      need="scratchpad")
        weights = stored.T
    else:
        weights, access = machine.tile(LOCAL, f["addr"], dtype, (f["k"], f["n"]), (f["stride"], 1), "addr",
                                       need="scratchpad")
    machine.weights = to_float64(weights)
    machine.weights_dtype = dtype
    return Effects([access])


def exec_matmul(machine: Machine, i: Instruction) -> Effects:
    """for i < m, j < n: acc[c + (i*c_rs + j)*4] (+)= sum_l A[i, l] * W[l, j], A[i, l] at a + (i*a_rs +
    l)*size; integers exact into int32 (wrapping), floats summed in float64 and rounded to fp32. The
    weights have the activations' type, or are integers (i8/u8) with integer activations, or are i8
    with bf16 activations (weight-only int8: each weight enters the multipliers as the bf16 of its
    integer value, which is exact)"""
    f = i.fields
    dtype = f["dtype"]
    weights = machine.weights
    if weights is None:
        raise OperandError("matmul before any load_weights")
    if dtype not in _MATRIX_DTYPE_SET:
        raise OperandError(f"the matrix unit takes i8, u8, bf16 or f32 activations, not {dtype.asm_name}")
    integer = dtype in _INTEGER_OPERANDS
    weights_dtype = machine.weights_dtype
    matching = integer == (weights_dtype in _INTEGER_OPERANDS) and (integer or dtype == weights_dtype)
    if not matching and (dtype, weights_dtype) != _WEIGHT_ONLY_INT8:
        raise OperandError(f"{dtype.asm_name} activations with {weights_dtype.asm_name} weights")
    k, n = weights.shape
    m = f["m"]
    a, a_access = machine.tile(LOCAL, f["a"], dtype, (m, k), (f["a_rs"], 1), "a", need="scratchpad")
    c, c_access = machine.tile(LOCAL, f["c"], DType.I32 if integer else DType.F32, (m, n), (f["c_rs"], 1), "c",
                               need="accumulator")
    _check_no_self_overlap(c_access, "c", machine.local.size)
    # float64 BLAS is exact for integer products: |sum| <= 4095 * 2**16 < 2**53.
    product = a.astype(np.float64) @ weights
    if f["accumulate"]:
        accesses = [a_access, c_access, _written(c_access)]
        product += c  # in float64, as product + to_float64(c)
    else:
        accesses = [a_access, _written(c_access)]
    if integer:
        c[...] = wrap_int(product, DType.I32)
    else:
        c[...] = product  # the assignment rounds to fp32 as astype(np.float32) does
    return Effects(accesses, m * k * n, dtype)


_STRIDE_FIELDS = {name: (f"{name}_rs", f"{name}_cs") for name in ("a", "b", "c")}


def _operand(machine: Machine, i: Instruction, name: str, dtype: DType, rows: int, cols: int):
    f = i.fields
    row_stride, col_stride = _STRIDE_FIELDS[name]
    return machine.tile(LOCAL, f[name], dtype, (rows, cols), (f[row_stride], f[col_stride]), name)


def _destination(machine: Machine, i: Instruction, dtype: DType, rows: int, cols: int):
    f = i.fields
    view, access = machine.tile(LOCAL, f["dst"], dtype, (rows, cols), (f["dst_rs"], 1), "dst", write=True)
    _check_no_self_overlap(access, "dst", machine.local.size)
    return view, access


def _vector(name: str):
    """exec_* for the element-wise vector instructions: unary, binary, and binary-immediate."""

    def exec_vector(machine: Machine, i: Instruction) -> Effects:
        f = i.fields
        dtype, rows, cols = f["dtype"], f["rows"], f["cols"]
        dst, dst_access = _destination(machine, i, dtype, rows, cols)  # bounds the work before computing
        a, a_access = _operand(machine, i, "a", dtype, rows, cols)
        form = i.definition.format
        if form == "v3":
            b, b_access = _operand(machine, i, "b", dtype, rows, cols)
            dst[...] = elementwise(name, dtype, a, b)
            return Effects([a_access, b_access, dst_access])
        if form == "vi":
            imm = np.full((rows, cols), f["imm"], dtype=np.float64 if dtype.is_float else np.int64)
            dst[...] = elementwise(name, dtype, a, imm)
        else:
            dst[...] = elementwise(name, dtype, a)
        return Effects([a_access, dst_access])

    exec_vector.__doc__ = f"element-wise {name}; see the ISA table"
    return exec_vector


def _reduce(name: str):
    def exec_reduce(machine: Machine, i: Instruction) -> Effects:
        f = i.fields
        dtype, rows, cols = f["dtype"], f["rows"], f["cols"]
        refuse_storage_only(dtype, i.mnemonic)
        dst, dst_access = _destination(machine, i, dtype, rows, 1)
        a, a_access = _operand(machine, i, "a", dtype, rows, cols)
        if rows * cols > machine.local.size:
            raise OperandError(f"a: {rows}x{cols} elements read more than the local memory holds")
        values = to_float64(a) if dtype.is_float else a.astype(np.int64)
        result = {"rsum": np.sum, "rmax": np.max, "rmin": np.min}[name](values, axis=1, keepdims=True)
        dst[...] = store_float(result, dtype) if dtype.is_float else wrap_int(result, dtype)
        return Effects([a_access, dst_access])

    exec_reduce.__doc__ = (f"for r < rows: dst[r*dst_rs] = {name[1:]} over c < cols of a[r, c] (floats: in "
                           "float64, rounded once; integers: exact, then wrapped)")
    return exec_reduce


def exec_vsel(machine: Machine, i: Instruction) -> Effects:
    """dst[r, c] = b[r, c] if a[r, c] != 0 else c[r, c] (a, b, c strided as in vadd)"""
    f = i.fields
    dtype, rows, cols = f["dtype"], f["rows"], f["cols"]
    refuse_storage_only(dtype, "vsel")
    dst, dst_access = _destination(machine, i, dtype, rows, cols)
    cond, cond_access = _operand(machine, i, "a", dtype, rows, cols)
    b, b_access = _operand(machine, i, "b", dtype, rows, cols)
    c, c_access = _operand(machine, i, "c", dtype, rows, cols)
    dst[...] = np.where(cond != 0, b, c)
    return Effects([cond_access, b_access, c_access, dst_access])


def convert(values: np.ndarray, source: DType, target: DType) -> np.ndarray:
    """Convert between element types as vcvt does."""
    if target is DType.BOOL:
        return values.astype(np.float64) != 0 if source.is_float else values.astype(np.int64) != 0
    if target.is_float:
        if source.is_float:
            return values.astype(np.float32).astype(target.numpy)
        return store_float(values.astype(np.float64), target)
    if source.is_float:
        return saturate_to_int(values.astype(np.float64), target)
    low, high = INT_RANGES[target]
    return np.clip(values.astype(np.int64), low, high).astype(target.numpy)


def exec_vcvt(machine: Machine, i: Instruction) -> Effects:
    """dst[r, c] = a[r, c] converted from src_dtype to dtype: to integers rounded half to even and
    saturated (NaN -> 0); to bf16 rounded to nearest even"""
    f = i.fields
    rows, cols = f["rows"], f["cols"]
    dst, dst_access = _destination(machine, i, f["dtype"], rows, cols)
    a, a_access = _operand(machine, i, "a", f["src_dtype"], rows, cols)
    dst[...] = convert(a, f["src_dtype"], f["dtype"])
    return Effects([a_access, dst_access])


def _quantization_operands(machine: Machine, i: Instruction, dst_dtype: DType, a_dtype: DType):
    """dst, a, the fp32 scale b and the int32 zero point c of vreq, vdeq and vquant, and their accesses."""
    f = i.fields
    rows, cols = f["rows"], f["cols"]
    dst, dst_access = _destination(machine, i, dst_dtype, rows, cols)
    a, a_access = _operand(machine, i, "a", a_dtype, rows, cols)
    scale, scale_access = _operand(machine, i, "b", DType.F32, rows, cols)
    zero, zero_access = _operand(machine, i, "c", DType.I32, rows, cols)
    return dst, a, scale, zero, Effects([a_access, scale_access, zero_access, dst_access])


def _saturated(values: np.ndarray, zero: np.ndarray, dtype: DType) -> np.ndarray:
    """saturate(round_half_even(values) + zero) in the integer `dtype` (NaN -> 0, infinities saturate)."""
    low, high = INT_RANGES[dtype]
    rounded = np.rint(np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=high, neginf=low))
    return np.clip(rounded + zero.astype(np.float64), low, high).astype(dtype.numpy)


def exec_vreq(machine: Machine, i: Instruction) -> Effects:
    """requantize: dst[r, c] = saturate(round_half_even(f32(a[r, c]) * b[r, c]) + c[r, c]) with a int32,
    b the fp32 scale, c the int32 zero point and dtype i8 or u8"""
    dtype = i.fields["dtype"]
    if dtype not in (DType.I8, DType.U8):
        raise OperandError(f"vreq produces i8 or u8, not {dtype.asm_name}")
    dst, a, scale, zero, effects = _quantization_operands(machine, i, dtype, DType.I32)
    with np.errstate(all="ignore"):
        scaled = a.astype(np.float32) * scale.astype(np.float32)  # one fp32 rounding, as the hardware
    dst[...] = _saturated(scaled, zero, dtype)
    return effects


def exec_vdeq(machine: Machine, i: Instruction) -> Effects:
    """dequantize: dst[r, c] = fp32(a[r, c] - c[r, c]) * b[r, c], the difference in int32 (wrapping)"""
    dtype = i.fields["dtype"]
    if dtype not in (DType.I8, DType.U8, DType.I32):
        raise OperandError(f"vdeq dequantizes i8, u8 or i32, not {dtype.asm_name}")
    dst, a, scale, zero, effects = _quantization_operands(machine, i, DType.F32, dtype)
    centred = wrap_int(a.astype(np.int64) - zero.astype(np.int64), DType.I32)
    with np.errstate(all="ignore"):
        dst[...] = centred.astype(np.float32) * scale.astype(np.float32)  # two fp32 roundings, as ONNX's
    return effects


def exec_vquant(machine: Machine, i: Instruction) -> Effects:
    """quantize: dst[r, c] = saturate(round_half_even(fp32(a[r, c] / b[r, c])) + c[r, c]), NaN -> 0"""
    dtype = i.fields["dtype"]
    if dtype not in (DType.I8, DType.U8):
        raise OperandError(f"vquant produces i8 or u8, not {dtype.asm_name}")
    dst, a, scale, zero, effects = _quantization_operands(machine, i, dtype, DType.F32)
    with np.errstate(all="ignore"):
        quotient = a.astype(np.float32) / scale.astype(np.float32)  # one fp32 rounding
    dst[...] = _saturated(quotient, zero, dtype)
    return effects


def exec_vfill(machine: Machine, i: Instruction) -> Effects:
    """dst[r, c] = imm for r < rows, c < cols"""
    f = i.fields
    dtype = f["dtype"]
    refuse_storage_only(dtype, "vfill")
    value = np.array([f["imm"]], dtype=np.float64 if dtype.is_float else np.int64)
    result = store_float(value, dtype) if dtype.is_float else wrap_int(value, dtype)
    dst, dst_access = _destination(machine, i, dtype, f["rows"], f["cols"])
    dst[...] = result[0]
    return Effects([dst_access])


def _build_exec() -> dict:
    from isa.spec import BINARY_OPS, INSTRUCTIONS, REDUCE_OPS, UNARY_OPS

    table = {"end": exec_nothing, "sync": exec_nothing, "dma_load": exec_dma_load, "dma_store": exec_dma_store,
             "dma_gather": exec_dma_gather, "dma_scatter": exec_dma_scatter,
             "load_weights": exec_load_weights, "matmul": exec_matmul, "vsel": exec_vsel, "vcvt": exec_vcvt,
             "vreq": exec_vreq, "vfill": exec_vfill, "vdeq": exec_vdeq, "vquant": exec_vquant}
    for name, _, _ in BINARY_OPS:
        table[f"v{name}"] = table[f"v{name}i"] = _vector(name)
    for name, _, _ in UNARY_OPS:
        table[f"v{name}"] = _vector(name)
    for name, _ in REDUCE_OPS:
        table[f"v{name}"] = _reduce(name)
    missing = {d.mnemonic for d in INSTRUCTIONS} - set(table)
    if missing:
        raise AssertionError(f"no exec_* for {sorted(missing)}")
    return table


EXEC = _build_exec()
