"""What acc compiles end to end: ONNX ops the importer accepts *and* the code generator runs.

`supported_ops()` answers `acc-compile --list-ops`; `unsupported_in_model()` answers
`acc-compile --check`: every node the importer refuses, then every imported node that
has no kernel or whose data types its element-wise kernel refuses (integer inputs to a
float-only op, mixed types, a type the vector unit does not compute on, such as i64),
each as one line naming the op, the node and the reason. Other refusals that depend on
how a kernel tiles (field widths, scratchpad) show only when compiling.
"""

from __future__ import annotations

import onnx

from compiler.codegen.context import accelerator_dtype
from compiler.codegen.kernels import ALIASES, KERNELS
from compiler.codegen.kernels.elementwise import compute_dtype, elementwise_kernel
from compiler.errors import UnsupportedOpError
from compiler.frontend import import_model, unsupported_ops
from compiler.frontend import supported_ops as importable_ops
from compiler.frontend.onnx_import import DECOMPOSED, FOLD_ONLY, SHAPE_OPS
from compiler.ir import Graph, Node

# ONNX ops whose IR form is another op (the importer rewrites them) or nothing at all.
REWRITTEN = {"Dropout": "removed at inference", "BatchNormalization": "folded into Conv, or Mul and Add",
             "Constant": "a constant", "Upsample": "as Resize"}


def supported_ops() -> list[tuple[str, str]]:
    """(ONNX op type, how it runs) for every op acc compiles."""
    result = []
    for op in importable_ops():
        if op in KERNELS:
            result.append((op, "accelerator"))
        elif op in ALIASES:
            result.append((op, "no instructions (a view of its input)"))
        elif op in SHAPE_OPS or op in FOLD_ONLY:
            result.append((op, "compile time (constant inputs only)"))
        elif op in REWRITTEN:
            result.append((op, REWRITTEN[op]))
        elif op in DECOMPOSED:
            result.append((op, "accelerator, as simpler ops"))
    return result


def _unit_batch(model) -> dict[str, tuple[int, ...]]:
    """Bind every dynamic dimension to 1: which ops are supported does not depend on sizes."""
    proto = onnx.load(str(model)) if not isinstance(model, onnx.ModelProto) else model
    initializers = {t.name for t in proto.graph.initializer}
    shapes = {}
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name not in initializers and any(not d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in dims)
    return shapes


def unsupported_in_model(model, input_shapes=None) -> list[str]:
    """One line per unsupported node of `model` (empty when everything compiles)."""
    problems = [f"unsupported op {op!r} (node {name!r}, opset {opset})" for op, name, opset in unsupported_ops(model)]
    if problems:
        return problems
    try:
        graph = import_model(model, input_shapes or _unit_batch(model))
    except UnsupportedOpError as err:
        return [str(err)]
    problems = []
    for node in graph.nodes:
        if node.op not in KERNELS and node.op not in ALIASES:
            problems.append(f"unsupported op {node.op!r} (node {node.name!r}): no kernel yet")
        elif (problem := _dtype_problem(graph, node)) is not None:
            problems.append(problem)
    return problems


def _dtype_problem(graph: Graph, node: Node) -> str | None:
    """Why the element-wise kernel would refuse the node's data types (its own rule), or None."""
    if KERNELS.get(node.op) is not elementwise_kernel:
        return None
    names = [name for name in node.inputs if name]
    try:
        dtypes = [accelerator_dtype(graph.values[name].dtype, name, f"{node.op} node {node.name!r}")
                  for name in names + node.outputs[:1]]
        if node.op != "Cast":
            compute_dtype(node, dtypes[:len(names)])
    except UnsupportedOpError as error:  # UnsupportedTypeError too
        return str(error)
    return None
