"""The compiler pipeline: ONNX -> Graph IR -> passes -> Program, as one readable list.

`PASSES` is the whole optimisation pipeline in order; each entry is (name, pass, lowest
-O level that runs it). -O0 runs only what correctness needs. A pass is a function
Graph -> Graph (see compiler/passes/); the verifier runs after every pass when
`verify_each` is set (always in tests).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import onnx

from compiler.codegen import generate
from compiler.frontend import import_model
from compiler.ir import Graph, to_text
from compiler.passes.quantized import fold_dequantized_constants, fuse_qdq
from compiler.passes.simplify import decompose_batchnorm, fold_batchnorm_into_conv, remove_identities
from compiler.verify import verify
from isa.config import AcceleratorConfig, load_config
from isa.program import Program

Pass = Callable[[Graph], Graph]

PASSES: list[tuple[str, Pass, int]] = [
    ("fuse_qdq", fuse_qdq, 0),
    ("fold_dequantized_constants", fold_dequantized_constants, 0),
    ("remove_identities", remove_identities, 0),
    ("fold_batchnorm_into_conv", fold_batchnorm_into_conv, 1),
    ("decompose_batchnorm", decompose_batchnorm, 0),
]


def pass_names() -> list[str]:
    return ["import"] + [name for name, _, _ in PASSES]


def run_passes(graph: Graph, opt_level: int = 1, dump_after: str | None = None, verify_each: bool = False,
               dump=None) -> Graph:
    dump = dump or sys.stdout
    if dump_after == "import":
        dump.write(to_text(graph, full_constants=False))
    for name, function, level in PASSES:
        if opt_level < level:
            continue
        graph = function(graph)
        if verify_each:
            verify(graph)
        if dump_after == name:
            dump.write(to_text(graph, full_constants=False))
    return graph


def compile(model: str | Path | onnx.ModelProto, config: str | Path | AcceleratorConfig | None = None, *,
            opt_level: int = 1, input_shapes: dict[str, tuple[int, ...]] | None = None,
            dump_after: str | None = None, verify_each: bool = False) -> Program:
    """Compile an ONNX model (path or ModelProto) for `config` (preset name, JSON path or config)."""
    config = load_config(config)
    graph = import_model(model, input_shapes)
    if verify_each:
        verify(graph)
    graph = run_passes(graph, opt_level, dump_after, verify_each)
    return generate(graph, config)
