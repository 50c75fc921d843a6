"""Element-wise and data-movement ops with no kernel of their own, as IR ops that have one.

- Mish, Swish, SwiGLU, Celu, Shrink and ThresholdedRelu: ONNX defines them by function
  bodies of other ops; the importer emits those ops, in the same order and in the input's
  type (so each step rounds as the body's would).
- IsNaN and IsInf: comparisons.
- Trilu: a Where on a compile-time constant triangle (or, for types the vector unit does
  not select on, a Gather of each element or of a 0).
- GatherElements, GatherND and ReverseSequence: a Gather from the data flattened (to 1-D,
  or to rows) at computed positions.
- OneHot: an Equal of the indices against a constant iota, then a Where of the two values.
- CenterCropPad: one Pad, negative pads cropping.
- AffineGrid: a MatMul of the constant grid of positions by theta.
"""

from __future__ import annotations

import math

import numpy as np

from compiler.frontend.context import NodeContext, Normalisers
from compiler.ir import numpy_dtype

NORMALISERS = Normalisers()
_register = NORMALISERS.register

# The element-wise kernels select on these; other types (i64) move through dma_gather.
SELECTABLE_DTYPES = frozenset({"f32", "bf16", "f16", "i32", "i8", "u8", "bool"})



def _like(ctx: NodeContext, value: float) -> str:
    """A scalar constant of the first input's type (the bodies' CastLike of an attribute)."""
    return ctx.scalar(value, ctx.value(0).dtype)


@_register("Mish")
def _mish(ctx: NodeContext) -> None:
    """Y = X * Tanh(Softplus(X))."""
    x = ctx.inputs[0]
    ctx.step("Mul", x, ctx.step("Tanh", ctx.step("Softplus", x)), out=ctx.outputs[0])


def _swish(ctx: NodeContext, x: str, out: str = "") -> str:
    """Swish(x) = x * Sigmoid(alpha * x)."""
    alpha = float(ctx.attrs.get("alpha", 1.0))
    scaled = x if alpha == 1.0 else ctx.step("Mul", _like(ctx, alpha), x)  # 1 * x is x
    return ctx.step("Mul", x, ctx.step("Sigmoid", scaled), out=out)


@_register("Swish")
def _swish_op(ctx: NodeContext) -> None:
    _swish(ctx, ctx.inputs[0], ctx.outputs[0])


@_register("SwiGLU")
def _swiglu(ctx: NodeContext) -> None:
    """Y = Swish(A) * B, A and B of one shape (no broadcasting)."""
    if ctx.shape(0) != ctx.shape(1):
        raise ctx.invalid(f"A {list(ctx.shape(0))} and B {list(ctx.shape(1))} differ in shape")
    ctx.step("Mul", _swish(ctx, ctx.inputs[0]), ctx.inputs[1], out=ctx.outputs[0])


@_register("Celu")
def _celu(ctx: NodeContext) -> None:
    """Y = alpha * Elu(X / alpha) with Elu's alpha 1."""
    alpha = _like(ctx, float(ctx.attrs.get("alpha", 1.0)))
    elu = ctx.step("Elu", ctx.step("Div", ctx.inputs[0], alpha), alpha=1.0)
    ctx.step("Mul", alpha, elu, out=ctx.outputs[0])


@_register("Shrink")
def _shrink(ctx: NodeContext) -> None:
    """Y = X + bias where X < -lambd, X - bias where lambd < X, else 0."""
    x = ctx.inputs[0]
    lambd, bias = float(ctx.attrs.get("lambd", 0.5)), float(ctx.attrs.get("bias", 0.0))
    bias_const = _like(ctx, bias)
    above = ctx.step("Where", ctx.step("Less", _like(ctx, lambd), x), ctx.step("Sub", x, bias_const), _like(ctx, 0))
    below = ctx.step("Less", x, _like(ctx, -lambd))
    ctx.step("Where", below, ctx.step("Add", x, bias_const), above, out=ctx.outputs[0])


@_register("ThresholdedRelu")
def _thresholded_relu(ctx: NodeContext) -> None:
    """Y = X where alpha < X, else 0."""
    x = ctx.inputs[0]
    above = ctx.step("Less", _like(ctx, float(ctx.attrs.get("alpha", 1.0))), x)
    ctx.step("Where", above, x, _like(ctx, 0), out=ctx.outputs[0])


@_register("IsNaN")
def _is_nan(ctx: NodeContext) -> None:
    """NaN is the one value not equal to itself."""
    x = ctx.inputs[0]
    ctx.step("Not", ctx.step("Equal", x, x), out=ctx.outputs[0])


@_register("IsInf")
def _is_inf(ctx: NodeContext) -> None:
    x = ctx.inputs[0]
    signs = [sign for sign, attr in ((1, "detect_positive"), (-1, "detect_negative")) if ctx.attrs.get(attr, 1)]
    if not signs:
        ctx.constant(ctx.outputs[0], np.zeros(ctx.shape(0), dtype=bool))
        return
    tests = [ctx.step("Equal", x, _like(ctx, sign * np.inf), out="" if len(signs) > 1 else ctx.outputs[0])
             for sign in signs]
    if len(tests) > 1:
        ctx.step("Or", *tests, out=ctx.outputs[0])


@_register("Trilu")
def _trilu(ctx: NodeContext) -> None:
    """Keep the elements on and above (upper) or below (lower) diagonal k of the last two axes; 0 elsewhere."""
    x = ctx.value(0)
    if len(x.shape) < 2:
        raise ctx.invalid(f"input {list(x.shape)} has fewer than 2 axes")
    k = ctx.optional_const(1, "k")
    k = 0 if k is None else int(k.reshape(-1)[0])
    rows, cols = x.shape[-2:]
    offset = np.arange(cols)[None, :] - np.arange(rows)[:, None]  # j - i
    keep = np.broadcast_to(offset >= k if ctx.attrs.get("upper", 1) else offset <= k, x.shape)
    if keep.all():
        ctx.alias(ctx.outputs[0], x.name)
    elif not keep.any():
        ctx.constant(ctx.outputs[0], np.zeros(x.shape, dtype=numpy_dtype(x.dtype)))
    elif x.dtype in SELECTABLE_DTYPES:
        ctx.step("Where", ctx.constant("", np.ascontiguousarray(keep)), x.name, _like(ctx, 0), out=ctx.outputs[0])
    else:
        # x flattened with one 0 after it: every element either stays or reads that 0
        flat = ctx.step("Reshape", x.name, shape=[x.size])
        padded = ctx.step("Concat", flat, ctx.constant("", np.zeros(1, numpy_dtype(x.dtype))), axis=0)
        sources = np.where(keep, np.arange(x.size).reshape(x.shape), x.size).astype(np.int64)
        ctx.step("Gather", padded, ctx.constant("", sources), out=ctx.outputs[0], axis=0)


@_register("GatherElements")
def _gather_elements(ctx: NodeContext) -> None:
    data, indices = ctx.value(0), ctx.value(1)
    rank = len(data.shape)
    axis = ctx.axis(ctx.attrs.get("axis", 0), rank)
    if len(indices.shape) != rank or any(indices.shape[a] > data.shape[a] for a in range(rank) if a != axis):
        raise ctx.invalid(f"indices {list(indices.shape)} do not fit data {list(data.shape)} on axes other than {axis}")
    if indices.is_const:
        _gather_along(ctx, indices.const.astype(np.int64), axis)
    else:
        _gather_along(ctx, _as_int32(ctx, indices.name), axis)


def _gather_along(ctx: NodeContext, index: np.ndarray | str, axis: int) -> None:
    """out[p] = data[p with index[p] on axis] (GatherElements), as a Gather from data flattened to 1-D: the
    flat position is index[p] * stride(axis) plus a constant for the other coordinates of p.

    `index` is an array, or the name of an int32 value computed at run time: negative indices wrap, and one
    outside [-s, s) becomes a position past the flattened data, which stops the run as Gather's
    out-of-range indices do."""
    data = ctx.value(0)
    rank, size = len(data.shape), data.shape[axis]
    if data.size >= 2**31:
        raise ctx.unsupported(f"{data.size} elements: flat positions are computed in int32")
    shape = index.shape if isinstance(index, np.ndarray) else ctx.importer.graph.values[index].shape
    strides = [math.prod(data.shape[a + 1:]) for a in range(rank)]
    coordinates = np.indices(shape, dtype=np.int64)
    base = np.zeros(shape, dtype=np.int64)
    for a in range(rank):
        if a != axis:
            base += coordinates[a] * strides[a]
    flat_data = ctx.step("Reshape", data.name, shape=[data.size])
    if isinstance(index, np.ndarray):
        if ((index < -size) | (index >= size)).any():
            raise ctx.invalid(f"an index is outside [{-size}, {size}) on axis {axis}")
        positions = ctx.constant("", base + np.where(index < 0, index + size, index) * strides[axis])
    else:
        index, inside = _wrapped(ctx, index, size)
        if strides[axis] != 1:
            index = ctx.step("Mul", index, ctx.scalar(strides[axis], "i32"))
        if base.any():
            index = ctx.step("Add", index, ctx.constant("", base.astype(np.int32)))
        positions = ctx.step("Where", inside, index, ctx.scalar(data.size, "i32"))
    ctx.step("Gather", flat_data, positions, out=ctx.outputs[0], axis=0)


@_register("ReverseSequence")
def _reverse_sequence(ctx: NodeContext) -> None:
    """GatherElements along the time axis at lens[b] - 1 - t where t < lens[b], else t."""
    shape = ctx.shape(0)
    rank = len(shape)
    time_axis = ctx.axis(ctx.attrs.get("time_axis", 0), rank, "time_axis")
    batch_axis = ctx.axis(ctx.attrs.get("batch_axis", 1), rank, "batch_axis")
    if time_axis == batch_axis or ctx.shape(1) != (shape[batch_axis],):
        raise ctx.invalid(f"time_axis {time_axis}, batch_axis {batch_axis} and sequence_lens {list(ctx.shape(1))} "
                          f"do not fit input {list(shape)}")
    along = [1] * rank
    along[time_axis] = shape[time_axis]
    steps = np.arange(shape[time_axis]).reshape(along)
    across = [1] * rank
    across[batch_axis] = shape[batch_axis]
    lengths = ctx.value(1)
    if lengths.is_const:
        lens = lengths.const.astype(np.int64).reshape(across)
        _gather_along(ctx, np.broadcast_to(np.where(steps < lens, lens - 1 - steps, steps), shape), time_axis)
        return
    lens = ctx.step("Reshape", _as_int32(ctx, lengths.name), shape=across)
    steps = ctx.constant("", steps.astype(np.int32))
    reversed_steps = ctx.step("Sub", ctx.step("Sub", lens, ctx.scalar(1, "i32")), steps)
    index = ctx.step("Where", ctx.step("Less", steps, lens), reversed_steps, steps)
    _gather_along(ctx, ctx.step("Expand", index, shape=list(shape)), time_axis)


def _as_int32(ctx: NodeContext, name: str) -> str:
    return name if ctx.importer.graph.values[name].dtype == "i32" else ctx.step("Cast", name, to="i32")


def _wrapped(ctx: NodeContext, index: str, size: int) -> tuple[str, str]:
    """An int32 index into an axis of `size` with negative ones wrapped, and whether it is inside [0, size)."""
    index = ctx.step("Where", ctx.step("Less", index, ctx.scalar(0, "i32")),
                     ctx.step("Add", index, ctx.scalar(size, "i32")), index)
    inside = ctx.step("And", ctx.step("Not", ctx.step("Less", index, ctx.scalar(0, "i32"))),
                      ctx.step("Less", index, ctx.scalar(size, "i32")))
    return index, inside


@_register("GatherND")
def _gather_nd(ctx: NodeContext) -> None:
    """Slices of data at index tuples, as a Gather of rows: data becomes [batch * indexed positions, rest]
    and each tuple (plus its batch) one row number. Run-time indices are computed as GatherElements's."""
    data, indices = ctx.value(0), ctx.value(1)
    batch_dims = int(ctx.attrs.get("batch_dims", 0))
    depth = indices.shape[-1] if indices.shape else 0
    if not (batch_dims < min(len(data.shape), len(indices.shape)) and 1 <= depth <= len(data.shape) - batch_dims
            and indices.shape[:batch_dims] == data.shape[:batch_dims]):
        raise ctx.invalid(f"indices {list(indices.shape)} with batch_dims={batch_dims} do not index data "
                          f"{list(data.shape)}")
    if data.size >= 2**31:
        raise ctx.unsupported(f"{data.size} elements: positions are computed in int32")
    sizes = data.shape[batch_dims:batch_dims + depth]
    strides = [math.prod(sizes[i + 1:]) for i in range(depth)]
    tuples = math.prod(indices.shape[:-1])
    per_batch = math.prod(indices.shape[batch_dims:-1])
    positions_per_batch = math.prod(sizes)
    batch_start = (np.arange(tuples) // per_batch * positions_per_batch).reshape(indices.shape[:-1])
    rows = ctx.step("Reshape", data.name, shape=[data.size // math.prod(data.shape[batch_dims + depth:]),
                                                  math.prod(data.shape[batch_dims + depth:])])
    if indices.is_const:
        index = indices.const.astype(np.int64)
        if ((index < -np.array(sizes)) | (index >= np.array(sizes))).any():
            raise ctx.invalid(f"an index tuple is outside the data's axes {list(sizes)}")
        index = np.where(index < 0, index + np.array(sizes), index)
        positions = ctx.constant("", batch_start + (index * np.array(strides)).sum(axis=-1))
    else:
        index = _as_int32(ctx, indices.name)
        position, valid = ctx.constant("", batch_start.astype(np.int32)), None
        starts, ends = [0] * len(indices.shape), list(indices.shape)
        for i, size in enumerate(sizes):
            component = ctx.step("Slice", index, starts=starts[:-1] + [i], ends=ends[:-1] + [i + 1],
                                 axes=list(range(len(indices.shape))), steps=[1] * len(indices.shape))
            component, inside = _wrapped(ctx, ctx.step("Squeeze", component, axes=[len(indices.shape) - 1]), size)
            if strides[i] != 1:
                component = ctx.step("Mul", component, ctx.scalar(strides[i], "i32"))
            position = ctx.step("Add", position, component)
            valid = inside if valid is None else ctx.step("And", valid, inside)
        positions = ctx.step("Where", valid, position, ctx.scalar(data.size, "i32"))
    gathered = ctx.step("Gather", rows, positions, axis=0)
    ctx.step("Reshape", gathered, out=ctx.outputs[0], shape=list(indices.shape[:-1] + data.shape[batch_dims + depth:]))


@_register("OneHot")
def _one_hot(ctx: NodeContext) -> None:
    """values[1] where the (wrapped) index equals the position on the new axis, values[0] elsewhere.

    Indices are compared in int32: floats truncate toward zero (the spec's cast to int64), int64 ones
    saturate, which keeps an out-of-range index out of range."""
    depth = ctx.const(1, "depth").reshape(-1)
    if depth.size != 1 or not depth[0] >= 1:
        raise ctx.invalid(f"depth {depth.tolist()} is not one positive number")
    depth = int(depth[0])
    rank = ctx.rank(0) + 1
    axis = ctx.axis(ctx.attrs.get("axis", -1), rank)
    values = ctx.value(2)
    if values.shape != (2,):
        raise ctx.invalid(f"values {list(values.shape)} is not [off_value, on_value]")
    index = _as_int32(ctx, ctx.inputs[0])
    negative = ctx.step("Less", index, ctx.scalar(0, "i32"))
    index = ctx.step("Where", negative, ctx.step("Add", index, ctx.scalar(depth, "i32")), index)
    positions = np.arange(depth, dtype=np.int32).reshape([depth if a == axis else 1 for a in range(rank)])
    hot = ctx.step("Equal", ctx.step("Unsqueeze", index, axes=[axis]), ctx.constant("", positions))
    if values.is_const:
        off, on = (ctx.constant("", values.const[i]) for i in (0, 1))
    else:
        off, on = (ctx.step("Slice", values.name, starts=[i], ends=[i + 1], axes=[0], steps=[1]) for i in (0, 1))
    ctx.step("Where", hot, on, off, out=ctx.outputs[0])


@_register("CenterCropPad")
def _center_crop_pad(ctx: NodeContext) -> None:
    """One Pad: negative pads crop. The odd element of a crop or a pad goes to the end."""
    shape = ctx.shape(0)
    rank = len(shape)
    sizes = ctx.ints(1, "shape") or []
    axes = ctx.attrs.get("axes") or list(range(rank))
    if len(sizes) != len(axes):
        raise ctx.invalid(f"shape {sizes} does not have one size for each of the axes {list(axes)}")
    pads = [0] * (2 * rank)
    for axis, size in zip(axes, sizes, strict=True):
        axis = ctx.axis(axis, rank, "axes")
        change = size - shape[axis]  # > 0 pads, < 0 crops
        begin = int(np.sign(change)) * (abs(change) // 2)
        pads[axis], pads[rank + axis] = begin, change - begin
    if not any(pads):
        ctx.alias(ctx.outputs[0], ctx.inputs[0])
        return
    ctx.step("Pad", ctx.inputs[0], out=ctx.outputs[0], pads=pads, value=0.0)


@_register("AffineGrid")
def _affine_grid(ctx: NodeContext) -> None:
    """grid[n, (d,) h, w] = theta[n] @ (x, y, (z,) 1): one MatMul of the constant homogeneous positions
    [(D *) H * W, spatial + 1] by theta^T. Positions run from -1 to 1: the corner pixels' centres with
    align_corners, else the centres of `size` equal cells."""
    theta = ctx.value(0)
    sizes = ctx.ints(1, "size") or []
    spatial = len(sizes) - 2
    if spatial not in (2, 3) or theta.shape[1:] != (spatial, spatial + 1) or theta.shape[0] != sizes[0]:
        raise ctx.invalid(f"theta {list(theta.shape)} and size {sizes} are not a 2-D or 3-D affine grid")
    if theta.dtype != "f32":
        raise ctx.unsupported(f"{theta.dtype} theta: the MatMul kernel computes f32 only")
    dims = sizes[2:]
    corners = ctx.attrs.get("align_corners", 0)
    # A single position is 0 either way, as in PyTorch's affine_grid, which the spec points to (with
    # align_corners, onnx's reference gives -1 and onnxruntime 1)
    axes = [np.linspace(-1, 1, n) if corners and n > 1 else (np.arange(n) * 2 + 1) / n - 1 for n in dims]
    mesh = np.meshgrid(*axes, indexing="ij")  # (z,) y, x over (D,) H, W
    positions = np.stack([*mesh[::-1], np.ones(dims)], axis=-1).reshape(-1, spatial + 1)
    transposed = ctx.step("Transpose", theta.name, perm=[0, 2, 1])
    grid = ctx.step("MatMul", ctx.constant("", positions.astype(np.float32)), transposed)
    ctx.step("Reshape", grid, out=ctx.outputs[0], shape=[sizes[0], *dims, spatial])
