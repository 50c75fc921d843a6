"""A feed-forward block on chip: two products with constant weights, the first one's result never in DRAM (-O2).

A transformer layer's feed-forward block is H = tail(X W1) (GELU, and for int8 the quantization for the
next product), then Y = H W2 with its own tail (the residual's addend, the LayerNorm's input). Emitted
apart, the second product cannot start before the first one's last block is finished: the first one's
vector work (GELU divides and takes erf of every value of the widest layer) runs longer than its array
work, and the second product's array work (as long again) then runs with the vector unit nearly idle.

Here rows go through in blocks of array_rows. The array takes the first product's column groups for
block i + 1 in turn with the second product's column groups for block i, so that the vector unit
finishes the first product's wide groups while the array runs the second product's, and the other way
round. Block i's H stays in the scratchpad, each column group where its finisher left it (two blocks'
worth: `Finisher(output_sets=...)`), and the second product reads its K tiles from there. Both weight
matrices stream through one ring of slots in the order the array takes them (`StreamedWeights`), once per
row block.

`fusable` says which node pairs qualify; code generation emits them this way where the cost model
times it faster than the two kernels apart. The kernel raises MemoryError, emitting nothing, when
two blocks of H with the buffers around them do not fit the scratchpad.
"""

from __future__ import annotations

from compiler.codegen.context import LOCAL_ALIGN, CodegenContext, View, accelerator_dtype, unsupported
from compiler.codegen.kernels.epilogue import Finisher, Product
from compiler.codegen.kernels.matmul import (
    STREAM_GROUP_BLOCKS,
    STREAM_SLOTS,
    ConstantMatrix,
    StreamedWeights,
    _block_of,
    column_bias,
    load_row_blocks,
    matmul_operands,
    stream_slot_bytes,
)
from compiler.codegen.kernels.quantized import qlinear_matmul_operands
from compiler.ir import Graph, Node

PRODUCTS = ("QLinearMatMul", "MatMul", "FusedMatMul")
# K tiles a weight fetch brings at most (the streamed product's 2 would make every fourth instruction of
# MiniLM's block a DMA: a third more instructions to compile, for 0.1% fewer cycles).
CHUNK_TILES = 8


def fusable(graph: Graph, first: Node, second: Node) -> bool:
    """Whether `second` multiplies `first`'s result, read by nothing else, as its rows: both products
    with constant 2-D weights, both integer or both float (multiplied as they are: no bf16 rounding),
    neither reading an operand transposed nor ending in a softmax."""
    if first.op not in PRODUCTS or second.op not in PRODUCTS or (first.op == "QLinearMatMul") != \
            (second.op == "QLinearMatMul"):
        return False
    hidden = first.outputs[0]
    if second.inputs[0] != hidden or hidden in graph.outputs or second.inputs.count(hidden) != 1 \
            or len(graph.consumers().get(hidden, [])) != 1:
        return False
    for node in (first, second):
        weights = graph.values[node.inputs[1]]
        if not weights.is_const or len(weights.shape) != 2:
            return False
        if any(node.attrs.get(name) for name in ("perm_a", "perm_b", "perm_out", "softmax", "round_a", "round_b")):
            return False
    return True


def _operands(ctx: CodegenContext, node: Node) -> tuple[View, ConstantMatrix, View, Product]:
    """The node's rows [M, K], its constant weights, its result [M, N] and its Product."""
    if node.op == "QLinearMatMul":
        return qlinear_matmul_operands(ctx, node)
    a, b, out, bias, epilogue, product = matmul_operands(ctx, node)
    product, bias = column_bias(product or Product(a.dtype, **epilogue), bias, out)
    if bias is not None or not isinstance(b, ConstantMatrix) or len(out.shape) != 2 or a.dtype != b.dtype:
        raise unsupported(node, "a feed-forward product other than rows times constant weights")
    return a, b, out, product


def mlp_kernel(ctx: CodegenContext, first: Node, second: Node) -> None:
    """The two nodes' products (module docstring); their output is the second node's."""
    config = ctx.config
    rows, cols = config.array_rows, config.array_cols
    hidden = first.outputs[0]
    # H never reaches DRAM: the operand views are built with a stand-in view of its layout.
    value = ctx.graph.values[hidden]
    ctx.views[hidden] = View.dense(0, accelerator_dtype(value.dtype, hidden, first.op), value.shape)
    try:
        a, w1, layout, first_product = _operands(ctx, first)
        _, w2, result, second_product = _operands(ctx, second)
    finally:
        del ctx.views[hidden]
    if not (first_product.requant or first_product.tail):
        raise unsupported(first, "a feed-forward block whose first result is not finished into the scratchpad")
    if first_product.out != second_product.operand or a.dtype != first_product.operand \
            or first_product.weight_dtype.size != second_product.weight_dtype.size:
        raise unsupported(second, "a feed-forward block whose products take different operand types")
    m_total, k_total = a.shape
    n_hidden, n_total = w1.shape[1], w2.shape[1]
    if m_total > 65535 or k_total > 65535 or n_hidden > 65535:
        raise unsupported(first, "a feed-forward block wider than the stride fields")
    row_block = min(m_total, rows)
    size, hidden_size = a.dtype.size, first_product.out.size
    # Column groups: the first product's as wide as the streamed schedule makes them; the second's
    # as long on the array (it has more K tiles), so that the two alternate evenly.
    first_group = min(-(-n_hidden // cols), STREAM_GROUP_BLOCKS) * cols
    first_groups = [(n0, min(first_group, n_hidden - n0)) for n0 in range(0, n_hidden, first_group)]
    if first_group % rows:
        raise unsupported(first, "hidden column groups that split a K tile")
    second_blocks = max(1, min(-(-n_total // cols),
                               round(first_group // cols * -(-k_total // rows) / -(-n_hidden // rows))))
    second_group = second_blocks * cols
    second_groups = [(n0, min(second_group, n_total - n0)) for n0 in range(0, n_total, second_group)]
    slot_bytes = stream_slot_bytes(config, max(k_total, n_hidden), first_product.weight_dtype.size, CHUNK_TILES)
    spad, acc = ctx.scratchpad(), ctx.accumulator()
    hidden_sets = 2 * len(first_groups)  # two blocks of H, a finished column group each
    local = (Finisher.reserve_bytes(first_product, row_block, first_group, n_hidden, output_sets=hidden_sets)
             + Finisher.reserve_bytes(second_product, row_block, second_group, n_total)
             + m_total * k_total * size + LOCAL_ALIGN + STREAM_SLOTS * (slot_bytes + LOCAL_ALIGN) + 8 * 64)
    accumulator = 2 * row_block * (first_group + second_group) * 4 + 4 * LOCAL_ALIGN
    if local > spad.free or accumulator > acc.free:
        raise MemoryError(f"feed-forward block: two blocks of {row_block} rows of {n_hidden} hidden values do "
                          "not fit on chip")
    first_finisher = Finisher(ctx, first_product, spad, row_block, first_group, n_hidden, output_sets=hidden_sets)
    second_finisher = Finisher(ctx, second_product, spad, row_block, second_group, n_total)
    a_tile = spad.alloc(m_total * k_total * size)
    slots = [spad.alloc(slot_bytes) for _ in range(STREAM_SLOTS)]
    first_tiles = [acc.alloc(row_block * first_group * 4) for _ in range(2)]
    second_tiles = [acc.alloc(row_block * second_group * 4) for _ in range(2)]
    weights = (StreamedWeights(ctx, w1, slot_bytes), StreamedWeights(ctx, w2, slot_bytes))
    products, groups = (first_product, second_product), (first_groups, second_groups)
    passes = -(-m_total // row_block)
    jobs = job_order(passes, [len(first_groups), len(second_groups)])
    job_chunks = [weights[product].chunks(_blocks(groups[product][group], cols)) for product, _, group in jobs]
    # Every chunk of weights in the order the array takes them: (product, chunk).
    stream = [(job[0], chunk) for job, chunks in zip(jobs, job_chunks, strict=True) for chunk in chunks]
    ctx.note(f"feed-forward block on chip: {passes} blocks of {row_block} rows; {n_hidden} hidden values a row "
             f"stay on chip in {len(first_groups)} groups, the two products' column groups alternating; both "
             f"weights streamed once per block")

    def fetch(index: int) -> None:
        if index < len(stream):
            product, chunk = stream[index]
            ctx.dma_in(slots[index % STREAM_SLOTS], weights[product].chunk(chunk))

    fetch(0)
    for finisher, total in ((first_finisher, n_hidden), (second_finisher, n_total)):
        finisher.load_channels(0, total)
    load_row_blocks(ctx, a_tile, a, row_block)
    for index in range(1, STREAM_SLOTS):
        fetch(index)
    finished: dict[tuple[int, int], int] = {}  # (row block, hidden group) -> where that part of H is
    position = 0  # the next chunk of `stream`

    def finish(job: tuple[int, int, int, int]) -> None:
        product, block, group, tile = job
        r0 = block * row_block
        mt = min(row_block, m_total - r0)
        n0, width = groups[product][group]
        where = _block_of((slice(r0, r0 + mt), slice(n0, n0 + width)))
        if product == 0:
            finished[block, group] = first_finisher.finish(tile, mt, width, False, n0, layout, where, store=False)
        else:
            second_finisher.finish(tile, mt, width, False, n0, result, where)

    def rows_at(product: int, block: int, k0: int) -> tuple[int, int]:
        """Where a product's rows for K tile k0 of a row block are, and their stride: the first product's in
        a's tile, the second product's in the finished group of H that holds column k0."""
        if product == 0:
            return a_tile + (block * row_block * k_total + k0) * size, k_total
        hidden_group = k0 // first_group
        return finished[block, hidden_group] + (k0 - hidden_group * first_group) * hidden_size, \
            first_groups[hidden_group][1]

    chunks_of = dict(zip(jobs, job_chunks, strict=True))

    def multiply(job: tuple[int, int, int], tile: int) -> None:
        nonlocal position
        product, block, group = job
        mt = min(row_block, m_total - block * row_block)
        n0, width = groups[product][group]
        for chunk in chunks_of[job]:  # stream[position:position + len(chunks)]
            weights[product].multiply(ctx, slots[position % STREAM_SLOTS], chunk, products[product],
                                      lambda k0, product=product, block=block: rows_at(product, block, k0), mt,
                                      tile, n0, width)
            fetch(position + STREAM_SLOTS)
            position += 1

    run_jobs(jobs, (first_tiles, second_tiles), multiply, finish)


def run_jobs(jobs: list[tuple[int, int, int]], tiles, multiply, finish) -> None:
    """Emit a chain of products' jobs (job_order's (product, block, group)) as a software pipeline: each job's
    matmuls (`multiply(job, tile)`) into its product's accumulator tiles (`tiles[product]`, two, in turn),
    then the job before it finished (`finish((*job, tile))`) while they run; a product's job first finishes
    every job of the product before on the same block, whose results are its rows."""
    unfinished: list[tuple[int, int, int, int]] = []  # jobs whose matmuls are emitted, with their tiles
    counts = [0] * len(tiles)
    for job in jobs:
        product, block, _ = job
        if product > 0:
            for earlier in [earlier for earlier in unfinished if earlier[:2] == (product - 1, block)]:
                unfinished.remove(earlier)
                finish(earlier)
        tile = tiles[product][counts[product] % 2]
        counts[product] += 1
        multiply(job, tile)
        while unfinished:  # the job before this one, finished while this one runs
            finish(unfinished.pop(0))
        unfinished.append((*job, tile))
    for job in unfinished:
        finish(job)


def _blocks(group: tuple[int, int], cols: int) -> range:
    """The column blocks of a group (first column, columns)."""
    n0, width = group
    return range(n0 // cols, -(-(n0 + width) // cols))


def job_order(blocks: int, groups: list[int]) -> list[tuple[int, int, int]]:
    """(product, row block, column group) in the order the array takes them, for a chain of products each
    taking the one before's result (`groups[p]` column groups each): product p works on block i - p at
    step i, its groups spread evenly among the others', a product before a later one at a tie. For two
    products: the first product's groups of block 0, then for each block i those of the second product for
    block i in turn with the first product's for block i + 1."""
    jobs = []
    for step in range(blocks + len(groups) - 1):
        active = [(product, step - product, group) for product, count in enumerate(groups)
                  if 0 <= step - product < blocks for group in range(count)]
        jobs += sorted(active, key=lambda job: ((job[2] + 0.5) / groups[job[0]], job[0]))
    return jobs
