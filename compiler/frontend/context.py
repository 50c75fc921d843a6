"""What a normaliser sees of the ONNX node it turns into IR: `NodeContext`.

A normaliser (compiler/frontend/normalise*.py) reads the node's attributes and inputs
through a `NodeContext` and writes IR through it: `emit` adds an IR node (filling the op
table's defaults and inferring the outputs' dtypes and shapes), `alias` makes an output
another name for an input, `constant` makes an output a constant. Operands that must be
compile-time constants are read with `const`, which refuses the node if they are not.
Also here: the mapping between ONNX element types and IR dtype names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from compiler.errors import ModelError, UnsupportedOpError, UnsupportedTypeError
from compiler.ir import Node, Value, dtype_name, numpy_dtype
from compiler.ops import OPS, ShapeError
from isa.dtypes import DType

if TYPE_CHECKING:
    from compiler.frontend.onnx_import import Importer

_IR_DTYPES = {
    onnx.TensorProto.FLOAT: "f32", onnx.TensorProto.DOUBLE: "f64", onnx.TensorProto.FLOAT16: "f16",
    onnx.TensorProto.BFLOAT16: "bf16", onnx.TensorProto.INT8: "i8", onnx.TensorProto.UINT8: "u8",
    onnx.TensorProto.INT16: "i16", onnx.TensorProto.UINT16: "u16", onnx.TensorProto.INT32: "i32",
    onnx.TensorProto.UINT32: "u32", onnx.TensorProto.INT64: "i64", onnx.TensorProto.UINT64: "u64",
    onnx.TensorProto.BOOL: "bool",
}
_ONNX_TYPES = {name: elem_type for elem_type, name in _IR_DTYPES.items()}
# The dtypes the accelerator computes with or stores (isa/dtypes.py); the importer refuses the others.
SUPPORTED_DTYPES = frozenset(d.name.lower() for d in DType)


class Normalisers(dict):
    """ONNX op type -> the function that imports it; `register` is the decorator that fills it."""

    def register(self, *ops: str):
        def decorate(function):
            for op in ops:
                self[op] = function
            return function

        return decorate


def onnx_type_name(elem_type: int) -> str:
    """'float16' for TensorProto.FLOAT16: how messages name an ONNX element type."""
    try:
        return onnx.TensorProto.DataType.Name(elem_type).lower()
    except ValueError:
        return f"type {elem_type}"


def ir_dtype(elem_type: int, tensor: str) -> str:
    """The IR dtype of an ONNX element type; UnsupportedTypeError (naming the tensor) if there is none."""
    if elem_type not in _IR_DTYPES:
        raise UnsupportedTypeError(tensor, onnx_type_name(elem_type))
    return _IR_DTYPES[elem_type]


def known_dtype(elem_type: int) -> str | None:
    """The IR dtype of an ONNX element type, None if the IR has none."""
    return _IR_DTYPES.get(elem_type)


def onnx_elem_type(dtype: str) -> int:
    return _ONNX_TYPES[dtype]


def array_dtype(data: np.ndarray, tensor: str) -> str:
    """The IR dtype of a numpy array (strings and complex numbers have none)."""
    try:
        return dtype_name(data.dtype)
    except (ValueError, TypeError):
        raise UnsupportedTypeError(tensor, str(data.dtype)) from None


def attribute_values(node: onnx.NodeProto) -> dict[str, Any]:
    """The node's attributes as Python values: str for strings, numpy arrays for tensors."""
    values = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        elif isinstance(value, onnx.TensorProto):
            value = onnx.numpy_helper.to_array(value)
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode("utf-8", errors="replace") for v in value]
        values[attribute.name] = value
    return values


class NodeContext:
    """One ONNX node during import: its attributes and inputs, and the IR it becomes."""

    def __init__(self, importer: Importer, proto: onnx.NodeProto, name: str, opset: int, since: int,
                 inputs: list[str], outputs: list[str]):
        self.importer, self.proto, self.name = importer, proto, name
        self.op_type, self.opset, self.since = proto.op_type, opset, since
        self.attrs = attribute_values(proto)
        self.inputs = inputs  # IR names ("" = absent), aliases resolved
        self.outputs = outputs  # ONNX output names, "" where nothing uses the output

    # Reading ---------------------------------------------------------------------------------------
    def has(self, index: int) -> bool:
        return index < len(self.inputs) and self.inputs[index] != ""

    def value(self, index: int) -> Value:
        return self.importer.graph.values[self.inputs[index]]

    def shape(self, index: int) -> tuple[int, ...]:
        return self.value(index).shape

    def rank(self, index: int = 0) -> int:
        return len(self.shape(index))

    def const(self, index: int, what: str) -> np.ndarray:
        """The data of input `index`, which must be a compile-time constant."""
        if not self.has(index):
            raise self.invalid(f"the {what} input (input {index}) is missing")
        value = self.value(index)
        if not value.is_const:
            raise self.unsupported(f"the {what} input %{value.name} is not a compile-time constant", value.name)
        return value.const

    def optional_const(self, index: int, what: str) -> np.ndarray | None:
        """Like const, but None when the input is absent or empty (opsets write both for "not given")."""
        if not self.has(index):
            return None
        data = self.const(index, what)
        return None if data.size == 0 and data.ndim == 1 else data

    def ints(self, index: int, what: str) -> list[int] | None:
        data = self.optional_const(index, what)
        return None if data is None else [int(v) for v in data.reshape(-1)]

    def axis(self, axis: int, rank: int, what: str = "axis") -> int:
        """A possibly negative axis made non-negative; a ModelError if it is outside [-rank, rank)."""
        if not isinstance(axis, (int, np.integer)) or not -rank <= axis < rank:
            raise self.invalid(f"{what}={axis!r} is outside [{-rank}, {rank})")
        return int(axis) % rank

    # Errors ----------------------------------------------------------------------------------------
    def unsupported(self, reason: str = "", needs_constant: str | None = None) -> UnsupportedOpError:
        return UnsupportedOpError(self.op_type, self.name, self.opset, reason, needs_constant)

    def invalid(self, reason: str) -> ModelError:
        return ModelError(f"node {self.name!r} ({self.op_type}, opset {self.opset}): {reason}")

    def used(self, index: int) -> bool:
        return index < len(self.outputs) and self.outputs[index] != ""

    def refuse_outputs_from(self, first: int, what: str) -> None:
        """Optional outputs we do not compute: fine while nothing uses them."""
        for index in range(first, len(self.outputs)):
            if self.used(index):
                raise self.unsupported(f"its {what} output (output {index}, %{self.outputs[index]}) is used")

    # Writing ---------------------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        return self.importer.fresh_name(base)

    def emit(self, op: str, inputs: list[str], outputs: list[str] | None = None, **attrs: Any) -> list[str]:
        """Add IR node `op` (defaults filled in, output types inferred); returns its output names."""
        outputs = self.outputs[:1] if outputs is None else outputs
        definition = OPS[op]
        filled = {name: default for name, default in definition.attrs.items() if name not in attrs}
        node = Node(op, list(inputs), list(outputs), {**filled, **attrs}, self.name)
        values = self.importer.graph.values
        try:
            types = definition.infer(node, [values[i] if i else None for i in inputs])
        except ShapeError as error:
            raise self.invalid(str(error)) from None
        for name, (dtype, shape) in zip(outputs, types, strict=False):
            if name:
                self.importer.graph.add_value(Value(name, dtype, tuple(shape)))
        self.importer.graph.nodes.append(node)
        return outputs

    def emit_temp(self, op: str, inputs: list[str], base: str, **attrs: Any) -> str:
        """Emit a helper node whose one output gets a fresh name; returns that name."""
        return self.emit(op, inputs, [self.fresh(base)], **attrs)[0]

    def step(self, op: str, *inputs: str, out: str = "", **attrs: Any) -> str:
        """One node of a decomposition: `op` on `inputs` into `out` (a fresh name if empty); returns the output."""
        return self.emit(op, list(inputs), [out or self.fresh(f"{self.name}.{op.lower()}")], **attrs)[0]

    def scalar(self, value: float, dtype: str) -> str:
        """A rank-0 constant of IR dtype `dtype`."""
        return self.constant("", np.array(value, dtype=numpy_dtype(dtype)))

    def alias(self, output: str, source: str) -> None:
        """Output `output` is the value `source` (Identity, Dropout, a no-op reduction)."""
        self.importer.alias(output, source)

    def constant(self, output: str, data: np.ndarray) -> str:
        """Define `output` (or a fresh name if output is "") as a constant; returns its name."""
        name = output or self.fresh(f"{self.name}_const")
        self.importer.add_const(name, np.asarray(data))
        return name
