"""Two pointwise int8 convolutions on chip: the second takes the first one's result tiles where the first
finished them (-O2).

A ResNet bottleneck ends in a pointwise convolution whose finish is the residual join: the int32 result
dequantized, the skip dequantized and added, the sum quantized. That is seven vector passes a value
(`vquant` divides), against the array's K/32 passes, so the join is vector-bound; and the pointwise
convolution that starts the next block reads only the join's result, so emitted apart it cannot start
before the join's last tile, and then runs with the vector unit nearly idle.

Here the pixels go through in tiles of array_cols, both products with their patches stationary (as
conv.py's patch stationary schedule; both filters stay on chip). For each pixel tile the first product's
channel blocks are finished into the scratchpad (and stored: the join's result is the next join's skip
too), and the second product's channel blocks take those finished channels as their patches, straight
from where the finisher left them. The array takes the first product's blocks for tile t + 1 in turn with
the second's for tile t (mlp.py's job order), so that the vector unit finishes the one while the array
runs the other.

`fusable` says which node pairs qualify; code generation emits them this way where the cost model times
it faster than the two kernels apart. The kernel raises MemoryError, emitting nothing, when both filters
and two pixel tiles' buffers do not fit on chip.
"""

from __future__ import annotations

import numpy as np

from compiler.codegen.context import CodegenContext, View, unsupported
from compiler.codegen.kernels.conv import (
    _block_of,
    _checked,
    _output_as_one_row,
    _rows_merged,
    arranged_filters,
    conv_filters,
    widened,
)
from compiler.codegen.kernels.epilogue import Finisher, Product
from compiler.codegen.kernels.mlp import _job_order
from compiler.codegen.kernels.quantized import integer_product
from compiler.ir import Graph, Node
from compiler.ops import OPS

BLOCK_CHANNELS = 128  # output channels a matmul streams at most: two tiles of each product fit half the accumulator


def fusable(graph: Graph, first: Node, second: Node) -> bool:
    """Whether `second` is a pointwise convolution of `first`'s result, and `first` one of its own input:
    both QLinearConv with constant 1x1 filters, stride 1, no padding, one group."""
    if first.op != "QLinearConv" or second.op != "QLinearConv" or second.inputs[0] != first.outputs[0]:
        return False
    for node in (first, second):
        weights = graph.values[node.inputs[1]]
        attrs = OPS[node.op].attr_values(node)
        if not weights.is_const or len(weights.shape) != 4 or weights.shape[2:] != (1, 1) \
                or int(attrs.get("group", 1)) != 1 or any(attrs.get("pads", ())) \
                or any(s != 1 for s in attrs.get("strides", ())) or any(d != 1 for d in attrs.get("dilations", ())):
            return False
    return True


def _operands(ctx: CodegenContext, node: Node) -> tuple[View, View, np.ndarray, Product]:
    """The node's input and output as [N, C, 1, 1, pixels], its filters [cout, cin] and its Product."""
    weight = ctx.graph.values[node.inputs[1]]
    product = integer_product(ctx, node, weight.const.reshape(weight.shape[0], -1).astype(np.int64).sum(axis=1))
    x, out, _ = _checked(ctx, node, product)
    missing = len(out.shape) - len(ctx.view(node.outputs[0]).shape)
    product = product.laid_out(lambda view: widened(view, missing), 1)
    one_row, x = _output_as_one_row(out, product), _rows_merged(x)
    if one_row is None or x is None:
        raise unsupported(node, "a pointwise pair whose planes' rows do not follow one another")
    out, product = one_row
    return x, out, conv_filters(ctx, node, 1, (1, 1, 1), transposed=False), product


def pointwise_pair_kernel(ctx: CodegenContext, first: Node, second: Node) -> None:
    """The two nodes' convolutions (module docstring); each result is stored to its own output."""
    config = ctx.config
    rows, cols = config.array_rows, config.array_cols
    x, middle, first_filters, first_product = _operands(ctx, first)
    _, out, second_filters, second_product = _operands(ctx, second)
    if not (first_product.requant or first_product.tail) or first_product.out != second_product.operand:
        raise unsupported(first, "a pointwise pair whose first result is not finished into the scratchpad")
    batch, channels_in = x.shape[:2]
    channels_mid, channels_out, pixels = middle.shape[1], out.shape[1], x.shape[4]
    size, wsize = x.dtype.size, first_product.weight_dtype.size
    # Channel blocks: the first product's are whole K tiles of the second's.
    mid_block, out_block = min(channels_mid, BLOCK_CHANNELS), min(channels_out, BLOCK_CHANNELS)
    first_blocks = [(m0, min(mid_block, channels_mid - m0)) for m0 in range(0, channels_mid, mid_block)]
    second_blocks = [(m0, min(out_block, channels_out - m0)) for m0 in range(0, channels_out, out_block)]
    tiles = [(n, p0, min(cols, pixels - p0)) for n in range(batch) for p0 in range(0, pixels, cols)]
    spad, acc = ctx.scratchpad(), ctx.accumulator()
    first_finisher = Finisher(ctx, first_product, spad, mid_block, cols, channels_mid,
                              output_sets=2 * len(first_blocks))
    second_finisher = Finisher(ctx, second_product, spad, out_block, cols, channels_out)
    filters = [spad.alloc(channels_mid * channels_in * wsize), spad.alloc(channels_out * channels_mid * wsize)]
    patches = [spad.alloc(channels_in * cols * size) for _ in range(3)]
    first_tiles = [acc.alloc(mid_block * cols * 4) for _ in range(2)]
    second_tiles = [acc.alloc(out_block * cols * 4) for _ in range(2)]
    ctx.note(f"pointwise pair on chip: {len(tiles)} pixel tiles; the first product's {channels_mid} channels a "
             f"tile stay on chip as the second's patches, the two products' channel blocks alternating; both "
             f"filters on chip")
    for node, matrix, base, product in ((first, first_filters, filters[0], first_product),
                                        (second, second_filters, filters[1], second_product)):
        arranged = arranged_filters(ctx, node, matrix, (0, 1, 3, 4, 5, 2), (1, *matrix.shape[1:3]), ".conv_nk",
                                    product.weight_dtype)
        ctx.dma_in(base, arranged.at(0))
    first_finisher.load_channels(0, channels_mid)
    second_finisher.load_channels(0, channels_out)

    def load_patch(tile: int) -> None:
        if tile < len(tiles):
            n, p0, width = tiles[tile]
            ctx.dma_in(patches[tile % len(patches)], View(x.addr + (n * x.strides[0] + p0 * x.strides[4]) * size,
                                                          x.dtype, (channels_in, width), (x.strides[1], x.strides[4])))

    finished: dict[tuple[int, int], int] = {}  # (pixel tile, first product's block) -> where it is on chip

    def multiply(product: int, tile: int, block: int, target: int) -> None:
        _, _, width = tiles[tile]
        k_total = (channels_in, channels_mid)[product]
        m0, mt = (first_blocks, second_blocks)[product][block]
        for index, k0 in enumerate(range(0, k_total, rows)):
            kt = min(rows, k_total - k0)
            if product == 0:
                patch = patches[tile % len(patches)] + k0 * width * size
            else:
                chunk = k0 // mid_block
                patch = finished[tile, chunk] + (k0 - chunk * mid_block) * width * first_product.out.size
            ctx.emitter.emit("load_weights", dtype=(first_product, second_product)[product].operand, addr=patch,
                             k=kt, n=width, stride=width)
            ctx.emitter.emit("matmul", dtype=(first_product, second_product)[product].weight_dtype,
                             a=filters[product] + (m0 * k_total + k0) * wsize, a_rs=k_total, m=mt, c=target,
                             c_rs=width, accumulate=int(index > 0))

    def finish(job: tuple[int, int, int, int]) -> None:
        product, tile, block, target = job
        n, p0, width = tiles[tile]
        m0, mt = (first_blocks, second_blocks)[product][block]
        where = _block_of(n, m0, mt, 0, 0, 1, p0, width)
        if product == 0:
            finished[tile, block] = first_finisher.finish(target, mt, width, True, m0, middle, where)
        else:
            second_finisher.finish(target, mt, width, True, m0, out, where)

    load_patch(0)
    load_patch(1)
    unfinished: list[tuple[int, int, int, int]] = []
    counts = [0, 0]
    for product, tile, block in _job_order(len(tiles), len(first_blocks), len(second_blocks)):
        if product == 1:  # its patches are the first product's: every block of this tile finished first
            for job in [job for job in unfinished if job[0] == 0 and job[1] == tile]:
                unfinished.remove(job)
                finish(job)
        elif block == 0:
            load_patch(tile + 2)
        target = (first_tiles, second_tiles)[product][counts[product] % 2]
        counts[product] += 1
        multiply(product, tile, block, target)
        while unfinished:  # the job before this one, finished while this one runs
            finish(unfinished.pop(0))
        unfinished.append((product, tile, block, target))
    for job in unfinished:
        finish(job)
