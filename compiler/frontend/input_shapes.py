"""Binding the model's dynamic input dimensions (`--input-shape name=1,3,224,224`).

Every model input must end up with a static shape: from the model, from a binding, or
through a symbolic dimension (`batch`) that a binding of another input fixes. A binding
that names no input, has the wrong rank, contradicts a static dimension or gives one
symbol two sizes is an `InputShapeError`; so is a dynamic dimension nothing binds.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from compiler.errors import InputShapeError, UnsupportedTypeError
from compiler.frontend.context import SUPPORTED_DTYPES, known_dtype, onnx_type_name


def resolve_input_shapes(graph: onnx.GraphProto, bindings: dict[str, Iterable[int]]) -> dict[str, list[int]]:
    """The static shape of every model input that needs one set (empty if the model's are all static already)."""
    initializers = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    names = [value.name for value in inputs]
    for name in bindings:
        if name not in names:
            raise InputShapeError(f"input shape given for {name!r}, which is not an input of the model "
                                  f"(inputs: {', '.join(names) or 'none'})")
    shapes = {value.name: _model_dims(value) for value in inputs}
    symbols: dict[str, int] = {}
    bound = {name: _binding(name, binding) for name, binding in bindings.items()}
    for name, dims in bound.items():
        model_dims = shapes[name]
        if model_dims is not None and len(model_dims) != len(dims):
            raise InputShapeError(f"input shape {dims_text(dims)} for {name!r} has rank {len(dims)}; the model's "
                                  f"input has rank {len(model_dims)} ({dims_text(model_dims)})")
        for axis, (dim, size) in enumerate(zip(model_dims or dims, dims, strict=False)):
            if model_dims is not None and isinstance(dim, int) and dim != size:
                raise InputShapeError(f"input shape {dims_text(dims)} for {name!r}: dimension {axis} is {dim} in the "
                                      "model")
            if isinstance(dim, str) and symbols.setdefault(dim, size) != size:
                raise InputShapeError(f"input shape {dims_text(dims)} for {name!r} binds {dim!r} to {size}, another "
                                      f"binding gives {symbols[dim]}")
    resolved = {}
    for name, model_dims in shapes.items():
        if name in bound:
            resolved[name] = bound[name]
            continue
        if model_dims is None:
            raise InputShapeError(f"input {name!r} has no shape in the model; give it one with --input-shape")
        for axis, dim in enumerate(model_dims):
            if not isinstance(dim, int) and dim not in symbols:
                example = ",".join(str(d) if isinstance(d, int) else "N" for d in model_dims)
                raise InputShapeError(f"input {name!r} has a dynamic dimension {axis}" + (f" ({dim!r})" if dim else "")
                                      + f" in {dims_text(model_dims)}; bind it with --input-shape {name}={example}")
        resolved[name] = [dim if isinstance(dim, int) else symbols[dim] for dim in model_dims]
    return {name: dims for name, dims in resolved.items() if dims != shapes[name]}


def _model_dims(value: onnx.ValueInfoProto) -> list[int | str | None] | None:
    """The input's dims as the model gives them: ints, symbol names, None (unknown); None without a shape.

    Also refuses inputs of types the accelerator does not take."""
    if not value.type.HasField("tensor_type"):
        raise UnsupportedTypeError(value.name, value.type.WhichOneof("value") or "unknown", "model input")
    tensor = value.type.tensor_type
    if known_dtype(tensor.elem_type) not in SUPPORTED_DTYPES:
        raise UnsupportedTypeError(value.name, onnx_type_name(tensor.elem_type), "model input")
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]


def set_input_shapes(graph: onnx.GraphProto, shapes: dict[str, list[int]]) -> None:
    for value in graph.input:
        if value.name in shapes:
            shape = value.type.tensor_type.shape
            shape.ClearField("dim")
            for size in shapes[value.name]:
                shape.dim.add().dim_value = size


def _binding(name: str, binding: Iterable[int]) -> list[int]:
    try:
        dims = [int(d) for d in binding]
    except (TypeError, ValueError):
        raise InputShapeError(f"input shape for {name!r} must be a list of integers, not {binding!r}") from None
    if any(d < 1 for d in dims):
        raise InputShapeError(f"input shape {dims_text(dims)} for {name!r} has a dimension below 1")
    return dims


def dims_text(dims) -> str:
    """[1, 3, ?] / [batch, 3]: dims in messages."""
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
