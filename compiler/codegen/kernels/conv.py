"""Conv on the systolic array in NCDHW, with the input patch as the stationary operand.

Convolutions of one, two and three spatial axes are all handled as 3-D (depth, height,
width); the missing leading axes have size one. For one kernel position (kd, kh, kw) and a
block of input channels, the pixels an output tile needs form a strided window of the
input, `X[cin, pixels]`, which one DMA brings in densely; it is loaded into the
array as the weight tile (K = channels, N = pixels). The streamed rows are the filter taps
`W[cout, cin]` of that kernel position, and the accumulator collects `Y[cout, pixels]`:
exactly NCHW rows, stored with one DMA. Summing over kernel positions and channel blocks
is the matmul's accumulate flag. Pixel tiles lie within one output depth slice: whole
output rows when a row is narrower than the array, else row segments (a pointwise
convolution's rows are merged into one, so that its tiles fill the array across row ends).

The filters are arranged as [group, K, cout] or [group, cout, K], K ordered (kd, kh, kw,
channel) as the K tiles are: at compile time when they are a constant, else on the
accelerator by a (transposing) copy into a scratch DRAM tensor. When one output channel
block's filters fit the scratchpad they are loaded once and stay there for every pixel
tile; else constant filters are also stored tile by tile, so that each streamed tile is
one contiguous DMA run (a K tile of a row is shorter than a DRAM beat). Padding is not
written out: where a patch falls outside the input, that part of the tile is loaded from
a constant run of the pad value (zero, or the input's zero point); only the space-to-depth
stem pads a copy in DRAM.
ConvTranspose is a stride-1 convolution of the input spread out with zeros; instead of
flipping its filters, each kernel position's patch is read at the mirrored position.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from compiler.codegen.context import LOCAL_ALIGN, CodegenContext, View, merge_dims, unsupported
from compiler.codegen.kernels.epilogue import Finisher, Product, epilogue_of
from compiler.codegen.kernels.movement import Stager
from compiler.ir import Node
from isa.dtypes import DType
from isa.spec import ceil_div, vector_pass_cycles

SPATIAL = 3  # every kernel here works on (depth, height, width)
LOOKAHEAD = 4  # K tiles whose patches are loaded (and prepared on the vector unit) ahead of their matmuls
# ... for patches stationary whose strided rows are picked out on the vector unit: there the picking queues
# behind the previous tile's finish, so a whole tile's worth of K tiles (ResNet-50's projections have 8 to 32)
# must be ahead of it.
STAGED_LOOKAHEAD = 8


class Lookahead:
    """Issues `prepare(step)` (a step's patch loads, and their work on the vector unit) for
    steps 0..count-1 in order, `depth` steps ahead of the matmuls that use them: the first
    `depth` at once, then one more each time `advance(step)` is called as step's matmuls
    are about to be issued."""

    def __init__(self, count: int, prepare: Callable[[int], None], depth: int = LOOKAHEAD):
        self.count, self.prepare, self.depth = count, prepare, depth
        for step in range(min(depth, count)):
            prepare(step)

    def advance(self, step: int) -> None:
        if step + self.depth < self.count:
            self.prepare(step + self.depth)


def pixel_tiles(out_h: int, out_w: int, width: int) -> list[tuple[int, int, int, int]]:
    """(first row, rows, first column, columns) of each tile of at most `width` output pixels."""
    if out_w <= width:
        rows = max(1, width // out_w)
        return [(oh, min(rows, out_h - oh), 0, out_w) for oh in range(0, out_h, rows)]
    return [(oh, 1, ow, min(width, out_w - ow)) for oh in range(out_h) for ow in range(0, out_w, width)]


def padded(ctx: CodegenContext, x: View, pads, value: float, min_size: tuple[int, ...] | None = None) -> View:
    """x (N, C, *spatial) surrounded by `value`: pads = the begins, then the ends, of each spatial
    axis; the result is at least `min_size` along each (ceil-mode pooling reads past the
    explicit padding)."""
    spatial = len(x.shape) - 2
    begins, ends = list(pads[:spatial]), list(pads[spatial:])
    min_size = min_size or (0,) * spatial
    sizes = tuple(max(n + b + e, m) for n, b, e, m in zip(x.shape[2:], begins, ends, min_size, strict=True))
    if sizes == x.shape[2:]:
        return x
    result = ctx.allocate(x.shape[:2] + sizes, x.dtype)
    stager = Stager(ctx, fill_elements=result.size)
    stager.fill(result, value)
    inner = result
    for axis, (begin, n) in enumerate(zip(begins, x.shape[2:], strict=True)):
        inner = inner.window(2 + axis, begin, begin + n)
    stager.copy(x, inner)
    return result


def as_3d(node: Node, x: View, out: View, attrs: dict):
    """1-D and 2-D convolution and pooling as 3-D, with leading spatial axes of size one."""
    spatial = len(x.shape) - 2
    if not 1 <= spatial <= SPATIAL:
        raise unsupported(node, f"{spatial}-D spatial input; only 1-D, 2-D and 3-D are supported")
    missing = SPATIAL - spatial
    ones, zeros = [1] * missing, [0] * missing

    pads = list(attrs.get("pads", [0] * (2 * spatial)))
    attrs = dict(attrs, kernel_shape=ones + list(attrs["kernel_shape"]),
                 strides=ones + list(attrs.get("strides", [1] * spatial)),
                 dilations=ones + list(attrs.get("dilations", [1] * spatial)),
                 pads=zeros + pads[:spatial] + zeros + pads[spatial:],
                 output_padding=zeros + list(attrs.get("output_padding", [0] * spatial)))
    return widened(x, missing), widened(out, missing), attrs


def widened(view: View, missing: int) -> View:
    """An N, C, *spatial view with `missing` leading spatial axes of size one inserted."""
    return View(view.addr, view.dtype, view.shape[:2] + (1,) * missing + view.shape[2:],
                view.strides[:2] + (0,) * missing + view.strides[2:])


@dataclass(frozen=True)
class ConvShape:
    batch: int
    groups: int
    cin_group: int
    cout_group: int
    kernel: tuple[int, int, int]
    strides: tuple[int, int, int]
    dilations: tuple[int, int, int]
    out: tuple[int, int, int]
    source: View  # the input, NCDHW
    mirrored: bool = False  # kernel position p reads the input at the position of kernel - 1 - p
    # The source is read as if padded by `pads` (the begins of each spatial axis) and at the ends as far
    # as the output needs, with `pad_value`: patches are filled on chip where they fall outside it.
    pads: tuple[int, int, int] = (0, 0, 0)
    pad_value: float = 0.0
    # The output plane is one row (out = (depth, 1, rows x columns)) and a pixel tile is any run of it,
    # so tiles fill the array across row ends: each piece of a patch is one run of the flattened input
    # plane (stride 1, input as wide as the output), its pixels past a row's ends then set to the pad.
    linear: bool = False

    @property
    def k_total(self) -> int:
        """The reduction length: kernel positions x input channels, ordered (kd, kh, kw, channel)."""
        return self.kernel[0] * self.kernel[1] * self.kernel[2] * self.cin_group

    @property
    def slice_pixels(self) -> int:
        """Output pixels of one depth slice: the most one pixel tile holds."""
        return self.out[1] * self.out[2]

    def pixel_tiles(self, width: int) -> list[tuple[int, int, int, int, int]]:
        """(depth, first row, rows, first column, columns) of each tile of at most `width` output
        pixels, each within one output depth slice."""
        tiles = pixel_tiles(self.out[1], self.out[2], width)
        return [(od, *tile) for od in range(self.out[0]) for tile in tiles]

    def k_tiles(self, rows: int) -> list[tuple[int, int, list[tuple[int, tuple[int, int, int], int, int]]]]:
        """Tiles of at most `rows` reduction indices: (first index, length, pieces), each piece
        (row in the tile, kernel position (kd, kh, kw), first channel, channels) one kernel
        position's channel run. Packing positions into a tile keeps the array full when there
        are few channels."""
        tiles = []
        for k0 in range(0, self.k_total, rows):
            kt = min(rows, self.k_total - k0)
            pieces = []
            index = k0
            while index < k0 + kt:
                position, channel = divmod(index, self.cin_group)
                count = min(self.cin_group - channel, k0 + kt - index)
                kd, rest = divmod(position, self.kernel[1] * self.kernel[2])
                pieces.append((index - k0, (kd, *divmod(rest, self.kernel[2])), channel, count))
                index += count
            tiles.append((k0, kt, pieces))
        return tiles

    def staging_bytes(self, rows: int, nrows: int, ncols: int) -> int:
        """Scratchpad for a K tile's input rows read whole when the column stride is above 1 (0 otherwise)."""
        if self.strides[2] == 1:
            return 0
        return rows * nrows * ((ncols - 1) * self.strides[2] + 1) * self.source.dtype.size

    def load_patch(self, ctx: CodegenContext, local: int, n: int, group: int, pieces, od: int, oh0: int, nrows: int,
                   ow0: int, ncols: int, staging: Staging | None = None) -> None:
        """The input pixels of a K tile for output depth od, rows oh0.., columns ow0..: a dense
        [kt, pixels] tile. With a column stride above 1 and `staging` (staging_bytes of it), each
        piece's input rows come in as contiguous runs and the vector unit picks every stride-th
        column; a strided DMA would move one element per burst."""
        pixels = nrows * ncols
        size = self.source.dtype.size
        column_stride = self.strides[2]
        for row, position, channel, count in pieces:
            if self.mirrored:
                position = tuple(k - 1 - p for k, p in zip(self.kernel, position, strict=True))
            if self.linear:
                depth, dy, dx = (o * s + p * d - pad for o, s, p, d, pad in
                                 zip((od, 0, 0), self.strides, position, self.dilations, self.pads, strict=True))
                load_run(ctx, self.source, self.pad_value, local + row * pixels * size, pixels, n,
                         group * self.cin_group + channel, count, depth, ow0, dy, dx)
                continue
            depth, first_row, first_col = (o * s + p * d - pad for o, s, p, d, pad in
                                           zip((od, oh0, ow0), self.strides, position, self.dilations, self.pads,
                                               strict=True))
            first = group * self.cin_group + channel
            rows = (first_row, nrows, self.strides[1])
            if staging is None or column_stride == 1:
                load_box(ctx, self.source, self.pad_value, local + row * pixels * size, n, first, count, depth,
                         rows, (first_col, ncols, column_stride))
                continue
            width = (ncols - 1) * column_stride + 1
            buffer = staging.next()
            load_box(ctx, self.source, self.pad_value, buffer, n, first, count, depth, rows, (first_col, width, 1))
            ctx.emitter.emit("vmov", dtype=self.source.dtype, dst=local + row * pixels * size, dst_rs=ncols,
                             a=buffer, a_rs=width, a_cs=column_stride, rows=count * nrows, cols=ncols)


def load_box(ctx: CodegenContext, source: View, pad_value: float, local: int, n: int, channel: int, count: int,
             depth: int, rows: tuple[int, int, int], cols: tuple[int, int, int]) -> None:
    """A dense local tile [count, rows, cols] of an NCDHW source's channels channel.. at `depth`,
    rows and columns each (first, number, step) in source coordinates. What falls outside the
    source is padding: loaded from a constant run of pad_value, so the vector unit is not involved."""
    (first_row, nrows, row_step), (first_col, ncols, col_step) = rows, cols
    _, channel_stride, depth_stride, row_stride, col_stride = source.strides
    *_, depth_size, height, width = source.shape
    dtype, size = source.dtype, source.dtype.size
    row_lo, row_hi = _inside(first_row, nrows, row_step, height)
    col_lo, col_hi = _inside(first_col, ncols, col_step, width)
    if not 0 <= depth < depth_size or row_lo >= row_hi or col_lo >= col_hi:
        row_lo = row_hi = col_lo = col_hi = 0
    whole = (row_lo, row_hi, col_lo, col_hi) == (0, nrows, 0, ncols)
    tile = (nrows * ncols, ncols)  # local strides of a channel and of a row
    if not whole:
        pad = ctx.filled(pad_value, nrows * ncols, dtype, "padding")
        # Whole rows above and below the source, then the columns left and right of it in every row.
        for lo, hi in ((0, row_lo), (row_hi, nrows)):
            if hi > lo:
                ctx.dma_in_box(local + lo * ncols * size, View(pad.addr, dtype, (count, (hi - lo) * ncols), (0, 1)),
                               tile[:1])
        for lo, hi in ((0, col_lo), (col_hi, ncols)) if row_hi > row_lo else ():
            if hi > lo:
                ctx.dma_in_box(local + (row_lo * ncols + lo) * size,
                               View(pad.addr, dtype, (count, row_hi - row_lo, hi - lo), (0, 0, 1)), tile)
    if row_hi > row_lo:
        address = source.at(n).addr + (channel * channel_stride + depth * depth_stride
                                       + (first_row + row_lo * row_step) * row_stride
                                       + (first_col + col_lo * col_step) * col_stride) * size
        box = View(address, dtype, (count, row_hi - row_lo, col_hi - col_lo),
                   (channel_stride, row_step * row_stride, col_step * col_stride))
        if whole:
            ctx.dma_in(local, box)
        else:
            ctx.dma_in_box(local + (row_lo * ncols + col_lo) * size, box, tile)


def load_run(ctx: CodegenContext, source: View, pad_value: float, local: int, pixels: int, n: int, channel: int,
             count: int, depth: int, first: int, dy: int, dx: int) -> None:
    """A dense local tile [count, pixels] of output pixels first.. of the flattened output plane,
    each reading the NCDHW source's channels channel.. at `depth`, dy rows and dx columns away
    (source as wide as the output, rows contiguous). That is one run of the flattened source
    plane; its part outside the plane, and the pixels whose column dx away falls outside a row,
    are loaded from a constant run of pad_value."""
    _, channel_stride, depth_stride, _, column_stride = source.strides
    *_, depth_size, height, width = source.shape
    dtype, size = source.dtype, source.dtype.size
    start = first + dy * width + dx  # source index of pixel `first`, in the flattened plane
    lo, hi = min(pixels, max(0, -start)), min(pixels, height * width - start)
    if not 0 <= depth < depth_size:
        lo = hi = 0
    pad = ctx.filled(pad_value, pixels * count, dtype, "padding") if (lo, hi) != (0, pixels) or dx else None

    def fill(begin: int, length: int, runs: int = 1) -> None:
        """Set `runs` runs of `length` pixels, `width` apart from pixel `begin` on, to the pad."""
        ctx.dma_in_box(local + begin * size, View(pad.addr, dtype, (count, runs, length), (runs * length, length, 1)),
                       (pixels, width))

    for begin, end in ((0, lo), (max(lo, hi), pixels)):
        if end > begin:
            fill(begin, end - begin)
    if hi <= lo:
        return
    address = source.at(n).addr + (channel * channel_stride + depth * depth_stride
                                   + (start + lo) * column_stride) * size
    ctx.dma_in_box(local + lo * size, View(address, dtype, (count, hi - lo), (channel_stride, column_stride)),
                   (pixels,))
    if dx == 0:
        return
    # The pixels i whose column (first + i) % width, moved dx, leaves the row: one run per row, width apart.
    bad = (0, -dx) if dx < 0 else (width - dx, width)
    runs = []
    row = (first + lo) // width
    while row * width + bad[0] < first + hi:
        begin, end = max(row * width + bad[0], first + lo), min(row * width + bad[1], first + hi)
        if end > begin:
            runs.append((begin - first, end - begin))
        row += 1
    # Runs of one length, width apart, are one DMA: the clipped first and last may not be.
    groups: list[list[tuple[int, int]]] = []
    for run in runs:
        if groups and groups[-1][-1][1] == run[1] and run[0] - groups[-1][-1][0] == width:
            groups[-1].append(run)
        else:
            groups.append([run])
    for group in groups:
        fill(group[0][0], group[0][1], len(group))


def _inside(first: int, number: int, step: int, size: int) -> tuple[int, int]:
    """The indices i in [lo, hi) of [0, number) with 0 <= first + i * step < size (step > 0)."""
    lo = max(0, -(first // step)) if first < 0 else 0
    hi = min(number, (size - 1 - first) // step + 1) if first < size else 0
    return lo, max(lo, hi)


def conv_filters(ctx: CodegenContext, node: Node, groups: int, kernel: tuple[int, int, int], transposed: bool):
    """W as [group, cout/group, cin/group, kd, kh, kw]: a numpy array when it is a constant, else a
    view of its DRAM. Conv's W is [cout, cin/group, k...], ConvTranspose's [cin, cout/group, k...]."""
    weight = ctx.graph.values[node.inputs[1]]
    first, second = weight.shape[:2]
    shape = (groups, first // groups, second) + tuple(kernel)
    if weight.is_const:
        filters = np.asarray(weight.const).reshape(shape)
    else:
        view = ctx.view(node.inputs[1])
        if view.dtype not in (DType.F32, DType.BF16):  # bf16 with bf16 data (the shape rule)
            raise unsupported(node, f"{view.dtype.asm_name} filters are not supported yet")
        filters = view.reshape_dense(shape)
    return filters.transpose((0, 2, 1, 3, 4, 5)) if transposed else filters


def arranged_filters(ctx: CodegenContext, node: Node, filters, perm: tuple[int, ...], shape: tuple[int, ...],
                     suffix: str, dtype: DType) -> View:
    """filters.transpose(perm) as a dense DRAM tensor of `shape`: a constant made at compile time,
    or the run-time filters copied into scratch DRAM by the accelerator (no copy when the
    permuted view is already dense)."""
    if isinstance(filters, np.ndarray):
        return ctx.constant(filters.transpose(perm).reshape(shape), dtype, node.inputs[1] + suffix)
    permuted = filters.transpose(perm)
    if merge_dims(permuted.shape, permuted.strides)[1] == (1,):
        return View.dense(permuted.addr, permuted.dtype, shape)
    target = ctx.allocate(permuted.shape, permuted.dtype)
    Stager(ctx).copy(permuted, target)
    return target.reshape_dense(shape)


def _checked(ctx: CodegenContext, node: Node, product: Product):
    weight = ctx.graph.values[node.inputs[1]]
    x, out, attrs = as_3d(node, ctx.view(node.inputs[0]), ctx.view(node.outputs[0]),
                          dict(node.attrs, kernel_shape=list(weight.shape[2:])))
    if x.dtype != product.operand or out.dtype != product.out:
        raise unsupported(node, f"{x.dtype.asm_name} -> {out.dtype.asm_name} convolution is not supported")
    return x, out, attrs


def _float_product(ctx: CodegenContext, node: Node) -> Product:
    """f32 (or bf16 operands, with fp32 accumulation), the f32 bias input, and FusedConv's addend
    and activation."""
    dtype = ctx.view(node.inputs[0]).dtype
    bias = ctx.view(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if dtype not in (DType.F32, DType.BF16):
        raise unsupported(node, f"{dtype.asm_name} convolution")
    return Product(dtype, bias=bias, **epilogue_of(ctx, node, 3))


def conv_kernel(ctx: CodegenContext, node: Node, product: Product | None = None) -> None:
    product = product or _float_product(ctx, node)
    x, out, attrs = _checked(ctx, node, product)
    # The output is seen as 3-D (as_3d): so is what is laid out like it.
    missing = len(out.shape) - len(ctx.view(node.outputs[0]).shape)
    product = product.laid_out(lambda view: widened(view, missing), 1)
    groups = int(attrs.get("group", 1))
    kernel = tuple(attrs["kernel_shape"])
    filters = conv_filters(ctx, node, groups, kernel, transposed=False)
    strides, dilations = tuple(attrs["strides"]), tuple(attrs["dilations"])
    step = strides[1]
    if (groups == 1 and isinstance(filters, np.ndarray) and dilations == (1, 1, 1) and strides[0] == 1
            and strides[2] == step > 1 and filters.shape[2] * step * step <= ctx.config.array_rows
            and min(kernel[1:]) >= step):
        # Few input channels and a stride (an image network's stem): as a stride-1 convolution of
        # the input rearranged space-to-depth, each K tile's input rows are contiguous runs.
        size = [-(-(n + b + e) // step) * step for n, b, e in zip(x.shape[3:], attrs["pads"][1:3],
                                                                      attrs["pads"][4:6], strict=True)]
        source = padded(ctx, x, attrs["pads"], product.pad_value, (x.shape[2], *size))
        ctx.note(f"space-to-depth by {step}: {filters.shape[2]} -> {filters.shape[2] * step * step} channels, "
                 "stride 1")
        convolve(ctx, node, space_to_depth(ctx, source, step), space_to_depth_filters(filters, step), 1,
                 (1, 1, 1), dilations, out, product)
        return
    x, out, product, linear = planes_as_rows(ctx, x, out, product, attrs)
    # The padding is not written out: patches are filled on chip where they fall outside x.
    convolve(ctx, node, x, filters, groups, strides, dilations, out, product,
             pads=tuple(attrs["pads"][:SPATIAL]), pad_value=product.pad_value, linear=linear)


def planes_as_rows(ctx: CodegenContext, x: View, out: View, product: Product,
                   attrs: dict) -> tuple[View, View, Product, bool]:
    """A convolution's input, output and product with the output planes as one row each where pixel tiles
    can fill the array's columns across row ends, and whether they are read as runs of the input (linear):
    a pointwise convolution's input planes are one row too (each output row's pixels are the input row's);
    a stride-1 convolution's tiles read the input's rows across their ends (ConvShape.linear)."""
    kernel, strides = tuple(attrs["kernel_shape"]), tuple(attrs["strides"])
    if kernel[1:] == (1, 1) and strides[1:] == (1, 1) and not any(attrs["pads"]):
        one_row = _output_as_one_row(out, product)
        if one_row is not None and _rows_merged(x) is not None:
            ctx.note(f"pointwise: {x.shape[3]} rows of {x.shape[4]} pixels as one row")
            x, (out, product) = _rows_merged(x), one_row
    one_row = _output_as_one_row(out, product) if _tiles_can_cross_rows(x, out, strides) else None
    linear = one_row is not None
    if linear:
        ctx.note(f"pixel tiles across row ends: {out.shape[3]} rows of {out.shape[4]} pixels as one row")
        out, product = one_row
    return x, out, product, linear


def _tiles_can_cross_rows(x: View, out: View, strides) -> bool:
    """Whether pixel tiles may run across row ends, each patch piece one run of the flattened input
    plane: stride 1 along rows and columns, the input as wide as the output with contiguous rows."""
    return (tuple(strides[1:]) == (1, 1) and x.shape[4] == out.shape[4] and x.strides[4] == 1
            and _rows_merged(x) is not None)


def _output_as_one_row(out: View, product: Product) -> tuple[View, Product] | None:
    """out and the product's views laid out like it, each as one row (_rows_merged); None unless
    every one's rows follow one another."""
    if any(_rows_merged(view) is None for view in [out, *product.output_like]):
        return None
    return _rows_merged(out), product.laid_out(_rows_merged, 1)


def _rows_merged(view: View) -> View | None:
    """An [N, C, D, H, W] view as [N, C, D, 1, H*W] when its rows follow one another (None if not)."""
    *lead, height, width = view.shape
    *lead_strides, row_stride, column_stride = view.strides
    if row_stride != width * column_stride:
        return None
    return View(view.addr, view.dtype, (*lead, 1, height * width), (*lead_strides, row_stride, column_stride))


def space_to_depth(ctx: CodegenContext, source: View, step: int) -> View:
    """source [N, C, D, H, W] (H and W multiples of `step`) as a new dense [N, C*step*step, D, H/step,
    W/step]: channel (c*step + dy)*step + dx holds source[n, c, d, dy::step, dx::step]. Bands of
    input rows are loaded whole and each (dy, dx) plane picked out on the vector unit."""
    batch, channels, depth, height, width = source.shape
    rows_out, cols_out = height // step, width // step
    result = ctx.allocate((batch, channels * step * step, depth, rows_out, cols_out), source.dtype)
    spad, size = ctx.scratchpad(), source.dtype.size
    band = max(1, min(rows_out, spad.free // (4 * step * width * size)))  # output rows per band
    inputs = [spad.alloc(band * step * width * size) for _ in range(2)]
    planes = [spad.alloc(band * cols_out * size) for _ in range(2)]
    turn = 0
    for n in range(batch):
        for c in range(channels):
            for d in range(depth):
                for r0 in range(0, rows_out, band):
                    rows = min(band, rows_out - r0)
                    loaded = inputs[turn % 2]
                    ctx.dma_in(loaded, source.at(n, c, d).window(0, r0 * step, (r0 + rows) * step))
                    for dy in range(step):
                        for dx in range(step):
                            plane = planes[turn % 2]
                            turn += 1
                            ctx.emitter.emit("vmov", dtype=source.dtype, dst=plane, dst_rs=cols_out,
                                             a=loaded + (dy * width + dx) * size, a_rs=step * width, a_cs=step,
                                             rows=rows, cols=cols_out)
                            channel = (c * step + dy) * step + dx
                            ctx.dma_out(plane, result.at(n, channel, d).window(0, r0, r0 + rows))
    return result


def space_to_depth_filters(filters: np.ndarray, step: int) -> np.ndarray:
    """[1, cout, cin, kd, kh, kw] -> [1, cout, cin*step*step, kd, ceil(kh/step), ceil(kw/step)] to match
    `space_to_depth`: tap (i, j) of channel (c*step + dy)*step + dx is tap (i*step + dy, j*step + dx)
    of channel c, zero past the kernel's end."""
    _, cout, cin, kd, kh, kw = filters.shape
    rows, cols = -(-kh // step), -(-kw // step)
    grown = np.zeros((1, cout, cin, kd, rows * step, cols * step), filters.dtype)
    grown[..., :kh, :kw] = filters
    grown = grown.reshape(1, cout, cin, kd, rows, step, cols, step)
    return grown.transpose(0, 1, 2, 5, 7, 3, 4, 6).reshape(1, cout, cin * step * step, kd, rows, cols)


def conv_transpose_kernel(ctx: CodegenContext, node: Node) -> None:
    """ConvTranspose as a stride-1 Conv of the input spread out with zeros (stride - 1 between
    pixels) and padded by dilation * (kernel - 1) - pads (cropped where that is negative),
    with the filters' in/out channels swapped per group and their kernel positions mirrored."""
    product = _float_product(ctx, node)
    x, out, attrs = _checked(ctx, node, product)
    groups = int(attrs.get("group", 1))
    kernel, strides, dilations = attrs["kernel_shape"], attrs["strides"], attrs["dilations"]
    pads, output_padding = attrs["pads"], attrs["output_padding"]
    batch, channels = x.shape[:2]
    begin = [dilations[i] * (kernel[i] - 1) - pads[i] for i in range(SPATIAL)]
    end = [dilations[i] * (kernel[i] - 1) - pads[SPATIAL + i] + output_padding[i] for i in range(SPATIAL)]
    spread = [(n - 1) * s + 1 for n, s in zip(x.shape[2:], strides, strict=True)]
    full = ctx.allocate((batch, channels) + tuple(n + max(b, 0) + max(e, 0) for n, b, e in zip(spread, begin, end,
                                                                                                 strict=True)),
                        x.dtype)
    stager = Stager(ctx, fill_elements=full.size)
    stager.fill(full, 0.0)
    target, source = full, full
    for axis in range(SPATIAL):
        first = max(begin[axis], 0)
        target = target.window(2 + axis, first, first + spread[axis], strides[axis])
        # Negative padding crops: the convolution reads a window of the spread-out input.
        source = source.window(2 + axis, max(-begin[axis], 0), full.shape[2 + axis] - max(-end[axis], 0))
    stager.copy(x, target)
    filters = conv_filters(ctx, node, groups, tuple(kernel), transposed=True)
    convolve(ctx, node, source, filters, groups, (1, 1, 1), tuple(dilations), out, product, mirrored=True)


def convolve(ctx: CodegenContext, node: Node, source: View, filters, groups: int, strides: tuple[int, int, int],
             dilations: tuple[int, int, int], out: View, product: Product, mirrored: bool = False,
             pads: tuple[int, int, int] = (0, 0, 0), pad_value: float = 0.0, linear: bool = False) -> None:
    """out = conv(source, filters) for an NCDHW source padded at the begins by `pads` (and at the
    ends as far as `out` reaches) with `pad_value`, and filters [group, cout/group, cin/group, kd,
    kh, kw] (a constant array or a DRAM view), with `product`'s arithmetic."""
    config = ctx.config
    _, cout_group, cin_group, *kernel = filters.shape
    shape = ConvShape(source.shape[0], groups, cin_group, cout_group, tuple(kernel), strides, dilations,
                      tuple(out.shape[2:]), source, mirrored, pads, pad_value, linear)
    size = product.operand.size
    # Filters stationary's channel block, and the pixels it streams per matmul. Only patches whose
    # pieces are runs of the input (tiles within one output row, or across rows) are cheap enough to
    # be prepared again for each of several channel blocks, and only for them are the estimates
    # below good enough to pick the loop order by; nor do they count a finish with a tail or an
    # addend (a residual join), which keeps the vector unit busy on its own.
    estimated = shape.out[1] == 1 and strides[2] == 1 and product.tail is None and product.addend is None
    channel_block = shape.cout_group
    if estimated:
        channel_block = min(_channel_blocks(config, shape),
                            key=lambda block: _filters_stationary_cycles(config, product, shape, block))
    rows_filter_stationary = _filters_stationary_pixels(config, shape, channel_block)
    rows_patch_stationary = _patch_stationary_rows(config, shape)

    def schedules(shape: ConvShape) -> dict[str, Callable[[], None]]:
        """The candidate loop orders for `shape`, the one preferred first (it wins ties): the faster
        by the estimates where they hold (`estimated`), else the one streaming more rows per matmul."""

        def filters_stationary_schedule() -> None:
            # [group, K, cout] with K ordered (kd, kh, kw, channel), as the K tiles are.
            arranged = arranged_filters(ctx, node, filters, (0, 3, 4, 5, 2, 1), (groups, shape.k_total, cout_group),
                                        ".conv_kn", product.weight_dtype)
            filters_stationary(ctx, shape, arranged, product, out, rows_filter_stationary, size, channel_block)

        def patch_stationary_schedule() -> None:
            @functools.cache
            def arranged() -> View:  # made when first needed: not at all when the tiles are streamed
                return arranged_filters(ctx, node, filters, (0, 1, 3, 4, 5, 2), (groups, cout_group, shape.k_total),
                                        ".conv_nk", product.weight_dtype)

            def tile_major(m_tile: int) -> tuple[View, dict] | None:
                """The constant filters stored tile by tile, for streaming (each tile one DMA run)."""
                if not isinstance(filters, np.ndarray):
                    return None
                nk = filters.transpose((0, 1, 3, 4, 5, 2)).reshape(groups, cout_group, shape.k_total)
                pieces, offsets, offset = [], {}, 0
                for group in range(groups):
                    for m0 in range(0, cout_group, m_tile):
                        for k0 in range(0, shape.k_total, config.array_rows):
                            piece = nk[group, m0:m0 + m_tile, k0:k0 + config.array_rows]
                            offsets[group, m0, k0] = offset
                            offset += piece.size
                            pieces.append(piece.reshape(-1))
                view = ctx.constant(np.concatenate(pieces), product.weight_dtype, node.inputs[1] + ".conv_tiles")
                return view, offsets

            patch_stationary(ctx, shape, arranged, product, out, size, tile_major)

        if rows_filter_stationary < 1:
            return {"patch stationary": patch_stationary_schedule}
        if (_filters_stationary_cycles(config, product, shape, channel_block)
                < _patch_stationary_estimate(config, product, shape) if estimated
                else rows_filter_stationary > rows_patch_stationary):
            return {"filters stationary": filters_stationary_schedule, "patch stationary": patch_stationary_schedule}
        return {"patch stationary": patch_stationary_schedule, "filters stationary": filters_stationary_schedule}

    # The search times each candidate on a sample: an eighth of one image's output rows, or of
    # the pixels of one long row (at least one block of filters stationary), every group and channel.
    _, height, width = shape.out
    if height > 1:
        rows = max(-(-height // 8), min(height, -(-rows_filter_stationary // width)))
        sample, what = replace(shape, batch=1, out=(1, rows, width)), f"{rows} of {height} output rows"
    else:
        pixels = max(-(-width // 8), min(width, rows_filter_stationary))
        sample, what = replace(shape, batch=1, out=(1, 1, pixels)), f"{pixels} of {width} output pixels"
    ctx.choose(schedules(shape), schedules(sample), what, key=_search_key(shape, product, out))


def _search_key(shape: ConvShape, product: Product, out: View) -> tuple:
    """What decides a convolution's schedule: its shapes, layouts and arithmetic, not its addresses."""
    tail = product.tail
    return (replace(shape, source=replace(shape.source, addr=0)), replace(out, addr=0), product.operand,
            product.weights, product.bias is None, product.scale is None, product.requant is None,
            product.addend is None, product.activation, tail and (tail.kinds, tail.program.result))


def filters_stationary(ctx: CodegenContext, shape: ConvShape, filters: View, product: Product, out: View,
                       max_pixels: int, size: int, channel_block: int) -> None:
    """Filter tiles [K, cout] stay in the array while a block of pixels streams through.

    A pixel block's patch [K, pixels] is loaded densely and turned into rows [pixels, K]
    on the vector unit (a strided copy); the accumulator holds the block's results for
    a block of output channels [pixels, channel_block] (at most a group's), finished
    (bias, requantization) and turned back into NCHW rows [channels, pixels] on the vector unit,
    and stored with one DMA. Smaller channel blocks let larger pixel blocks fit the accumulator,
    at the price of preparing every patch once per channel block. A channel block's filters stay
    on chip when they fit. Patches are turned into rows LOOKAHEAD K tiles ahead of their matmuls,
    across pixel blocks, so the matrix unit does not wait while the vector unit finishes a block."""
    config = ctx.config
    rows, cols = config.array_rows, config.array_cols
    cout_group = shape.cout_group
    wsize = product.weight_dtype.size
    spad, acc = ctx.scratchpad(), ctx.accumulator()

    def largest_block(pixels: int) -> int:
        return max(nrows * ncols for _, _, nrows, _, ncols in shape.pixel_tiles(pixels))

    def scratchpad_bytes(pixels: int) -> int:
        """What the blocks of `pixels` take at least: patches and their rows, the finisher, two filter tiles."""
        largest = largest_block(pixels)
        return (2 * (LOOKAHEAD + 2) * rows * largest * size
                + Finisher.reserve_bytes(product, largest, channel_block, channel_block, True)
                + 2 * rows * cols * wsize + 8 * LOCAL_ALIGN)

    while max_pixels > 1 and scratchpad_bytes(max_pixels) > spad.free:
        max_pixels = max(1, max_pixels * 7 // 8)
    blocks = shape.pixel_tiles(max_pixels)
    largest = largest_block(max_pixels)
    k_tiles = shape.k_tiles(rows)
    channel_blocks = [(c0, min(channel_block, cout_group - c0)) for c0 in range(0, cout_group, channel_block)]
    patches = [spad.alloc(rows * largest * size) for _ in range(LOOKAHEAD + 2)]
    transposed = [spad.alloc(rows * largest * size) for _ in range(LOOKAHEAD + 2)]
    finisher = Finisher(ctx, product, spad, largest, channel_block, channel_block, transpose=True)
    staging = _staging(spad, shape, rows, blocks)
    results = [acc.alloc(largest * channel_block * 4) for _ in range(2)]
    resident = shape.k_total * channel_block * wsize <= spad.free
    filter_base = spad.alloc(shape.k_total * channel_block * wsize) if resident else None
    filter_tiles = None if resident else [spad.alloc(rows * cols * wsize) for _ in range(2)]
    ctx.note(f"filters stationary: {len(blocks)} pixel blocks of <= {largest} streamed, {len(k_tiles)} K tiles x "
             + (f"{len(channel_blocks)} channel blocks of {channel_block} x " if len(channel_blocks) > 1 else "")
             + f"{ceil_div(channel_block, cols)} column blocks, filters {'on chip' if resident else 'streamed'}"
             + (", strided rows staged" if staging is not None else ""))
    # Every (batch, group, channel block, pixel block, K tile) in order; prepare(step) loads its patch
    # and turns it into rows.
    steps = [(n, group, channel_range, block, k_tile) for n in range(shape.batch) for group in range(shape.groups)
             for channel_range in channel_blocks for block in range(len(blocks)) for k_tile in k_tiles]

    def prepare(step: int) -> None:
        n, group, _, block, (_, kt, pieces) = steps[step]
        od, oh0, nrows, ow0, ncols = blocks[block]
        patch, rows_tile = patches[step % len(patches)], transposed[step % len(patches)]
        shape.load_patch(ctx, patch, n, group, pieces, od, oh0, nrows, ow0, ncols, staging)
        ctx.emitter.emit("vmov", dtype=product.operand, dst=rows_tile, dst_rs=kt, a=patch, a_rs=1,
                         a_cs=nrows * ncols, rows=nrows * ncols, cols=kt)

    def filter_rows(group: int, c0: int, channels: int, k0: int, k1: int) -> None:
        """Rows k0..k1 of a channel block's filters [K, channels] into their place on chip."""
        ctx.dma_in(filter_base + k0 * channels * wsize,
                   filters.at(group).window(0, k0, k1).window(1, c0, c0 + channels))

    lookahead = Lookahead(len(steps), prepare)
    count = block_count = 0
    on_chip = None  # the (group, first channel) of the channel block whose filters are on chip
    for step, (n, group, (c0, channels), block, (k0, kt, _)) in enumerate(steps):
        od, oh0, nrows, ow0, ncols = blocks[block]
        first_channel = group * cout_group + c0
        pixels = nrows * ncols
        first_tile, last_tile = k0 == 0, k0 + kt == shape.k_total
        if first_tile:
            if resident and on_chip != (group, c0):
                filter_rows(group, c0, channels, 0, shape.k_total)
                on_chip = group, c0
            result = results[block_count % 2]
            block_count += 1
        lookahead.advance(step)
        rows_tile = transposed[step % len(patches)]
        for j0 in range(0, channels, cols):
            nt = min(cols, channels - j0)
            if resident:
                filter_tile, stride = filter_base + (k0 * channels + j0) * wsize, channels
            else:
                filter_tile, stride = filter_tiles[count % 2], nt
                ctx.dma_in(filter_tile, filters.at(group).window(0, k0, k0 + kt).window(1, c0 + j0, c0 + j0 + nt))
            ctx.emitter.emit("load_weights", dtype=product.weight_dtype, addr=filter_tile, k=kt, n=nt,
                             stride=stride)
            ctx.emitter.emit("matmul", dtype=product.operand, a=rows_tile, a_rs=kt, m=pixels,
                             c=result + j0 * 4, c_rs=channels, accumulate=int(not first_tile))
            count += 1
        if resident and block == len(blocks) - 1:
            # The last pixel block of this channel block: the next channel block's filters replace
            # these K tile by K tile, each as soon as its last matmul has run.
            following = steps[step + len(k_tiles)] if step + len(k_tiles) < len(steps) else None
            # (Not into a block of more channels: its rows would overwrite rows still to be used.)
            if following is not None and (following[1], following[2][0]) != on_chip and following[2][1] <= channels:
                filter_rows(following[1], *following[2], k0, k0 + kt)
                if last_tile:
                    on_chip = following[1], following[2][0]
        if last_tile:
            # [pixels, channels] in the accumulator -> [channels, pixels], NCHW rows.
            finisher.finish(result, pixels, channels, False, first_channel, out,
                            _block_of(n, first_channel, channels, od, oh0, nrows, ow0, ncols))


def patch_stationary(ctx: CodegenContext, shape: ConvShape, filters: Callable[[], View], product: Product,
                     out: View, size: int, tile_major=None) -> None:
    """Patch tiles [K, pixels] stay in the array while the filters' rows [cout, K] (`filters()`,
    [group, cout, K]) stream; the accumulator collects [cout, pixels], NCHW rows. An
    output-channel block's filters stay on chip when they fit; else they are streamed per
    tile (with the patches, LOOKAHEAD K tiles ahead, when a ring of them fits), from
    `tile_major(channel_block)`'s copy (view, (group, first channel, first K) ->
    element offset) when it gives one, so that each tile is one contiguous DMA run."""
    config = ctx.config
    rows, cols = config.array_rows, config.array_cols
    cout_group = shape.cout_group
    k_tiles = shape.k_tiles(rows)
    tiles = shape.pixel_tiles(cols)
    spad, acc = ctx.scratchpad(), ctx.accumulator()
    depth = STAGED_LOOKAHEAD if shape.strides[2] > 1 else LOOKAHEAD  # strided rows are staged
    patches = [spad.alloc(rows * cols * size) for _ in range(depth + 2)]
    m_tile = _patch_stationary_rows(config, shape)
    finisher = Finisher(ctx, product, spad, m_tile, cols, m_tile)
    staging = _staging(spad, shape, rows, tiles, ring=depth + 2)
    wsize = product.weight_dtype.size
    # Filters that stay on chip are read once per channel block, not once per pixel tile, but a
    # smaller channel block reads every patch more often: keep the block whose DRAM traffic is least.
    m_tile = min((m_tile, _resident_block(m_tile, shape, wsize, spad.free - 1024, cols)),
                 key=lambda block: _patch_stationary_cycles(config, product, block, shape, tiles, spad.free - 1024))
    resident = m_tile * shape.k_total * wsize <= spad.free - 1024
    if not resident:
        m_tile = max(1, min(m_tile, (spad.free // 2 - 1024) // (rows * wsize)))
    # With several channel blocks on chip in turn, the next block's filters load while this block's matmuls
    # run: two buffers, the block halved (down to the array's width) until both fit.
    block_pair = m_tile
    while resident and 2 * block_pair * shape.k_total * wsize > spad.free - 1024 and block_pair > cols:
        block_pair //= 2
    alternate = resident and shape.cout_group > m_tile and 2 * block_pair * shape.k_total * wsize <= spad.free - 1024
    if alternate:
        m_tile = block_pair
    filter_bases = [spad.alloc(m_tile * shape.k_total * wsize) for _ in range(2 if alternate else 1)] \
        if resident else []
    # Streamed filter tiles come in a ring as deep as the patches', LOOKAHEAD K tiles ahead with them,
    # when that fits in half the scratchpad left; else in two buffers, each just before its matmuls.
    ahead = not resident and (depth + 2) * m_tile * rows * wsize <= spad.free // 2
    filter_tiles = None if resident else [spad.alloc(m_tile * rows * wsize) for _ in range(depth + 2 if ahead
                                                                                           else 2)]
    streamed = None if resident or tile_major is None else tile_major(m_tile)
    held = "on chip per block" + (", two blocks in turn" if alternate else "")
    ctx.note(f"patch stationary: {len(tiles)} pixel tiles x {len(k_tiles)} K tiles, channel blocks of {m_tile} "
             f"streamed, filters {held if resident else 'streamed ahead' if ahead else 'streamed'}"
             + (", strided rows staged" if staging is not None else ""))
    c_buffers = [acc.alloc(m_tile * cols * 4) for _ in range(2)]
    # Every (batch, group, channel block, pixel tile, K tile) in order. Patches are loaded LOOKAHEAD K
    # tiles ahead of their matmuls, across tiles: staged ones (strided rows) are picked out on the
    # vector unit, which would otherwise finish a tile before it prepares the next tile's patches.
    steps = [(n, group, m0, tile, index) for n in range(shape.batch) for group in range(shape.groups)
             for m0 in range(0, cout_group, m_tile) for tile in range(len(tiles)) for index in range(len(k_tiles))]

    def load_filters(step: int) -> None:
        """A step's streamed filter rows [channels, K tile] into its turn of the ring."""
        _, group, m0, _, index = steps[step]
        k0, kt, _ = k_tiles[index]
        mt = min(m_tile, cout_group - m0)
        target = filter_tiles[step % len(filter_tiles)]
        if streamed is not None:
            tiles_view, offsets = streamed
            ctx.dma_in(target, View.dense(tiles_view.addr + offsets[group, m0, k0] * wsize, tiles_view.dtype,
                                          (mt * kt,)))
        else:
            ctx.dma_in(target, filters().at(group).window(0, m0, m0 + mt).window(1, k0, k0 + kt))

    def prepare(step: int) -> None:
        n, group, _, tile, index = steps[step]
        od, oh0, nrows, ow0, ncols = tiles[tile]
        shape.load_patch(ctx, patches[step % len(patches)], n, group, k_tiles[index][2], od, oh0, nrows, ow0, ncols,
                         staging)
        if ahead:
            load_filters(step)

    if resident or streamed is None:
        filters()  # arranged now if it is to be: arranging uses the scratchpad the patches are loaded into
    lookahead = Lookahead(len(steps), prepare, depth)
    tile_count = 0
    for step, (n, group, m0, tile, index) in enumerate(steps):
        od, oh0, nrows, ow0, ncols = tiles[tile]
        k0, kt, _ = k_tiles[index]
        mt = min(m_tile, cout_group - m0)
        first_channel = group * cout_group + m0
        pixels = nrows * ncols
        if index == 0:
            if resident and tile == 0:
                filter_base = filter_bases[(m0 // m_tile) % len(filter_bases)]
                ctx.dma_in(filter_base, filters().at(group).window(0, m0, m0 + mt))
            c_tile = c_buffers[tile_count % 2]
            tile_count += 1
        lookahead.advance(step)
        patch = patches[step % len(patches)]
        if resident:
            filter_rows, stride = filter_base + k0 * wsize, shape.k_total
        else:
            filter_rows, stride = filter_tiles[step % len(filter_tiles)], kt
            if not ahead:
                load_filters(step)
        # The patch is the stationary operand: with integer products it holds the
        # activations (u8 or i8) and the filters stream.
        ctx.emitter.emit("load_weights", dtype=product.operand, addr=patch, k=kt, n=pixels, stride=pixels)
        ctx.emitter.emit("matmul", dtype=product.weight_dtype, a=filter_rows, a_rs=stride, m=mt, c=c_tile,
                         c_rs=pixels, accumulate=int(index > 0))
        if index == len(k_tiles) - 1:
            finisher.finish(c_tile, mt, pixels, True, first_channel, out,
                            _block_of(n, first_channel, mt, od, oh0, nrows, ow0, ncols))


def _patch_stationary_rows(config, shape: ConvShape) -> int:
    """Patch stationary's output channels per block at most: the rows each matmul streams, whose
    results for one pixel tile fit half the accumulator."""
    return max(1, min(shape.cout_group, config.acc_bytes // (2 * config.array_cols * 4), 65535))


def _fold_cycles(config, streamed: float, shifted: float) -> float:
    """A weight tile's matrix cycles when `streamed` cycles of rows pass through it after `shifted`
    cycles of shifting it in: overlapped with the previous tile's rows when weights are double-
    buffered, else one after the other, the array filled and drained each time (isa/SPEC.md)."""
    if config.weight_double_buffer:
        return max(streamed, shifted)
    return streamed + shifted + config.array_rows + config.array_cols - 2


def _channel_blocks(config, shape: ConvShape) -> list[int]:
    """Filters stationary's candidate channel blocks: a group's output channels, then the array's
    width and its doublings below them."""
    blocks, block = [shape.cout_group], config.array_cols
    while block < shape.cout_group:
        blocks.append(block)
        block *= 2
    return blocks


def _filters_stationary_pixels(config, shape: ConvShape, channel_block: int) -> int:
    """The most pixels a filters-stationary block takes with channel blocks of `channel_block`: its
    results fit half the accumulator, its patches and rows the scratchpad."""
    return min(shape.slice_pixels, 65535, config.acc_bytes // (2 * 4 * channel_block),
               config.spad_bytes // (4 * 4 * (config.array_rows + channel_block)))


def _filters_stationary_cycles(config, product: Product, shape: ConvShape, channel_block: int) -> float:
    """Estimated cycles of filters stationary per image and group: the largest of the matrix unit's
    (per pixel block, K tile and column block, the pixels streamed or the filter tile shifted in),
    the vector unit's (each patch turned into rows once per channel block; each result finished
    and turned back into NCHW rows) and the DRAM's (each patch once per channel block, a run per
    channel; the filters once when a channel block's fit on chip, else once per pixel block)."""
    pixels = _filters_stationary_pixels(config, shape, channel_block)
    if pixels < 1:
        return float("inf")
    rows = config.array_rows
    k_tiles = ceil_div(shape.k_total, rows)
    blocks = [nrows * ncols for _, _, nrows, _, ncols in shape.pixel_tiles(pixels)]
    row_cycles, weight_cycles = config.row_cycles(product.operand), config.row_cycles(product.weight_dtype)
    size, wsize, beat = product.operand.size, product.weight_dtype.size, config.dram_bytes_per_cycle
    resident = shape.k_total * channel_block * wsize <= config.spad_bytes // 2
    matrix = vector = memory = 0
    for c0 in range(0, shape.cout_group, channel_block):
        channels = min(channel_block, shape.cout_group - c0)
        column_blocks = ceil_div(channels, config.array_cols)
        memory += shape.k_total * channels * wsize * (1 if resident else len(blocks)) / beat
        for block in blocks:
            matrix += k_tiles * column_blocks * _fold_cycles(config, block * row_cycles, rows * weight_cycles)
            # Each K tile's patch turned into rows; the result finished and turned back into NCHW rows.
            vector += (k_tiles * vector_pass_cycles(config, block, rows)
                       + 2 * vector_pass_cycles(config, channels, block))
            memory += shape.k_total * ceil_div(block * size, beat)
    return max(matrix, vector, memory)


def _patch_stationary_estimate(config, product: Product, shape: ConvShape) -> float:
    """Estimated cycles of patch stationary per image and group, as filters stationary's are
    counted: _patch_stationary_cycles' matrix and DRAM, or the vector unit finishing each tile."""
    channels = _patch_stationary_rows(config, shape)
    tiles = shape.pixel_tiles(config.array_cols)
    vector = ceil_div(shape.cout_group, channels) * sum(vector_pass_cycles(config, channels, nrows * ncols)
                                                         for *_, nrows, _, ncols in tiles)
    return max(vector, _patch_stationary_cycles(config, product, channels, shape, tiles, config.spad_bytes // 2))


def _block_of(n: int, first_channel: int, channels: int, od: int, oh0: int, nrows: int, ow0: int,
              ncols: int) -> Callable[[View], View]:
    """A tile's block of an NCDHW view laid out like the output: batch n, channels first_channel..,
    output depth od, rows oh0.., columns ow0..."""
    return lambda view: (view.at(n).window(0, first_channel, first_channel + channels).window(1, od, od + 1)
                         .window(2, oh0, oh0 + nrows).window(3, ow0, ow0 + ncols))


class Staging:
    """Scratchpad buffers that strided input rows are read into (ConvShape.load_patch), taken in
    turn, so that the next piece's DMA need not wait for the vector unit to finish the last."""

    def __init__(self, buffers: list[int]):
        self.buffers, self.turn = buffers, 0

    def next(self) -> int:
        self.turn += 1
        return self.buffers[self.turn % len(self.buffers)]


def _staging(spad, shape: ConvShape, rows: int, tiles, ring: int = 2) -> Staging | None:
    """Staging for strided input rows, when the stride needs it: `ring` buffers (as many as the patches
    prepared ahead, so that none waits for the vector unit to pick out an earlier one), or else two, when
    they take at most a quarter of the free scratchpad, else one within a quarter; None otherwise
    (strided DMA)."""
    need = max(shape.staging_bytes(rows, nrows, ncols) for *_, nrows, _, ncols in tiles)
    if need == 0 or 4 * need > spad.free:
        return None
    count = next(count for count in (ring, 2, 1) if 4 * count * need <= spad.free)
    return Staging([spad.alloc(need) for _ in range(count)])


def _resident_block(m_tile: int, shape: ConvShape, wsize: int, free: int, cols: int) -> int:
    """The largest halving of m_tile (down to the array's width) whose filters fit in `free` bytes."""
    while m_tile * shape.k_total * wsize > free and m_tile > cols:
        m_tile = -(-m_tile // 2)
    return m_tile


def _patch_stationary_cycles(config, product: Product, m_tile: int, shape: ConvShape, tiles, free: int) -> float:
    """Estimated cycles of patch-stationary per group with channel blocks of m_tile: the larger of
    the matrix unit's (each patch tile loaded, each block's filter rows streamed through it) and
    the DRAM's (every patch once per channel block; the filters once if a block's fit on chip,
    else once per pixel tile)."""
    row_cycles = config.row_cycles(product.operand)
    blocks = -(-shape.cout_group // m_tile)
    k_tiles = -(-shape.k_total // config.array_rows)
    matrix = blocks * len(tiles) * k_tiles * _fold_cycles(config, m_tile * row_cycles, config.array_rows * row_cycles)
    patches = shape.k_total * sum(nrows * ncols for *_, nrows, _, ncols in tiles) * product.operand.size
    filters = shape.cout_group * shape.k_total * product.weight_dtype.size
    resident = m_tile * shape.k_total * product.weight_dtype.size <= free
    memory = (blocks * patches + (filters if resident else filters * len(tiles))) / config.dram_bytes_per_cycle
    return max(matrix, memory)
