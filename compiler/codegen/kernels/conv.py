"""Conv on the systolic array in NCHW, with the input patch as the stationary operand.

For one kernel position (kh, kw) and a block of input channels, the pixels an output
tile needs form a strided window of the (padded) input, `X[cin, pixels]`, which one DMA
brings in densely; it is loaded into the array as the weight tile (K = channels, N =
pixels). The streamed rows are the filter taps `W[cout, cin]` of that kernel position,
and the accumulator collects `Y[cout, pixels]`: exactly NCHW rows, stored with one DMA.
Summing over kernel positions and channel blocks is the matmul's accumulate flag.

Filters are rearranged at compile time to [group, kh, kw, cout, cin]; when one output
channel block's filters fit the scratchpad they are loaded once and stay there for every
pixel tile. Padding is materialised once in DRAM (zeros around a copy of the input).
Pixel tiles are whole output rows when a row is narrower than the array, else row
segments.
"""

from __future__ import annotations

from dataclasses import dataclass

from compiler.codegen.context import CodegenContext, View, unsupported
from compiler.codegen.kernels.movement import Stager
from compiler.ir import Node
from isa.dtypes import DType


def pixel_tiles(out_h: int, out_w: int, width: int) -> list[tuple[int, int, int, int]]:
    """(first row, rows, first column, columns) of each tile of at most `width` output pixels."""
    if out_w <= width:
        rows = max(1, width // out_w)
        return [(oh, min(rows, out_h - oh), 0, out_w) for oh in range(0, out_h, rows)]
    return [(oh, 1, ow, min(width, out_w - ow)) for oh in range(out_h) for ow in range(0, out_w, width)]


def padded(ctx: CodegenContext, x: View, pads: tuple[int, int, int, int], value: float,
           min_size: tuple[int, int] = (0, 0)) -> View:
    """x (N, C, H, W) surrounded by `value`: pads = (top, left, bottom, right); the result is at
    least `min_size` high and wide (ceil-mode pooling reads past the explicit padding)."""
    top, left, bottom, right = pads
    n, c, h, w = x.shape
    height = max(h + top + bottom, min_size[0])
    width = max(w + left + right, min_size[1])
    if (height, width) == (h, w):
        return x
    result = ctx.allocate((n, c, height, width), x.dtype)
    stager = Stager(ctx, fill_elements=result.size)
    stager.fill(result, value)
    stager.copy(x, result.window(2, top, top + h).window(3, left, left + w))
    return result


def as_2d(node: Node, x: View, out: View, attrs: dict):
    """1-D convolution and pooling as 2-D with a height of one."""
    if len(x.shape) == 4:
        return x, out, attrs
    if len(x.shape) != 3:
        raise unsupported(node, f"{len(x.shape) - 2}-D spatial input; only 1-D and 2-D are supported")
    x4 = View(x.addr, x.dtype, x.shape[:2] + (1,) + x.shape[2:], x.strides[:2] + (0,) + x.strides[2:])
    out4 = View(out.addr, out.dtype, out.shape[:2] + (1,) + out.shape[2:], out.strides[:2] + (0,) + out.strides[2:])
    pads = attrs.get("pads", [0, 0])
    attrs = dict(attrs, kernel_shape=[1] + list(attrs["kernel_shape"]), strides=[1] + list(attrs.get("strides", [1])),
                 dilations=[1] + list(attrs.get("dilations", [1])), pads=[0, pads[0], 0, pads[1]],
                 output_padding=[0] + list(attrs.get("output_padding", [0])))
    return x4, out4, attrs


@dataclass(frozen=True)
class ConvShape:
    batch: int
    groups: int
    cin_group: int
    cout_group: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    out: tuple[int, int]
    source: View  # the padded input, NCHW

    @property
    def k_total(self) -> int:
        """The reduction length: kernel positions x input channels, ordered (kh, kw, channel)."""
        return self.kernel[0] * self.kernel[1] * self.cin_group

    def k_tiles(self, rows: int) -> list[tuple[int, int, list[tuple[int, int, int, int]]]]:
        """Tiles of at most `rows` reduction indices: (first index, length, pieces), each piece
        (row in the tile, kh, kw, first channel, channels) one kernel position's channel run.
        Packing positions into a tile keeps the array full when there are few channels."""
        tiles = []
        for k0 in range(0, self.k_total, rows):
            kt = min(rows, self.k_total - k0)
            pieces = []
            index = k0
            while index < k0 + kt:
                position, channel = divmod(index, self.cin_group)
                count = min(self.cin_group - channel, k0 + kt - index)
                kh, kw = divmod(position, self.kernel[1])
                pieces.append((index - k0, kh, kw, channel, count))
                index += count
            tiles.append((k0, kt, pieces))
        return tiles

    def load_patch(self, ctx: CodegenContext, local: int, n: int, group: int, pieces, oh0: int, nrows: int,
                   ow0: int, ncols: int) -> None:
        """The input pixels of a K tile for output rows oh0.., columns ow0..: a dense [kt, pixels] tile."""
        pixels = nrows * ncols
        _, channel_stride, row_stride, col_stride = self.source.strides
        for row, kh, kw, channel, count in pieces:
            first_row = oh0 * self.strides[0] + kh * self.dilations[0]
            first_col = ow0 * self.strides[1] + kw * self.dilations[1]
            first = group * self.cin_group + channel
            offset = first * channel_stride + first_row * row_stride + first_col * col_stride
            window = View(self.source.at(n).addr + offset * 4, DType.F32, (count, nrows, ncols),
                          (channel_stride, self.strides[0] * row_stride, self.strides[1] * col_stride))
            ctx.dma_in(local + row * pixels * 4, window)


def conv_kernel(ctx: CodegenContext, node: Node) -> None:
    weight = ctx.graph.values[node.inputs[1]]
    if not weight.is_const:
        raise unsupported(node, "filters computed at run time")
    x, out, attrs = as_2d(node, ctx.view(node.inputs[0]), ctx.view(node.outputs[0]),
                          dict(node.attrs, kernel_shape=list(weight.shape[2:])))
    if x.dtype != DType.F32 or out.dtype != DType.F32:
        raise unsupported(node, f"{x.dtype.asm_name} convolution is not supported yet")
    filters = weight.const.reshape(weight.shape[0], weight.shape[1], *attrs["kernel_shape"])
    source = padded(ctx, x, tuple(attrs.get("pads", [0, 0, 0, 0])), 0.0)
    convolve(ctx, node, source, filters, int(attrs.get("group", 1)), tuple(attrs.get("strides", [1, 1])),
             tuple(attrs.get("dilations", [1, 1])), out)


def conv_transpose_kernel(ctx: CodegenContext, node: Node) -> None:
    """ConvTranspose as a stride-1 Conv of the input spread out with zeros (stride - 1 between
    pixels) and padded by dilation * (kernel - 1) - pads (cropped where that is negative),
    with the filters flipped and their in/out channels swapped per group."""
    weight = ctx.graph.values[node.inputs[1]]
    if not weight.is_const:
        raise unsupported(node, "filters computed at run time")
    x, out, attrs = as_2d(node, ctx.view(node.inputs[0]), ctx.view(node.outputs[0]),
                          dict(node.attrs, kernel_shape=list(weight.shape[2:])))
    if x.dtype != DType.F32 or out.dtype != DType.F32:
        raise unsupported(node, f"{x.dtype.asm_name} convolution is not supported yet")
    groups = int(attrs.get("group", 1))
    kernel = list(attrs["kernel_shape"])
    strides, dilations = list(attrs.get("strides", [1, 1])), list(attrs.get("dilations", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    output_padding = list(attrs.get("output_padding", [0, 0]))
    if len(output_padding) == 1:
        output_padding = [0] + output_padding
    cin, cout_group = weight.shape[0], weight.shape[1]
    filters = weight.const.reshape(groups, cin // groups, cout_group, *kernel)[..., ::-1, ::-1] \
        .transpose(0, 2, 1, 3, 4).reshape(groups * cout_group, cin // groups, *kernel)
    batch, channels, height, width = x.shape
    begin = [dilations[i] * (kernel[i] - 1) - pads[i] for i in range(2)]
    end = [dilations[i] * (kernel[i] - 1) - pads[2 + i] + output_padding[i] for i in range(2)]
    spread = [(height - 1) * strides[0] + 1, (width - 1) * strides[1] + 1]
    full = ctx.allocate((batch, channels, spread[0] + max(begin[0], 0) + max(end[0], 0),
                         spread[1] + max(begin[1], 0) + max(end[1], 0)), DType.F32)
    stager = Stager(ctx, fill_elements=full.size)
    stager.fill(full, 0.0)
    top, left = max(begin[0], 0), max(begin[1], 0)
    stager.copy(x, full.window(2, top, top + spread[0], strides[0]).window(3, left, left + spread[1], strides[1]))
    # Negative padding crops: the convolution reads a window of the spread-out input.
    source = full.window(2, max(-begin[0], 0), full.shape[2] - max(-end[0], 0)) \
        .window(3, max(-begin[1], 0), full.shape[3] - max(-end[1], 0))
    convolve(ctx, node, source, filters, groups, (1, 1), tuple(dilations), out)


def convolve(ctx: CodegenContext, node: Node, source: View, filters, groups: int, strides: tuple[int, int],
             dilations: tuple[int, int], out: View) -> None:
    """out = conv(source, filters) for a padded NCHW source and constant filters [cout, cin/group, kh, kw]."""
    config = ctx.config
    cout, cin_group, kernel_h, kernel_w = filters.shape
    shape = ConvShape(source.shape[0], groups, cin_group, cout // groups, (kernel_h, kernel_w), strides, dilations,
                      tuple(out.shape[2:]), source)
    bias = ctx.view(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    # [group, K, cout] with K ordered (kh, kw, channel), as the K tiles are.
    by_k = filters.reshape(groups, shape.cout_group, cin_group, kernel_h, kernel_w).transpose(0, 3, 4, 2, 1) \
        .reshape(groups, shape.k_total, shape.cout_group)
    # Rows streamed per matmul: output channels (patch stationary) or pixels (filters stationary).
    rows_patch_stationary = min(shape.cout_group, config.acc_bytes // (2 * config.array_cols * 4))
    rows_filter_stationary = min(shape.out[0] * shape.out[1], 65535, config.acc_bytes // (2 * 4 * shape.cout_group),
                                 config.spad_bytes // (4 * 4 * (config.array_rows + shape.cout_group)))
    if rows_filter_stationary > rows_patch_stationary:
        arranged = ctx.constant(by_k, DType.F32, node.inputs[1] + ".conv_kn")
        filters_stationary(ctx, shape, arranged, bias, out, rows_filter_stationary)
    else:
        arranged = ctx.constant(by_k.transpose(0, 2, 1), DType.F32, node.inputs[1] + ".conv_nk")
        patch_stationary(ctx, shape, arranged, bias, out)


def filters_stationary(ctx: CodegenContext, shape: ConvShape, filters: View, bias: View | None, out: View,
                       max_pixels: int) -> None:
    """Filter tiles [K, cout] stay in the array while a block of pixels streams through.

    A pixel block's patch [K, pixels] is loaded densely and turned into rows [pixels, K]
    on the vector unit (a strided copy); the accumulator holds the block's results for
    every output channel [pixels, cout], turned back into NCHW rows [cout, pixels] on the
    vector unit and stored with one DMA. A group's filters stay on chip when they fit."""
    config = ctx.config
    rows, cols = config.array_rows, config.array_cols
    out_h, out_w = shape.out
    cout_group = shape.cout_group
    blocks = pixel_tiles(out_h, out_w, max_pixels)
    largest = max(nrows * ncols for _, nrows, _, ncols in blocks)
    k_tiles = shape.k_tiles(rows)
    cout_blocks = [(j0, min(cols, cout_group - j0)) for j0 in range(0, cout_group, cols)]
    spad, acc = ctx.scratchpad(), ctx.accumulator()
    patches = [spad.alloc(rows * largest * 4) for _ in range(2)]
    transposed = [spad.alloc(rows * largest * 4) for _ in range(2)]
    outputs = [spad.alloc(cout_group * largest * 4) for _ in range(2)]
    bias_column = spad.alloc(cout_group * 4) if bias is not None else None
    results = [acc.alloc(largest * cout_group * 4) for _ in range(2)]
    resident = shape.k_total * cout_group * 4 <= spad.free
    filter_base = spad.alloc(shape.k_total * cout_group * 4) if resident else None
    filter_tiles = None if resident else [spad.alloc(rows * cols * 4) for _ in range(2)]
    count = block_count = 0
    for n in range(shape.batch):
        for group in range(shape.groups):
            first_channel = group * cout_group
            if bias is not None:
                ctx.dma_in(bias_column, bias.window(0, first_channel, first_channel + cout_group))
            if resident and (n == 0 or shape.groups > 1):
                ctx.dma_in(filter_base, filters.at(group))
            for oh0, nrows, ow0, ncols in blocks:
                pixels = nrows * ncols
                result, output = results[block_count % 2], outputs[block_count % 2]
                block_count += 1
                for index, (k0, kt, pieces) in enumerate(k_tiles):
                    patch, rows_tile = patches[count % 2], transposed[count % 2]
                    shape.load_patch(ctx, patch, n, group, pieces, oh0, nrows, ow0, ncols)
                    ctx.emitter.emit("vmov", dtype=DType.F32, dst=rows_tile, dst_rs=kt, a=patch, a_rs=1, a_cs=pixels,
                                     rows=pixels, cols=kt)
                    for j0, nt in cout_blocks:
                        if resident:
                            filter_tile, stride = filter_base + (k0 * cout_group + j0) * 4, cout_group
                        else:
                            filter_tile, stride = filter_tiles[count % 2], nt
                            ctx.dma_in(filter_tile, filters.at(group).window(0, k0, k0 + kt).window(1, j0, j0 + nt))
                        ctx.emitter.emit("load_weights", dtype=DType.F32, addr=filter_tile, k=kt, n=nt, stride=stride)
                        ctx.emitter.emit("matmul", dtype=DType.F32, a=rows_tile, a_rs=kt, m=pixels,
                                         c=result + j0 * 4, c_rs=cout_group, accumulate=int(index > 0))
                        count += 1
                # [pixels, cout] in the accumulator -> [cout, pixels], NCHW rows, on the vector unit.
                ctx.emitter.emit("vmov", dtype=DType.F32, dst=output, dst_rs=pixels, a=result, a_rs=1,
                                 a_cs=cout_group, rows=cout_group, cols=pixels)
                if bias_column is not None:
                    ctx.emitter.emit("vadd", dtype=DType.F32, dst=output, dst_rs=pixels, a=output, a_rs=pixels,
                                     b=bias_column, b_rs=1, b_cs=0, rows=cout_group, cols=pixels)
                ctx.dma_out(output, out.at(n).window(0, first_channel, first_channel + cout_group)
                            .window(1, oh0, oh0 + nrows).window(2, ow0, ow0 + ncols))


def patch_stationary(ctx: CodegenContext, shape: ConvShape, filters: View, bias: View | None, out: View) -> None:
    """Patch tiles [K, pixels] stay in the array while the filters' rows [cout, K] stream; the
    accumulator collects [cout, pixels], NCHW rows. An output-channel block's filters stay on
    chip when they fit."""
    config = ctx.config
    rows, cols = config.array_rows, config.array_cols
    cout_group = shape.cout_group
    k_tiles = shape.k_tiles(rows)
    tiles = pixel_tiles(shape.out[0], shape.out[1], cols)
    spad, acc = ctx.scratchpad(), ctx.accumulator()
    patches = [spad.alloc(rows * cols * 4) for _ in range(2)]
    m_tile = max(1, min(cout_group, config.acc_bytes // (2 * cols * 4), 65535))
    resident = m_tile * shape.k_total * 4 <= spad.free - 2 * m_tile * 4 - 1024
    if not resident:
        m_tile = max(1, min(m_tile, (spad.free // 2 - 2 * m_tile * 4 - 1024) // (rows * 4)))
    bias_buffer = spad.alloc(m_tile * 4) if bias is not None else None
    filter_base = spad.alloc(m_tile * shape.k_total * 4) if resident else None
    filter_tiles = None if resident else [spad.alloc(m_tile * rows * 4) for _ in range(2)]
    c_buffers = [acc.alloc(m_tile * cols * 4) for _ in range(2)]
    count = tile_count = 0
    for n in range(shape.batch):
        for group in range(shape.groups):
            for m0 in range(0, cout_group, m_tile):
                mt = min(m_tile, cout_group - m0)
                first_channel = group * cout_group + m0
                if resident:
                    ctx.dma_in(filter_base, filters.at(group).window(0, m0, m0 + mt))
                if bias is not None:
                    ctx.dma_in(bias_buffer, bias.window(0, first_channel, first_channel + mt))
                for oh0, nrows, ow0, ncols in tiles:
                    pixels = nrows * ncols
                    c_tile = c_buffers[tile_count % 2]
                    tile_count += 1
                    for index, (k0, kt, pieces) in enumerate(k_tiles):
                        patch = patches[count % 2]
                        shape.load_patch(ctx, patch, n, group, pieces, oh0, nrows, ow0, ncols)
                        if resident:
                            filter_rows, stride = filter_base + k0 * 4, shape.k_total
                        else:
                            filter_rows, stride = filter_tiles[count % 2], kt
                            ctx.dma_in(filter_rows, filters.at(group).window(0, m0, m0 + mt).window(1, k0, k0 + kt))
                        ctx.emitter.emit("load_weights", dtype=DType.F32, addr=patch, k=kt, n=pixels, stride=pixels)
                        ctx.emitter.emit("matmul", dtype=DType.F32, a=filter_rows, a_rs=stride, m=mt, c=c_tile,
                                         c_rs=pixels, accumulate=int(index > 0))
                        count += 1
                    if bias is not None:
                        ctx.emitter.emit("vadd", dtype=DType.F32, dst=c_tile, dst_rs=pixels, a=c_tile, a_rs=pixels,
                                         b=bias_buffer, b_rs=1, b_cs=0, rows=mt, cols=pixels)
                    ctx.dma_out(c_tile, out.at(n).window(0, first_channel, first_channel + mt)
                                .window(1, oh0, oh0 + nrows).window(2, ow0, ow0 + ncols))
