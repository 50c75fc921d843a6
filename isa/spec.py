"""The one definition of the instruction set.

Every instruction is 256 bits. `FORMATS` gives each operand layout as explicit bit
ranges (as riscv-opcodes does); `INSTRUCTIONS` gives each opcode its mnemonic, format,
engine, one-line semantics and latency formula. The encoder, decoder, assembler,
disassembler, simulator dispatch and `isa/SPEC.md` are all derived from these two
tables, and `validate_tables` (run at import) refuses overlapping or unassigned bits,
duplicate opcodes and formulas that name unknown quantities.

Latency formulas are Python expressions over the instruction's fields, the config's
fields and the helpers in `FORMULA_HELPERS`; the text shown in SPEC.md is the code that
the simulator runs.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

INSTRUCTION_BITS = 256
INSTRUCTION_BYTES = INSTRUCTION_BITS // 8
NUM_SEMAPHORES = 64  # ids 1..63; 0 in a wait/signal field means "none"


class Engine(enum.IntEnum):
    """The four engines that run concurrently; the value is the 2-bit `engine` field."""

    LOAD = 0
    MATRIX = 1
    VECTOR = 2
    STORE = 3


class FieldKind(enum.Enum):
    UINT = "uint"  # unsigned integer
    DTYPE = "dtype"  # isa.dtypes.DType
    ENGINE = "engine"  # Engine
    ESIZE = "esize"  # element size in bytes: 1, 2 or 4, encoded as log2
    FLAG = "flag"  # 0 or 1
    IMM32 = "imm32"  # fp32 bits when the instruction's dtype is a float, else two's complement int32
    SEM = "sem"  # semaphore id, 0 = none


@dataclass(frozen=True)
class Field:
    name: str
    hi: int
    lo: int
    kind: FieldKind = FieldKind.UINT
    doc: str = ""
    default: int = 0  # the value assembly text gets when it leaves the field out

    @property
    def width(self) -> int:
        return self.hi - self.lo + 1


def _f(name: str, bits: str, kind: FieldKind = FieldKind.UINT, doc: str = "", default: int = 0) -> Field:
    hi, lo = (int(part) for part in bits.split(".."))
    return Field(name, hi, lo, kind, doc, default)


# Every instruction starts with the same 20 bits.
HEADER = (
    _f("opcode", "7..0", doc="selects the instruction"),
    _f("wait", "13..8", FieldKind.SEM, "semaphore to take (decrement) before starting; 0 = none"),
    _f("signal", "19..14", FieldKind.SEM, "semaphore to give (increment) on completion; 0 = none"),
)

# Vector operand fields sit at the same bits in every vector format.
_V_DTYPE = _f("dtype", "22..20", FieldKind.DTYPE, "element type of the operation")
_V_DST = (_f("dst", "48..23", doc="local byte address of the result tile"),
          _f("dst_rs", "64..49", doc="result row stride, elements"))
_V_A = (_f("a", "90..65", doc="local byte address of operand a"),
        _f("a_rs", "106..91", doc="a row stride, elements (0 broadcasts one row)"),
        _f("a_cs", "122..107", doc="a column stride, elements (0 broadcasts one column; wide enough to "
                                   "read a tile transposed)", default=1))
_V_B = (_f("b", "148..123", doc="local byte address of operand b"),
        _f("b_rs", "164..149", doc="b row stride, elements (0 broadcasts one row)"),
        _f("b_cs", "172..165", doc="b column stride, elements (0 broadcasts one column)", default=1))
_V_IMM = (_f("imm", "154..123", FieldKind.IMM32, "immediate operand b, broadcast to every element"),)
_V_SHAPE = (_f("rows", "188..173", doc="rows of the tile"), _f("cols", "204..189", doc="columns of the tile"))
_V_C = (_f("c", "230..205", doc="local byte address of operand c"),
        _f("c_rs", "246..231", doc="c row stride, elements"),
        _f("c_cs", "254..247", doc="c column stride, elements", default=1))

FORMATS: dict[str, tuple[Field, ...]] = {
    "none": (),
    "sync": (_f("engine", "21..20", FieldKind.ENGINE, "engine whose queue this instruction joins"),),
    "dma": (
        _f("esize", "21..20", FieldKind.ESIZE, "element size in bytes: 1, 2 or 4", default=1),
        _f("dram", "53..22", doc="DRAM byte address"),
        _f("local", "79..54", doc="local (scratchpad or accumulator) byte address"),
        _f("n0", "95..80", doc="elements in the innermost dimension", default=1),
        _f("n1", "111..96", doc="count of the middle dimension", default=1),
        _f("n2", "127..112", doc="count of the outer dimension", default=1),
        _f("ds0", "143..128", doc="DRAM stride of the innermost dimension, elements", default=1),
        _f("ds1", "167..144", doc="DRAM stride of the middle dimension, elements"),
        _f("ds2", "199..168", doc="DRAM stride of the outer dimension, elements"),
        _f("ls1", "215..200", doc="local stride of the middle dimension, elements"),
        _f("ls2", "239..216", doc="local stride of the outer dimension, elements"),
    ),
    "dmai": (
        _f("esize", "21..20", FieldKind.ESIZE, "element size in bytes: 1, 2 or 4", default=1),
        _f("dram", "53..22", doc="DRAM byte address of row 0 of the table"),
        _f("local", "79..54", doc="local byte address of the first row"),
        _f("index", "105..80", doc="local byte address of the int32 row indices"),
        _f("rows", "121..106", doc="number of rows (indices)"),
        _f("n0", "137..122", doc="elements per row", default=1),
        _f("ds1", "161..138", doc="DRAM stride between table rows, elements"),
        _f("ls1", "177..162", doc="local stride between rows, elements"),
        _f("limit", "209..178", doc="rows in the DRAM table: an index must lie in [0, limit)"),
    ),
    "weights": (
        _f("dtype", "22..20", FieldKind.DTYPE, "weight element type: i8, u8, bf16 or f32 (the tile shifts in "
                                                 "at the row_cycles of this type)"),
        _f("transpose", "23..23", FieldKind.FLAG, "1: the tile is stored n-major (W^T) and transposed on load"),
        _f("addr", "49..24", doc="scratchpad byte address of the tile"),
        _f("k", "61..50", doc="rows of the tile (K), at most array_rows"),
        _f("n", "73..62", doc="columns of the tile (N), at most array_cols"),
        _f("stride", "89..74", doc="row stride of the stored tile, elements"),
    ),
    "matmul": (
        _f("dtype", "22..20", FieldKind.DTYPE, "activation element type: i8, u8, bf16 or f32"),
        _f("accumulate", "23..23", FieldKind.FLAG, "1: add to the accumulator; 0: overwrite it"),
        _f("a", "49..24", doc="scratchpad byte address of the activation rows (M x K)"),
        _f("a_rs", "65..50", doc="activation row stride, elements"),
        _f("m", "81..66", doc="activation rows streamed (M)"),
        _f("c", "107..82", doc="accumulator byte address of the M x N result"),
        _f("c_rs", "123..108", doc="result row stride, elements"),
    ),
    "v2": (_V_DTYPE, *_V_DST, *_V_A, *_V_SHAPE),
    "v3": (_V_DTYPE, *_V_DST, *_V_A, *_V_B, *_V_SHAPE),
    "vi": (_V_DTYPE, *_V_DST, *_V_A, *_V_IMM, *_V_SHAPE),
    "v4": (_V_DTYPE, *_V_DST, *_V_A, *_V_B, *_V_SHAPE, *_V_C),
    "vcvt": (_V_DTYPE, *_V_DST, *_V_A, *_V_SHAPE,
             _f("src_dtype", "125..123", FieldKind.DTYPE, "element type of operand a")),
    "vfill": (_V_DTYPE, *_V_DST, *_V_IMM, *_V_SHAPE),
}


@dataclass(frozen=True)
class InstructionDef:
    mnemonic: str
    opcode: int
    format: str
    engine: Engine | None  # None: the `engine` field decides (sync)
    semantics: str
    latency: str  # Python expression; see FORMULA_HELPERS and the config fields
    fields: tuple[Field, ...] = field(default=())


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def dram_runs(esize: int, n0: int, n1: int, n2: int, ds0: int, ds1: int, ds2: int) -> tuple[int, int]:
    """(number of contiguous DRAM runs, bytes per run) of a DMA; adjacent rows merge into one run."""
    if n0 > 1 and ds0 != 1:
        return n0 * n1 * n2, esize
    if n1 == 1 or ds1 == n0:
        if n2 == 1 or ds2 == n0 * n1:
            return 1, n0 * n1 * n2 * esize
        return n2, n0 * n1 * esize
    return n1 * n2, n0 * esize


def dma_transfer_cycles(esize: int, n0: int, n1: int, n2: int, ds0: int, ds1: int, ds2: int,
                        dram_bytes_per_cycle: int) -> int:
    """Cycles the DRAM channel is busy: every contiguous run is whole bursts of the bus width."""
    runs, run_bytes = dram_runs(esize, n0, n1, n2, ds0, ds1, ds2)
    return runs * ceil_div(run_bytes, dram_bytes_per_cycle)


def vector_pass_cycles(config, rows: int, cols: int, cost: int = 1) -> int:
    """A vector instruction's cycles over rows x cols, `cost` cycles per lane group: the latency
    formula of the element-wise instructions (`_VEC`), for the compiler's estimates."""
    return config.vector_latency + rows * ceil_div(cols, config.vector_lanes) * cost


def _log2_ceil(x: int) -> int:
    return max(0, math.ceil(math.log2(x))) if x > 0 else 0


# Names a latency formula may use besides the instruction's fields and the config's fields:
# `transfer` is dma_transfer_cycles of the instruction, `row_cycles` the config's cycles per
# streamed row for the instruction's dtype.
FORMULA_HELPERS = {"ceil_div": ceil_div, "max": max, "log2": _log2_ceil}
FORMULA_NAMES = set(FORMULA_HELPERS) | {"transfer", "row_cycles"}

_DMA_LATENCY = "dma_latency + transfer"
_VEC = "vector_latency + rows * ceil_div(cols, vector_lanes)"

# (name, semantics of the element operation, cycles per lane group)
BINARY_OPS = (
    ("add", "a + b", 1), ("sub", "a - b", 1), ("mul", "a * b", 1),
    ("div", "a / b (integers: truncated toward zero; x / 0 = 0)", 4),
    ("max", "max(a, b)", 1), ("min", "min(a, b)", 1),
    ("pow", "a ** b (f32 and bf16 only)", 4),
    ("eq", "1 if a == b else 0", 1), ("ne", "1 if a != b else 0", 1),
    ("lt", "1 if a < b else 0", 1), ("le", "1 if a <= b else 0", 1),
    ("gt", "1 if a > b else 0", 1), ("ge", "1 if a >= b else 0", 1),
    ("and", "1 if a != 0 and b != 0 else 0", 1), ("or", "1 if a != 0 or b != 0 else 0", 1),
)
UNARY_OPS = (
    ("mov", "a", 1), ("neg", "-a", 1), ("abs", "|a|", 1), ("not", "1 if a == 0 else 0", 1),
    ("floor", "floor(a)", 1), ("ceil", "ceil(a)", 1), ("round", "a rounded half to even", 1),
    ("exp", "e ** a (f32 and bf16 only, as the other functions below)", 2), ("log", "ln(a)", 2),
    ("tanh", "tanh(a)", 2), ("erf", "erf(a)", 2),
    ("sigmoid", "1 / (1 + e ** -a)", 2), ("sqrt", "sqrt(a)", 2), ("rsqrt", "1 / sqrt(a)", 2),
    ("recip", "1 / a", 2),
)
REDUCE_OPS = (("rsum", "sum"), ("rmax", "max"), ("rmin", "min"))

_ELEMENTWISE = (
    "for r < rows, c < cols: dst[r, c] = {op}, with a[r, c] at a + (r*a_rs + c*a_cs)*size; "
    "computed in {{fp32 for floats (bf16 rounded to nearest even on write), exact then wrapped "
    "to the dtype for integers}}"
)


def _build_instructions() -> tuple[InstructionDef, ...]:
    table = [
        InstructionDef("end", 0x01, "none", None,
                       "end of program: every engine finishes its queue, then the run stops", "0"),
        InstructionDef("sync", 0x02, "sync", None,
                       "does nothing on `engine` but take `wait` and give `signal` (joins queues)", "1"),
        InstructionDef(
            "dma_load", 0x10, "dma", Engine.LOAD,
            "for i2 < n2, i1 < n1, i0 < n0: local[local + (i2*ls2 + i1*ls1 + i0)*esize] "
            "= dram[dram + (i2*ds2 + i1*ds1 + i0*ds0)*esize] (esize bytes each)",
            _DMA_LATENCY),
        InstructionDef(
            "dma_store", 0x11, "dma", Engine.STORE,
            "for i2 < n2, i1 < n1, i0 < n0: dram[dram + (i2*ds2 + i1*ds1 + i0*ds0)*esize] "
            "= local[local + (i2*ls2 + i1*ls1 + i0)*esize] (esize bytes each)",
            _DMA_LATENCY),
        InstructionDef(
            "dma_gather", 0x12, "dmai", Engine.LOAD,
            "for r < rows, i0 < n0: local[local + (r*ls1 + i0)*esize] = dram[dram + (idx[r]*ds1 + i0)*esize] "
            "with idx[r] the int32 at local index + 4r; an index outside [0, limit) stops the run",
            "dma_latency + rows * ceil_div(n0 * esize, dram_bytes_per_cycle)"),
        InstructionDef(
            "dma_scatter", 0x13, "dmai", Engine.STORE,
            "for r < rows, i0 < n0: dram[dram + (idx[r]*ds1 + i0)*esize] = local[local + (r*ls1 + i0)*esize] "
            "with idx[r] the int32 at local index + 4r; an index outside [0, limit) stops the run; rows "
            "are written in order",
            "dma_latency + rows * ceil_div(n0 * esize, dram_bytes_per_cycle)"),
        InstructionDef(
            "load_weights", 0x20, "weights", Engine.MATRIX,
            "W[i, j] = spad[addr + (i*stride + j)*size] for i < k, j < n (transpose: "
            "spad[addr + (j*stride + i)*size]); W becomes the array's weights for the next matmuls",
            "k * row_cycles"),
        InstructionDef(
            "matmul", 0x21, "matmul", Engine.MATRIX,
            "for i < m, j < n: acc[c + (i*c_rs + j)*4] (+)= sum_l A[i, l] * W[l, j], A[i, l] at "
            "a + (i*a_rs + l)*size; integers exact into int32 (wrapping), floats summed in "
            "float64 and rounded to fp32. The weights have the activations' type, or are integers "
            "(i8/u8) with integer activations, or are i8 with bf16 activations (weight-only int8: "
            "each weight enters the multipliers as the bf16 of its integer value, which is exact)",
            "m * row_cycles + array_rows + array_cols - 2"),
    ]
    for index, (name, op, cost) in enumerate(BINARY_OPS):
        table.append(InstructionDef(
            f"v{name}", 0x40 + index, "v3", Engine.VECTOR,
            _ELEMENTWISE.format(op=op) + "; b[r, c] at b + (r*b_rs + c*b_cs)*size",
            f"{_VEC} * {cost}"))
        table.append(InstructionDef(
            f"v{name}i", 0x60 + index, "vi", Engine.VECTOR,
            _ELEMENTWISE.format(op=op) + "; b = imm", f"{_VEC} * {cost}"))
    for index, (name, op, cost) in enumerate(UNARY_OPS):
        table.append(InstructionDef(f"v{name}", 0x80 + index, "v2", Engine.VECTOR,
                                    _ELEMENTWISE.format(op=op), f"{_VEC} * {cost}"))
    for index, (name, op) in enumerate(REDUCE_OPS):
        table.append(InstructionDef(
            f"v{name}", 0xA0 + index, "v2", Engine.VECTOR,
            f"for r < rows: dst[r*dst_rs] = {op} over c < cols of a[r, c] (floats: in float64, "
            "rounded once; integers: exact, then wrapped); dst_rs is the stride between results",
            f"{_VEC} + log2(vector_lanes)"))
    table += [
        InstructionDef(
            "vsel", 0xB0, "v4", Engine.VECTOR,
            "dst[r, c] = b[r, c] if a[r, c] != 0 else c[r, c] (a, b, c strided as in vadd)", _VEC),
        InstructionDef(
            "vcvt", 0xB1, "vcvt", Engine.VECTOR,
            "dst[r, c] = a[r, c] converted from src_dtype to dtype: to integers rounded half to "
            "even and saturated (NaN -> 0); to bool 1 if a != 0 (NaN -> 1); to bf16 rounded to nearest even",
            _VEC),
        InstructionDef(
            "vreq", 0xB2, "v4", Engine.VECTOR,
            "requantize: dst[r, c] = saturate(round_half_even(f32(a[r, c]) * b[r, c]) + c[r, c]) "
            "with a int32, b the fp32 scale, c the int32 zero point (b_cs/c_cs = 1: per column, "
            "0: per tensor) and dtype i8 or u8", _VEC),
        InstructionDef(
            "vfill", 0xB3, "vfill", Engine.VECTOR,
            "dst[r, c] = imm for r < rows, c < cols", _VEC),
        InstructionDef(
            "vdeq", 0xB4, "v4", Engine.VECTOR,
            "dequantize: dst[r, c] = fp32(a[r, c] - c[r, c]) * b[r, c] with a of `dtype` (i8, u8 or "
            "i32), the difference in int32 (wrapping), c the int32 zero point, b the fp32 scale; dst is f32",
            _VEC),
        InstructionDef(
            "vquant", 0xB5, "v4", Engine.VECTOR,
            "quantize: dst[r, c] = saturate(round_half_even(fp32(a[r, c] / b[r, c])) + c[r, c]) with a "
            "and the scale b f32, c the int32 zero point (NaN -> 0) and dtype i8 or u8",
            f"{_VEC} * 4"),
    ]
    return tuple(
        InstructionDef(d.mnemonic, d.opcode, d.format, d.engine, d.semantics, d.latency,
                       HEADER + FORMATS[d.format])
        for d in table)


INSTRUCTIONS: tuple[InstructionDef, ...] = _build_instructions()
BY_MNEMONIC: dict[str, InstructionDef] = {d.mnemonic: d for d in INSTRUCTIONS}
BY_OPCODE: dict[int, InstructionDef] = {d.opcode: d for d in INSTRUCTIONS}


def validate_tables() -> None:
    """Refuse a table with overlapping bits, holes in the header, duplicate opcodes or names,
    or a latency formula that names something unknown."""
    from isa.config import AcceleratorConfig  # a formula may name any config field

    config_names = {f for f in AcceleratorConfig.__dataclass_fields__}
    seen_opcodes: dict[int, str] = {}
    for definition in INSTRUCTIONS:
        if definition.opcode in seen_opcodes:
            raise ValueError(f"opcode {definition.opcode:#x} used by {seen_opcodes[definition.opcode]} "
                             f"and {definition.mnemonic}")
        seen_opcodes[definition.opcode] = definition.mnemonic
        if not 0 < definition.opcode < 256:
            raise ValueError(f"{definition.mnemonic}: opcode {definition.opcode:#x} does not fit in 8 bits")
        used = 0
        names = set()
        for f in definition.fields:
            if f.name in names:
                raise ValueError(f"{definition.mnemonic}: field '{f.name}' appears twice")
            names.add(f.name)
            if not 0 <= f.lo <= f.hi < INSTRUCTION_BITS:
                raise ValueError(f"{definition.mnemonic}: field '{f.name}' bits {f.hi}..{f.lo} out of range")
            mask = ((1 << f.width) - 1) << f.lo
            if used & mask:
                raise ValueError(f"{definition.mnemonic}: field '{f.name}' overlaps another field")
            used |= mask
        code = compile(definition.latency, definition.mnemonic, "eval")
        unknown = set(code.co_names) - names - config_names - FORMULA_NAMES
        if unknown:
            raise ValueError(f"{definition.mnemonic}: latency names unknown {sorted(unknown)}")


validate_tables()
