"""The memory an instruction may touch, as byte spans, derived from its fields.

Used by the compiler's emitter to find dependencies between engines. Each span is the
bounding range of an operand (strided operands are covered whole; a weight tile read with
a row stride wider than its rows, one span per row), so dependencies derived from it are
never missed, only occasionally stricter than needed.
"""

from __future__ import annotations

from typing import NamedTuple

from isa.config import AcceleratorConfig
from isa.dtypes import DType
from isa.encoding import Instruction
from isa.spec import BY_MNEMONIC

DRAM, LOCAL = "dram", "local"
SEPARATE_ROWS = 256  # a strided weight tile of at most this many rows gives one span per row


class Span(NamedTuple):  # a tuple: the emitter makes several per instruction, a model millions
    memory: str
    start: int
    end: int  # exclusive
    write: bool


def _span(memory: str, address: int, size: int, counts, strides, write: bool) -> Span:
    last = 0
    for n, s in zip(counts, strides, strict=True):
        if n > 0:
            last += (n - 1) * s
    return Span(memory, address, address + (last + 1) * size, write)


def footprint(instruction: Instruction, config: AcceleratorConfig) -> list[Span]:
    """Every operand of `instruction` as a byte span in DRAM or local memory."""
    f = instruction.fields
    name = instruction.mnemonic
    definition = instruction.definition
    if name in ("end", "sync"):
        return []
    if definition.format == "dma":
        counts = (f["n2"], f["n1"], f["n0"])
        dram = _span(DRAM, f["dram"], f["esize"], counts, (f["ds2"], f["ds1"], f["ds0"]), name == "dma_store")
        local = _span(LOCAL, f["local"], f["esize"], counts, (f["ls2"], f["ls1"], 1), name == "dma_load")
        return [dram, local]
    if definition.format == "dmai":
        table = _span(DRAM, f["dram"], f["esize"], (f["limit"], f["n0"]), (f["ds1"], 1), name == "dma_scatter")
        rows = _span(LOCAL, f["local"], f["esize"], (f["rows"], f["n0"]), (f["ls1"], 1), name == "dma_gather")
        index = Span(LOCAL, f["index"], f["index"] + 4 * f["rows"], False)
        return [table, rows, index]
    if name == "load_weights":
        rows, width = (f["n"], f["k"]) if f["transpose"] else (f["k"], f["n"])
        size = f["dtype"].size
        if f["stride"] > width and rows <= SEPARATE_ROWS:
            # A tile read out of a wider matrix (an attention cache's head): each row on its own, so that
            # the tile waits only for the rows' own bytes, not for everything between them.
            return [Span(LOCAL, f["addr"] + r * f["stride"] * size, f["addr"] + (r * f["stride"] + width) * size,
                         False) for r in range(rows)]
        return [_span(LOCAL, f["addr"], size, (rows, width), (f["stride"], 1), False)]
    if name == "matmul":
        # The weights' K and N are not in the instruction: cover what the array can hold.
        a = _span(LOCAL, f["a"], f["dtype"].size, (f["m"], config.array_rows), (f["a_rs"], 1), False)
        c_size = 4
        c = _span(LOCAL, f["c"], c_size, (f["m"], config.array_cols), (f["c_rs"], 1), True)
        spans = [a, c]
        if f["accumulate"]:
            spans.append(Span(LOCAL, c.start, c.end, False))
        return spans
    rows, cols = f["rows"], f["cols"]
    dtype: DType = f["dtype"]
    spans = []
    if name in ("vrsum", "vrmax", "vrmin"):  # one result per row, dst_rs apart
        spans.append(_span(LOCAL, f["dst"], dtype.size, (rows,), (f["dst_rs"],), True))
    elif name == "vdeq":
        spans.append(_span(LOCAL, f["dst"], DType.F32.size, (rows, cols), (f["dst_rs"], 1), True))
    else:
        spans.append(_span(LOCAL, f["dst"], dtype.size, (rows, cols), (f["dst_rs"], 1), True))
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
        spans.append(_span(LOCAL, f[operand], operand_dtypes[position].size, (rows, cols),
                           (f[row_stride], f[column_stride]), False))
    return spans


# Per instruction, its strided operands among a, b, c: (0, 1, 2 for a, b, c; address field, row stride
# field, column stride field).
_OPERANDS = {d.mnemonic: tuple((position, operand, f"{operand}_rs", f"{operand}_cs")
                               for position, operand in enumerate(("a", "b", "c"))
                               if {operand, f"{operand}_rs"} <= {field.name for field in d.fields})
             for d in BY_MNEMONIC.values()}
