"""Normalisations and losses as IR ops that have kernels: reductions, element-wise ops, LogSoftmax.

Each follows the equations of its ONNX spec (the doc's equations, or the function body
where the doc has none), in the same order of operations:

- RMSNormalization, and LayerNormalization when its Mean / InvStdDev outputs are used (the
  fused LayerNormalization kernel produces only Y): stage one in f32 (`stash_type` 1),
  the scale and bias in X's type.
- BatchNormalization whose scale, bias, mean or variance is computed at run time (constant
  ones are folded into Conv or into one Mul and Add by compiler/passes/simplify.py).
- NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss. Picking input[n, target[n, d...], d...]
  needs no gather: a one-hot selection `target == class` (an Equal against a constant
  [1, C, 1, ...] iota) chooses the element with Where, and a sum over the class axis, of
  one chosen value and zeros, returns it exactly. The weight of each sample is picked the
  same way.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from compiler.frontend.context import NodeContext, Normalisers, known_dtype
from compiler.frontend.normalise_tensor import reshape_to

NORMALISERS = Normalisers()
_register = NORMALISERS.register
INT32 = np.iinfo(np.int32)



# Normalisation ------------------------------------------------------------------------------------
def check_stash_type(ctx: NodeContext) -> None:
    """Stage one runs in the stash type: f32 is the only one (the default)."""
    stash = int(ctx.attrs.get("stash_type", 1))
    if stash != onnx.TensorProto.FLOAT:
        name = known_dtype(stash) or onnx.TensorProto.DataType.Name(stash).lower()
        raise ctx.unsupported(f"stash_type {name}: stage one is computed in f32 only")


def _stage_one_input(ctx: NodeContext) -> str:
    """X for stage one, in f32."""
    check_stash_type(ctx)
    x = ctx.value(0)
    return x.name if x.dtype == "f32" else ctx.step("Cast", x.name, to="f32")


def _in_input_type(ctx: NodeContext, name: str) -> str:
    dtype = ctx.value(0).dtype
    return name if dtype == "f32" else ctx.step("Cast", name, to=dtype)


def _normalised_axes(ctx: NodeContext) -> tuple[list[int], int]:
    """The axes from `axis` on, and how many elements each normalised group has."""
    rank = ctx.rank(0)
    axis = ctx.axis(ctx.attrs.get("axis", -1), rank)
    return list(range(axis, rank)), math.prod(ctx.shape(0)[axis:])


def _mean_of_squares(ctx: NodeContext, x: str, axes: list[int], count: int) -> str:
    """ReduceMean(x * x) over `axes`, kept as size 1, with the square done inside the reduction."""
    return ctx.step("Div", ctx.step("ReduceSumSquare", x, axes=axes, keepdims=1), ctx.scalar(count, "f32"))


def layer_norm_with_statistics(ctx: NodeContext) -> None:
    """LayerNormalization-17 by its doc: Mean, D = X - Mean, Var = ReduceMean(D * D),
    InvStdDev = 1 / sqrt(Var + epsilon), Y = D * InvStdDev * Scale + B."""
    x = _stage_one_input(ctx)
    axes, count = _normalised_axes(ctx)
    mean = ctx.step("ReduceMean", x, axes=axes, keepdims=1)
    deviation = ctx.step("Sub", x, mean)
    variance = _mean_of_squares(ctx, deviation, axes, count)
    std_dev = ctx.step("Sqrt", ctx.step("Add", variance, ctx.scalar(ctx.attrs.get("epsilon", 1e-5), "f32")))
    inv_std_dev = ctx.step("Reciprocal", std_dev)
    normalized = _in_input_type(ctx, ctx.step("Mul", deviation, inv_std_dev))
    if ctx.has(2):
        scaled = ctx.step("Mul", normalized, ctx.inputs[1])
        ctx.step("Add", scaled, ctx.inputs[2], out=ctx.outputs[0])
    else:
        ctx.step("Mul", normalized, ctx.inputs[1], out=ctx.outputs[0])
    for index, value in ((1, mean), (2, inv_std_dev)):
        if ctx.used(index):
            ctx.alias(ctx.outputs[index], value)


@_register("RMSNormalization")
def _rms_norm(ctx: NodeContext) -> None:
    """RMSNormalization-23 by its doc: RMS = sqrt(ReduceMean(X * X) + epsilon), Y = X / RMS * scale."""
    x = _stage_one_input(ctx)
    axes, count = _normalised_axes(ctx)
    mean_square = _mean_of_squares(ctx, x, axes, count)
    rms = ctx.step("Sqrt", ctx.step("Add", mean_square, ctx.scalar(ctx.attrs.get("epsilon", 1e-5), "f32")))
    normalized = _in_input_type(ctx, ctx.step("Div", x, rms))
    ctx.step("Mul", normalized, ctx.inputs[1], out=ctx.outputs[0])


def batch_norm_at_run_time(ctx: NodeContext) -> None:
    """Inference BatchNormalization, Y = scale * (X - mean) / sqrt(var + epsilon) + B (the reference's order),
    with the per-channel parameters shaped [C, 1, ...] to broadcast over axis 1."""
    rank = ctx.rank(0)
    if rank < 2:
        raise ctx.invalid(f"input {list(ctx.shape(0))} has no channel axis")
    channels = ctx.shape(0)[1]
    scale, bias, mean, variance = (reshape_to(ctx, index, (channels,) + (1,) * (rank - 2)) for index in range(1, 5))
    epsilon = ctx.scalar(ctx.attrs.get("epsilon", 1e-5), ctx.value(4).dtype)
    std_dev = ctx.step("Sqrt", ctx.step("Add", variance, epsilon))
    scaled = ctx.step("Mul", scale, ctx.step("Sub", ctx.inputs[0], mean))
    ctx.step("Add", ctx.step("Div", scaled, std_dev), bias, out=ctx.outputs[0])


# Losses -------------------------------------------------------------------------------------------
def _check_loss_inputs(ctx: NodeContext) -> None:
    if ctx.value(0).dtype != "f32":
        raise ctx.unsupported(f"{ctx.value(0).dtype} scores: the reduction kernels compute f32 only")
    if ctx.rank(0) < 2:
        raise ctx.invalid(f"input {list(ctx.shape(0))} has no class axis")
    expected = ctx.shape(0)[:1] + ctx.shape(0)[2:]
    if ctx.shape(1) != expected:
        raise ctx.invalid(f"target {list(ctx.shape(1))} is not {list(expected)}")
    if ctx.has(2) and ctx.shape(2) != ctx.shape(0)[1:2]:
        raise ctx.invalid(f"weight {list(ctx.shape(2))} is not [{ctx.shape(0)[1]}]")


def negative_log_likelihood(ctx: NodeContext, log_probabilities: str, out: str) -> None:
    """NegativeLogLikelihoodLoss of `log_probabilities` [N, C, d...] with ctx's target, weight and attributes."""
    shape = ctx.importer.graph.values[log_probabilities].shape
    rank, classes = len(shape), shape[1]
    reduction = ctx.attrs.get("reduction", "mean")
    if reduction not in ("none", "sum", "mean"):
        raise ctx.invalid(f"reduction={reduction!r} is not none, sum or mean")
    target = ctx.value(1)
    labels = target.name if target.dtype == "i32" else ctx.step("Cast", target.name, to="i32")
    class_ids = np.arange(classes, dtype=np.int32).reshape((1, classes) + (1,) * (rank - 2))
    chosen = ctx.step("Equal", ctx.step("Unsqueeze", labels, axes=[1]), ctx.constant("", class_ids))
    ignore_index = ctx.attrs.get("ignore_index")
    kept = None
    if ignore_index is not None:
        # int64 targets were narrowed with saturation: compare with the ignore index narrowed the same way
        ignored = ctx.step("Equal", labels, ctx.scalar(np.clip(ignore_index, INT32.min, INT32.max), "i32"))
        kept = ctx.step("Not", ignored)
        if 0 <= ignore_index < classes:
            chosen = ctx.step("And", chosen, ctx.step("Unsqueeze", kept, axes=[1]))
    zero = ctx.scalar(0.0, "f32")
    picked = ctx.step("ReduceSum", ctx.step("Where", chosen, log_probabilities, zero), axes=[1], keepdims=0)
    weights = None
    if ctx.has(2):
        per_class = ctx.step("Reshape", ctx.inputs[2], shape=list(class_ids.shape))
        weights = ctx.step("ReduceSum", ctx.step("Where", chosen, per_class, zero), axes=[1], keepdims=0)
    elif kept is not None and reduction == "mean":
        weights = ctx.step("Cast", kept, to="f32")
    loss_out = out if reduction == "none" else ""
    if ctx.has(2):
        loss = ctx.step("Mul", ctx.step("Neg", picked), weights, out=loss_out)
    else:
        loss = ctx.step("Neg", picked, out=loss_out)
    if reduction == "sum" or (reduction == "mean" and weights is not None):
        total = ctx.step("ReduceSum", loss, out="" if reduction == "mean" else out, axes=[], keepdims=0)
        if reduction == "mean":  # the sum of the applied weights: of the samples not ignored, if unweighted
            ctx.step("Div", total, ctx.step("ReduceSum", weights, axes=[], keepdims=0), out=out)
    elif reduction == "mean":
        ctx.step("ReduceMean", loss, out=out, axes=[], keepdims=0)


@_register("NegativeLogLikelihoodLoss")
def _nll_loss(ctx: NodeContext) -> None:
    _check_loss_inputs(ctx)
    negative_log_likelihood(ctx, ctx.inputs[0], ctx.outputs[0])


@_register("SoftmaxCrossEntropyLoss")
def _softmax_cross_entropy(ctx: NodeContext) -> None:
    """NegativeLogLikelihoodLoss of LogSoftmax over the class axis (the function body's form)."""
    _check_loss_inputs(ctx)
    log_probabilities = ctx.step("LogSoftmax", ctx.inputs[0], axis=1)
    if ctx.used(1):
        ctx.alias(ctx.outputs[1], log_probabilities)
    negative_log_likelihood(ctx, log_probabilities, ctx.outputs[0])
