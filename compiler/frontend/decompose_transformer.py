"""Transformer ops as IR ops that have kernels: Attention (opsets 23 to 25) and RotaryEmbedding.

Attention becomes MatMul, Softmax and element-wise ops.

The spec's pattern, step by step (docs of Attention-23/24/25 and its function body):

    Q, K, V            3-D [B, S, heads * D] become [B, heads, S, D] (Reshape, Transpose)
    K, V               past_key / past_value in front (Concat on axis 2): present_key / present_value
    scores             (Q * sqrt(scale)) @ (K * sqrt(scale))^T,  scale = 1 / sqrt(D) unless given
    softcap            softcap * tanh(scores / softcap) when softcap > 0
    bias               the float mask, or 0 / -inf from the boolean mask, plus -inf where the causal
                       rule, the sliding window (opset 25) or nonpad_kv_seqlen (opset 24) forbid a key
    probabilities      Softmax(scores + bias) on the last axis; rows whose bias is all -inf are 0
    Y                  probabilities @ V, back to 3-D if the inputs were

Group-query attention (q heads a multiple of kv heads, each kv head serving consecutive q
heads) needs no copies of K and V: the q heads of one kv head are stacked as rows of one
matrix product ([B, kv heads, group * Sq, D]), which is a reshape. The structural part of
the bias (causal, window) is a compile-time constant unless nonpad_kv_seqlen moves it per
batch; then it is computed from that input with integer comparisons.

qk_matmul_output follows the spec (and onnxruntime): mode 0 the raw product, 1 after softcap,
2 with the bias added, 3 the probabilities. (onnx's reference softcaps mode 0's product too.)

RotaryEmbedding follows the algorithm in its spec: the cos and sin rows of each token
(a Gather by position_ids, unless the caches are already per token) rotate the first
`rotary_embedding_dim` features, split in halves or interleaved; the rest pass through.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from compiler.frontend.context import NodeContext, known_dtype


def attention(ctx: NodeContext) -> None:
    q_value = ctx.value(0)
    if q_value.dtype != "f32":
        raise ctx.unsupported(f"{q_value.dtype} inputs: the MatMul and Softmax kernels compute f32 only")
    precision = ctx.attrs.get("softmax_precision")
    if precision is not None and known_dtype(precision) != "f32":
        name = known_dtype(precision) or onnx.TensorProto.DataType.Name(precision).lower()
        raise ctx.unsupported(f"softmax_precision {name}: the Softmax kernel computes f32 only")
    rank = ctx.rank(0)
    if rank not in (3, 4) or ctx.rank(1) != rank or ctx.rank(2) != rank:
        raise ctx.invalid(f"Q, K and V must all be 3-D or all 4-D, not {[list(ctx.shape(i)) for i in range(3)]}")
    if ctx.has(4) != ctx.has(5):
        raise ctx.invalid("past_key and past_value must be given together")
    if ctx.has(6) and ctx.has(4):
        raise ctx.invalid("nonpad_kv_seqlen cannot be combined with past_key and past_value")

    q, k, v = (_heads(ctx, i) for i in range(3))
    batch, q_heads, q_len, head_size = ctx.importer.graph.values[q].shape
    kv_heads = ctx.importer.graph.values[k].shape[1]
    if ctx.importer.graph.values[v].shape[1] != kv_heads:
        raise ctx.invalid("K and V have different numbers of heads")
    if q_heads % kv_heads:
        raise ctx.invalid(f"{q_heads} query heads are not a multiple of {kv_heads} key/value heads")
    if ctx.has(4):
        k = ctx.step("Concat", ctx.inputs[4], k, axis=2)
        v = ctx.step("Concat", ctx.inputs[5], v, axis=2)
    for index, present in ((1, k), (2, v)):
        if ctx.used(index):
            ctx.alias(ctx.outputs[index], present)
    past_len = ctx.shape(4)[2] if ctx.has(4) else 0
    total = ctx.importer.graph.values[k].shape[2]
    group = q_heads // kv_heads

    scale = ctx.attrs.get("scale")
    factor = ctx.scalar(np.sqrt(1.0 / math.sqrt(head_size) if scale is None else float(scale)), "f32")
    q = ctx.step("Mul", q, factor)
    k = ctx.step("Mul", ctx.step("Transpose", k, perm=[0, 1, 3, 2]), factor)
    scores = _grouped(ctx, "MatMul", q, k, group, (batch, q_heads, q_len, total))

    softcap = float(ctx.attrs.get("softcap", 0.0))
    capped = scores
    if softcap > 0:
        cap = ctx.scalar(softcap, "f32")
        capped = ctx.step("Mul", ctx.step("Tanh", ctx.step("Div", scores, cap)), cap)
    bias, masked_rows = _bias(ctx, batch, q_len, total, past_len)
    biased = ctx.step("Add", capped, bias) if bias else capped
    probabilities = ctx.step("Softmax", biased, axis=3)
    if masked_rows:  # a row with no key to attend is 0, not the NaN of an all -inf softmax
        probabilities = ctx.step("Where", masked_rows, ctx.scalar(0.0, "f32"), probabilities)

    mode = int(ctx.attrs.get("qk_matmul_output_mode", 0))
    if ctx.used(3):
        if mode not in (0, 1, 2, 3):
            raise ctx.invalid(f"qk_matmul_output_mode={mode} is not 0, 1, 2 or 3")
        ctx.alias(ctx.outputs[3], (scores, capped, biased, probabilities)[mode])
    if not ctx.used(0):
        return
    v_size = ctx.importer.graph.values[v].shape[3]
    y = _grouped(ctx, "MatMul", probabilities, v, group, (batch, q_heads, q_len, v_size),
                 out="" if rank == 3 else ctx.outputs[0])
    if rank == 3:
        y = ctx.step("Transpose", y, perm=[0, 2, 1, 3])
        ctx.step("Reshape", y, out=ctx.outputs[0], shape=[batch, q_len, q_heads * v_size])


def _heads(ctx: NodeContext, index: int) -> str:
    """Input `index` (Q, K or V) as [B, heads, S, D]: 3-D inputs are split into heads and transposed."""
    name = ctx.inputs[index]
    if ctx.rank(index) == 4:
        return name
    what = "q_num_heads" if index == 0 else "kv_num_heads"
    heads = ctx.attrs.get(what)
    batch, length, hidden = ctx.shape(index)
    if not heads or hidden % heads:
        raise ctx.invalid(f"3-D inputs need {what} dividing the hidden size {hidden}, not {heads!r}")
    split = ctx.step("Reshape", name, shape=[batch, length, heads, hidden // heads])
    return ctx.step("Transpose", split, perm=[0, 2, 1, 3])


def _grouped(ctx: NodeContext, op: str, a: str, b: str, group: int, shape: tuple[int, ...], out: str = "") -> str:
    """a @ b for [B, q heads, ...] a and [B, kv heads, ...] b: the `group` q heads of a kv head are one product."""
    if group == 1:
        return ctx.step(op, a, b, out=out)
    a_shape = ctx.importer.graph.values[a].shape
    stacked = ctx.step("Reshape", a, shape=[a_shape[0], a_shape[1] // group, group * a_shape[2], a_shape[3]])
    return ctx.step("Reshape", ctx.step(op, stacked, b), out=out, shape=list(shape))


def _bias(ctx: NodeContext, batch: int, q_len: int, total: int, past_len: int) -> tuple[str, str]:
    """The additive bias (the float mask plus 0 / -inf where keys are forbidden) and the bool [..., q_len, 1]
    rows it masks completely; each "" when there is none."""
    mask = _mask_bias(ctx, total) if ctx.has(3) else ""
    allowed = _allowed(ctx, batch, q_len, total, past_len)
    if isinstance(allowed, np.ndarray):  # known when compiling
        if allowed.all():
            return mask, _masked_rows(ctx, mask) if mask else ""
        structural = ctx.constant("", np.where(allowed, np.float32(0), np.float32(-np.inf)))
        if not mask:
            rows = ~allowed.any(axis=-1, keepdims=True)
            return structural, ctx.constant("", rows) if rows.any() else ""
    else:
        structural = ctx.step("Where", allowed, ctx.scalar(0.0, "f32"), ctx.scalar(-np.inf, "f32"))
    bias = ctx.step("Add", mask, structural) if mask else structural
    return bias, _masked_rows(ctx, bias)


def _masked_rows(ctx: NodeContext, bias: str) -> str:
    """bool [..., q_len, 1]: the rows of `bias` that are all -inf."""
    rank = len(ctx.importer.graph.values[bias].shape)
    row_max = ctx.step("ReduceMax", bias, axes=[rank - 1], keepdims=1)
    return ctx.step("Equal", row_max, ctx.scalar(-np.inf, "f32"))


def _mask_bias(ctx: NodeContext, total: int) -> str:
    """attn_mask as an additive float bias: True -> 0, False -> -inf; last axis padded to `total` with -inf."""
    mask = ctx.value(3)
    if mask.dtype == "bool":
        name = ctx.step("Where", mask.name, ctx.scalar(0.0, "f32"), ctx.scalar(-np.inf, "f32"))
    elif mask.dtype == ctx.value(0).dtype:
        name = mask.name
    else:
        raise ctx.unsupported(f"an attn_mask of {mask.dtype}: it must be bool or of Q's type")
    short = total - mask.shape[-1] if mask.shape else 0
    if short < 0:
        raise ctx.invalid(f"attn_mask {list(mask.shape)} is longer than the {total} keys")
    if short:
        rank = len(mask.shape)
        pads = [0] * (2 * rank)
        pads[-1] = short
        name = ctx.step("Pad", name, pads=pads, value=-math.inf)
    return name


def _allowed(ctx: NodeContext, batch: int, q_len: int, total: int, past_len: int):
    """Which keys each query may attend by the causal rule, the window and nonpad_kv_seqlen.

    A bool [q_len, total] array when that is known at compile time, else the name of a
    bool [batch, 1, q_len, total] value computed from nonpad_kv_seqlen."""
    causal = bool(ctx.attrs.get("is_causal", 0))
    left, right = int(ctx.attrs.get("left_window_size", -1)), int(ctx.attrs.get("right_window_size", -1))
    i = np.arange(q_len).reshape(-1, 1)
    j = np.arange(total).reshape(1, -1)
    if not ctx.has(6):
        # query i sits at absolute position past_len + i
        diff = i + past_len - j
        allowed = np.ones((q_len, total), dtype=bool)
        if causal:
            allowed &= diff >= 0
        if left >= 0:
            allowed &= diff <= left
        if right >= 0:
            allowed &= -diff <= right
        return allowed
    # External cache: query i sits at nonpad[b] - q_len + i, and keys from nonpad[b] on are padding.
    if ctx.shape(6) != (batch,):
        raise ctx.invalid(f"nonpad_kv_seqlen {list(ctx.shape(6))} is not [{batch}]")
    nonpad = ctx.step("Cast", ctx.inputs[6], to="i32")
    nonpad = ctx.step("Reshape", nonpad, shape=[batch, 1, 1, 1])

    def table(values: np.ndarray) -> str:
        return ctx.constant("", np.broadcast_to(values, (q_len, total)).astype(np.int32))

    allowed = ctx.step("Less", ctx.constant("", j.astype(np.int32)), nonpad)
    conditions = []
    if causal:  # j <= i + nonpad - q_len
        conditions.append(ctx.step("LessOrEqual", table(j - i + q_len), nonpad))
    if left >= 0:  # nonpad - q_len + i - j <= left
        conditions.append(ctx.step("LessOrEqual", nonpad, table(left + q_len + j - i)))
    if right >= 0:  # j - (nonpad - q_len + i) <= right
        conditions.append(ctx.step("LessOrEqual", table(j - i + q_len - right), nonpad))
    for condition in conditions:
        allowed = ctx.step("And", allowed, condition)
    return allowed


def rotary_embedding(ctx: NodeContext) -> None:
    x = ctx.value(0)
    rank = len(x.shape)
    if rank == 3:
        heads = ctx.attrs.get("num_heads")
        batch, length, hidden = x.shape
        if not heads or hidden % heads:
            raise ctx.invalid(f"a 3-D input needs num_heads dividing its hidden size {hidden}, not {heads!r}")
        tokens = ctx.step("Reshape", x.name, shape=[batch, length, heads, hidden // heads])
        head_axis = 2  # [B, S, heads, D]: each token's cos and sin broadcast over the heads
    elif rank == 4:
        tokens, head_axis = x.name, 1  # [B, heads, S, D]
    else:
        raise ctx.invalid(f"input {list(x.shape)} is neither 3-D nor 4-D")
    size = ctx.importer.graph.values[tokens].shape[3]
    rotated = int(ctx.attrs.get("rotary_embedding_dim", 0)) or size
    if rotated % 2 or rotated > size:
        raise ctx.invalid(f"rotary_embedding_dim={rotated} is not an even number up to the head size {size}")
    half = rotated // 2
    cos, sin = (ctx.step("Gather", ctx.inputs[i], ctx.inputs[3], axis=0) if ctx.has(3) else ctx.inputs[i]
                for i in (1, 2))
    for name in (cos, sin):
        shape = ctx.importer.graph.values[name].shape
        if len(shape) != 3 or shape[-1] != half:
            raise ctx.invalid(f"the cos and sin rows per token are {list(shape)}, not [batch, sequence, {half}]")
    cos, sin = (ctx.step("Unsqueeze", name, axes=[head_axis]) for name in (cos, sin))
    if ctx.attrs.get("interleaved", 0):
        x1, x2 = _slice_last(ctx, tokens, 0, rotated, 2), _slice_last(ctx, tokens, 1, rotated, 2)
    else:
        x1, x2 = _slice_last(ctx, tokens, 0, half), _slice_last(ctx, tokens, half, rotated)
    real = ctx.step("Sub", ctx.step("Mul", cos, x1), ctx.step("Mul", sin, x2))
    imag = ctx.step("Add", ctx.step("Mul", sin, x1), ctx.step("Mul", cos, x2))
    if ctx.attrs.get("interleaved", 0):
        pairs = ctx.step("Concat", *(ctx.step("Unsqueeze", part, axes=[4]) for part in (real, imag)), axis=4)
        shape = list(ctx.importer.graph.values[real].shape)
        result = ctx.step("Reshape", pairs, shape=shape[:3] + [rotated])
    else:
        result = ctx.step("Concat", real, imag, axis=3)
    last = rank == 4
    if rotated < size:
        result = ctx.step("Concat", result, _slice_last(ctx, tokens, rotated, size), axis=3,
                          out=ctx.outputs[0] if last else "")
    elif last:
        ctx.alias(ctx.outputs[0], result)
    if not last:
        ctx.step("Reshape", result, out=ctx.outputs[0], shape=list(x.shape))


def _slice_last(ctx: NodeContext, name: str, start: int, end: int, step: int = 1) -> str:
    """name[..., start:end:step]."""
    shape = ctx.importer.graph.values[name].shape
    return ctx.step("Slice", name, starts=[0] * (len(shape) - 1) + [start], ends=list(shape[:-1]) + [end],
                    axes=list(range(len(shape))), steps=[1] * (len(shape) - 1) + [step])


NORMALISERS = {"Attention": attention, "RotaryEmbedding": rotary_embedding}
