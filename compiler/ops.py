"""The op table: every IR op once, with its arity, attributes, shape rule and meaning.

The importer fills in and checks attributes against it, the verifier checks nodes
against it and the printer orders attributes by it. Ops are in their normalised forms
(docs/compiler.md): operands that must be compile-time constants are attributes, axes
are non-negative, `auto_pad` is resolved into `pads`. Attributes without a sensible
default (those that depend on the input's rank) are `REQUIRED`: the importer always
writes them. The shape rules are in `compiler/shape_rules.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from compiler import shape_rules as rules
from compiler.ir import Node, Value
from compiler.shape_rules import ShapeError  # noqa: F401  (re-exported: the rules' error)


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Default of an attribute that every node of the op must carry."""


@dataclass(frozen=True)
class OpDef:
    name: str
    inputs: tuple[int, int | None]  # (min, max); max None = variadic
    outputs: tuple[int, int]  # (min, max)
    attrs: Mapping[str, Any]  # name -> default, or REQUIRED
    rule: Callable[[dict, list[Value | None]], list[tuple[str, tuple[int, ...]]]]
    doc: str

    def attr_values(self, node: Node) -> dict[str, Any]:
        """The node's attributes with the defaults filled in (REQUIRED ones only if present)."""
        values = {name: default for name, default in self.attrs.items() if default is not REQUIRED}
        values.update(node.attrs)
        return values

    def infer(self, node: Node, inputs: list[Value | None]) -> list[tuple[str, tuple[int, ...]]]:
        """(dtype, shape) of every output the op can have, for these inputs; ShapeError if they do not fit."""
        return self.rule(self.attr_values(node), list(inputs))


OPS: dict[str, OpDef] = {}


def _op(name: str, inputs: tuple[int, int | None] | int, rule, doc: str, outputs: tuple[int, int] | int = 1,
        **attrs: Any) -> None:
    inputs = (inputs, inputs) if isinstance(inputs, int) else inputs
    outputs = (outputs, outputs) if isinstance(outputs, int) else outputs
    OPS[name] = OpDef(name, inputs, outputs, attrs, rule, doc)


# Elementwise, one input ---------------------------------------------------------------------------
for _name, _doc in {
    "Identity": "y = x", "Relu": "max(x, 0)", "Sigmoid": "1 / (1 + exp(-x))", "Tanh": "tanh(x)",
    "Erf": "the error function", "Sqrt": "square root", "Exp": "e**x", "Log": "natural logarithm",
    "Neg": "-x", "Abs": "|x|", "Reciprocal": "1 / x", "Floor": "round down", "Ceil": "round up",
    "Round": "round half to even", "Sign": "-1, 0 or 1", "Softplus": "log(1 + exp(x))", "Softsign": "x / (1 + |x|)",
    "HardSwish": "x * max(0, min(1, x / 6 + 0.5))", "Sin": "sine", "Cos": "cosine",
    "Tan": "tangent", "Asin": "arcsine", "Acos": "arccosine", "Atan": "arctangent", "Sinh": "hyperbolic sine",
    "Cosh": "hyperbolic cosine", "Asinh": "inverse hyperbolic sine", "Acosh": "inverse hyperbolic cosine",
    "Atanh": "inverse hyperbolic tangent", "Not": "logical not (bool)", "BitwiseNot": "bitwise not (integers)",
}.items():
    _op(_name, 1, rules.unary, _doc)

_op("LeakyRelu", 1, rules.unary, "x if x >= 0 else alpha * x", alpha=0.01)
_op("HardSigmoid", 1, rules.unary, "max(0, min(1, alpha * x + beta))", alpha=0.2, beta=0.5)
_op("Elu", 1, rules.unary, "x if x > 0 else alpha * (exp(x) - 1)", alpha=1.0)
_op("Selu", 1, rules.unary, "gamma * (x if x > 0 else alpha * (exp(x) - 1))",
    alpha=1.6732632423543772, gamma=1.0507009873554805)
_op("Gelu", 1, rules.unary, 'x * Phi(x); approximate="tanh" uses the tanh formula', approximate="none")
_op("Clip", 1, rules.unary, "min(max(x, min), max); the bounds are floats, -inf/inf when absent",
    min=-math.inf, max=math.inf)
_op("Cast", 1, rules.cast, "convert to the IR dtype `to`", to=REQUIRED)

# Elementwise, broadcasting ------------------------------------------------------------------------
for _name, _doc in {"Add": "a + b", "Sub": "a - b", "Mul": "a * b", "Div": "a / b (integers truncate)",
                    "BitwiseAnd": "a & b", "BitwiseOr": "a | b", "BitwiseXor": "a ^ b"}.items():
    _op(_name, 2, rules.binary, _doc + ", numpy broadcasting")
_op("Mod", 2, rules.binary, "remainder: sign of the divisor, or of the dividend with fmod=1", fmod=0)
_op("BitShift", 2, rules.binary, 'a << b or a >> b (direction "LEFT" or "RIGHT")', direction=REQUIRED)
_op("Pow", 2, rules.power, "a ** b, numpy broadcasting; the result has a's dtype")
_op("PRelu", 2, rules.unidirectional, "x if x >= 0 else slope * x; slope broadcasts to x")
for _name, _doc in {"Equal": "a == b", "Less": "a < b", "Greater": "a > b", "LessOrEqual": "a <= b",
                    "GreaterOrEqual": "a >= b"}.items():
    _op(_name, 2, rules.comparison, _doc + " (bool), numpy broadcasting")
for _name in ("And", "Or", "Xor"):
    _op(_name, 2, rules.logical, f"logical {_name.lower()} of bools, numpy broadcasting")
for _name, _doc in {"Sum": "sum", "Max": "maximum", "Min": "minimum", "Mean": "mean"}.items():
    _op(_name, (1, None), rules.binary, f"elementwise {_doc} of any number of inputs, numpy broadcasting")
_op("Where", 3, rules.where, "x where cond else y, numpy broadcasting")

# Convolution, pooling, normalisation ---------------------------------------------------------------
_WINDOW = {"kernel_shape": REQUIRED, "strides": REQUIRED, "pads": REQUIRED, "dilations": REQUIRED}
_op("Conv", (2, 3), rules.conv, "N-d convolution of X [N, C, ...] with W [M, C/group, k...], plus bias B [M]; "
    "pads are [begin..., end...]", group=1, **_WINDOW)
_op("ConvTranspose", (2, 3), rules.conv_transpose, "transposed convolution, W [C, M/group, k...]; pads resolved "
    "(from output_shape or auto_pad)", group=1, output_padding=REQUIRED, **_WINDOW)
_op("MaxPool", 1, rules.pool, "max over windows (padding never wins); the Indices output is not supported",
    ceil_mode=0, **_WINDOW)
_op("AveragePool", 1, rules.pool, "mean over windows; count_include_pad=1 divides by the full window",
    ceil_mode=0, count_include_pad=0, **_WINDOW)
_op("GlobalAveragePool", 1, rules.global_pool, "mean over all spatial axes, kept as size 1")
_op("GlobalMaxPool", 1, rules.global_pool, "max over all spatial axes, kept as size 1")
_op("LRN", 1, rules.lrn, "x / (bias + alpha / size * sum of x**2 over `size` channels) ** beta",
    size=REQUIRED, alpha=0.0001, beta=0.75, bias=1.0)
_op("BatchNormalization", 5, rules.batch_norm, "inference: (x - mean) / sqrt(var + epsilon) * scale + bias, "
    "per channel (axis 1); inputs x, scale, bias, mean, var", epsilon=1e-5)
_op("InstanceNormalization", 3, rules.instance_norm, "normalise each [n, c] over the spatial axes, then "
    "scale and bias per channel", epsilon=1e-5)
_op("LayerNormalization", (2, 3), rules.layer_norm, "normalise over the axes from `axis` on, then * scale + bias; "
    "outputs y, mean, inv_std_dev (only y may be used)", outputs=(1, 3), axis=REQUIRED, epsilon=1e-5)
_op("FusedLayerNorm", (2, None), rules.fused_layer_norm, "LayerNormalization(X, scale, bias) (y only), then a "
    "`tail` of FusedElementwise steps on it (x0 = y, x<i> = input 2 + i; single values only), run on each row tile "
    "before it is stored (compiler/passes/fuse_epilogue.py fuse_norm_tail). With a `prologue` (steps on inputs "
    "0..k-1, element-wise or Gather of table rows), X is its result, computed on each row tile as it is loaded, "
    "and scale, bias and the tail's inputs come after those k (fuse_norm_prologue)",
    axis=REQUIRED, epsilon=1e-5, tail=[], prologue=[])
_op("LpNormalization", 1, rules.along_axis, "x / the p-norm (p 1 or 2) along axis", axis=REQUIRED, p=2)

# Matrix products, softmax, reductions -------------------------------------------------------------
_op("Gemm", (2, 3), rules.gemm, "alpha * op(A) @ op(B) + beta * C, op = transpose if transA/transB; "
    "C broadcasts to [M, N]", alpha=1.0, beta=1.0, transA=0, transB=0)
_EPILOGUE = dict(activation="", activation_params=[], tail=[])
_EPILOGUE_DOC = ("; then + Z (the result's shape) and the activation (Relu, or Clip with activation_params "
                 "[min, max]), applied to each result tile on chip (compiler/passes/fuse_epilogue.py); then a `tail` "
                 "of FusedElementwise steps (x0 = that result, x<i> = input 3 + i), if any")
_op("FusedConv", (2, None), rules.fused_conv, "Conv(X, W, B)" + _EPILOGUE_DOC, group=1, **_WINDOW, **_EPILOGUE)
_op("FusedGemm", (2, None), rules.fused_gemm, "Gemm(A, B, C)" + _EPILOGUE_DOC, alpha=1.0, beta=1.0, transA=0,
    transB=0, **_EPILOGUE)
_op("FusedMatMul", (2, None), rules.fused_matmul, "MatMul(A', B') (ranks 2 and more) + C, a bias [N] per column"
    + _EPILOGUE_DOC + "; A' and B' are A and B, or Transpose(A) {perm=perm_a} and Transpose(B) {perm=perm_b} read "
    "in place when given; with perm_out the output is Transpose(result) {perm=perm_out} (N stays last), "
    "written in place; round_a/round_b=\"bf16\" take an f32 A/B and round it to bf16 on chip "
    "(compiler/passes/fold_transpose.py); with softmax=1 the output is Softmax along the last axis of all "
    "that, on whole result rows on chip",
    perm_a=[], perm_b=[], perm_out=[], round_a="", round_b="", softmax=0, **_EPILOGUE)
_op("MatMul", 2, rules.matmul, "numpy matmul: batched, broadcasting batch axes, 1-D operands promoted")
_op("MatMulW8", (3, None), rules.matmul_w8, "weight-only int8 (--precision w8a16): A [..., K] (bf16, or f32 rounded "
    "to bf16 on chip with round_a=\"bf16\") @ W [K, N] (i8, constant) in fp32, times scale [N] (f32, per column), "
    "+ bias [N] (f32, optional)" + _EPILOGUE_DOC, round_a="", **_EPILOGUE)
_op("Softmax", 1, rules.along_axis, "exp(x) / sum(exp(x)) along axis", axis=REQUIRED)
_op("LogSoftmax", 1, rules.along_axis, "log(softmax(x)) along axis", axis=REQUIRED)
_op("Hardmax", 1, rules.along_axis, "1 at the first maximum along axis, 0 elsewhere", axis=REQUIRED)
_op("CumSum", 1, rules.along_axis, "cumulative sum along axis (exclusive, reverse)", axis=REQUIRED,
    exclusive=0, reverse=0)
for _name, _doc in {
    "ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "maximum", "ReduceMin": "minimum",
    "ReduceProd": "product", "ReduceL1": "sum of |x|", "ReduceL2": "sqrt of the sum of x**2",
    "ReduceLogSum": "log of the sum", "ReduceLogSumExp": "log of the sum of exp(x)",
    "ReduceSumSquare": "sum of x**2",
}.items():
    _op(_name, 1, rules.reduce, f"{_doc} over axes (sorted; empty = all), keepdims keeps them as size 1",
        axes=REQUIRED, keepdims=1)
_op("ArgMax", 1, rules.arg_reduce, "index (i64) of the maximum along axis; ties: first, or last with "
    "select_last_index=1", axis=REQUIRED, keepdims=1, select_last_index=0)
_op("ArgMin", 1, rules.arg_reduce, "index (i64) of the minimum along axis", axis=REQUIRED, keepdims=1,
    select_last_index=0)
_op("TopK", 1, rules.topk, "the k largest (or smallest) along axis: values and i64 indices", outputs=(1, 2),
    k=REQUIRED, axis=REQUIRED, largest=1, sorted=1)

# Shapes and data movement -------------------------------------------------------------------------
_op("Concat", (1, None), rules.concat, "join along axis", axis=REQUIRED)
_op("Split", 1, rules.split, "cut along axis into pieces of the sizes in `split` (one output each)",
    outputs=(1, 2**31), axis=REQUIRED, split=REQUIRED)
_op("Slice", 1, rules.slice_, "x[start:end:step] on every axis (axes = all, in order); starts/ends clamped "
    "(a negative step's end -1 means before index 0)", starts=REQUIRED, ends=REQUIRED, axes=REQUIRED, steps=REQUIRED)
_op("Pad", 1, rules.pad, "pad (or crop, if negative) with pads [begin..., end...] for every axis; mode "
    "constant (with value), reflect, edge or wrap", pads=REQUIRED, mode="constant", value=0.0)
_op("Resize", 1, rules.resize, "resample to `sizes` (every axis); `scales` are the per-axis factors used "
    "by the coordinate transform", sizes=REQUIRED, scales=REQUIRED, mode="nearest",
    coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_floor", cubic_coeff_a=-0.75,
    exclude_outside=0, extrapolation_value=0.0)
_op("Reshape", 1, rules.reshape, "same data, the resolved shape (no 0 or -1)", shape=REQUIRED)
_op("Flatten", 1, rules.flatten, "to 2-D: [prod(dims before axis), prod(dims from axis)]", axis=REQUIRED)
_op("Transpose", 1, rules.transpose, "permute axes: output axis i is input axis perm[i]", perm=REQUIRED)
_op("Squeeze", 1, rules.squeeze, "remove the size-1 axes listed (sorted)", axes=REQUIRED)
_op("Unsqueeze", 1, rules.unsqueeze, "insert size-1 axes at these output positions (sorted)", axes=REQUIRED)
_op("Expand", 1, rules.expand, "broadcast to `shape` (the resolved output shape)", shape=REQUIRED)
_op("Tile", 1, rules.tile, "repeat repeats[i] times along axis i", repeats=REQUIRED)
_op("Gather", 2, rules.gather, "take slices of data along axis at indices (negative indices count from the end)",
    axis=REQUIRED)
_op("ScatterND", 3, rules.scatter_nd, "data with the slices at the index tuples (last axis of indices, negative "
    "entries count from the end) replaced by updates; reduction none (the importer refuses the others)")
_op("DepthToSpace", 1, rules.depth_to_space, "move channel blocks into blocksize x blocksize pixels (DCR or CRD)",
    blocksize=REQUIRED, mode="DCR")
_op("SpaceToDepth", 1, rules.space_to_depth, "move blocksize x blocksize pixels into channels (DCR or CRD)",
    blocksize=REQUIRED, mode="DCR")

# Quantization -------------------------------------------------------------------------------------
_op("QuantizeLinear", (2, 3), rules.quantize, "saturate(round_half_even(x / scale) + zero_point); scale and "
    "zero point are scalars or per `axis`", axis=1, output_dtype=REQUIRED)
_op("DequantizeLinear", (2, 3), rules.dequantize, "(x - zero_point) * scale, per tensor or per `axis`", axis=1)
_QUANTIZED = dict(x_scale=REQUIRED, x_zero_point=0, w_scale=REQUIRED, w_zero_point=0, y_scale=1.0, y_zero_point=0,
                  out_dtype=REQUIRED, y_min=-(2**31), y_max=2**31 - 1, tail=[])
_REQUANT_DOC = ("; acc = sum((x - x_zero_point) * (w - w_zero_point)) + bias in int32, then out = clamp(saturate("
                "round_half_even(acc * fp32(x_scale * w_scale[c] / y_scale)) + y_zero_point), y_min, y_max); "
                "out_dtype i32 keeps acc; a `tail` (FusedElementwise steps, x0 = that result, x<i> = input 2 + i) "
                "then runs on each result tile on chip (compiler/passes/fuse_epilogue.py)")
_op("QLinearConv", (2, None), rules.qlinear_conv, "Conv of quantized x [N, C, ...] (i8/u8) with constant filters "
    "(i8/u8) and an i32 bias [M]" + _REQUANT_DOC, group=1, **_WINDOW, **_QUANTIZED)
_op("QLinearMatMul", (2, None), rules.qlinear_matmul, "MatMul of quantized x [..., K] (i8/u8) with a constant "
    "matrix w [K, N] (i8/u8) and an i32 bias [N]" + _REQUANT_DOC, **_QUANTIZED)

# Fusion -------------------------------------------------------------------------------------------
_op("FusedElementwise", (1, None), rules.fused_elementwise, "a straight-line program of element-wise steps run "
    "tile by tile on chip (compiler/passes/fuse_elementwise.py): `steps` is a list of strings `Op(a, b) {attrs}`, "
    "each operand x<i> (input i), s<j> (step j's result) or _; the last step's result is the output, at the "
    "broadcast shape of all inputs; every intermediate is what the unfused op would have stored",
    steps=REQUIRED)
