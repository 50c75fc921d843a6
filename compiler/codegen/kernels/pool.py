"""MaxPool and AveragePool on the vector unit, NCDHW with channels as rows.

Pooling of one, two and three spatial axes is handled as 3-D (depth, height, width), the
missing leading axes of size one. For a block of channels and a tile of output pixels
(within one output depth slice; whole rows when they fit), each kernel (depth, row)
position's input rows are one DMA of contiguous runs into a staging tile; the kernel's
column positions are strided reads of it (column stride = the pooling stride), folded
into the running [channels, pixels] result with vmax or vadd. Padding (-inf, or the
integer minimum, for max; 0 for average), as far as ceil_mode's last window reaches, is
loaded into the staging tile from a constant where a window leaves the input; average
divides by a per-pixel count computed at compile time (count_include_pad or not). A float
pool whose one window is the whole unpadded input is a global pool: a row reduction per
channel (rows.py), which fills the vector lanes where one output column would not. A 2-D
max pool whose vector cycles say so folds the window's columns along every input row, then
its rows for each output row (`_separable_max_pool`): ResNet-50's 3x3/2 max pool 60.2 k →
52.8 k cycles on edge.
"""

from __future__ import annotations

import itertools

import numpy as np

from compiler.codegen.context import LOCAL_ALIGN, CodegenContext, unsupported
from compiler.codegen.kernels.conv import SPATIAL, as_3d, load_box, pixel_tiles
from compiler.codegen.kernels.rows import reduce_views
from compiler.ir import Node
from isa.dtypes import INT_RANGES, DType
from isa.spec import vector_pass_cycles

MAX_PIXELS = 4096


def _window_counts(size: int, out: int, kernel: int, stride: int, dilation: int, pad_begin: int,
                   low: int, high: int) -> np.ndarray:
    """How many taps of each output position's window fall inside [low, high) of the input axis."""
    starts = np.arange(out) * stride - pad_begin
    taps = starts[:, None] + np.arange(kernel)[None, :] * dilation
    return ((taps >= low) & (taps < high)).sum(axis=1)


def pool_kernel(ctx: CodegenContext, node: Node) -> None:
    is_max = node.op == "MaxPool"
    x, out, attrs = as_3d(node, ctx.view(node.inputs[0]), ctx.view(node.outputs[0]), node.attrs)
    if len([o for o in node.outputs if o]) > 1:
        raise unsupported(node, "the Indices output of MaxPool")
    # MaxPool also runs on quantized integers (the max commutes with dequantization).
    if x.dtype != DType.F32 and not (is_max and x.dtype in (DType.I8, DType.U8)):
        raise unsupported(node, f"{x.dtype.asm_name} {node.op} is not supported")
    dtype = x.dtype
    kernel, strides, dilations, pads = attrs["kernel_shape"], attrs["strides"], attrs["dilations"], attrs["pads"]
    window_taps = int(np.prod(kernel))
    batch, channels = x.shape[:2]
    sizes, out_sizes = x.shape[2:], out.shape[2:]
    if dtype == DType.F32 and tuple(kernel) == tuple(sizes) and set(dilations) == {1} and not any(pads):
        # One window, the whole input (ResNet's last AveragePool): a row reduction over each
        # channel's pixels fills the vector lanes; output columns (one here) would not.
        ctx.note(f"one window over the whole input: as Global{node.op}")
        reduce_views(ctx, node, f"Global{node.op}", x, out, [2, 3, 4])
        return
    _, out_h, out_w = out_sizes
    lowest = -np.inf if dtype.is_float else INT_RANGES[dtype][0]
    pad_value = lowest if is_max else 0.0
    if is_max and x.shape[2] == out_sizes[0] == 1 and kernel[0] == 1 and min(kernel[1:]) > 1 \
            and set(dilations) == {1} and _separable_max_pool(ctx, x, out, kernel, strides, pads, pad_value):
        return
    divisor = None
    if not is_max:
        include_pad = bool(attrs.get("count_include_pad", 0))
        axes = [_window_counts(sizes[i], out_sizes[i], kernel[i], strides[i], dilations[i], pads[i],
                               -pads[i] if include_pad else 0,
                               sizes[i] + pads[SPATIAL + i] if include_pad else sizes[i]) for i in range(SPATIAL)]
        counts = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
        if np.all(counts == window_taps):
            divisor = 1.0 / window_taps
        else:
            divisor = ctx.constant(1.0 / np.maximum(counts, 1), DType.F32, node.outputs[0] + ".divisor")

    spad = ctx.scratchpad()
    esize = dtype.size
    tiles = pixel_tiles(out_h, out_w, min(MAX_PIXELS, max(out_w, 1) * max(1, MAX_PIXELS // max(out_w, 1))))

    def span(ncols: int) -> int:
        """Input columns one kernel row of `ncols` output columns reads: contiguous, so one DMA burst."""
        return (ncols - 1) * strides[2] + (kernel[2] - 1) * dilations[2] + 1

    def largest_of(tiles) -> tuple[int, int]:
        return (max(nrows * ncols for _, nrows, _, ncols in tiles),
                max(nrows * span(ncols) for _, nrows, _, ncols in tiles))

    # Two result tiles of [channels, pixels], two tiles' staging of [channels, rows, span] per kernel
    # (depth, row) position (the next tile's rows load while this tile's are folded), two divisor
    # rows of [pixels]; each buffer may lose up to LOCAL_ALIGN bytes to alignment.
    positions = kernel[0] * kernel[1]
    slack = (4 + 2 * positions) * LOCAL_ALIGN

    def channels_that_fit(pixels: int, staged: int) -> int:
        return (spad.free - slack - 2 * pixels * 4) // (2 * (pixels + positions * staged) * esize)

    largest, staged = largest_of(tiles)
    while channels_that_fit(largest, staged) < 1 and largest > 1:
        tiles = pixel_tiles(out_h, out_w, max(1, largest // 2))
        largest, staged = largest_of(tiles)
    max_rows = max(nrows for _, nrows, _, _ in tiles)
    channel_tile = max(1, min(channels, 65535 // max_rows, channels_that_fit(largest, staged)))
    results = [spad.alloc(channel_tile * largest * esize) for _ in range(2)]
    staging = [spad.alloc(channel_tile * staged * esize) for _ in range(2 * positions)]
    divisors = [spad.alloc(largest * 4) for _ in range(2)]
    count = 0
    for n in range(batch):
        for c0 in range(0, channels, channel_tile):
            ct = min(channel_tile, channels - c0)
            for od in range(out_sizes[0]):
                for oh0, nrows, ow0, ncols in tiles:
                    pixels, width = nrows * ncols, span(ncols)
                    result = results[count % 2]
                    shape = dict(dtype=dtype, dst=result, dst_rs=ncols, rows=ct * nrows, cols=ncols)
                    taps = 0
                    # Per kernel (depth, row): the input rows it reads, each a contiguous run of
                    # `width` columns, in one DMA; the kernel's columns are strided reads of it. The
                    # first two taps are combined in one instruction, each later one into the result.
                    for kd, kh in itertools.product(range(kernel[0]), range(kernel[1])):
                        depth = od * strides[0] + kd * dilations[0] - pads[0]
                        row = oh0 * strides[1] + kh * dilations[1] - pads[1]
                        stage = staging[(count * positions + kd * kernel[1] + kh) % len(staging)]
                        load_box(ctx, x, pad_value, stage, n, c0, ct, depth, (row, nrows, strides[1]),
                                 (ow0 * strides[2] - pads[2], width, 1))
                        for kw in range(kernel[2]):
                            window = dict(a=stage + kw * dilations[2] * esize, a_rs=width, a_cs=strides[2])
                            taps += 1
                            if taps == 1 and window_taps > 1:
                                first_tap = window
                            elif taps == 1:
                                ctx.emitter.emit("vmov", **window, **shape)
                            else:
                                other = (dict(b=first_tap["a"], b_rs=width, b_cs=strides[2]) if taps == 2
                                         else dict(b=result, b_rs=ncols))
                                ctx.emitter.emit("vmax" if is_max else "vadd", **other, **window, **shape)
                    tile_shape = dict(dtype=dtype, dst=result, dst_rs=pixels, a=result, a_rs=pixels, rows=ct,
                                      cols=pixels)
                    if isinstance(divisor, float):
                        ctx.emitter.emit("vmuli", imm=divisor, **tile_shape)
                    elif divisor is not None:
                        row_divisor = divisors[count % 2]
                        ctx.dma_in(row_divisor, divisor.at(od).window(0, oh0, oh0 + nrows).window(1, ow0, ow0 + ncols))
                        ctx.emitter.emit("vmul", b=row_divisor, b_rs=0, b_cs=1, **tile_shape)
                    ctx.dma_out(result, out.at(n).window(0, c0, c0 + ct).window(1, od, od + 1)
                                .window(2, oh0, oh0 + nrows).window(3, ow0, ow0 + ncols))
                    count += 1


def _separable_max_pool(ctx: CodegenContext, x, out, kernel, strides, pads, pad_value: float) -> bool:
    """A 2-D max pool as a pass along the rows, then one along the columns: per tile of whole output rows
    and block of channels, the input rows the tile reads come in once ([channels, rows, columns]), the
    vector unit folds each row's window columns into [channels, rows, output columns] (kernel width - 1
    instructions over every row), then each output row's window rows into the result (kernel height - 1
    instructions a row, over the channels). For ResNet-50's 3x3/2: 2 passes over the input rows and 2 over
    the output rows where the window's 8 folds pass over every output value, when the vector cycles say so
    (the row instructions' latency weighs with few channels); False, having emitted nothing, otherwise."""
    config, dtype, size = ctx.config, x.dtype, x.dtype.size
    batch, channels = x.shape[:2]
    _, kh, kw = kernel
    _, sh, sw = strides
    _, out_h, out_w = out.shape[2:]
    width = (out_w - 1) * sw + kw  # input columns a row of output reads
    spad = ctx.scratchpad()

    def band(nrows: int) -> int:
        return (nrows - 1) * sh + kh

    # Tiles of whole output rows; channels as many as two tiles' buffers fit (staged input, row maxima,
    # result), at most all.
    def per_channel(nrows: int) -> int:
        return 2 * (band(nrows) * width + band(nrows) * out_w + nrows * out_w) * size

    nrows = out_h
    while nrows > 1 and per_channel(nrows) + 6 * LOCAL_ALIGN > spad.free:
        nrows = -(-nrows // 2)
    channel_tile = min(channels, 65535 // band(nrows), (spad.free - 6 * LOCAL_ALIGN) // per_channel(nrows))
    if channel_tile < 1:
        return False
    direct = (kh * kw - 1) * vector_pass_cycles(config, channel_tile * nrows, out_w)
    separable = ((kw - 1) * vector_pass_cycles(config, channel_tile * band(nrows), out_w)
                 + nrows * (kh - 1) * vector_pass_cycles(config, channel_tile, out_w))
    if separable >= direct:
        return False
    ctx.note(f"max pool by rows, then columns: tiles of {nrows} output rows x {channel_tile} channels")
    staged = [spad.alloc(channel_tile * band(nrows) * width * size) for _ in range(2)]
    maxima = [spad.alloc(channel_tile * band(nrows) * out_w * size) for _ in range(2)]
    results = [spad.alloc(channel_tile * nrows * out_w * size) for _ in range(2)]
    count = 0
    for n in range(batch):
        for c0 in range(0, channels, channel_tile):
            ct = min(channel_tile, channels - c0)
            for oh0 in range(0, out_h, nrows):
                rows = min(nrows, out_h - oh0)
                rows_in = band(rows)
                stage, row_max, result = (buffers[count % 2] for buffers in (staged, maxima, results))
                load_box(ctx, x, pad_value, stage, n, c0, ct, 0, (oh0 * sh - pads[1], rows_in, 1),
                         (-pads[2], width, 1))
                # Along the rows: [ct * rows_in, out_w], window column j of output column o at o * sw + j.
                along = dict(dtype=dtype, dst=row_max, dst_rs=out_w, rows=ct * rows_in, cols=out_w)
                ctx.emitter.emit("vmax", a=stage, a_rs=width, a_cs=sw, b=stage + size, b_rs=width, b_cs=sw, **along)
                for j in range(2, kw):
                    ctx.emitter.emit("vmax", a=row_max, a_rs=out_w, a_cs=1, b=stage + j * size, b_rs=width,
                                     b_cs=sw, **along)
                # Down the columns: output row r takes maxima rows r * sh + i, for every channel at once.
                for r in range(rows):
                    down = dict(dtype=dtype, dst=result + r * out_w * size, dst_rs=rows * out_w, rows=ct,
                                cols=out_w)
                    first = row_max + r * sh * out_w * size
                    ctx.emitter.emit("vmax", a=first, a_rs=rows_in * out_w, a_cs=1, b=first + out_w * size,
                                     b_rs=rows_in * out_w, b_cs=1, **down)
                    for i in range(2, kh):
                        ctx.emitter.emit("vmax", a=down["dst"], a_rs=rows * out_w, a_cs=1,
                                         b=first + i * out_w * size, b_rs=rows_in * out_w, b_cs=1, **down)
                ctx.dma_out(result, out.at(n).window(0, c0, c0 + ct).window(1, 0, 1).window(2, oh0, oh0 + rows))
                count += 1
    return True
