"""The functional model: each instruction against an independent numpy reference."""

import math

import ml_dtypes
import numpy as np
import pytest

from isa.config import load_config
from isa.dtypes import DType
from isa.encoding import Instruction
from runtime.machine import EXEC, Machine, OperandError

CONFIG = load_config("tiny")
A, B, C, DST = 0, 2048, 4096, 8192  # scratchpad addresses of the operands


def machine_with(**arrays_at) -> Machine:
    machine = Machine(CONFIG, 4096)
    for address, array in arrays_at.values():
        raw = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        machine.local[address:address + raw.size] = raw
    return machine


def read(machine: Machine, address: int, dtype: DType, shape) -> np.ndarray:
    count = math.prod(shape) * dtype.size
    return machine.local[address:address + count].view(dtype.numpy).reshape(shape)


def execute(machine: Machine, mnemonic: str, **fields) -> None:
    EXEC[mnemonic](machine, Instruction(mnemonic, **fields))


RNG = np.random.default_rng(7)
X = RNG.standard_normal((4, 8)).astype(np.float32)
Y = RNG.standard_normal((4, 8)).astype(np.float32) + 0.5

FLOAT_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "max": np.maximum,
                "min": np.minimum, "lt": lambda a, b: (a < b).astype(np.float32)}


@pytest.mark.parametrize("op", sorted(FLOAT_BINARY))
def test_float_binary_is_ieee_fp32(op):
    machine = machine_with(a=(A, X), b=(B, Y))
    execute(machine, f"v{op}", dtype=DType.F32, dst=DST, dst_rs=8, a=A, a_rs=8, b=B, b_rs=8, rows=4, cols=8)
    np.testing.assert_array_equal(read(machine, DST, DType.F32, (4, 8)), FLOAT_BINARY[op](X, Y).astype(np.float32))


@pytest.mark.parametrize("op,reference", [
    ("exp", np.exp), ("tanh", np.tanh), ("sqrt", lambda v: np.sqrt(np.abs(v))), ("erf", np.vectorize(math.erf)),
    ("sigmoid", lambda v: 1 / (1 + np.exp(-v))), ("recip", lambda v: 1 / v), ("neg", np.negative)])
def test_float_unary_within_one_ulp_of_float64(op, reference):
    source = np.abs(X) if op == "sqrt" else X
    machine = machine_with(a=(A, source))
    execute(machine, f"v{op}", dtype=DType.F32, dst=DST, dst_rs=8, a=A, a_rs=8, rows=4, cols=8)
    expected = reference(source.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_max_ulp(read(machine, DST, DType.F32, (4, 8)), expected, maxulp=1)


def test_broadcast_row_and_column_by_zero_strides():
    row = np.arange(8, dtype=np.float32)
    column = np.arange(4, dtype=np.float32) * 10
    machine = machine_with(a=(A, row), b=(B, column))
    execute(machine, "vadd", dtype=DType.F32, dst=DST, dst_rs=8, a=A, a_rs=0, b=B, b_rs=1, b_cs=0, rows=4, cols=8)
    np.testing.assert_array_equal(read(machine, DST, DType.F32, (4, 8)), row[None, :] + column[:, None])


def test_bf16_rounds_to_nearest_even():
    x = X.astype(ml_dtypes.bfloat16)
    y = Y.astype(ml_dtypes.bfloat16)
    machine = machine_with(a=(A, x), b=(B, y))
    execute(machine, "vmul", dtype=DType.BF16, dst=DST, dst_rs=8, a=A, a_rs=8, b=B, b_rs=8, rows=4, cols=8)
    expected = (x.astype(np.float32) * y.astype(np.float32)).astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(read(machine, DST, DType.BF16, (4, 8)).view(np.uint16), expected.view(np.uint16))


def test_integer_ops_wrap_and_divide_toward_zero():
    a = np.array([[100, -7, 7, -128, 5, 0, 127, -1]], dtype=np.int8)
    b = np.array([[100, 2, -2, 1, 0, 3, 1, -1]], dtype=np.int8)
    machine = machine_with(a=(A, a), b=(B, b))
    execute(machine, "vadd", dtype=DType.I8, dst=DST, a=A, b=B, rows=1, cols=8)
    np.testing.assert_array_equal(read(machine, DST, DType.I8, (1, 8)), (a.astype(np.int64) + b).astype(np.int8))
    execute(machine, "vdiv", dtype=DType.I8, dst=DST, a=A, b=B, rows=1, cols=8)
    np.testing.assert_array_equal(read(machine, DST, DType.I8, (1, 8))[0], [1, -3, -3, -128, 0, 0, 127, 1])


def test_vcvt_rounds_half_to_even_and_saturates():
    source = np.array([[0.5, 1.5, 2.5, -0.5, -2.5, 300.0, -300.0, np.nan]], dtype=np.float32)
    machine = machine_with(a=(A, source))
    execute(machine, "vcvt", dtype=DType.I8, src_dtype=DType.F32, dst=DST, a=A, rows=1, cols=8)
    np.testing.assert_array_equal(read(machine, DST, DType.I8, (1, 8))[0], [0, 2, 2, 0, -2, 127, -128, 0])


def test_vreq_per_channel():
    acc = RNG.integers(-20000, 20000, size=(4, 8)).astype(np.int32)
    scale = RNG.uniform(0.001, 0.02, size=8).astype(np.float32)
    zero = RNG.integers(-10, 10, size=8).astype(np.int32)
    machine = machine_with(a=(A, acc), b=(B, scale), c=(C, zero))
    execute(machine, "vreq", dtype=DType.I8, dst=DST, dst_rs=8, a=A, a_rs=8, b=B, b_rs=0, c=C, c_rs=0,
            rows=4, cols=8)
    expected = np.clip(np.rint(acc.astype(np.float32) * scale) + zero, -128, 127).astype(np.int8)
    np.testing.assert_array_equal(read(machine, DST, DType.I8, (4, 8)), expected)


@pytest.mark.parametrize("dtype", [DType.U8, DType.I8, DType.I32])
def test_vdeq_is_onnx_dequantize_linear(dtype):
    """fp32(x - zero_point) * scale with the subtraction in int32, as onnxruntime computes it."""
    low, high = {DType.U8: (0, 255), DType.I8: (-128, 127), DType.I32: (-2**31, 2**31 - 1)}[dtype]
    x = RNG.integers(low, high, size=(4, 8), endpoint=True).astype(dtype.numpy)
    x[0, :2] = low, high
    scale = RNG.uniform(0.001, 0.5, size=8).astype(np.float32)
    zero = np.array([3], np.int32)
    machine = machine_with(a=(A, x), b=(B, scale), c=(C, zero))
    execute(machine, "vdeq", dtype=dtype, dst=DST, dst_rs=8, a=A, a_rs=8, b=B, b_rs=0, c=C, c_rs=0, c_cs=0,
            rows=4, cols=8)
    centred = (x.astype(np.int64) - 3).astype(np.int32)  # wraps for int32, as ONNX's int32 arithmetic
    np.testing.assert_array_equal(read(machine, DST, DType.F32, (4, 8)), centred.astype(np.float32) * scale)


def test_vquant_divides_rounds_half_to_even_and_saturates():
    x = np.array([[0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0, np.nan],
                  [0.75, 3.0, np.inf, -np.inf, 0.3, 127.5, -128.5, 12.25]], dtype=np.float32)
    scale = np.array([0.5], np.float32)
    for dtype, zero, (low, high) in ((DType.I8, 0, (-128, 127)), (DType.U8, 10, (0, 255))):
        machine = machine_with(a=(A, x), b=(B, scale), c=(C, np.array([zero], np.int32)))
        execute(machine, "vquant", dtype=dtype, dst=DST, dst_rs=8, a=A, a_rs=8, b=B, b_rs=0, b_cs=0, c=C, c_rs=0,
                c_cs=0, rows=2, cols=8)
        with np.errstate(invalid="ignore"):
            quotient = np.nan_to_num(x / scale[0], nan=0.0, posinf=high, neginf=low)
        expected = np.clip(np.rint(quotient.astype(np.float64)) + zero, low, high).astype(dtype.numpy)
        np.testing.assert_array_equal(read(machine, DST, dtype, (2, 8)), expected)


def test_vdeq_and_vquant_refuse_other_types():
    machine = machine_with(a=(A, X))
    with pytest.raises(Exception, match="vdeq dequantizes"):
        execute(machine, "vdeq", dtype=DType.F32, dst=DST, a=A, b=B, c=C, rows=1, cols=4)
    with pytest.raises(Exception, match="vquant produces"):
        execute(machine, "vquant", dtype=DType.I32, dst=DST, a=A, b=B, c=C, rows=1, cols=4)


def test_row_reductions():
    machine = machine_with(a=(A, X))
    execute(machine, "vrsum", dtype=DType.F32, dst=DST, dst_rs=1, a=A, a_rs=8, rows=4, cols=8)
    np.testing.assert_array_equal(read(machine, DST, DType.F32, (4,)),
                                  X.astype(np.float64).sum(axis=1).astype(np.float32))
    execute(machine, "vrmax", dtype=DType.F32, dst=DST, dst_rs=1, a=A, a_rs=8, rows=4, cols=8)
    np.testing.assert_array_equal(read(machine, DST, DType.F32, (4,)), X.max(axis=1))


def test_vsel_and_vfill():
    cond = np.array([[1, 0, 2, 0]], dtype=np.float32)
    machine = machine_with(a=(A, cond), b=(B, np.full((1, 4), 7, np.float32)))
    execute(machine, "vfill", dtype=DType.F32, dst=C, imm=-1.0, rows=1, cols=4)
    execute(machine, "vsel", dtype=DType.F32, dst=DST, a=A, b=B, c=C, rows=1, cols=4)
    np.testing.assert_array_equal(read(machine, DST, DType.F32, (1, 4))[0], [7, -1, 7, -1])


def test_int8_matmul_is_exact_and_accumulates():
    a = RNG.integers(-128, 128, size=(16, 8)).astype(np.int8)
    w = RNG.integers(-128, 128, size=(8, 8)).astype(np.int8)
    machine = machine_with(a=(A, a), w=(B, w))
    acc = CONFIG.acc_base
    execute(machine, "load_weights", dtype=DType.I8, addr=B, k=8, n=8, stride=8)
    execute(machine, "matmul", dtype=DType.I8, a=A, a_rs=8, m=16, c=acc, c_rs=8)
    execute(machine, "matmul", dtype=DType.I8, a=A, a_rs=8, m=16, c=acc, c_rs=8, accumulate=1)
    expected = 2 * (a.astype(np.int64) @ w.astype(np.int64))
    np.testing.assert_array_equal(read(machine, acc, DType.I32, (16, 8)), expected.astype(np.int32))


def test_transposed_weights():
    a = RNG.standard_normal((4, 8)).astype(np.float32)
    w_t = RNG.standard_normal((6, 8)).astype(np.float32)  # stored N x K
    machine = machine_with(a=(A, a), w=(B, w_t))
    execute(machine, "load_weights", dtype=DType.F32, addr=B, k=8, n=6, stride=8, transpose=1)
    execute(machine, "matmul", dtype=DType.F32, a=A, a_rs=8, m=4, c=CONFIG.acc_base, c_rs=6)
    expected = (a.astype(np.float64) @ w_t.T.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(read(machine, CONFIG.acc_base, DType.F32, (4, 6)), expected)


@pytest.mark.parametrize("mnemonic,fields,message", [
    ("vadd", dict(dtype=DType.F32, dst=2, a=0, b=0, rows=1, cols=1), "not aligned"),
    ("vadd", dict(dtype=DType.F32, dst=CONFIG.spad_bytes - 4, a=0, b=0, rows=1, cols=2), "past the end"),
    ("matmul", dict(dtype=DType.I8, a=0, m=1, c=0), "before any load_weights"),
    ("load_weights", dict(dtype=DType.I8, addr=0, k=9, n=8, stride=8), "does not fit"),
    ("load_weights", dict(dtype=DType.I8, addr=CONFIG.acc_base, k=8, n=8, stride=8), "must be in the scratchpad"),
    ("vexp", dict(dtype=DType.I32, dst=0, a=0, rows=1, cols=1), "f32 and bf16 only"),
    ("vadd", dict(dtype=DType.F32, dst=0, a=0, b=0, rows=2, cols=4, dst_rs=2), "more than once"),
])
def test_bad_operands_are_refused(mnemonic, fields, message):
    with pytest.raises(OperandError, match=message):
        execute(Machine(CONFIG, 64), mnemonic, **fields)


def test_dma_gather_and_scatter_rows_by_index():
    machine = Machine(CONFIG, 4096)
    machine.dram[:400] = np.arange(400) % 256
    machine.local[0:12] = np.array([3, 0, 9], dtype=np.int32).view(np.uint8)
    execute(machine, "dma_gather", dram=0, local=64, index=0, rows=3, n0=4, ds1=10, ls1=4, limit=10)
    np.testing.assert_array_equal(machine.local[64:76], [30, 31, 32, 33, 0, 1, 2, 3, 90, 91, 92, 93])
    execute(machine, "dma_scatter", dram=1000, local=64, index=0, rows=3, n0=4, ds1=4, ls1=4, limit=10)
    np.testing.assert_array_equal(machine.dram[1012:1016], [30, 31, 32, 33])
    np.testing.assert_array_equal(machine.dram[1036:1040], [90, 91, 92, 93])
    with pytest.raises(OperandError, match=r"index 9 \(row 2\) is outside \[0, 5\)"):
        execute(machine, "dma_gather", dram=0, local=64, index=0, rows=3, n0=4, ds1=10, ls1=4, limit=5)


def test_storage_only_dtypes_convert_but_do_not_compute():
    values = np.array([[-3, 0, 2**40, 7]], dtype=np.int64)
    machine = machine_with(a=(A, values))
    execute(machine, "vcvt", dtype=DType.I32, src_dtype=DType.I64, dst=DST, a=A, rows=1, cols=4)
    np.testing.assert_array_equal(read(machine, DST, DType.I32, (1, 4))[0], [-3, 0, 2**31 - 1, 7])
    execute(machine, "vcvt", dtype=DType.BOOL, src_dtype=DType.I64, dst=DST, a=A, rows=1, cols=4)
    np.testing.assert_array_equal(read(machine, DST, DType.BOOL, (1, 4))[0], [True, False, True, True])
    with pytest.raises(OperandError, match="storage only"):
        execute(machine, "vadd", dtype=DType.I64, dst=DST, a=A, b=A, rows=1, cols=4)
