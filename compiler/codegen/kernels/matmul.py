"""MatMul and Gemm on the systolic array: activation rows stream through stationary weight tiles.

For each batch, output column block (<= array_cols) and row block (sized so that two
result tiles fit the accumulator), the kernel walks K in steps of array_rows: DMA the A
slice and the B tile into alternating scratchpad buffers, `load_weights` the B tile,
`matmul` the A rows into the accumulator (overwrite on the first step, accumulate
after), then apply the epilogue (Gemm's alpha and bias) on the vector unit and DMA the
result out. Alternating buffers let the emitter overlap DMA with the array.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from compiler.codegen.context import LOCAL_ALIGN, CodegenContext, View, accelerator_dtype, unsupported
from compiler.codegen.kernels.epilogue import Finisher, Product, epilogue_of, laid_out_epilogue
from compiler.ir import Node
from isa.dtypes import DType

MATRIX_FLOAT = (DType.F32, DType.BF16)


def _as_matrix_batches(view: View, batch_shape: tuple[int, ...]) -> View:
    return view.broadcast_to(batch_shape + view.shape[-2:])


@dataclass(frozen=True)
class ConstantMatrix:
    """A constant right operand [K, N] (weights). It is placed in DRAM by the schedule that reads it,
    in the one layout that schedule reads: column blocks (streamed), transposed (activations
    stationary) or as given."""

    data: np.ndarray  # [K, N]
    dtype: DType
    name: str

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape


def matmul_views(ctx: CodegenContext, a: View, b: View | ConstantMatrix, out: View, node: Node, *,
                 alpha: float = 1.0, bias: View | None = None, product: Product | None = None,
                 epilogue: dict | None = None, a_first: bool = False) -> None:
    """out[..., M, N] = alpha * a[..., M, K] @ b[..., K, N] (+ bias broadcast to [..., M, N]), or
    `product`'s arithmetic (integer operands, a per-column scale and bias, requantization).

    A constant b (`ConstantMatrix`, 2-D) streams through the array in column blocks while the rows
    of a stay on chip (`_matmul_streamed`) when they fit; otherwise, with few rows, a stays in the
    array and b's rows stream (`_matmul_swapped`); otherwise tiles of both are loaded in turn.
    `a_first`: a run-time b that is loaded whole comes after a (a was ready earlier; see
    `_computed_before`)."""
    config = ctx.config
    if product is None:
        product = Product(a.dtype, alpha=alpha, **(epilogue or {}))
        if a.dtype not in MATRIX_FLOAT or b.dtype != a.dtype or out.dtype != product.out:  # (a tail's result type)
            raise unsupported(node, f"matmul of {a.dtype.asm_name} x {b.dtype.asm_name} -> {out.dtype.asm_name} "
                                    "is not supported yet")
    product, bias = column_bias(product, bias, out)
    if product.softmax and isinstance(b, ConstantMatrix):
        raise unsupported(node, "a softmax after a product with constant weights")
    alpha = product.alpha
    if bias is not None:  # a matrix bias: alpha is applied before it, block by block
        product = replace(product, alpha=1.0)
    if isinstance(b, ConstantMatrix):
        if bias is None and len(out.shape) == 2 and _matmul_streamed(ctx, a, b, out, product):
            return
        a = _rounded_copy(ctx, a, product.operand)
        # The swapped orientation streams the weights as activations: not for bf16 x i8 (weight-only int8).
        if len(out.shape) == 2 and (product.integer or product.weight_dtype == product.operand):
            n_chunk = _swapped_chunk(config, a.shape[0], product.operand)
            m_tile = min(a.shape[0], config.acc_bytes // (2 * config.array_cols * 4))
            if min(out.shape[1], n_chunk) > m_tile and a.shape[0] <= 4 * config.array_cols:
                b_transposed = ctx.constant(b.data.T, b.dtype, b.name + ".T")
                _matmul_swapped(ctx, a, b_transposed, out, product, bias, alpha, n_chunk)
                return
        b = ctx.constant(b.data, b.dtype, b.name)
    elif bias is None and _matmul_resident(ctx, a, b, out, product, a_first):
        return
    a = _rounded_copy(ctx, a, product.operand)
    batch_shape = out.shape[:-2]
    a, b = _as_matrix_batches(a, batch_shape), _as_matrix_batches(b, batch_shape)
    if product.softmax:
        if bias is not None:
            raise unsupported(node, "a softmax after a product with a bias matrix")
        _matmul_tiles(ctx, a, b, out, product, _whole_rows_tile(ctx, a, b, node, product), b.shape[-1])
    else:
        _matmul_tiles(ctx, a, b, out, product, _column_block_tile(ctx, a, b, product, bias), config.array_cols,
                      bias, alpha)


def column_bias(product: Product, bias: View | None, out: View) -> tuple[Product, View | None]:
    """A bias with one value per output column becomes the product's (its epilogue adds it); any other
    comes back broadcast to the output, a matrix to add."""
    if bias is None:
        return product, None
    bias = bias.broadcast_to(out.shape)
    if all(s == 0 for s in bias.strides[:-1]):
        return replace(product, bias=View(bias.addr, bias.dtype, bias.shape[-1:], bias.strides[-1:])), None
    return product, bias


def _column_block_tile(ctx: CodegenContext, a: View, b: View, product: Product, bias: View | None) -> int:
    """The rows of a result tile one array width wide: two fill at most the accumulator; two A slices
    and two B tiles share the scratchpad with the epilogue's buffers."""
    config = ctx.config
    rows, cols = config.array_rows, config.array_cols
    size, wsize = product.operand.size, product.weight_dtype.size
    m_tile = max(1, min(a.shape[-2], config.acc_bytes // (2 * cols * 4), 65535))
    reserve = Finisher.reserve_bytes(product, m_tile, cols, cols) + (2 * m_tile * cols * 4 if bias else 0)
    staging = 2 * rows * cols * b.dtype.size if b.dtype != product.weight_dtype else 0
    return max(1, min(m_tile, (ctx.scratchpad().free - reserve - 2 * rows * cols * wsize - staging - 256)
                      // (2 * rows * size)))


def _whole_rows_tile(ctx: CodegenContext, a: View, b: View, node: Node, product: Product) -> int:
    """The rows of a result tile holding every column (a softmax finishes whole rows): halved from
    what half the accumulator holds until its buffers fit the scratchpad."""
    config = ctx.config
    rows, cols = config.array_rows, config.array_cols
    n_total = b.shape[-1]
    fixed = (2 * rows * cols * product.weight_dtype.size
             + (2 * rows * cols * b.dtype.size if b.dtype != product.weight_dtype else 0) + 8 * LOCAL_ALIGN)

    def scratchpad_bytes(m: int) -> int:
        return Finisher.reserve_bytes(product, m, n_total, n_total) + 2 * m * rows * product.operand.size + fixed

    free = ctx.scratchpad().free
    m_tile = min(a.shape[-2], 65535, config.acc_bytes // (2 * n_total * 4))
    while m_tile > 1 and scratchpad_bytes(m_tile) > free:
        m_tile = -(-m_tile // 2)
    if m_tile < 1 or scratchpad_bytes(m_tile) > free:
        raise unsupported(node, f"a softmax over rows of {n_total} does not fit on chip")
    return m_tile


def _matmul_tiles(ctx: CodegenContext, a: View, b: View, out: View, product: Product, m_tile: int, width: int,
                  bias: View | None = None, alpha: float = 1.0) -> None:
    """out[..., M, N] = a @ b (a and b as batches of matrices), tile by tile: each block of m_tile
    rows collects `width` columns (one array width, or every column for a softmax on whole rows)
    in the accumulator, a K tile of a and a [K, array width] tile of b at a time, and is then
    finished; a block's rows of a are loaded once when K is one tile. A matrix bias is added
    block by block, after alpha."""
    config = ctx.config
    rows, cols = config.array_rows, config.array_cols
    batch_shape = out.shape[:-2]
    m_total, k_total = a.shape[-2:]
    n_total = b.shape[-1]
    size, wsize = product.operand.size, product.weight_dtype.size
    spad, acc = ctx.scratchpad(), ctx.accumulator()
    rounded = b.dtype != product.weight_dtype  # an f32 b rounded to bf16 on chip (FusedMatMul round_b)
    finisher = Finisher(ctx, product, spad, m_tile, width, width)
    a_buffers = [spad.alloc(m_tile * rows * size) for _ in range(2)]
    b_buffers = [spad.alloc(rows * cols * wsize) for _ in range(2)]
    b_staging = [spad.alloc(rows * cols * b.dtype.size) for _ in range(2)] if rounded else []
    bias_buffers = [spad.alloc(m_tile * width * 4) for _ in range(2)] if bias is not None else []
    c_buffers = [acc.alloc(m_tile * width * 4) for _ in range(2)]
    batches = f", {int(np.prod(batch_shape))} batches" if batch_shape else ""
    if product.softmax:
        ctx.note(f"whole rows: {-(-n_total // cols)} column blocks x {-(-k_total // rows)} K tiles into blocks of "
                 f"{m_tile} rows of {n_total}, then the softmax" + batches)
    else:
        ctx.note(f"weights stationary: {-(-n_total // cols)} column blocks x {-(-k_total // rows)} K tiles, "
                 f"rows streamed in blocks of {m_tile}" + batches)
    one_k_tile = k_total <= rows
    step = tile = 0
    for batch in range(int(np.prod(batch_shape, dtype=np.int64))):
        index = _unravel(batch, batch_shape)
        a_batch, b_batch = a.at(*index), b.at(*index)
        bias_batch = bias.at(*index) if bias is not None else None
        for g0 in range(0, n_total, width):
            group_width = min(width, n_total - g0)
            for m0 in range(0, m_total, m_tile):
                mt = min(m_tile, m_total - m0)
                c_tile = c_buffers[tile % 2]
                if one_k_tile:
                    a_tile = a_buffers[tile % 2]
                    ctx.dma_in(a_tile, a_batch.window(0, m0, m0 + mt))
                for n0 in range(g0, g0 + group_width, cols):
                    nt = min(cols, n_total - n0)
                    for k0 in range(0, k_total, rows):
                        kt = min(rows, k_total - k0)
                        if not one_k_tile:
                            a_tile = a_buffers[step % 2]
                            ctx.dma_in(a_tile, a_batch.window(0, m0, m0 + mt).window(1, k0, k0 + kt))
                        _load_b_tile(ctx, b_batch.window(0, k0, k0 + kt).window(1, n0, n0 + nt), b_buffers[step % 2],
                                     b_staging[step % 2] if rounded else None, product.weight_dtype)
                        ctx.emitter.emit("matmul", dtype=product.operand, a=a_tile, a_rs=kt, m=mt,
                                         c=c_tile + (n0 - g0) * 4, c_rs=group_width, accumulate=int(k0 > 0))
                        step += 1
                block = (slice(m0, m0 + mt), slice(g0, g0 + group_width))
                if bias_batch is not None:
                    _add_matrix_bias(ctx, c_tile, _block(bias_batch, block), bias_buffers[tile % 2], alpha)
                finisher.finish(c_tile, mt, group_width, False, g0, out, _block_of(block, index))
                tile += 1


def by_columns(b: View) -> bool:
    """Whether a right operand [..., K, N] is read by columns: unit stride along K (a folded Transpose), so
    that DMA reads it as rows of K, dense runs, and load_weights' transpose flag turns the tiles back."""
    return b.strides[-2] == 1 and b.strides[-1] > 1


def _load_b_tile(ctx: CodegenContext, window: View, b_tile: int, staging: int | None, weight_dtype: DType) -> None:
    """A run-time b's [kt, nt] tile into the array's weights: DMA'd (through `staging` and rounded
    to `weight_dtype` on the vector unit when given) and shifted in. A b read transposed (a folded
    Transpose: unit stride along K) comes in as rows of K, dense runs, and shifts in with
    load_weights' transpose flag."""
    kt, nt = window.shape
    transposed = by_columns(window)
    width, height = (kt, nt) if transposed else (nt, kt)
    if transposed:
        window = window.transpose((1, 0))
    if staging is not None:
        ctx.dma_in(staging, window)
        ctx.emitter.emit("vcvt", dtype=weight_dtype, src_dtype=window.dtype, dst=b_tile, dst_rs=width, a=staging,
                         a_rs=width, rows=height, cols=width)
    else:
        ctx.dma_in(b_tile, window)
    ctx.emitter.emit("load_weights", dtype=weight_dtype, addr=b_tile, k=kt, n=nt, stride=width,
                     transpose=int(transposed))


# The streamed schedule's sizes: a ring of this many weight chunks of at most this many K tiles
# (and this share of the scratchpad), and result groups of at most this many column blocks.
STREAM_SLOTS = 8
STREAM_CHUNK_TILES = 2
STREAM_SLOT_SHARE = 64
STREAM_GROUP_BLOCKS = 8


def stream_slot_bytes(config, k_total: int, weight_size: int, chunk_tiles: int = STREAM_CHUNK_TILES) -> int:
    """Bytes of one slot of the streamed schedules' ring: a chunk of at most `chunk_tiles` whole K tiles of one
    column block."""
    tile_bytes = config.array_rows * config.array_cols * weight_size
    k_tiles = -(-k_total // config.array_rows)
    return max(1, min(k_tiles, chunk_tiles, config.spad_bytes // STREAM_SLOT_SHARE // tile_bytes)) * tile_bytes


class StreamedWeights:
    """Constant weights [K, N] as the streamed schedules read them: stored in column blocks (each block's
    [K, <= array_cols] contiguous, so that every DMA of them is one contiguous run), fetched in chunks of
    whole K tiles that fill a ring slot of `slot_bytes`."""

    def __init__(self, ctx: CodegenContext, b: ConstantMatrix, slot_bytes: int):
        self.config = ctx.config
        cols = self.config.array_cols
        self.k_total, self.n_total = b.shape
        blocks = [np.ascontiguousarray(b.data[:, n0:n0 + cols]) for n0 in range(0, self.n_total, cols)]
        self.stored = ctx.constant(np.concatenate([block.reshape(-1) for block in blocks]), b.dtype,
                                   b.name + ".blocks")
        self.chunk_rows = slot_bytes // (self.config.array_rows * cols * b.dtype.size) * self.config.array_rows

    def chunks(self, column_blocks) -> list[tuple[int, int, int]]:
        """(column block, first K row, K rows) of each chunk of the blocks, in order."""
        return [(j, k0, min(self.chunk_rows, self.k_total - k0)) for j in column_blocks
                for k0 in range(0, self.k_total, self.chunk_rows)]

    def columns(self, block: int) -> int:
        return min(self.config.array_cols, self.n_total - block * self.config.array_cols)

    def multiply(self, ctx: CodegenContext, slot: int, chunk: tuple[int, int, int], product: Product,
                 rows_at: Callable[[int], tuple[int, int]], m: int, c_tile: int, first_column: int,
                 c_width: int) -> None:
        """The chunk's K tiles through the array from the ring slot it was fetched into: each shifted in by
        `load_weights`, then one `matmul` of `m` rows, read at rows_at(k0) = (address, row stride),
        accumulating into its columns of the [m, c_width] tile at `c_tile` (whose first column is
        `first_column`)."""
        j, chunk_k0, count = chunk
        nt, rows = self.columns(j), self.config.array_rows
        for k0 in range(chunk_k0, chunk_k0 + count, rows):
            address, stride = rows_at(k0)
            ctx.emitter.emit("load_weights", dtype=product.weight_dtype,
                             addr=slot + (k0 - chunk_k0) * nt * product.weight_dtype.size,
                             k=min(rows, self.k_total - k0), n=nt, stride=nt)
            ctx.emitter.emit("matmul", dtype=product.operand, a=address, a_rs=stride, m=m,
                             c=c_tile + (j * self.config.array_cols - first_column) * 4, c_rs=c_width,
                             accumulate=int(k0 > 0))

    def chunk(self, chunk: tuple[int, int, int]) -> View:
        """The chunk's stored weights: its K rows of its column block, [K rows x block columns] dense."""
        j, k0, count = chunk
        nt = self.columns(j)
        offset = (self.k_total * j * self.config.array_cols + k0 * nt) * self.stored.dtype.size
        return View.dense(self.stored.addr + offset, self.stored.dtype, (count * nt,))


def _matmul_streamed(ctx: CodegenContext, a: View, b: ConstantMatrix, out: View, product: Product) -> bool:
    """out [M, N] = a [M, K] @ b [K, N] with every weight tile loaded once and a's rows on chip.

    The weights are stored in column blocks (each block's [K, <= array_cols] contiguous), so
    every DMA of them is one contiguous run; chunks of a block (whole K tiles) cycle through
    a ring of STREAM_SLOTS scratchpad slots, each fetched again as soon as its last tile is in
    the array. a [M, K] is loaded once; each tile is `load_weights` then one `matmul` of
    all M rows (the array's double buffering overlaps the next tile's load with it), and a
    group of column blocks accumulates in one accumulator tile [M, group], finished (scale,
    bias, addend, activation, tail, store) while the next group runs; the groups get smaller
    towards the end, so that little finishing is left when the last matmul ends. With few
    rows this is what decode needs: the weights enter the array as fast as its weight path
    takes them, whatever their dtype, and DRAM reads each byte once in long runs.

    When the next kernel is a row operation that runs under this one (`ctx.next_reads_rows`: a
    LayerNorm after the product), the rows go through in blocks of array_rows, each with every
    column, so that the first rows are finished long before the last: the weights are then
    streamed once per block (their DMA takes at most half the array's time, whatever the dtype).

    Returns False, placing nothing, when a's rows or the accumulator tiles do not fit."""
    config = ctx.config
    rows, cols = config.array_rows, config.array_cols
    m_total, k_total = a.shape
    n_total = b.shape[1]
    size, wsize = product.operand.size, product.weight_dtype.size
    a_bytes = m_total * k_total * size
    a_staging = m_total * k_total * a.dtype.size if a.dtype != product.operand else 0  # round_a: f32 rows
    if m_total > 65535 or k_total > 65535 or a_bytes + a_staging > config.spad_bytes // 4:
        return False
    k_tiles, n_blocks = -(-k_total // rows), -(-n_total // cols)
    row_block = min(m_total, rows) if ctx.next_reads_rows else m_total
    group = min(n_blocks, STREAM_GROUP_BLOCKS, config.acc_bytes // (2 * row_block * cols * 4))
    if group < 1:
        return False
    slot_bytes = stream_slot_bytes(config, k_total, wsize)
    spad = ctx.scratchpad()
    fixed = a_bytes + a_staging + STREAM_SLOTS * slot_bytes + 8 * 64
    channels = n_total  # every channel's parameters loaded once, when they fit
    while Finisher.reserve_bytes(product, row_block, group * cols, channels) + fixed > spad.free:
        if channels > group * cols:
            channels = group * cols
        elif group > 1:
            group, channels = group - 1, min(channels, (group - 1) * cols)
        else:
            return False
    width = group * cols
    finisher = Finisher(ctx, product, spad, row_block, width, channels)
    a_tile = spad.alloc(a_bytes)
    staging = spad.alloc(a_staging) if a_staging else 0
    slots = [spad.alloc(slot_bytes) for _ in range(STREAM_SLOTS)]
    acc = ctx.accumulator()
    c_buffers = [acc.alloc(row_block * width * 4) for _ in range(2)]
    weights = StreamedWeights(ctx, b, slot_bytes)
    chunks = weights.chunks(range(n_blocks))  # in the order the array takes them
    # Smaller groups at the end pay when a block's finishing outweighs a vector instruction's latency.
    tapered = row_block * cols > config.vector_lanes * config.vector_latency
    passes = -(-m_total // row_block)
    ctx.note(f"weights streamed: {n_blocks} column blocks x {k_tiles} K tiles in {len(chunks)} contiguous "
             f"chunks through {STREAM_SLOTS} slots, {m_total} rows on chip"
             + (f", finished in blocks of {row_block} rows (weights streamed {passes} times)" if passes > 1 else "")
             + ", results in groups of " + (f"up to {width}, halving towards the end" if tapered else f"{width}"))
    fetches = passes * len(chunks)  # every chunk once per row block, in the order the array takes them

    def fetch(index: int) -> None:
        ctx.dma_in(slots[index % STREAM_SLOTS], weights.chunk(chunks[index % len(chunks)]))

    # One chunk before a, the rest after it: the DRAM channel serves DMAs in issue order, and a's
    # rows usually wait for the node before, whose result should not queue behind our weights.
    fetch(0)
    if channels == n_total:
        finisher.load_channels(0, n_total)
    if passes > 1 and a.dtype == product.operand:
        load_row_blocks(ctx, a_tile, a, row_block)
    else:
        _load_rows(ctx, a_tile, a, product.operand, staging)
    for index in range(1, min(STREAM_SLOTS, fetches)):
        fetch(index)
    number = 0
    for row_pass, r0 in enumerate(range(0, m_total, row_block)):
        mt = min(row_block, m_total - r0)
        position = 0  # the next of this pass's chunks
        for first_block, blocks_here in _groups(n_blocks, group, tapered):
            n0 = first_block * cols
            width_here = min(blocks_here * cols, n_total - n0)
            c_tile = c_buffers[number % 2]
            number += 1
            for j in range(first_block, first_block + blocks_here):
                while position < len(chunks) and chunks[position][0] == j:
                    index = row_pass * len(chunks) + position  # the fetch that brought this chunk
                    weights.multiply(ctx, slots[index % STREAM_SLOTS], chunks[position], product,
                                     lambda k0, r0=r0: (a_tile + (r0 * k_total + k0) * size, k_total), mt, c_tile, n0,
                                     width_here)
                    if index + STREAM_SLOTS < fetches:
                        fetch(index + STREAM_SLOTS)
                    position += 1
            finisher.finish(c_tile, mt, width_here, False, n0, out,
                            _block_of((slice(r0, r0 + mt), slice(n0, n0 + width_here))))
    return True


def _groups(n_blocks: int, group: int, tapered: bool) -> list[tuple[int, int]]:
    """(first block, blocks) of each result group: groups of `group` blocks, when `tapered` halving
    towards the end (..., 4, 2, 1), so that the group whose finishing nothing overlaps is one block."""
    if not tapered:
        return [(first, min(group, n_blocks - first)) for first in range(0, n_blocks, group)]
    sizes, size, left = [], 1, n_blocks
    while left:
        sizes.append(min(size, left))
        left -= sizes[-1]
        size = min(2 * size, group)
    sizes.reverse()
    starts = np.cumsum([0] + sizes[:-1]).tolist()
    return list(zip(starts, sizes, strict=True))


# A run-time right operand is loaded whole when it takes at most this share of the scratchpad.
RESIDENT_SHARE = 4
RESIDENT_DMA_BYTES = 1 << 16  # its DMAs, so that the first tiles start before the last bytes arrive


def _matmul_resident(ctx: CodegenContext, a: View, b: View, out: View, product: Product, a_first: bool) -> bool:
    """out[..., M, N] = a[..., M, K] @ b[..., K, N] for a run-time b (attention's caches) that fits on
    chip: b's DRAM span is loaded once, as it lies, and every weight tile is shifted into the
    array straight from it, with load_weights' row stride (and its transpose flag when b is read
    transposed: unit stride along K), so a transposed view of a [tokens, heads, head_dim] cache
    costs no copy. a's rows (all batches) are loaded once; every result stays in the
    accumulator and is finished and stored once. The tiles run in the order their bytes arrive.

    Returns False, emitting nothing, when b's strides do not allow it or it does not fit."""
    config = ctx.config
    rows, cols = config.array_rows, config.array_cols
    batch_shape = out.shape[:-2]
    a, b = _as_matrix_batches(a, batch_shape), _as_matrix_batches(b, batch_shape)
    m_total, k_total = a.shape[-2:]
    n_total = b.shape[-1]
    batches = int(np.prod(batch_shape, dtype=np.int64))
    size = product.operand.size
    stride_k, stride_n = b.strides[-2:]
    transpose = by_columns(b)
    stride = stride_n if transpose else stride_k
    rounded = b.dtype != product.weight_dtype  # an f32 b rounded to bf16 on chip (FusedMatMul round_b)
    if not (stride_n == 1 or transpose) or not 1 <= stride <= 65535 or m_total > 65535:
        return False  # (a broadcast b, stride 0, is left to the tile-by-tile path)
    span = 1 + sum((n - 1) * s for n, s in zip(b.shape, b.strides, strict=True))
    loader = _ResidentLoad(config, b, span, stride, product.weight_dtype)
    staging = loader.staging_bytes
    a_staging = batches * m_total * k_total * a.dtype.size if a.dtype != product.operand else 0  # round_a
    a_bytes, b_bytes = batches * m_total * k_total * size + a_staging, span * size + staging
    results = batches * m_total
    pack = _side_by_side(b, batch_shape, cols) if not transpose else 1
    packed_bytes = batches // batch_shape[-1] * -(-batch_shape[-1] // pack) * pack * m_total * pack * n_total * 4 \
        if pack > 1 else 0
    if a_bytes + b_bytes > config.spad_bytes // RESIDENT_SHARE or \
            results * n_total * 4 + packed_bytes > config.acc_bytes // 2:
        return False
    addend = product.addend
    if addend is not None and addend.strides != View.dense(addend.addr, addend.dtype, addend.shape).strides:
        return False
    spad = ctx.scratchpad()
    if Finisher.reserve_bytes(product, results, n_total, n_total) + a_bytes + b_bytes + 256 > spad.free:
        return False
    finisher = Finisher(ctx, product, spad, results, n_total, n_total)
    b_tile, a_tile = spad.alloc(span * size), spad.alloc(a_bytes - a_staging)
    a_stage = spad.alloc(a_staging) if a_staging else 0
    c_tile = ctx.accumulator().alloc(results * n_total * 4)
    # The engines take their instructions in order: the operand that was ready first is loaded (and
    # rounded) first, so that neither waits behind the other's wait for the node before.
    rows_view = a.reshape_dense((results, k_total)) if a.strides == View.dense(a.addr, a.dtype, a.shape).strides else a
    if a_first:
        _load_rows(ctx, a_tile, rows_view, product.operand, a_stage)
    loader.emit(ctx, b_tile, spad.alloc(staging) if staging else 0)
    if not a_first:
        _load_rows(ctx, a_tile, rows_view, product.operand, a_stage)

    def batch_offset(batch: int) -> int:  # elements from b's first one
        return (b.at(*_unravel(batch, batch_shape)).addr - b.addr) // b.dtype.size

    # Narrow batches side by side in b (attention's heads in a [tokens, heads, head_dim] cache) share
    # one weight tile: their rows stream together and each takes its own block of the results. Groups
    # of `pack` consecutive batches along the last batch axis; one batch per group without packing.
    last_axis = batch_shape[-1] if batch_shape else 1
    per_axis = -(-last_axis // pack)

    def group_of(batch: int) -> tuple[int, int, int]:  # (group, place in it, batches in it)
        run, index = divmod(batch, last_axis)
        group, place = divmod(index, pack)
        return run * per_axis + group, place, min(pack, last_axis - group * pack)

    group_bytes = pack * m_total * pack * n_total * 4
    c_packed = ctx.accumulator().alloc(batches // last_axis * per_axis * group_bytes) if pack > 1 else 0
    tiles = []  # (the last piece of b it needs, first batch, batches, first column, first K row)
    for batch in range(batches):
        group, place, count = group_of(batch)
        if place:
            continue
        for n0 in range(0, n_total, cols):
            for k0 in range(0, k_total, rows):
                kt, nt = min(rows, k_total - k0), min(cols, n_total - n0)
                first = batch_offset(batch) + k0 * stride_k + n0 * stride_n
                height, width = (nt, kt) if transpose else (kt, count * nt)
                tiles.append((loader.needed(first, height, width), batch, count, n0, k0))
    tiles.sort()
    ctx.note(f"right operand on chip ({span * size:,} B{', read transposed' if transpose else ''}"
             f"{', rounded to bf16' if rounded else ''}): {len(tiles)} tiles for {batches} batches of {m_total} rows"
             + (f", {pack} batches per tile" if pack > 1 else ""))
    for _, batch, count, n0, k0 in tiles:
        kt, nt = min(rows, k_total - k0), count * min(cols, n_total - n0)
        offset = (batch_offset(batch) + k0 * stride_k + n0 * stride_n) * size
        ctx.emitter.emit("load_weights", dtype=product.weight_dtype, addr=b_tile + offset, k=kt, n=nt,
                         stride=stride, transpose=int(transpose))
        if pack > 1:
            c, c_rs = c_packed + group_of(batch)[0] * group_bytes, pack * n_total
        else:
            c, c_rs = c_tile + (batch * m_total * n_total + n0) * 4, n_total
        ctx.emitter.emit("matmul", dtype=product.operand, a=a_tile + (batch * m_total * k_total + k0) * size,
                         a_rs=k_total, m=count * m_total, c=c, c_rs=c_rs, accumulate=int(k0 > 0))
    for batch in range(batches if pack > 1 else 0):  # each batch's own block of its group's results
        group, place, _ = group_of(batch)
        block = c_packed + group * group_bytes + (place * m_total * pack * n_total + place * n_total) * 4
        ctx.emitter.emit("vmov", dtype=DType.F32, dst=c_tile + batch * m_total * n_total * 4, dst_rs=n_total,
                         a=block, a_rs=pack * n_total, rows=m_total, cols=n_total)
    if product.tail is None and out.strides == View.dense(out.addr, out.dtype, out.shape).strides:
        finisher.finish(c_tile, results, n_total, False, 0, out, lambda view: view.reshape_dense((results, n_total)))
        return True
    # Batch by batch: the output is written transposed (heads back between tokens), or a tail operand
    # repeats over batches (a mask over heads).
    for batch in range(batches):
        index = _unravel(batch, batch_shape)
        finisher.finish(c_tile + batch * m_total * n_total * 4, m_total, n_total, False, 0, out,
                        lambda view, index=index: view.at(*index))
    return True


class _ResidentLoad:
    """The DMAs that bring a run-time right operand's DRAM span on chip, as it lies (rounded to bf16 on
    the way when it is f32 and the product bf16), in an order the tiles can follow.

    When the span is whole rows of the tiles' row stride (attention's [tokens, heads * head_dim]
    caches), it comes in blocks of array_rows rows by one DRAM burst of columns, row blocks first, so
    that the first heads' tiles start once their first block is in, not half the cache; otherwise in
    contiguous chunks. `needed` says which piece a tile waits for, to sort the tiles by it."""

    STAGING = 4  # conversion buffers in flight

    def __init__(self, config, b: View, span: int, stride: int, dtype: DType):
        self.b, self.span, self.tile_stride, self.dtype = b, span, stride, dtype
        self.rounded = b.dtype != dtype
        self.block_rows = config.array_rows
        self.block_cols = max(1, config.dram_bytes_per_cycle // b.dtype.size)
        self.blocked = span % stride == 0 and stride > self.block_cols and stride <= 65535
        self.stride = stride  # the span seen as rows of this many elements, loaded in blocks
        if not self.blocked:  # contiguous chunks: rows of one chunk, one row per block
            self.block_rows, self.block_cols = 1, max(1, min(span, RESIDENT_DMA_BYTES // b.dtype.size))
            self.stride = self.block_cols
        piece = self.block_rows * self.block_cols * b.dtype.size
        self.staging_bytes = self.STAGING * (piece + LOCAL_ALIGN) if self.rounded else 0
        self.column_blocks = -(-self.stride // self.block_cols) if self.blocked else 1

    def needed(self, first: int, height: int, width: int) -> int:
        """The position, in load order, of the last piece holding a tile of `height` rows of `width`
        elements each (rows the tiles' stride apart in the span) starting at element `first`."""
        last = first + (height - 1) * self.tile_stride + width - 1
        if not self.blocked:
            return last // self.block_cols
        return last // self.stride // self.block_rows * self.column_blocks + \
            (first % self.stride + width - 1) // self.block_cols

    def emit(self, ctx: CodegenContext, tile: int, staging: int) -> None:
        b, size, source_size = self.b, self.dtype.size, self.b.dtype.size
        rows_total = -(-self.span // self.stride)
        piece = self.block_rows * self.block_cols * source_size + LOCAL_ALIGN
        number = 0
        for r0 in range(0, rows_total, self.block_rows):
            for c0 in range(0, self.stride, self.block_cols):
                height = min(self.block_rows, rows_total - r0)
                width = min(self.block_cols, self.stride - c0, self.span - r0 * self.stride - c0)
                first = r0 * self.stride + c0
                dram = dict(dram=b.addr + first * source_size, esize=source_size, n0=width, n1=height, n2=1,
                            ds0=1, ds1=self.stride, ds2=0)
                if not self.rounded:
                    ctx.emitter.emit("dma_load", local=tile + first * size, ls1=self.stride,
                                     ls2=self.stride * height, **dram)
                    continue
                buffer = staging + number % self.STAGING * piece
                ctx.emitter.emit("dma_load", local=buffer, ls1=width, ls2=width * height, **dram)
                ctx.emitter.emit("vcvt", dtype=self.dtype, src_dtype=b.dtype, dst=tile + first * size,
                                 dst_rs=self.stride, a=buffer, a_rs=width, rows=height, cols=width)
                number += 1


def _side_by_side(b: View, batch_shape: tuple[int, ...], cols: int) -> int:
    """How many consecutive batches of b (along its last batch axis) one array-wide tile holds: those
    whose [K, N] matrices lie side by side in DRAM rows (b's batch stride is N, its columns dense)."""
    if not batch_shape or b.strides[-1] != 1 or b.strides[-3] != b.shape[-1]:
        return 1
    return max(1, min(batch_shape[-1], cols // b.shape[-1]))


def _load_rows(ctx: CodegenContext, tile: int, view: View, dtype: DType, staging: int) -> None:
    """The view into the dense tile, in `dtype`: an f32 view (round_a) goes through `staging` and vcvt."""
    if view.dtype == dtype:
        ctx.dma_in(tile, view)
        return
    ctx.dma_in(staging, view)
    _round_to(ctx, dtype, tile, staging, view.dtype, view.size)


def load_row_blocks(ctx: CodegenContext, tile: int, a: View, row_block: int) -> None:
    """a [M, K] into the dense tile one block of `row_block` rows at a time: a kernel that takes its rows
    block by block then starts on the first block before the node before it has written the last (the
    emitter tracks a tensor's DRAM in pieces)."""
    m_total, k_total = a.shape
    for r0 in range(0, m_total, row_block):
        ctx.dma_in(tile + r0 * k_total * a.dtype.size, a.window(0, r0, min(r0 + row_block, m_total)))


def _rounded_copy(ctx: CodegenContext, view: View, dtype: DType) -> View:
    """The view itself when it has `dtype`; else (an f32 operand with round_a, on a schedule that does not
    round on chip) a dense copy in `dtype` in the node's DRAM scratch, made through the scratchpad."""
    if view.dtype == dtype:
        return view
    copy = ctx.allocate(view.shape, dtype)
    spad = ctx.scratchpad()
    rows_shape, cols = view.shape[:-1], view.shape[-1]
    chunk = max(1, min(65535, spad.free // 4 // (cols * (view.dtype.size + dtype.size))))
    if cols * (view.dtype.size + dtype.size) * 2 > spad.free:
        raise MemoryError(f"scratchpad: a row of {cols} elements does not fit to be rounded")
    buffers = [(spad.alloc(chunk * cols * view.dtype.size), spad.alloc(chunk * cols * dtype.size)) for _ in range(2)]
    source = view.reshape_dense((int(np.prod(rows_shape)), cols)) if view.strides == View.dense(
        view.addr, view.dtype, view.shape).strides else None
    target = copy.reshape_dense((int(np.prod(rows_shape)), cols))
    step = 0
    for number, index in enumerate(np.ndindex(*rows_shape[:-1]) if source is None else [()]):
        part = view.at(*index) if source is None else source
        first = number * part.shape[0]
        for r0 in range(0, part.shape[0], chunk):
            count = min(chunk, part.shape[0] - r0)
            staging, rounded = buffers[step % 2]
            ctx.dma_in(staging, part.window(0, r0, r0 + count))
            _round_to(ctx, dtype, rounded, staging, view.dtype, count * cols)
            ctx.dma_out(rounded, target.window(0, first + r0, first + r0 + count))
            step += 1
    return copy


def _round_to(ctx: CodegenContext, dtype: DType, dst: int, src: int, src_dtype: DType, count: int) -> None:
    """`count` consecutive elements at src converted to `dtype` at dst (vcvt rounds to nearest even)."""
    width = min(count, 4096)
    rows, rest = divmod(count, width)
    if rows:
        ctx.emitter.emit("vcvt", dtype=dtype, src_dtype=src_dtype, dst=dst, dst_rs=width, a=src, a_rs=width,
                         rows=rows, cols=width)
    if rest:
        done = rows * width
        ctx.emitter.emit("vcvt", dtype=dtype, src_dtype=src_dtype, dst=dst + done * dtype.size, dst_rs=rest,
                         a=src + done * src_dtype.size, a_rs=rest, rows=1, cols=rest)


def _swapped_chunk(config, m_total: int, dtype: DType) -> int:
    """Rows of b^T streamed per matmul in the transposed orientation (accumulator and scratchpad bound)."""
    m_width = min(m_total, config.array_cols)
    return max(1, min(65535, config.acc_bytes // (2 * m_width * 4), config.spad_bytes // (8 * config.array_rows *
                                                                                          dtype.size)))


def _matmul_swapped(ctx: CodegenContext, a: View, b_transposed: View, out: View, product: Product,
                    bias: View | None, alpha: float, n_chunk: int) -> None:
    """out^T = b^T @ a^T for a with few rows: a^T tiles [K, M] stay in the array (loaded transposed
    from a's rows), rows of b^T stream, and the accumulator holds out^T [N, M]."""
    config = ctx.config
    size, wsize = product.operand.size, product.weight_dtype.size
    rows, cols = config.array_rows, config.array_cols
    m_total, k_total = a.shape
    n_total = b_transposed.shape[0]
    spad, acc = ctx.scratchpad(), ctx.accumulator()
    m_width = min(cols, m_total)

    # W^T rows are read `k_group` K tiles wide, so that each row's run fills at least one DRAM beat.
    k_group = max(1, min(config.dram_bytes_per_cycle // (rows * wsize), -(-k_total // rows)))

    def scratchpad_bytes(chunk: int) -> int:
        # The finished out^T tiles are turned back on the vector unit, so that the store writes whole rows.
        return (Finisher.reserve_bytes(product, chunk, m_width, chunk, transpose=True) + 2 * cols * rows * size
                + 2 * chunk * k_group * rows * wsize + (2 * chunk * m_width * 4 if bias is not None else 0) + 512)

    while n_chunk > 1 and scratchpad_bytes(n_chunk) > spad.free:
        n_chunk = max(1, n_chunk * 7 // 8)
    finisher = Finisher(ctx, product, spad, n_chunk, m_width, n_chunk, transpose=True)
    a_buffers = [spad.alloc(cols * rows * size) for _ in range(2)]
    b_buffers = [spad.alloc(n_chunk * k_group * rows * wsize) for _ in range(2)]
    bias_buffers = [spad.alloc(n_chunk * m_width * 4) for _ in range(2)] if bias is not None else []
    c_buffers = [acc.alloc(n_chunk * m_width * 4) for _ in range(2)]
    ctx.note(f"activations stationary (out^T = W^T A^T): {-(-m_total // cols)} row blocks x {-(-k_total // rows)} "
             f"K tiles, W^T rows streamed in chunks of {n_chunk}, {k_group} K tile(s) a load")
    step = tile = group = 0
    for m0 in range(0, m_total, cols):
        mt = min(cols, m_total - m0)
        for n0 in range(0, n_total, n_chunk):
            nt = min(n_chunk, n_total - n0)
            c_tile = c_buffers[tile % 2]
            for g0 in range(0, k_total, rows * k_group):
                width = min(rows * k_group, k_total - g0)
                b_tile = b_buffers[group % 2]
                group += 1
                ctx.dma_in(b_tile, b_transposed.window(0, n0, n0 + nt).window(1, g0, g0 + width))
                for k0 in range(g0, g0 + width, rows):
                    kt = min(rows, k_total - k0)
                    a_tile = a_buffers[step % 2]
                    ctx.dma_in(a_tile, a.window(0, m0, m0 + mt).window(1, k0, k0 + kt))
                    ctx.emitter.emit("load_weights", dtype=product.operand, addr=a_tile, k=kt, n=mt, stride=kt,
                                     transpose=1)
                    ctx.emitter.emit("matmul", dtype=product.weight_dtype, a=b_tile + (k0 - g0) * wsize, a_rs=width,
                                     m=nt, c=c_tile, c_rs=mt, accumulate=int(k0 > 0))
                    step += 1
            # The accumulator holds out^T: a matrix bias is read through a transposed view; the
            # finisher transposes the result back before the addend, the activation and the store.
            block = (slice(m0, m0 + mt), slice(n0, n0 + nt))
            if bias is not None:
                _add_matrix_bias(ctx, c_tile, _block(bias, block).transpose((1, 0)), bias_buffers[tile % 2],
                                 alpha)
            finisher.finish(c_tile, nt, mt, True, n0, out, _block_of(block))
            tile += 1


def _block(view: View, block: tuple[slice, slice]) -> View:
    rows, cols = block
    return view.window(0, rows.start, rows.stop).window(1, cols.start, cols.stop)


def as_rows(ctx: CodegenContext, node: Node) -> tuple[View, View]:
    """The node's dense input 0 [..., K] and output [..., N] as [rows, K] and [rows, N]: every batch's
    rows through one product with constant weights."""
    a, out = ctx.view(node.inputs[0]), ctx.view(node.outputs[0])
    if a.strides != View.dense(a.addr, a.dtype, a.shape).strides:
        raise unsupported(node, "a strided input")
    a = a.reshape_dense((int(np.prod(a.shape[:-1])), a.shape[-1]))
    return a, out.reshape_dense((a.shape[0], out.shape[-1]))


def laid_out_as(view: View, shape: tuple[int, ...]) -> View:
    """A tail operand laid out like the output [..., N] as the `shape` (same element count, last
    axis N) the kernel computes in: a scalar or per-column operand by its strides, a whole tensor
    (dense) by reshaping; one already of that shape (a plane repeated over batches) as it is."""
    if view.shape == tuple(shape):
        return view
    if not any(s for s, n in zip(view.strides[:-1], view.shape[:-1], strict=True) if n != 1):
        last = view.strides[-1] if view.shape[-1] != 1 else 0
        return View(view.addr, view.dtype, tuple(shape), (0,) * (len(shape) - 1) + (last,))
    return view.reshape_dense(tuple(shape))


def _block_of(block: tuple[slice, slice], index: tuple[int, ...] = ()) -> Callable[[View], View]:
    """A tile's block of a view laid out like the output: batch `index`, rows and columns `block`."""
    return lambda view: _block(view.at(*index), block)


def _add_matrix_bias(ctx: CodegenContext, c_tile: int, bias: View, bias_tile: int, alpha: float) -> None:
    """alpha * tile + a bias that varies along both axes (Gemm's C as a matrix, loaded block by block)."""
    rows, cols = bias.shape
    tile_shape = dict(dtype=DType.F32, dst=c_tile, dst_rs=cols, a=c_tile, a_rs=cols, rows=rows, cols=cols)
    if alpha != 1.0:
        ctx.emitter.emit("vmuli", imm=alpha, **tile_shape)
    ctx.dma_in(bias_tile, bias)
    ctx.emitter.emit("vadd", b=bias_tile, b_rs=cols, **tile_shape)


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    index = []
    for n in reversed(shape):
        index.append(flat % n)
        flat //= n
    return tuple(reversed(index))


def _matrix_operand(ctx: CodegenContext, name: str, node: Node, transpose: bool = False) -> View:
    """The input as a view with at least two dimensions (1-D vectors become rows or columns)."""
    value = ctx.graph.values[name]
    view = ctx.view(name)
    if value.is_const and transpose:
        # Transpose constant weights at compile time, so the DMA reads them densely.
        axes = list(range(value.const.ndim))
        axes[-2:] = axes[-1], axes[-2]
        return ctx.constant(value.const.transpose(axes), accelerator_dtype(value.dtype, name), name + ".T")
    if transpose:
        axes = list(range(len(view.shape)))
        axes[-2:] = axes[-1], axes[-2]
        return view.transpose(axes)
    return view


def matmul_kernel(ctx: CodegenContext, node: Node) -> None:
    """MatMul: numpy matmul semantics, including 1-D operands and broadcast batches."""
    a, b, result, bias, epilogue, product = matmul_operands(ctx, node)
    # Only a run-time b is ever loaded whole (the order question below); constants skip the graph walk.
    run_time_b = not ctx.graph.values[node.inputs[1]].is_const
    matmul_views(ctx, a, b, result, node, bias=bias, product=product, epilogue=epilogue,
                 a_first=run_time_b and _computed_before(ctx, node.inputs[0], node.inputs[1]))


def matmul_operands(ctx: CodegenContext, node: Node) -> tuple:
    """A MatMul/FusedMatMul node's operands as matmul_views takes them: (a, b, result view, bias view,
    epilogue fields, Product or None)."""
    a, out = ctx.view(node.inputs[0]), ctx.view(node.outputs[0])
    if node.attrs.get("perm_a"):  # FusedMatMul: A read transposed (with a run-time B)
        a = a.transpose(node.attrs["perm_a"])
    b_value = ctx.graph.values[node.inputs[1]]
    perm_b = node.attrs.get("perm_b") or list(range(len(b_value.shape)))  # FusedMatMul: B read transposed
    if b_value.is_const and b_value.const.ndim == 2 and len(a.shape) >= 2 and \
            a.strides == View.dense(a.addr, a.dtype, a.shape).strides:
        # Constant weights shared by every batch: one [batch * M, K] x [K, N] product.
        a = a.reshape_dense((int(np.prod(a.shape[:-1])), a.shape[-1]))
        b = ConstantMatrix(b_value.const.transpose(perm_b), accelerator_dtype(b_value.dtype, b_value.name),
                           node.inputs[1])
        result = View.dense(out.addr, out.dtype, (a.shape[0], b.shape[1]))
    else:
        b = ctx.view(node.inputs[1]).transpose(perm_b)
        if len(a.shape) == 1:  # a row vector; its dimension is dropped from the result
            a = View(a.addr, a.dtype, (1,) + a.shape, (0,) + a.strides)
        if len(b.shape) == 1:  # a column vector
            b = View(b.addr, b.dtype, b.shape + (1,), b.strides + (0,))
        result = View.dense(out.addr, out.dtype, _batch_of(a, b) + (a.shape[-2], b.shape[-1]))
        if node.attrs.get("perm_out"):  # FusedMatMul: the output is the result transposed, written in place
            result = out.transpose([int(axis) for axis in np.argsort(node.attrs["perm_out"])])
    # FusedMatMul: its bias per column, addend and activation go to the epilogue.
    bias = ctx.view(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    epilogue = laid_out_epilogue(epilogue_of(ctx, node, 3), lambda view: laid_out_as(view, result.shape),
                                 len(result.shape) - 1)
    # round_a/round_b: an f32 operand multiplied as bf16, rounded on chip as it is loaded.
    rounded = "bf16" in (node.attrs.get("round_a"), node.attrs.get("round_b"))
    product = Product(DType.BF16, **epilogue) if rounded else None
    return a, b, result, bias, epilogue, product


def _computed_before(ctx: CodegenContext, first: str, second: str) -> bool:
    """Whether value `first` was computed by an earlier node than `second` (through ops that only
    rename their input: a reshape is ready when its input is; inputs and constants come first)."""
    from compiler.codegen.kernels import ALIASES

    producers = ctx.graph.producers()
    position = {id(node): index for index, node in enumerate(ctx.graph.nodes)}

    def computed_at(name: str) -> int:
        node = producers.get(name)
        while node is not None and node.op in ALIASES:
            node = producers.get(node.inputs[0])
        return -1 if node is None else position[id(node)]

    return computed_at(first) < computed_at(second)


def _batch_of(a: View, b: View) -> tuple[int, ...]:
    left, right = a.shape[:-2], b.shape[:-2]
    rank = max(len(left), len(right))
    left, right = (1,) * (rank - len(left)) + left, (1,) * (rank - len(right)) + right
    return tuple(max(x, y) for x, y in zip(left, right, strict=True))


def gemm_kernel(ctx: CodegenContext, node: Node) -> None:
    """Gemm: alpha * A' @ B' + beta * C, with A' and B' optionally transposed."""
    attrs = node.attrs
    a = _matrix_operand(ctx, node.inputs[0], node, bool(attrs.get("transA", 0)))
    b_value = ctx.graph.values[node.inputs[1]]
    if b_value.is_const:
        b = ConstantMatrix(b_value.const.T if attrs.get("transB", 0) else b_value.const,
                           accelerator_dtype(b_value.dtype, b_value.name), node.inputs[1])
    else:
        b = _matrix_operand(ctx, node.inputs[1], node, bool(attrs.get("transB", 0)))
    out = ctx.view(node.outputs[0])
    bias = None
    if len(node.inputs) > 2 and node.inputs[2]:
        beta = float(attrs.get("beta", 1.0))
        bias_value = ctx.graph.values[node.inputs[2]]
        if bias_value.is_const:
            bias = ctx.constant(bias_value.const * beta, DType.F32, node.inputs[2] + ".beta")
        elif beta == 1.0:
            bias = ctx.view(node.inputs[2])
        else:
            raise unsupported(node, "beta != 1 with a run-time C is not supported yet")
    matmul_views(ctx, a, b, out, node, alpha=float(attrs.get("alpha", 1.0)), bias=bias,
                 epilogue=epilogue_of(ctx, node, 3))


def matmul_w8_kernel(ctx: CodegenContext, node: Node) -> None:
    """MatMulW8: bf16 rows of A times the int8 weights (the matrix unit's weight-only int8 mode),
    each column's scale and bias applied to the fp32 accumulator, then the epilogue."""
    a, out = as_rows(ctx, node)
    bias = ctx.view(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None
    epilogue = epilogue_of(ctx, node, 4)
    product = Product(DType.BF16, weights=DType.I8, scale=ctx.view(node.inputs[2]), bias=bias,
                      **epilogue).laid_out(lambda view: laid_out_as(view, out.shape), 1)
    weight = ctx.graph.values[node.inputs[1]]
    if not weight.is_const:
        raise unsupported(node, "run-time weights")
    matmul_views(ctx, a, ConstantMatrix(weight.const, DType.I8, weight.name), out, node, product=product)
