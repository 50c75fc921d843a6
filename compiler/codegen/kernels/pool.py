"""MaxPool and AveragePool on the vector unit, NCHW with channels as rows.

For a block of channels and a tile of output pixels (whole rows when they fit), each
kernel position's input window is one strided DMA into a dense [channels, pixels] tile,
folded into the running result with vmax or vadd. The input is padded once in DRAM
(-inf for max, 0 for average), far enough for ceil_mode's last window; average divides
by a per-pixel count computed at compile time (count_include_pad or not).
"""

from __future__ import annotations

import numpy as np

from compiler.codegen.context import CodegenContext, View, unsupported
from compiler.codegen.kernels.conv import as_2d, padded, pixel_tiles
from compiler.ir import Node
from isa.dtypes import DType

MAX_PIXELS = 4096


def _window_counts(size: int, out: int, kernel: int, stride: int, dilation: int, pad_begin: int,
                   low: int, high: int) -> np.ndarray:
    """How many taps of each output position's window fall inside [low, high) of the input axis."""
    starts = np.arange(out) * stride - pad_begin
    taps = starts[:, None] + np.arange(kernel)[None, :] * dilation
    return ((taps >= low) & (taps < high)).sum(axis=1)


def pool_kernel(ctx: CodegenContext, node: Node) -> None:
    is_max = node.op == "MaxPool"
    x, out, attrs = as_2d(node, ctx.view(node.inputs[0]), ctx.view(node.outputs[0]), node.attrs)
    if len([o for o in node.outputs if o]) > 1:
        raise unsupported(node, "the Indices output of MaxPool")
    if x.dtype != DType.F32:
        raise unsupported(node, f"{x.dtype.asm_name} pooling is not supported yet")
    kernel_h, kernel_w = attrs["kernel_shape"]
    stride_h, stride_w = attrs.get("strides", [1, 1])
    dilation_h, dilation_w = attrs.get("dilations", [1, 1])
    top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
    batch, channels, height, width = x.shape
    out_h, out_w = out.shape[2:]
    needed = ((out_h - 1) * stride_h + (kernel_h - 1) * dilation_h + 1,
              (out_w - 1) * stride_w + (kernel_w - 1) * dilation_w + 1)
    source = padded(ctx, x, (top, left, bottom, right), -np.inf if is_max else 0.0, needed)
    _, _, src_h, src_w = source.shape
    divisor = None
    if not is_max:
        include_pad = bool(attrs.get("count_include_pad", 0))
        rows_count = _window_counts(height, out_h, kernel_h, stride_h, dilation_h, top,
                                    -top if include_pad else 0, height + bottom if include_pad else height)
        cols_count = _window_counts(width, out_w, kernel_w, stride_w, dilation_w, left,
                                    -left if include_pad else 0, width + right if include_pad else width)
        counts = rows_count[:, None] * cols_count[None, :]
        if np.all(counts == kernel_h * kernel_w):
            divisor = 1.0 / (kernel_h * kernel_w)
        else:
            divisor = ctx.constant(1.0 / np.maximum(counts, 1), DType.F32, node.outputs[0] + ".divisor")

    spad = ctx.scratchpad()
    tiles = pixel_tiles(out_h, out_w, min(MAX_PIXELS, max(out_w, 1) * max(1, MAX_PIXELS // max(out_w, 1))))
    largest = max(nrows * ncols for _, nrows, _, ncols in tiles)
    buffers_needed = 6  # two result tiles, two window tiles, two divisor rows
    channel_tile = max(1, min(channels, 65535, spad.free // (buffers_needed * largest * 4)))
    if channel_tile * largest * 4 * buffers_needed > spad.free:
        largest = max(1, spad.free // (buffers_needed * 4))
        tiles = pixel_tiles(out_h, out_w, largest)
        largest = max(nrows * ncols for _, nrows, _, ncols in tiles)
        channel_tile = max(1, spad.free // (buffers_needed * largest * 4))
    results = [spad.alloc(channel_tile * largest * 4) for _ in range(2)]
    windows = [spad.alloc(channel_tile * largest * 4) for _ in range(2)]
    divisors = [spad.alloc(largest * 4) for _ in range(2)]
    count = 0
    for n in range(batch):
        for c0 in range(0, channels, channel_tile):
            ct = min(channel_tile, channels - c0)
            for oh0, nrows, ow0, ncols in tiles:
                pixels = nrows * ncols
                result = results[count % 2]
                first = True
                for kh in range(kernel_h):
                    for kw in range(kernel_w):
                        row, col = oh0 * stride_h + kh * dilation_h, ow0 * stride_w + kw * dilation_w
                        window = View(source.at(n).addr + (c0 * src_h * src_w + row * src_w + col) * 4, DType.F32,
                                      (ct, nrows, ncols), (src_h * src_w, stride_h * src_w, stride_w))
                        target = result if first else windows[count % 2]
                        ctx.dma_in(target, window)
                        if not first:
                            ctx.emitter.emit("vmax" if is_max else "vadd", dtype=DType.F32, dst=result, dst_rs=pixels,
                                             a=result, a_rs=pixels, b=target, b_rs=pixels, rows=ct, cols=pixels)
                        first = False
                tile_shape = dict(dtype=DType.F32, dst=result, dst_rs=pixels, a=result, a_rs=pixels, rows=ct,
                                  cols=pixels)
                if isinstance(divisor, float):
                    ctx.emitter.emit("vmuli", imm=divisor, **tile_shape)
                elif divisor is not None:
                    row_divisor = divisors[count % 2]
                    ctx.dma_in(row_divisor, divisor.window(0, oh0, oh0 + nrows).window(1, ow0, ow0 + ncols))
                    ctx.emitter.emit("vmul", b=row_divisor, b_rs=0, b_cs=1, **tile_shape)
                ctx.dma_out(result, out.at(n).window(0, c0, c0 + ct).window(1, oh0, oh0 + nrows)
                            .window(2, ow0, ow0 + ncols))
                count += 1
