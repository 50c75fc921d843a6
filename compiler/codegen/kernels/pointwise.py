"""Two int8 convolutions on chip, the second pointwise: it takes the first one's result tiles where the
first finished them (-O2).

A ResNet bottleneck ends in a pointwise convolution whose finish is the residual join: the int32 result
dequantized, the skip dequantized and added, the sum quantized. That is seven vector passes a value
(`vquant` divides), against the array's K/32 passes, so the join is vector-bound; the 3x3 convolution
before it is matrix-bound with little vector work, and so is the pointwise reduction that starts the next
block. Emitted apart, each waits for the other's last tile, and the join runs with the array nearly idle.

Here the pixels go through in tiles of array_cols (across row ends), both products with their patches
stationary (as conv.py's patch stationary schedule; both filters stay on chip). For each pixel tile the
first product's channel blocks are finished into the scratchpad (and stored when anything else reads
them), and the second product's channel blocks take those finished channels as their patches, straight
from where the finisher left them. The array takes the first product's blocks for tile t + 1 in turn with
the second's for tile t (mlp.py's job order), so that the vector unit finishes the one while the array
runs the other. The first product is any stride-1 convolution whose tiles can cross row ends (a 3x3 with
its padding, or a pointwise one); `_pairs` takes the first pair it finds in graph order, so a ResNet
block's 3x3 pairs with its join.

`fusable` says which node pairs qualify; code generation emits them this way where the cost model times
it faster than the two kernels apart. The kernel raises MemoryError, emitting nothing, when both filters
and the tiles' buffers do not fit on chip.
"""

from __future__ import annotations

import numpy as np

from compiler.codegen.context import CodegenContext, View, accelerator_dtype, unsupported
from compiler.codegen.kernels.conv import (
    ConvShape,
    _block_of,
    _checked,
    _output_as_one_row,
    _rows_merged,
    _tiles_can_cross_rows,
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
    """Whether `second` is a pointwise convolution of `first`'s result, and `first` a stride-1 convolution:
    both QLinearConv with constant filters, one group, no dilation; the second 1x1 without padding."""
    if first.op != "QLinearConv" or second.op != "QLinearConv" or second.inputs[0] != first.outputs[0]:
        return False
    for node in (first, second):
        weights = graph.values[node.inputs[1]]
        attrs = OPS[node.op].attr_values(node)
        if not weights.is_const or len(weights.shape) != 4 or int(attrs.get("group", 1)) != 1 \
                or any(s != 1 for s in attrs.get("strides", ())) or any(d != 1 for d in attrs.get("dilations", ())):
            return False
    attrs = OPS[second.op].attr_values(second)
    return graph.values[second.inputs[1]].shape[2:] == (1, 1) and not any(attrs.get("pads", ()))


def stores_first(graph: Graph, first: Node, second: Node) -> bool:
    """Whether the pair stores the first node's result: when anything but the second node reads it."""
    name = first.outputs[0]
    return name in graph.outputs or any(node is not second for node in graph.consumers().get(name, []))


def _operands(ctx: CodegenContext, node: Node) -> tuple[ConvShape, View, np.ndarray, Product]:
    """The node's convolution with its output plane as one row of pixel tiles (ConvShape.linear), its output
    [N, C, D, 1, pixels], its filters [1, cout, cin, kd, kh, kw] and its Product."""
    weight = ctx.graph.values[node.inputs[1]]
    product = integer_product(ctx, node, weight.const.reshape(weight.shape[0], -1).astype(np.int64).sum(axis=1))
    x, out, attrs = _checked(ctx, node, product)
    missing = len(out.shape) - len(ctx.view(node.outputs[0]).shape)
    product = product.laid_out(lambda view: widened(view, missing), 1)
    kernel, strides = tuple(attrs["kernel_shape"]), tuple(attrs["strides"])
    one_row = _output_as_one_row(out, product)
    if kernel[1:] == (1, 1) and not any(attrs["pads"]) and _rows_merged(x) is not None and one_row is not None:
        x, (out, product) = _rows_merged(x), one_row  # as conv_kernel: the input plane as one row too
    elif one_row is not None and _tiles_can_cross_rows(x, out, strides):
        out, product = one_row
    else:
        raise unsupported(node, "a convolution pair whose pixel tiles cannot cross row ends")
    shape = ConvShape(x.shape[0], 1, x.shape[1], out.shape[1], kernel, strides, tuple(attrs["dilations"]),
                      tuple(out.shape[2:]), x, pads=tuple(attrs["pads"][:3]), pad_value=product.pad_value,
                      linear=True)
    return shape, out, conv_filters(ctx, node, 1, kernel, transposed=False), product


def pointwise_pair_kernel(ctx: CodegenContext, first: Node, second: Node) -> None:
    """The two nodes' convolutions (module docstring); the second's result is stored, and the first's when
    `stores_first`."""
    config = ctx.config
    rows, cols = config.array_rows, config.array_cols
    graph, middle_name = ctx.graph, first.outputs[0]
    stored = stores_first(graph, first, second)
    if not stored:  # never in DRAM: the operands are built with a stand-in view of its layout
        value = graph.values[middle_name]
        ctx.views[middle_name] = View.dense(0, accelerator_dtype(value.dtype, middle_name, first.op), value.shape)
    try:
        shape, middle, first_filters, first_product = _operands(ctx, first)
        second_shape, out, second_filters, second_product = _operands(ctx, second)
    finally:
        if not stored:
            del ctx.views[middle_name]
    if not (first_product.requant or first_product.tail) or first_product.out != second_product.operand:
        raise unsupported(first, "a convolution pair whose first result is not finished into the scratchpad")
    if second_shape.k_total != shape.cout_group or second_shape.out != shape.out:
        raise unsupported(second, "a pointwise convolution of another plane")
    channels_mid, channels_out = shape.cout_group, second_shape.cout_group
    size, wsize = shape.source.dtype.size, first_product.weight_dtype.size
    k_tiles = shape.k_tiles(rows)
    # Channel blocks: the first product's are whole K tiles of the second's.
    mid_block, out_block = min(channels_mid, BLOCK_CHANNELS), min(channels_out, BLOCK_CHANNELS)
    first_blocks = [(m0, min(mid_block, channels_mid - m0)) for m0 in range(0, channels_mid, mid_block)]
    second_blocks = [(m0, min(out_block, channels_out - m0)) for m0 in range(0, channels_out, out_block)]
    tiles = [(n, *tile) for n in range(shape.batch) for tile in shape.pixel_tiles(cols)]
    spad, acc = ctx.scratchpad(), ctx.accumulator()
    first_finisher = Finisher(ctx, first_product, spad, mid_block, cols, channels_mid,
                              output_sets=2 * len(first_blocks))
    second_finisher = Finisher(ctx, second_product, spad, out_block, cols, channels_out)
    filters = [spad.alloc(channels_mid * shape.k_total * wsize), spad.alloc(channels_out * channels_mid * wsize)]
    patches = [spad.alloc(shape.k_total * cols * size) for _ in range(3)]  # a tile's K tiles, two tiles ahead
    first_tiles = [acc.alloc(mid_block * cols * 4) for _ in range(2)]
    second_tiles = [acc.alloc(out_block * cols * 4) for _ in range(2)]
    kernel = "x".join(map(str, shape.kernel[1:]))
    ctx.note(f"convolution pair on chip ({kernel}, then 1x1): {len(tiles)} pixel tiles; the first product's "
             f"{channels_mid} channels a tile stay on chip as the second's patches"
             + ("" if stored else ", never stored")
             + "; the two products' channel blocks alternating; both filters on chip")
    for node, matrix, base, product, k_total in ((first, first_filters, filters[0], first_product, shape.k_total),
                                                 (second, second_filters, filters[1], second_product,
                                                  channels_mid)):
        arranged = arranged_filters(ctx, node, matrix, (0, 1, 3, 4, 5, 2), (1, matrix.shape[1], k_total),
                                    ".conv_nk", product.weight_dtype)
        ctx.dma_in(base, arranged.at(0))
    first_finisher.load_channels(0, channels_mid)
    second_finisher.load_channels(0, channels_out)

    def load_patches(tile: int) -> None:
        """Every K tile of a pixel tile's patch, one after the other."""
        if tile < len(tiles):
            n, od, oh0, nrows, ow0, ncols = tiles[tile]
            for k0, _, pieces in k_tiles:
                shape.load_patch(ctx, patches[tile % len(patches)] + k0 * ncols * size, n, 0, pieces, od, oh0, nrows,
                                 ow0, ncols)

    finished: dict[tuple[int, int], int] = {}  # (pixel tile, first product's block) -> where it is on chip

    def multiply(product: int, tile: int, block: int, target: int) -> None:
        width = tiles[tile][5]
        k_total = (shape.k_total, channels_mid)[product]
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
        n, od, oh0, nrows, ow0, ncols = tiles[tile]
        m0, mt = (first_blocks, second_blocks)[product][block]
        where = _block_of(n, m0, mt, od, oh0, nrows, ow0, ncols)
        if product == 0:
            finished[tile, block] = first_finisher.finish(target, mt, ncols, True, m0, middle, where, store=stored)
        else:
            second_finisher.finish(target, mt, ncols, True, m0, out, where)

    load_patches(0)
    load_patches(1)
    unfinished: list[tuple[int, int, int, int]] = []
    counts = [0, 0]
    for product, tile, block in _job_order(len(tiles), len(first_blocks), len(second_blocks)):
        if product == 1:  # its patches are the first product's: every block of this tile finished first
            for job in [job for job in unfinished if job[0] == 0 and job[1] == tile]:
                unfinished.remove(job)
                finish(job)
        elif block == 0:
            load_patches(tile + 2)
        target = (first_tiles, second_tiles)[product][counts[product] % 2]
        counts[product] += 1
        multiply(product, tile, block, target)
        while unfinished:  # the job before this one, finished while this one runs
            finish(unfinished.pop(0))
        unfinished.append((product, tile, block, target))
    for job in unfinished:
        finish(job)
