"""Attention on chip: the scores product with its softmax, then the product with V, as one kernel (-O2).

A transformer's attention is two products with a softmax between them: S = softmax(tail(Q K^T))
(`fuse_softmax`'s FusedMatMul: scale and mask as its tail, the softmax on whole rows) and
O = S V. Emitted apart, the probabilities S make a DRAM round trip (12 heads x 128 x 128 fp32 is
768 KiB each way for MiniLM) and, worse, the array idles while the vector unit runs the softmax
of every head, and the vector unit idles while the array multiplies by V.

Here each block of score rows stays on chip: for block i the array computes Q_i K^T into one of
two accumulator tiles, the vector unit finishes it (tail, softmax) into one of two sets of
scratchpad buffers, and the array multiplies those probabilities, as the streamed rows, by V's
tiles into one of two result tiles, which the vector unit finishes (its tail: the quantization
for the next int8 product) and stores. The code is emitted software-pipelined, Q_{i+1} K^T
before P_i V, so that the array works on the next block's scores while the vector unit runs this
block's softmax.

`fusable` says which node pairs qualify; code generation (`_attention` in compiler/codegen/__init__.py)
emits them this way where the cost model times it faster than the two kernels apart. The kernel raises
MemoryError, emitting nothing, when two blocks of at least one row do not fit on chip.
"""

from __future__ import annotations

import numpy as np

from compiler.codegen.context import LOCAL_ALIGN, CodegenContext, View, unsupported
from compiler.codegen.kernels.epilogue import Finisher, Product
from compiler.codegen.kernels.matmul import (
    _as_matrix_batches,
    _block_of,
    _load_rows,
    _round_to,
    by_columns,
    matmul_operands,
)
from compiler.ir import Graph, Node
from isa.dtypes import DType

F32 = DType.F32
MAX_ROW = (1 << 16) - 1  # a row stride in load_weights and matmul (16-bit fields, isa/spec.py)


def fusable(graph: Graph, scores: Node, values: Node) -> bool:
    """Whether `scores` (a FusedMatMul with its softmax) and `values` (the product of its result, read by
    nothing else, with a run-time V) can run as one attention kernel: fp32 operands (both products
    multiplying them as they are, or both rounding both to bf16), neither with a bias, an addend or an
    activation, the probabilities as they are (no perm_a), the same batches on both sides, and rows no
    longer than the instructions' stride fields take."""
    probabilities = scores.outputs[0]
    if scores.op != "FusedMatMul" or not scores.attrs.get("softmax") or values.op not in ("MatMul", "FusedMatMul"):
        return False
    if values.inputs[0] != probabilities or values.inputs.count(probabilities) != 1 or values.attrs.get("softmax") \
            or values.attrs.get("perm_a") or probabilities in graph.outputs:
        return False
    roundings = {(node.attrs.get("round_a"), node.attrs.get("round_b")) for node in (scores, values)}
    if roundings not in ({(None, None)}, {("bf16", "bf16")}):
        return False
    for node in (scores, values):
        if node.attrs.get("activation") or any(len(node.inputs) > i and node.inputs[i] for i in (2, 3)):
            return False
    operands = [scores.inputs[0], scores.inputs[1], values.inputs[1]]
    if any(graph.values[name].dtype != "f32" or graph.values[name].is_const for name in operands):
        return False
    score_shape, value_shape = graph.values[probabilities].shape, graph.values[values.outputs[0]].shape
    if values.attrs.get("perm_out"):  # the result as computed, before it is written transposed
        value_shape = tuple(value_shape[axis] for axis in np.argsort(values.attrs["perm_out"]))
    widths = (score_shape[-1], graph.values[scores.inputs[0]].shape[-1], value_shape[-1])
    return len(score_shape) >= 3 and score_shape[:-1] == value_shape[:-1] and max(widths) <= MAX_ROW



def attention_kernel(ctx: CodegenContext, scores_node: Node, values_node: Node) -> None:
    """The two nodes' products (module docstring); their output is the values node's."""
    config = ctx.config
    rows, cols = config.array_rows, config.array_cols
    probabilities = scores_node.outputs[0]
    shape = ctx.graph.values[probabilities].shape
    # The probabilities never reach DRAM: the operand views are built with a stand-in view of their layout.
    layout = ctx.views[probabilities] = View.dense(0, F32, shape)
    try:
        q, k, _, _, score_epilogue, _ = matmul_operands(ctx, scores_node)
        _, v, result, _, value_epilogue, _ = matmul_operands(ctx, values_node)
    finally:
        del ctx.views[probabilities]
    # bf16 products: Q, K and V rounded as they are loaded, the probabilities after their softmax.
    operand = DType.BF16 if scores_node.attrs.get("round_a") else F32
    size, rounded = operand.size, operand != F32
    scores_product, values_product = Product(operand, **score_epilogue), Product(operand, **value_epilogue)
    if result.dtype != values_product.out:
        raise unsupported(values_node, f"attention with a {result.dtype.asm_name} result")
    batch_shape, (m_total, n_total) = shape[:-2], shape[-2:]
    q, k, v = (_as_matrix_batches(view, batch_shape) for view in (q, k, v))
    depth, width = q.shape[-1], result.shape[-1]  # Q's columns (head size), and V's
    spad, acc = ctx.scratchpad(), ctx.accumulator()

    staging = max(depth, width) * n_total * 4 if rounded else 0  # f32 K or V, or a block of Q, before rounding

    def fits(m: int) -> bool:
        local = (Finisher.reserve_bytes(scores_product, m, n_total, n_total, softmax_sets=2)
                 + Finisher.reserve_bytes(values_product, m, width, width)
                 + 2 * (m * depth * size + LOCAL_ALIGN) + max(staging, m * depth * 4 if rounded else 0)
                 + (2 * (m * n_total * size + LOCAL_ALIGN) if rounded else 0)
                 + 2 * ((depth + width) * n_total * size + 2 * LOCAL_ALIGN))
        return local <= spad.free and 2 * (m * n_total + m * width) * 4 + 4 * LOCAL_ALIGN <= acc.free

    m_tile = min(m_total, 65535)
    while m_tile > 1 and not fits(m_tile):
        m_tile = -(-m_tile // 2)
    if not fits(m_tile):
        raise MemoryError(f"attention: two blocks of a row of {n_total} scores do not fit on chip")
    # Two sets of softmax temporaries: a block's probabilities stay while the next block is finished.
    score_finisher = Finisher(ctx, scores_product, spad, m_tile, n_total, n_total, softmax_sets=2)
    value_finisher = Finisher(ctx, values_product, spad, m_tile, width, width)
    q_tiles = [spad.alloc(m_tile * depth * size) for _ in range(2)]
    # Each batch's K^T [depth, n_total] and V [n_total, width] on chip, two batches at a time.
    k_sets = [spad.alloc(depth * n_total * size) for _ in range(2)]
    v_sets = [spad.alloc(n_total * width * size) for _ in range(2)]
    stage = spad.alloc(max(staging, m_tile * depth * 4)) if rounded else 0
    p_tiles = [spad.alloc(m_tile * n_total * size) for _ in range(2)] if rounded else []
    score_tiles = [acc.alloc(m_tile * n_total * 4) for _ in range(2)]
    value_tiles = [acc.alloc(m_tile * width * 4) for _ in range(2)]
    batches = list(np.ndindex(*batch_shape))
    blocks = [(number, m0, min(m_tile, m_total - m0)) for number in range(len(batches))
              for m0 in range(0, m_total, m_tile)]
    ctx.note(f"attention on chip: {len(batches)} batches in blocks of {m_tile} rows; K and V on chip per batch, "
             f"scores of {n_total} columns and their softmax stay on chip, pipelined with the product by V "
             f"({width} columns)")
    resident: dict[int, tuple] = {}  # batch number -> how its K^T and V lie on chip

    def load_keys(number: int) -> tuple:
        return _load_whole(ctx, k.at(*batches[number]), k_sets[number % 2], operand, stage)

    def load_values(number: int) -> tuple:
        return _load_whole(ctx, v.at(*batches[number]), v_sets[number % 2], operand, stage)

    def product(a_tile: int, a_width: int, b: tuple, c_tile: int, c_width: int, mt: int) -> None:
        """c [mt, c_width] = a [mt, a_width] (on chip, dense) @ b [a_width, c_width] (on chip, `_load_whole`)."""
        address, transposed, row = b
        for n0 in range(0, c_width, cols):
            for k0 in range(0, a_width, rows):
                kt, nt = min(rows, a_width - k0), min(cols, c_width - n0)
                first = n0 * row + k0 if transposed else k0 * row + n0
                ctx.emitter.emit("load_weights", dtype=operand, addr=address + first * size, k=kt, n=nt, stride=row,
                                 transpose=int(transposed))
                ctx.emitter.emit("matmul", dtype=operand, a=a_tile + k0 * size, a_rs=a_width, m=mt,
                                 c=c_tile + n0 * 4, c_rs=c_width, accumulate=int(k0 > 0))

    on_chip: list[int] = []  # each block's probabilities, where its finisher left them
    first_keys = load_keys(0)
    for step in range(len(blocks) + 1):
        if step < len(blocks):  # this block's scores
            number, m0, mt = blocks[step]
            _load_rows(ctx, q_tiles[step % 2], q.at(*batches[number]).window(0, m0, m0 + mt), operand, stage)
            if step == 0:  # V, written last, after the first rows of Q: the first scores need not wait for it
                resident[0] = (first_keys, load_values(0))
            product(q_tiles[step % 2], depth, resident[number][0], score_tiles[step % 2], n_total, mt)
        if step:  # the previous block's probabilities times V
            number, m0, mt = blocks[step - 1]
            product(on_chip[step - 1], n_total, resident[number][1], value_tiles[(step - 1) % 2], width, mt)
        if step + 1 < len(blocks) and blocks[step + 1][0] != blocks[step][0]:
            following = blocks[step + 1][0]  # the next batch's K and V, once the one before it is done with
            resident[following] = (load_keys(following), load_values(following))
        if step < len(blocks):  # this block's tail and softmax, left on chip
            number, m0, mt = blocks[step]
            finished = score_finisher.finish(
                score_tiles[step % 2], mt, n_total, False, 0, layout,
                _block_of((slice(m0, m0 + mt), slice(0, n_total)), batches[number]), store=False)
            if rounded:
                _round_to(ctx, operand, p_tiles[step % 2], finished, F32, mt * n_total)
                finished = p_tiles[step % 2]
            on_chip.append(finished)
        if step:  # the previous block's result, finished and stored
            number, m0, mt = blocks[step - 1]
            value_finisher.finish(value_tiles[(step - 1) % 2], mt, width, False, 0, result,
                                  _block_of((slice(m0, m0 + mt), slice(0, width)), batches[number]))


def _load_whole(ctx: CodegenContext, view: View, address: int, dtype: DType, staging: int) -> tuple[int, bool, int]:
    """A right operand [K, N] on chip whole in `dtype` (an f32 view rounded through `staging`), as it lies in
    DRAM (read by columns when K has unit stride: a folded Transpose), for load_weights to take tiles from:
    (address, read by columns, row length)."""
    transposed = by_columns(view)
    stored = view.transpose((1, 0)) if transposed else view
    _load_rows(ctx, address, stored, dtype, staging)
    return address, transposed, stored.shape[1]
