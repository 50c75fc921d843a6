"""MatMul and Gemm on the systolic array: activation rows stream through stationary weight tiles.

For each batch, output column block (<= array_cols) and row block (sized so that two
result tiles fit the accumulator), the kernel walks K in steps of array_rows: DMA the A
slice and the B tile into alternating scratchpad buffers, `load_weights` the B tile,
`matmul` the A rows into the accumulator (overwrite on the first step, accumulate
after), then apply the epilogue (Gemm's alpha and bias) on the vector unit and DMA the
result out. Alternating buffers let the emitter overlap DMA with the array.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from compiler.codegen.context import CodegenContext, View, accelerator_dtype, unsupported
from compiler.codegen.kernels.epilogue import Finisher, Product, epilogue_of
from compiler.ir import Node
from isa.dtypes import DType

MATRIX_FLOAT = (DType.F32, DType.BF16)


def _as_matrix_batches(view: View, batch_shape: tuple[int, ...]) -> View:
    return view.broadcast_to(batch_shape + view.shape[-2:])


def matmul_views(ctx: CodegenContext, a: View, b: View, out: View, node: Node, *, alpha: float = 1.0,
                 bias: View | None = None, b_transposed: View | None = None, product: Product | None = None,
                 epilogue: dict | None = None) -> None:
    """out[..., M, N] = alpha * a[..., M, K] @ b[..., K, N] (+ bias broadcast to [..., M, N]), or
    `product`'s arithmetic (integer operands, a per-column bias, requantization).

    b_transposed: b as a dense [N, K] tensor (constant weights), which makes the transposed
    orientation possible: used when more rows would stream that way (few rows of a)."""
    config = ctx.config
    if product is None:
        if a.dtype not in MATRIX_FLOAT or b.dtype != a.dtype or out.dtype != DType.F32:
            raise unsupported(node, f"matmul of {a.dtype.asm_name} x {b.dtype.asm_name} -> {out.dtype.asm_name} "
                                    "is not supported yet")
        product = Product(a.dtype, alpha=alpha, **(epilogue or {}))
    if bias is not None:
        bias = bias.broadcast_to(out.shape)
        if all(s == 0 for s in bias.strides[:-1]):  # one value per output column: the epilogue's bias
            product = replace(product, bias=View(bias.addr, bias.dtype, bias.shape[-1:], bias.strides[-1:]))
            bias = None
    alpha = product.alpha
    if bias is not None:  # a matrix bias: alpha is applied before it, block by block
        product = replace(product, alpha=1.0)
    if b_transposed is not None and len(out.shape) == 2:
        n_chunk = _swapped_chunk(config, a.shape[0], product.operand)
        m_tile = min(a.shape[0], config.acc_bytes // (2 * config.array_cols * 4))
        if min(out.shape[1], n_chunk) > m_tile and a.shape[0] <= 4 * config.array_cols:
            _matmul_swapped(ctx, a, b_transposed, out, product, bias, alpha, n_chunk)
            return
    batch_shape = out.shape[:-2]
    a, b = _as_matrix_batches(a, batch_shape), _as_matrix_batches(b, batch_shape)
    m_total, k_total = a.shape[-2:]
    n_total = b.shape[-1]
    rows, cols = config.array_rows, config.array_cols
    size, wsize = product.operand.size, product.weight_dtype.size
    spad, acc = ctx.scratchpad(), ctx.accumulator()
    # Two result tiles fill at most the accumulator; two A slices and two B tiles share the scratchpad
    # with the epilogue's buffers.
    m_tile = max(1, min(m_total, config.acc_bytes // (2 * cols * 4), 65535))
    reserve = Finisher.reserve_bytes(product, m_tile, cols, cols) + (2 * m_tile * cols * 4 if bias else 0)
    m_tile = max(1, min(m_tile, (spad.free - reserve - 2 * rows * cols * wsize - 256) // (2 * rows * size)))
    finisher = Finisher(ctx, product, spad, m_tile, cols, cols)
    a_buffers = [spad.alloc(m_tile * rows * size) for _ in range(2)]
    b_buffers = [spad.alloc(rows * cols * wsize) for _ in range(2)]
    bias_buffers = [spad.alloc(m_tile * cols * 4) for _ in range(2)] if bias is not None else []
    c_buffers = [acc.alloc(m_tile * cols * 4) for _ in range(2)]
    ctx.note(f"weights stationary: {-(-n_total // cols)} column blocks x {-(-k_total // rows)} K tiles, "
             f"rows streamed in blocks of {m_tile}" + (f", {int(np.prod(batch_shape))} batches" if batch_shape else ""))
    step = tile = 0
    batch_count = 1
    for n in batch_shape:
        batch_count *= n
    for batch in range(batch_count):
        index = _unravel(batch, batch_shape)
        a_batch, b_batch, out_batch = a.at(*index), b.at(*index), out.at(*index)
        bias_batch = bias.at(*index) if bias is not None else None
        for n0 in range(0, n_total, cols):
            nt = min(cols, n_total - n0)
            for m0 in range(0, m_total, m_tile):
                mt = min(m_tile, m_total - m0)
                c_tile = c_buffers[tile % 2]
                for k0 in range(0, k_total, rows):
                    kt = min(rows, k_total - k0)
                    a_tile, b_tile = a_buffers[step % 2], b_buffers[step % 2]
                    ctx.dma_in(a_tile, a_batch.window(0, m0, m0 + mt).window(1, k0, k0 + kt))
                    ctx.dma_in(b_tile, b_batch.window(0, k0, k0 + kt).window(1, n0, n0 + nt))
                    ctx.emitter.emit("load_weights", dtype=product.weight_dtype, addr=b_tile, k=kt, n=nt, stride=nt)
                    ctx.emitter.emit("matmul", dtype=product.operand, a=a_tile, a_rs=kt, m=mt, c=c_tile, c_rs=nt,
                                     accumulate=int(k0 > 0))
                    step += 1
                block = (slice(m0, m0 + mt), slice(n0, n0 + nt))
                if bias_batch is not None:
                    _add_matrix_bias(ctx, c_tile, _block(bias_batch, block), bias_buffers[tile % 2], alpha)
                addend = _block(product.addend.at(*index), block) if product.addend is not None else None
                finisher.finish(c_tile, mt, nt, False, n0, _block(out_batch, block), addend,
                                _tail_blocks(product, block, index))
                tile += 1


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

    def scratchpad_bytes(chunk: int) -> int:
        # The finished out^T tiles are turned back on the vector unit, so that the store writes whole rows.
        return (Finisher.reserve_bytes(product, chunk, m_width, chunk, transpose=True) + 2 * cols * rows * size
                + 2 * chunk * rows * wsize + (2 * chunk * m_width * 4 if bias is not None else 0) + 512)

    while n_chunk > 1 and scratchpad_bytes(n_chunk) > spad.free:
        n_chunk = max(1, n_chunk * 7 // 8)
    finisher = Finisher(ctx, product, spad, n_chunk, m_width, n_chunk, transpose=True)
    a_buffers = [spad.alloc(cols * rows * size) for _ in range(2)]
    b_buffers = [spad.alloc(n_chunk * rows * wsize) for _ in range(2)]
    bias_buffers = [spad.alloc(n_chunk * m_width * 4) for _ in range(2)] if bias is not None else []
    c_buffers = [acc.alloc(n_chunk * m_width * 4) for _ in range(2)]
    ctx.note(f"activations stationary (out^T = W^T A^T): {-(-m_total // cols)} row blocks x {-(-k_total // rows)} "
             f"K tiles, W^T rows streamed in chunks of {n_chunk}")
    step = tile = 0
    for m0 in range(0, m_total, cols):
        mt = min(cols, m_total - m0)
        for n0 in range(0, n_total, n_chunk):
            nt = min(n_chunk, n_total - n0)
            c_tile = c_buffers[tile % 2]
            for k0 in range(0, k_total, rows):
                kt = min(rows, k_total - k0)
                a_tile, b_tile = a_buffers[step % 2], b_buffers[step % 2]
                ctx.dma_in(a_tile, a.window(0, m0, m0 + mt).window(1, k0, k0 + kt))
                ctx.emitter.emit("load_weights", dtype=product.operand, addr=a_tile, k=kt, n=mt, stride=kt,
                                 transpose=1)
                ctx.dma_in(b_tile, b_transposed.window(0, n0, n0 + nt).window(1, k0, k0 + kt))
                ctx.emitter.emit("matmul", dtype=product.weight_dtype, a=b_tile, a_rs=kt, m=nt, c=c_tile, c_rs=mt,
                                 accumulate=int(k0 > 0))
                step += 1
            # The accumulator holds out^T: a matrix bias is read through a transposed view; the
            # finisher transposes the result back before the addend, the activation and the store.
            block = (slice(m0, m0 + mt), slice(n0, n0 + nt))
            if bias is not None:
                _add_matrix_bias(ctx, c_tile, _block(bias, block).transpose((1, 0)), bias_buffers[tile % 2],
                                 alpha)
            addend = _block(product.addend, block) if product.addend is not None else None
            finisher.finish(c_tile, nt, mt, True, n0, _block(out, block), addend, _tail_blocks(product, block))
            tile += 1


def _block(view: View, block: tuple[slice, slice]) -> View:
    rows, cols = block
    return view.window(0, rows.start, rows.stop).window(1, cols.start, cols.stop)


def _tail_blocks(product: Product, block: tuple[slice, slice], index: tuple[int, ...] = ()) -> list[View]:
    """The block of each of the product's tail operands (laid out like the output)."""
    return [_block(view.at(*index), block) for view in product.tail.operands] if product.tail else []


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
    a, b = ctx.view(node.inputs[0]), ctx.view(node.inputs[1])
    out = ctx.view(node.outputs[0])
    if len(a.shape) == 1:  # a row vector; its dimension is dropped from the result
        a = View(a.addr, a.dtype, (1,) + a.shape, (0,) + a.strides)
    if len(b.shape) == 1:  # a column vector
        b = View(b.addr, b.dtype, b.shape + (1,), b.strides + (0,))
    result = View.dense(out.addr, out.dtype, _batch_of(a, b) + (a.shape[-2], b.shape[-1]))
    b_value = ctx.graph.values[node.inputs[1]]
    b_transposed = None
    if b_value.is_const and b_value.const.ndim == 2 and a.strides == View.dense(a.addr, a.dtype, a.shape).strides:
        # Constant weights shared by every batch: one [batch * M, K] x [K, N] product.
        a = a.reshape_dense((int(np.prod(a.shape[:-1])), a.shape[-1]))
        result = result.reshape_dense((a.shape[0], b.shape[-1]))
        b_transposed = ctx.constant(b_value.const.T, b.dtype, node.inputs[1] + ".T")
    # FusedMatMul: its bias per column, addend and activation go to the epilogue.
    bias = ctx.view(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    epilogue = epilogue_of(ctx, node, 3)
    if epilogue.get("addend") is not None:
        epilogue["addend"] = epilogue["addend"].reshape_dense(result.shape)
    matmul_views(ctx, a, b, result, node, bias=bias, b_transposed=b_transposed, epilogue=epilogue)


def _batch_of(a: View, b: View) -> tuple[int, ...]:
    left, right = a.shape[:-2], b.shape[:-2]
    rank = max(len(left), len(right))
    left, right = (1,) * (rank - len(left)) + left, (1,) * (rank - len(right)) + right
    return tuple(max(x, y) for x, y in zip(left, right, strict=True))


def gemm_kernel(ctx: CodegenContext, node: Node) -> None:
    """Gemm: alpha * A' @ B' + beta * C, with A' and B' optionally transposed."""
    attrs = node.attrs
    a = _matrix_operand(ctx, node.inputs[0], node, bool(attrs.get("transA", 0)))
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
    b_value = ctx.graph.values[node.inputs[1]]
    b_transposed = None
    if b_value.is_const:
        stored = b_value.const if attrs.get("transB", 0) else b_value.const.T
        b_transposed = ctx.constant(stored, b.dtype, node.inputs[1] + (".T" if not attrs.get("transB", 0) else ""))
    matmul_views(ctx, a, b, out, node, alpha=float(attrs.get("alpha", 1.0)), bias=bias, b_transposed=b_transposed,
                 epilogue=epilogue_of(ctx, node, 3))


def matmul_w8_kernel(ctx: CodegenContext, node: Node) -> None:
    """MatMulW8: bf16 rows of A times the int8 weights (the matrix unit's weight-only int8 mode),
    each column's scale and bias applied to the fp32 accumulator, then the epilogue."""
    a, out = ctx.view(node.inputs[0]), ctx.view(node.outputs[0])
    if a.strides != View.dense(a.addr, a.dtype, a.shape).strides:
        raise unsupported(node, "a strided input")
    a = a.reshape_dense((int(np.prod(a.shape[:-1])), a.shape[-1]))
    out = out.reshape_dense((a.shape[0], out.shape[-1]))
    bias = ctx.view(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None
    epilogue = epilogue_of(ctx, node, 4)
    if epilogue.get("addend") is not None:
        epilogue["addend"] = epilogue["addend"].reshape_dense(out.shape)
    product = Product(DType.BF16, weights=DType.I8, scale=ctx.view(node.inputs[2]), bias=bias, **epilogue)
    matmul_views(ctx, a, ctx.view(node.inputs[1]), out, node, product=product)
