"""A chain of int8 convolutions on chip, each after the first pointwise and taking the one before's result
tiles where its finisher left them (-O2).

A ResNet bottleneck's last convolution is pointwise and its finish is the residual join: the int32 result
dequantized, the skip dequantized and added, the sum quantized. That is seven vector passes a value
(`vquant` divides) against the array's K/32 passes, so the join is vector-bound; the 3x3 convolution
before it and the next block's pointwise reduction after it are matrix-bound with little vector work.
Emitted apart, each waits for the one before's last tile, and the join runs with the array nearly idle.

Here the pixels go through in tiles of array_cols (across row ends), every product with its patches
stationary (as conv.py's patch stationary schedule) and every filter on chip. For each pixel tile a
product's channel blocks are finished into the scratchpad (and stored when anything but the next product
reads them: a join's result is the next join's skip, a 3x3's result never reaches DRAM), and the next
product's channel blocks take those finished channels as their patches, straight from the finisher's
output tiles. The products run as a software pipeline: product p works on tile t - p while the first
works on tile t, their channel blocks taken by the array in turn (mlp.job_order), so the vector unit
finishes the join while the array runs the 3x3 and the reduction. The first product is any stride-1
convolution whose tiles can cross row ends (a 3x3 with its padding, or a pointwise one); the chain is
every following pointwise convolution of the one before (ResNet-50: 3x3, join, reduction).

`fusable` says which consecutive nodes qualify; code generation emits the chain, or its first two nodes,
this way where the cost model times it faster than the kernels apart. The kernel raises MemoryError,
emitting nothing, when the filters and the tiles' buffers do not fit on chip.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from compiler.codegen.context import LOCAL_ALIGN, CodegenContext, View, accelerator_dtype, unsupported
from compiler.codegen.kernels.conv import (
    ConvShape,
    _block_of,
    _checked,
    arranged_filters,
    conv_filters,
    planes_as_rows,
    widened,
)
from compiler.codegen.kernels.epilogue import Finisher, Product
from compiler.codegen.kernels.mlp import job_order, run_jobs
from compiler.codegen.kernels.quantized import integer_product
from compiler.ir import Graph, Node
from compiler.ops import OPS


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


def stored(graph: Graph, node: Node, reader: Node) -> bool:
    """Whether the chain stores `node`'s result, which `reader`, the next node, takes on chip: when anything
    else reads it."""
    name = node.outputs[0]
    return name in graph.outputs or any(other is not reader for other in graph.consumers().get(name, []))


def _operands(ctx: CodegenContext, node: Node) -> tuple[ConvShape, View, np.ndarray, Product]:
    """The node's convolution with its output planes as one row of pixel tiles (conv.planes_as_rows), its
    output [N, C, D, 1, pixels], its filters [1, cout, cin, kd, kh, kw] and its Product."""
    weight = ctx.graph.values[node.inputs[1]]
    product = integer_product(ctx, node, weight.const.reshape(weight.shape[0], -1).astype(np.int64).sum(axis=1))
    x, out, attrs = _checked(ctx, node, product)
    missing = len(out.shape) - len(ctx.view(node.outputs[0]).shape)
    product = product.laid_out(lambda view: widened(view, missing), 1)
    x, out, product, _ = planes_as_rows(ctx, x, out, product, attrs)
    if out.shape[3] != 1:
        raise unsupported(node, "a convolution chain whose pixel tiles cannot cross row ends")
    # Linear either way: a pointwise convolution's planes are one row each, so a tile is a run of the input's.
    kernel = tuple(attrs["kernel_shape"])
    shape = ConvShape(x.shape[0], 1, x.shape[1], out.shape[1], kernel, tuple(attrs["strides"]),
                      tuple(attrs["dilations"]), tuple(out.shape[2:]), x, pads=tuple(attrs["pads"][:3]),
                      pad_value=product.pad_value, linear=True)
    return shape, out, conv_filters(ctx, node, 1, kernel, transposed=False), product


def _block_channels(config, channels: list[int], free: int) -> list[int]:
    """Each product's output channels per block (the rows a matmul streams): as many as two result tiles of
    every product fit the accumulator's `free` bytes, a multiple of array_rows (each block is whole K tiles of
    the next product's). Longer streams load each patch into the array fewer times: ResNet-50's chains
    take 256 (blocks of 128 and of 64 were 0.4% and 1.5% slower on edge)."""
    rows, tile = config.array_rows, 4 * config.array_cols
    for block in range(-(-max(channels) // rows) * rows, 0, -rows):
        widths = [min(count, block) for count in channels]
        if sum(2 * (width * tile + LOCAL_ALIGN) for width in widths) <= free:
            return widths
    raise MemoryError("a convolution chain's result tiles do not fit the accumulator")


def conv_chain_kernel(ctx: CodegenContext, *nodes: Node) -> None:
    """The nodes' convolutions, each after the first pointwise and reading the one before (module
    docstring); the last one's result is stored, and each other's when `stored` says so."""
    config = ctx.config
    rows, cols = config.array_rows, config.array_cols
    graph = ctx.graph
    keep = [stored(graph, node, reader) for node, reader in pairwise(nodes)] + [True]
    stand_ins = [node.outputs[0] for node, kept in zip(nodes, keep, strict=True) if not kept]
    for name in stand_ins:  # never in DRAM: the operands are built with a stand-in view of its layout
        value = graph.values[name]
        ctx.views[name] = View.dense(0, accelerator_dtype(value.dtype, name, "QLinearConv"), value.shape)
    try:
        shapes, outs, matrices, products = zip(*(_operands(ctx, node) for node in nodes), strict=True)
    finally:
        for name in stand_ins:
            del ctx.views[name]
    for (before, product), node, shape in zip(pairwise(products), nodes[1:], shapes[1:], strict=True):
        if not (before.requant or before.tail) or before.out != product.operand:
            raise unsupported(node, "a convolution chain whose products are not finished into the scratchpad")
        if shape.out != shapes[0].out:
            raise unsupported(node, "a pointwise convolution of another plane")
    first = shapes[0]
    size, wsize = first.source.dtype.size, products[0].weight_dtype.size
    k_tiles = first.k_tiles(rows)
    widths = _block_channels(config, [shape.cout_group for shape in shapes], ctx.accumulator().free)
    blocks = [[(m0, min(width, shape.cout_group - m0)) for m0 in range(0, shape.cout_group, width)]
              for shape, width in zip(shapes, widths, strict=True)]
    tiles = [(n, *tile) for n in range(first.batch) for tile in first.pixel_tiles(cols)]
    spad, acc = ctx.scratchpad(), ctx.accumulator()
    last = len(nodes) - 1
    finishers = [Finisher(ctx, product, spad, width, cols, shape.cout_group,
                          output_sets=2 * len(product_blocks) if index < last else 2)
                 for index, (shape, product, width, product_blocks)
                 in enumerate(zip(shapes, products, widths, blocks, strict=True))]
    filters = [spad.alloc(shape.cout_group * shape.k_total * wsize) for shape in shapes]
    patches = [spad.alloc(first.k_total * cols * size) for _ in range(2)]  # a tile's K tiles, one tile ahead
    accumulators = [[acc.alloc(width * cols * 4) for _ in range(2)] for width in widths]
    kernels = ", then ".join("x".join(map(str, shape.kernel[1:])) for shape in shapes)
    handed_on = [str(shape.cout_group) for shape in shapes[:-1]]
    ctx.note(f"convolution chain on chip ({kernels}): {len(tiles)} pixel tiles; each product's channels "
             f"({', '.join(handed_on)}) a tile stay on chip as the next one's patches"
             + ("" if all(keep) else f", {len(stand_ins)} never stored")
             + "; the products' channel blocks alternating; every filter on chip")
    for node, matrix, base, shape, product in zip(nodes, matrices, filters, shapes, products, strict=True):
        arranged = arranged_filters(ctx, node, matrix, (0, 1, 3, 4, 5, 2), (1, shape.cout_group, shape.k_total),
                                    ".conv_nk", product.weight_dtype)
        ctx.dma_in(base, arranged.at(0))
    for finisher, shape in zip(finishers, shapes, strict=True):
        finisher.load_channels(0, shape.cout_group)

    # A tile's patch rows, all K tiles at once: the channel runs of one kernel position that K tiles split
    # are one piece (the buffer holds the K tiles one after the other), so a 3x3 of 64 channels loads each
    # position with one DMA, not two.
    pieces: list[tuple[int, tuple[int, int, int], int, int]] = []
    for k0, _, tile_pieces in k_tiles:
        for row, position, channel, count in tile_pieces:
            if pieces and pieces[-1][1] == position and sum(pieces[-1][2:]) == channel \
                    and pieces[-1][0] + pieces[-1][3] == k0 + row:
                pieces[-1] = (*pieces[-1][:3], pieces[-1][3] + count)
            else:
                pieces.append((k0 + row, position, channel, count))

    def load_patches(tile: int) -> None:
        """A pixel tile's patch, every K tile of it."""
        if tile < len(tiles):
            n, od, oh0, nrows, ow0, ncols = tiles[tile]
            first.load_patch(ctx, patches[tile % len(patches)], n, 0, pieces, od, oh0, nrows, ow0, ncols)

    finished: dict[tuple[int, int, int], int] = {}  # (product, pixel tile, block) -> where it is on chip

    def multiply(job: tuple[int, int, int], target: int) -> None:
        product, tile, block = job
        if product == 0 and block == 0:
            load_patches(tile + 1)
        width = tiles[tile][5]
        k_total = shapes[product].k_total
        m0, mt = blocks[product][block]
        for index, k0 in enumerate(range(0, k_total, rows)):
            kt = min(rows, k_total - k0)
            if product == 0:
                patch = patches[tile % len(patches)] + k0 * width * size
            else:
                chunk = k0 // widths[product - 1]
                patch = finished[product - 1, tile, chunk] + (k0 - chunk * widths[product - 1]) * width \
                    * products[product - 1].out.size
            ctx.emitter.emit("load_weights", dtype=products[product].operand, addr=patch, k=kt, n=width,
                             stride=width)
            ctx.emitter.emit("matmul", dtype=products[product].weight_dtype,
                             a=filters[product] + (m0 * k_total + k0) * wsize, a_rs=k_total, m=mt, c=target,
                             c_rs=width, accumulate=int(index > 0))

    def finish(job: tuple[int, int, int, int]) -> None:
        product, tile, block, target = job
        n, od, oh0, nrows, ow0, ncols = tiles[tile]
        m0, mt = blocks[product][block]
        where = _block_of(n, m0, mt, od, oh0, nrows, ow0, ncols)
        finished[product, tile, block] = finishers[product].finish(target, mt, ncols, True, m0, outs[product], where,
                                                                   store=keep[product])

    load_patches(0)
    run_jobs(job_order(len(tiles), [len(product_blocks) for product_blocks in blocks]), accumulators, multiply,
             finish)
