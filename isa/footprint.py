"""The memory an instruction may touch, as byte spans, derived from its fields.

Used by the compiler's emitter to find dependencies between engines. Each span is the
bounding range of an operand (strided operands are covered whole; a weight tile read with
a row stride wider than its rows, one span per row), so dependencies derived from it are
never missed, only occasionally stricter than needed.
"""

from __future__ import annotations

from isa.config import AcceleratorConfig
from isa.dtypes import DType
from isa.encoding import Instruction
from isa.spec import BY_MNEMONIC

DRAM, LOCAL = "dram", "local"
SEPARATE_ROWS = 256  # a strided weight tile of at most this many rows gives one span per row


Span = tuple[str, int, int, bool]  # (memory, start, end (exclusive), write): plain tuples, a model makes millions


def _end(address: int, size: int, n2: int, s2: int, n1: int, s1: int, n0: int, s0: int) -> int:
    """The end of the bounding span of `size`-byte elements at address + i2 s2 + i1 s1 + i0 s0 (i < n)."""
    last = (n2 - 1) * s2 if n2 > 0 else 0
    if n1 > 0:
        last += (n1 - 1) * s1
    if n0 > 0:
        last += (n0 - 1) * s0
    return address + (last + 1) * size


def _end2(address: int, size: int, rows: int, row_stride: int, cols: int, col_stride: int) -> int:
    """`_end` of a [rows, cols] operand."""
    return _end(address, size, 1, 0, rows, row_stride, cols, col_stride)


def footprint(instruction: Instruction, config: AcceleratorConfig, granule: int = 1) -> list[Span]:
    """Every operand of `instruction` as a byte span in DRAM or local memory. A user that tracks
    memory in aligned `granule`-byte blocks may get coarser spans that cover the same blocks
    (the rows of a strided weight tile less than a granule apart, as one span)."""
    f = instruction.fields
    definition = instruction.definition
    name = definition.mnemonic
    if name in ("end", "sync"):
        return []
    if definition.format == "dma":
        n2, n1, n0 = f["n2"], f["n1"], f["n0"]
        size, dram, local = f["esize"], f["dram"], f["local"]
        return [(DRAM, dram, _end(dram, size, n2, f["ds2"], n1, f["ds1"], n0, f["ds0"]), name == "dma_store"),
                (LOCAL, local, _end(local, size, n2, f["ls2"], n1, f["ls1"], n0, 1), name == "dma_load")]
    if definition.format == "dmai":
        size, dram, local, index = f["esize"], f["dram"], f["local"], f["index"]
        return [(DRAM, dram, _end2(dram, size, f["limit"], f["ds1"], f["n0"], 1), name == "dma_scatter"),
                (LOCAL, local, _end2(local, size, f["rows"], f["ls1"], f["n0"], 1), name == "dma_gather"),
                (LOCAL, index, index + 4 * f["rows"], False)]
    if name == "load_weights":
        rows, width = (f["n"], f["k"]) if f["transpose"] else (f["k"], f["n"])
        size, address, stride = f["dtype"].size, f["addr"], f["stride"]
        if stride > width and rows <= SEPARATE_ROWS and (stride - width) * size >= granule:
            # A tile read out of a wider matrix (an attention cache's head): each row on its own, so that
            # the tile waits only for the rows' own bytes, not for everything between them. (Rows closer
            # than a granule share or touch blocks: one span covers the same blocks as theirs.)
            return [(LOCAL, address + r * stride * size, address + (r * stride + width) * size, False)
                    for r in range(rows)]
        return [(LOCAL, address, _end2(address, size, rows, stride, width, 1), False)]
    if name == "matmul":
        # The weights' K and N are not in the instruction: cover what the array can hold.
        a, c, m = f["a"], f["c"], f["m"]
        c_end = _end2(c, 4, m, f["c_rs"], config.array_cols, 1)
        spans = [(LOCAL, a, _end2(a, f["dtype"].size, m, f["a_rs"], config.array_rows, 1), False),
                 (LOCAL, c, c_end, True)]
        if f["accumulate"]:
            spans.append((LOCAL, c, c_end, False))
        return spans
    rows, cols = f["rows"], f["cols"]
    dtype: DType = f["dtype"]
    dst = f["dst"]
    if name in ("vrsum", "vrmax", "vrmin"):  # one result per row, dst_rs apart
        spans = [(LOCAL, dst, _end2(dst, dtype.size, rows, f["dst_rs"], 1, 0), True)]
    else:
        size = DType.F32.size if name == "vdeq" else dtype.size
        spans = [(LOCAL, dst, _end2(dst, size, rows, f["dst_rs"], cols, 1), True)]
    # The element types of operands a, b, c.
    if name == "vreq":
        operand_dtypes = (DType.I32, DType.F32, DType.I32)
    elif name == "vdeq":
        operand_dtypes = (dtype, DType.F32, DType.I32)
    elif name == "vquant":
        operand_dtypes = (DType.F32, DType.F32, DType.I32)
    elif name == "vcvt":
        operand_dtypes = (f["src_dtype"], dtype, dtype)
    else:
        operand_dtypes = (dtype, dtype, dtype)
    for position, operand, row_stride, column_stride in _OPERANDS[name]:
        address = f[operand]
        spans.append((LOCAL, address, _end2(address, operand_dtypes[position].size, rows, f[row_stride], cols,
                                            f[column_stride]), False))
    return spans


# Per instruction, its strided operands among a, b, c: (0, 1, 2 for a, b, c; address field, row stride
# field, column stride field).
_OPERANDS = {d.mnemonic: tuple((position, operand, f"{operand}_rs", f"{operand}_cs")
                               for position, operand in enumerate(("a", "b", "c"))
                               if {operand, f"{operand}_rs"} <= {field.name for field in d.fields})
             for d in BY_MNEMONIC.values()}
