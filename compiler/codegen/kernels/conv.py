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

from compiler.codegen import dram_ops
from compiler.codegen.context import CodegenContext, View, unsupported
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
    dram_ops.fill(ctx, result, value)
    dram_ops.copy(ctx, x, result.window(2, top, top + h).window(3, left, left + w))
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
                 dilations=[1] + list(attrs.get("dilations", [1])), pads=[0, pads[0], 0, pads[1]])
    return x4, out4, attrs


def conv_kernel(ctx: CodegenContext, node: Node) -> None:
    config = ctx.config
    weight = ctx.graph.values[node.inputs[1]]
    if not weight.is_const:
        raise unsupported(node, "filters computed at run time")
    x, out, attrs = as_2d(node, ctx.view(node.inputs[0]), ctx.view(node.outputs[0]),
                          dict(node.attrs, kernel_shape=list(weight.shape[2:])))
    if x.dtype != DType.F32 or out.dtype != DType.F32:
        raise unsupported(node, f"{x.dtype.asm_name} convolution is not supported yet")
    filters = weight.const.reshape(weight.shape[0], weight.shape[1], *attrs["kernel_shape"])
    groups = int(attrs.get("group", 1))
    batch, _, _, _ = x.shape
    cout, cin_group, kernel_h, kernel_w = filters.shape
    cout_group = cout // groups
    stride_h, stride_w = attrs.get("strides", [1, 1])
    dilation_h, dilation_w = attrs.get("dilations", [1, 1])
    source = padded(ctx, x, tuple(attrs.get("pads", [0, 0, 0, 0])), 0.0)
    _, _, height, width = source.shape
    out_h, out_w = out.shape[2:]
    arranged = filters.reshape(groups, cout_group, cin_group, kernel_h, kernel_w).transpose(0, 3, 4, 1, 2)
    filter_view = ctx.constant(arranged, DType.F32, node.inputs[1] + ".conv")
    bias = ctx.view(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None

    rows, cols = config.array_rows, config.array_cols
    steps = [(kh, kw, c0, min(rows, cin_group - c0)) for kh in range(kernel_h) for kw in range(kernel_w)
             for c0 in range(0, cin_group, rows)]
    tiles = pixel_tiles(out_h, out_w, cols)
    spad, acc = ctx.scratchpad(), ctx.accumulator()
    x_buffers = [spad.alloc(rows * cols * 4) for _ in range(2)]
    m_tile = max(1, min(cout_group, config.acc_bytes // (2 * cols * 4), 65535))
    # Keep a whole output-channel block's filters on chip when they fit; else stream them per step.
    per_row = sum(kt for _, _, _, kt in steps) * 4
    budget = spad.free - 2 * m_tile * 4 - 1024
    resident = m_tile * per_row <= budget
    if not resident:
        m_tile = max(1, min(m_tile, (spad.free // 2 - 2 * m_tile * 4 - 1024) // (rows * 4)))
        resident = False
    bias_buffer = spad.alloc(m_tile * 4) if bias is not None else None
    if resident:
        w_base = spad.alloc(m_tile * per_row)
    else:
        w_buffers = [spad.alloc(m_tile * rows * 4) for _ in range(2)]
    c_buffers = [acc.alloc(m_tile * cols * 4) for _ in range(2)]
    count = 0
    tile_count = 0
    for n in range(batch):
        for group in range(groups):
            for m0 in range(0, cout_group, m_tile):
                mt = min(m_tile, cout_group - m0)
                w_addresses = []
                if resident:
                    offset = w_base
                    for kh, kw, c0, kt in steps:
                        ctx.dma_in(offset, filter_view.at(group, kh, kw).window(0, m0, m0 + mt).window(1, c0, c0 + kt))
                        w_addresses.append(offset)
                        offset += mt * kt * 4
                if bias is not None:
                    first_channel = group * cout_group + m0
                    ctx.dma_in(bias_buffer, bias.window(0, first_channel, first_channel + mt))
                for oh0, nrows, ow0, ncols in tiles:
                    pixels = nrows * ncols
                    c_tile = c_buffers[tile_count % 2]
                    tile_count += 1
                    for index, (kh, kw, c0, kt) in enumerate(steps):
                        x_tile = x_buffers[count % 2]
                        channel = group * cin_group + c0
                        first_row, first_col = oh0 * stride_h + kh * dilation_h, ow0 * stride_w + kw * dilation_w
                        patch = View(source.at(n).addr + (channel * height * width + first_row * width + first_col) * 4,
                                     DType.F32, (kt, nrows, ncols), (height * width, stride_h * width, stride_w))
                        ctx.dma_in(x_tile, patch)
                        if resident:
                            w_tile = w_addresses[index]
                        else:
                            w_tile = w_buffers[count % 2]
                            ctx.dma_in(w_tile, filter_view.at(group, kh, kw).window(0, m0, m0 + mt)
                                       .window(1, c0, c0 + kt))
                        ctx.emitter.emit("load_weights", dtype=DType.F32, addr=x_tile, k=kt, n=pixels, stride=pixels)
                        ctx.emitter.emit("matmul", dtype=DType.F32, a=w_tile, a_rs=kt, m=mt, c=c_tile, c_rs=pixels,
                                         accumulate=int(index > 0))
                        count += 1
                    if bias is not None:
                        ctx.emitter.emit("vadd", dtype=DType.F32, dst=c_tile, dst_rs=pixels, a=c_tile, a_rs=pixels,
                                         b=bias_buffer, b_rs=1, b_cs=0, rows=mt, cols=pixels)
                    first_channel = group * cout_group + m0
                    target = out.at(n).window(0, first_channel, first_channel + mt).window(1, oh0, oh0 + nrows) \
                        .window(2, ow0, ow0 + ncols)
                    ctx.dma_out(c_tile, target)
