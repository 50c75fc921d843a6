"""RNN, GRU and LSTM unrolled over their static sequence length into MatMul and element-wise ops.

The input projection of every step is one MatMul over the whole sequence ([seq * batch,
input] @ W^T, plus the biases that do not depend on the state); each step then adds
H_{t-1} @ R^T and applies the gates of the spec's equations (ONNX RNN/GRU/LSTM-7 to 22):

    RNN   H = f(x W^T + H R^T + Wb + Rb)                                  f = Tanh
    GRU   z = f(.. z ..),  r = f(.. r ..)                                 f = Sigmoid, g = Tanh
          h = g(x Wh^T + (r * H) Rh^T + Rbh + Wbh)         linear_before_reset = 0
          h = g(x Wh^T + r * (H Rh^T + Rbh) + Wbh)         linear_before_reset = 1
          H = (1 - z) * h + z * H
    LSTM  i = f(.. i .. + Pi * C),  f = f(.. f .. + Pf * C),  c = g(.. c ..)
          C = f * C + i * c,  o = f(.. o .. + Po * C),  H = o * h(C)      f = Sigmoid, g = h = Tanh

`clip` bounds every activation's input. A reverse direction reads the steps backwards and
writes Y in time order. Weights that are constants are sliced and transposed at compile
time. Refused: activations with explicit alpha/beta, LSTM's input_forget, and
sequence_lens shorter than the sequence (sequences of their own length would need masking
per batch); sequence_lens must be a compile-time constant.
"""

from __future__ import annotations

import numpy as np

from compiler.frontend.context import NodeContext

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
# Activations by name (case as in the spec) -> IR op; the ones that take alpha/beta use the ONNX ops' defaults
ACTIVATIONS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "softsign": "Softsign", "softplus": "Softplus",
               "leakyrelu": "LeakyRelu", "hardsigmoid": "HardSigmoid", "elu": "Elu"}


def recurrent(ctx: NodeContext) -> None:
    op = ctx.op_type
    if ctx.since < 7:
        raise ctx.unsupported("the opset-1 form")
    if ctx.value(0).dtype != "f32":
        raise ctx.unsupported(f"{ctx.value(0).dtype} inputs: the MatMul kernel computes f32 only")
    for name in ("activation_alpha", "activation_beta"):
        if ctx.attrs.get(name):
            raise ctx.unsupported(f"{name} (only the activations' default parameters)")
    if op == "LSTM" and ctx.attrs.get("input_forget", 0):
        raise ctx.unsupported("input_forget=1")
    direction = ctx.attrs.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ctx.invalid(f"direction={direction!r} is not forward, reverse or bidirectional")
    directions = 2 if direction == "bidirectional" else 1
    layout = int(ctx.attrs.get("layout", 0))
    x = ctx.step("Transpose", ctx.inputs[0], perm=[1, 0, 2]) if layout else ctx.inputs[0]
    length, batch, features = ctx.importer.graph.values[x].shape
    hidden = int(ctx.attrs.get("hidden_size") or ctx.shape(2)[-1])
    expected = {1: (directions, GATES[op] * hidden, features), 2: (directions, GATES[op] * hidden, hidden),
                3: (directions, 2 * GATES[op] * hidden)}
    for index, shape in expected.items():
        if ctx.has(index) and ctx.shape(index) != shape:
            raise ctx.invalid(f"input {index} is {list(ctx.shape(index))}, expected {list(shape)}")
    if ctx.has(4):
        lengths = ctx.const(4, "sequence_lens").reshape(-1)
        if (lengths != length).any():
            raise ctx.unsupported(f"sequence_lens {lengths.tolist()} shorter than the sequence ({length})")
    names = ctx.attrs.get("activations") or DEFAULT_ACTIVATIONS[op] * directions
    if len(names) != len(DEFAULT_ACTIVATIONS[op]) * directions:
        raise ctx.invalid(f"activations {names} is not {len(DEFAULT_ACTIVATIONS[op])} per direction")
    for name in names:
        if name.lower() not in ACTIVATIONS:
            raise ctx.unsupported(f"activation {name!r}")

    flat = ctx.step("Reshape", x, shape=[length * batch, features])
    group = len(DEFAULT_ACTIVATIONS[op])
    cells, states = [], []  # per direction: the cell, and its hidden state after each step in time order
    for d in range(directions):
        cell = Cell(ctx, op, d, batch, hidden, names[d * group:(d + 1) * group])
        projected = ctx.step("Reshape", cell.project(flat), shape=[length, batch, cell.width])
        backwards = direction == "reverse" or d == 1
        after = {}
        for t in (reversed(range(length)) if backwards else range(length)):
            step = ctx.step("Slice", projected, starts=[t, 0, 0], ends=[t + 1, batch, cell.width], axes=[0, 1, 2],
                            steps=[1, 1, 1])
            after[t] = cell.step(ctx.step("Reshape", step, shape=[batch, cell.width]))
        cells.append(cell)
        states.append([after[t] for t in range(length)])
    if ctx.used(0):
        steps = [[ctx.step("Reshape", per_step[t], shape=[1, 1, batch, hidden]) for per_step in states]
                 for t in range(length)]
        _stack(ctx, [_concat(ctx, parts, 1) for parts in steps], ctx.outputs[0], [2, 0, 1, 3] if layout else None)
    final = [("state", 1)] + ([("cell_state", 2)] if op == "LSTM" else [])
    for attribute, index in final:
        if ctx.used(index):
            parts = [ctx.step("Reshape", getattr(cell, attribute), shape=[1, batch, hidden]) for cell in cells]
            _stack(ctx, parts, ctx.outputs[index], [1, 0, 2] if layout else None)


def _concat(ctx: NodeContext, parts: list[str], axis: int, out: str = "") -> str:
    if len(parts) == 1:
        if out:
            ctx.alias(out, parts[0])
        return parts[0]
    return ctx.step("Concat", *parts, axis=axis, out=out)


def _stack(ctx: NodeContext, parts: list[str], out: str, perm: list[int] | None) -> None:
    """Join `parts` on axis 0 into `out`, transposed by `perm` (layout 1) if given."""
    if perm is None:
        _concat(ctx, parts, 0, out)
    else:
        ctx.step("Transpose", _concat(ctx, parts, 0), perm=perm, out=out)


class Cell:
    """One direction's weights and state, and the equations of one step."""

    def __init__(self, ctx: NodeContext, op: str, direction: int, batch: int, hidden: int, activations: list[str]):
        self.ctx, self.op, self.d, self.batch, self.hidden = ctx, op, direction, batch, hidden
        self.activations = [ACTIVATIONS[name.lower()] for name in activations]
        self.clip = ctx.attrs.get("clip")
        gates = GATES[op]
        # GRU's hidden gate multiplies the state by r before (or after) its recurrence: kept apart
        recurrent_rows = 2 * hidden if op == "GRU" else gates * hidden
        self.width = gates * hidden
        self.weights = self._matrix(1, 0, gates * hidden)
        self.recurrence = self._matrix(2, 0, recurrent_rows)
        self.bias = self._input_bias()
        if op == "GRU":
            self.recurrence_h = self._matrix(2, 2 * hidden, 3 * hidden)
            self.recurrence_h_bias = (self._vector(3, 5 * hidden, 6 * hidden)
                                      if ctx.attrs.get("linear_before_reset", 0) else None)
        self.state = self._initial(5)
        if op == "LSTM":
            self.cell_state = self._initial(6)
            self.peepholes = [self._vector(7, k * hidden, (k + 1) * hidden) for k in range(3)] if ctx.has(7) else None

    # Weights -------------------------------------------------------------------------------------
    def _matrix(self, index: int, first: int, last: int) -> str:
        """Rows first:last of W or R for this direction, transposed: [columns, last - first]."""
        value = self.ctx.value(index)
        if value.is_const:
            return self.ctx.constant("", np.ascontiguousarray(value.const[self.d, first:last].T))
        columns = value.shape[2]
        rows = self.ctx.step("Slice", value.name, starts=[self.d, first, 0], ends=[self.d + 1, last, columns],
                             axes=[0, 1, 2], steps=[1, 1, 1])
        return self.ctx.step("Transpose", self.ctx.step("Reshape", rows, shape=[last - first, columns]), perm=[1, 0])

    def _vector(self, index: int, first: int, last: int) -> str:
        """Elements first:last of B or P for this direction."""
        value = self.ctx.value(index)
        if value.is_const:
            return self.ctx.constant("", np.ascontiguousarray(value.const[self.d, first:last]))
        part = self.ctx.step("Slice", value.name, starts=[self.d, first], ends=[self.d + 1, last], axes=[0, 1],
                             steps=[1, 1])
        return self.ctx.step("Reshape", part, shape=[last - first])

    def _input_bias(self) -> str | None:
        """Wb + Rb, except GRU's Rbh when linear_before_reset (it goes inside the reset)."""
        if not self.ctx.has(3):
            return None
        width = self.width
        inner = 2 * self.hidden if self.op == "GRU" and self.ctx.attrs.get("linear_before_reset", 0) else width
        value = self.ctx.value(3)
        if value.is_const:
            bias = value.const[self.d, :width].copy()
            bias[:inner] += value.const[self.d, width:width + inner]
            return self.ctx.constant("", bias)
        recurrent = self._vector(3, width, width + inner)
        if inner < width:
            recurrent = self.ctx.step("Concat", recurrent, self.ctx.constant("", np.zeros(width - inner, np.float32)),
                                      axis=0)
        return self.ctx.step("Add", self._vector(3, 0, width), recurrent)

    def _initial(self, index: int) -> str:
        """initial_h or initial_c of this direction as [batch, hidden] (zeros when absent)."""
        if not self.ctx.has(index):
            return self.ctx.constant("", np.zeros((self.batch, self.hidden), np.float32))
        layout = int(self.ctx.attrs.get("layout", 0))
        starts, ends = [self.d, 0, 0], [self.d + 1, self.batch, self.hidden]
        if layout:
            starts[:2], ends[:2] = starts[1::-1], ends[1::-1]
        value = self.ctx.value(index)
        if value.is_const:
            data = value.const[:, self.d] if layout else value.const[self.d]
            return self.ctx.constant("", np.ascontiguousarray(data))
        part = self.ctx.step("Slice", value.name, starts=starts, ends=ends, axes=[0, 1, 2], steps=[1, 1, 1])
        return self.ctx.step("Reshape", part, shape=[self.batch, self.hidden])

    # Equations -----------------------------------------------------------------------------------
    def project(self, flat: str) -> str:
        """x W^T (+ the biases) for every step at once."""
        product = self.ctx.step("MatMul", flat, self.weights)
        return self.ctx.step("Add", product, self.bias) if self.bias else product

    def _act(self, which: int, pre: str) -> str:
        if self.clip is not None:
            pre = self.ctx.step("Clip", pre, min=-float(self.clip), max=float(self.clip))
        return self.ctx.step(self.activations[which], pre)

    def _gates(self, values: str, count: int) -> list[str]:
        ctx = self.ctx
        if count == 1:
            return [values]
        names = [ctx.fresh(f"{ctx.name}.gate") for _ in range(count)]
        return ctx.emit("Split", [values], names, axis=1, split=[self.hidden] * count)

    def step(self, projected: str) -> str:
        """One time step from this step's projected input; returns the new hidden state."""
        ctx, state = self.ctx, self.state
        recurrent = ctx.step("MatMul", state, self.recurrence)
        if self.op == "RNN":
            self.state = self._act(0, ctx.step("Add", projected, recurrent))
        elif self.op == "GRU":
            x_zr, x_h = self._split_columns(projected, 2 * self.hidden)
            z, r = (self._act(0, gate) for gate in self._gates(ctx.step("Add", x_zr, recurrent), 2))
            if self.recurrence_h_bias is None:
                h_in = ctx.step("Add", x_h, ctx.step("MatMul", ctx.step("Mul", r, state), self.recurrence_h))
            else:
                reset = ctx.step("Add", ctx.step("MatMul", state, self.recurrence_h), self.recurrence_h_bias)
                h_in = ctx.step("Add", x_h, ctx.step("Mul", r, reset))
            h = self._act(1, h_in)
            keep = ctx.step("Sub", ctx.scalar(1.0, "f32"), z)
            self.state = ctx.step("Add", ctx.step("Mul", keep, h), ctx.step("Mul", z, state))
        else:
            i, o, f, c = self._gates(ctx.step("Add", projected, recurrent), 4)
            if self.peepholes:
                i = ctx.step("Add", i, ctx.step("Mul", self.peepholes[0], self.cell_state))
                f = ctx.step("Add", f, ctx.step("Mul", self.peepholes[2], self.cell_state))
            i, f, c = self._act(0, i), self._act(0, f), self._act(1, c)
            self.cell_state = ctx.step("Add", ctx.step("Mul", f, self.cell_state), ctx.step("Mul", i, c))
            if self.peepholes:
                o = ctx.step("Add", o, ctx.step("Mul", self.peepholes[1], self.cell_state))
            self.state = ctx.step("Mul", self._act(0, o), self._act(2, self.cell_state))
        return self.state

    def _split_columns(self, values: str, first: int) -> tuple[str, str]:
        names = [self.ctx.fresh(f"{self.ctx.name}.gate") for _ in range(2)]
        return tuple(self.ctx.emit("Split", [values], names, axis=1, split=[first, self.width - first]))


NORMALISERS = {op: recurrent for op in GATES}
