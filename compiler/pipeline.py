"""The compiler pipeline: ONNX -> Graph IR -> passes -> Program, as one readable list.

`PASSES` is the whole optimisation pipeline in order; each entry is (name, pass, lowest
-O level that runs it). -O0 runs only what correctness needs; -O3 adds no pass but has the
code generator search each convolution's loop order with the cost model (CodegenContext.choose),
which makes compiling slower. A pass is a function
Graph -> Graph (see compiler/passes/); the verifier runs after every pass when
`verify_each` is set (always in tests).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from compiler.codegen import generate
from compiler.frontend import import_model
from compiler.ir import Graph, to_text
from compiler.passes.fold_transpose import fold_cast_into_matmul, fold_transpose_into_matmul
from compiler.passes.fuse_elementwise import fuse_elementwise
from compiler.passes.fuse_epilogue import fuse_epilogue, fuse_norm_prologue, fuse_norm_tail, fuse_softmax, fuse_tail
from compiler.passes.precision import MATRIX_OPS, to_bf16, to_w8a16
from compiler.passes.quantized import fold_dequantized_constants, fuse_qdq
from compiler.passes.reciprocal import reciprocal_of_constant_divisor
from compiler.passes.simplify import (
    decompose_batchnorm,
    fold_batchnorm_into_conv,
    fold_scale_into_quantize,
    remove_identities,
    transpose_to_reshape,
)
from compiler.state import StateDeclaration
from compiler.verify import verify
from isa.config import AcceleratorConfig, load_config
from isa.errors import AccError
from isa.program import Program

Pass = Callable[[Graph], Graph]

PASSES: list[tuple[str, Pass, int]] = [
    ("fuse_qdq", fuse_qdq, 0),
    ("fold_dequantized_constants", fold_dequantized_constants, 0),
    ("remove_identities", remove_identities, 0),
    ("fold_batchnorm_into_conv", fold_batchnorm_into_conv, 1),
    ("decompose_batchnorm", decompose_batchnorm, 0),
    ("reciprocal_of_constant_divisor", reciprocal_of_constant_divisor, 1),
    ("fold_scale_into_quantize", fold_scale_into_quantize, 2),
    ("fuse_epilogue", fuse_epilogue, 2),
    ("fuse_elementwise", fuse_elementwise, 2),
    ("fuse_tail", fuse_tail, 2),
    ("fuse_softmax", fuse_softmax, 2),
    ("fuse_norm_tail", fuse_norm_tail, 2),
    ("fuse_norm_prologue", fuse_norm_prologue, 2),
    ("transpose_to_reshape", transpose_to_reshape, 1),
    ("fold_transpose_into_matmul", fold_transpose_into_matmul, 2),
]


# Passes that run only when asked (`fast_math`, --fast-math): they may change a result by a rounding, where
# every other pass leaves each value as -O1 computes it.
FAST_MATH = {"reciprocal_of_constant_divisor"}

# Steps of the code generator that `disabled_passes` (--disable-pass) can leave out as well, with
# their level: interleaving a vector kernel's code into the matrix kernel's before it (and a kernel that
# reads nothing the previous one wrote loading while that one computes); attention's two
# products with the softmax between them as one kernel, and a feed-forward block's two products.
CODEGEN_STEPS = {"interleave": 2, "attention": 2, "mlp": 2, "conv_chain": 2}


def pass_names() -> list[str]:
    return ["import"] + [name for name, _, _ in PASSES]


def run_passes(graph: Graph, opt_level: int = 1, dump_after: str | None = None, verify_each: bool = False,
               dump=None, disabled: Collection[str] = (), fast_math: bool = False) -> Graph:
    """The passes of `opt_level` in order, but those named in `disabled` (to measure what each one gives),
    and the FAST_MATH ones only with `fast_math`. `dump_after` a pass that does not run prints the graph
    as that pass would have received it."""
    dump = dump or sys.stdout
    if dump_after == "import":
        dump.write(to_text(graph, full_constants=False))
    for name, function, level in PASSES:
        if not (opt_level < level or name in disabled or (name in FAST_MATH and not fast_math)):
            graph = function(graph)
            if verify_each:
                verify(graph)
        if dump_after == name:
            dump.write(to_text(graph, full_constants=False))
    return graph


@dataclass(frozen=True)
class Precision:
    """What the matrix unit computes in.

    fp32; bf16 (bf16 operands, fp32 accumulation); w8a16 (weight-only int8: constant MatMul/Gemm
    weights in int8 with a scale per output column, bf16 activations, fp32 accumulation; no
    calibration); int8 (post-training quantization from `calibration`, an .npz path or a list of
    feeds, by `method`; a model that is already QDQ-quantized is compiled to int8 in any mode,
    with its own scales). `keep` maps node names to "fp32" or "bf16": those nodes are not
    quantized (int8, w8a16) or stay fp32 (bf16)."""

    mode: str = "fp32"
    calibration: str | Path | Sequence[Mapping[str, np.ndarray]] | None = None
    method: str = "minmax"
    per_channel: bool = True
    symmetric: bool = False
    keep: Mapping[str, str] = field(default_factory=dict)
    progress: bool = False
    # int8: keep the most sensitive matrix nodes in bf16 until every float output's cosine with
    # the fp32 model reaches this on the calibration samples (None: no automatic choice).
    auto_cosine: float | None = None

    def __post_init__(self):
        if self.mode not in PRECISIONS:
            raise AccError(f"precision {self.mode!r} is not one of {', '.join(PRECISIONS)}")
        for node, kept in self.keep.items():
            if kept not in ("fp32", "bf16"):
                raise AccError(f"--keep-precision {node}={kept}: the precision must be fp32 or bf16")
        if self.mode == "int8" and self.calibration is None:
            raise AccError("int8 needs calibration samples (--calibration samples.npz)")


PRECISIONS = ("fp32", "bf16", "w8a16", "int8")


def quantize_for(model: str | Path | onnx.ModelProto | bytes, precision: Precision,
                 input_shapes: dict[str, tuple[int, ...]] | None = None,
                 report: Callable[[str], None] | None = None) -> tuple[onnx.ModelProto, Precision]:
    """The QDQ model that int8 compiles (calibrate on the samples, then insert the quantization),
    and the precision with the automatically kept nodes added to `keep` as bf16."""
    from compiler.frontend.onnx_import import load_onnx
    from compiler.quantize.calibration import collect_ranges, load_samples
    from compiler.quantize.ptq import QuantOptions, choose_kept, quantize_model

    loaded = load_onnx(model).model
    samples = precision.calibration
    if isinstance(samples, (str, Path)):
        samples = load_samples(samples, loaded, input_shapes)
    ranges = collect_ranges(loaded, samples, precision.method, precision.progress)
    options = QuantOptions(precision.per_channel, precision.symmetric, frozenset(precision.keep))
    if precision.auto_cosine is not None:
        kept, before, after = choose_kept(loaded, ranges, samples, options, precision.auto_cosine, report)
        if report:
            report(f"mixed precision: {len(kept)} matrix node(s) kept in bf16; worst output cosine on the "
                   f"calibration set {before:.5f} -> {after:.5f} (target {precision.auto_cosine})")
        precision = replace(precision, keep={**precision.keep, **{name: "bf16" for name in kept}})
        options = QuantOptions(precision.per_channel, precision.symmetric, frozenset(precision.keep))
    return quantize_model(loaded, ranges, options), precision


def apply_precision(graph: Graph, precision: Precision) -> Graph:
    """bf16 on the matrix ops the precision asks for (all but the kept ones in bf16 mode; the ones
    kept as bf16 in int8 mode); in w8a16 mode int8 weights for the products with constant weights
    and bf16 for the rest."""
    if precision.mode == "w8a16":
        return to_w8a16(graph, precision.keep)
    if precision.mode == "bf16":
        return to_bf16(graph, keep={name for name, kept in precision.keep.items() if kept == "fp32"})
    matrix = {node.name for node in graph.nodes if node.op in MATRIX_OPS}
    wanted = {name for name, kept in precision.keep.items() if kept == "bf16"}
    return to_bf16(graph, keep=matrix - wanted)


def compile(model: str | Path | onnx.ModelProto, config: str | Path | AcceleratorConfig | None = None, *,
            opt_level: int = 1, input_shapes: dict[str, tuple[int, ...]] | None = None,
            dump_after: str | None = None, verify_each: bool = False,
            precision: Precision | str = "fp32", report: Callable[[str], None] | None = None,
            keep_intermediates: bool | None = None, state: StateDeclaration = None,
            disabled_passes: Collection[str] = (), fast_math: bool = False) -> Program:
    """Compile an ONNX model (path or ModelProto) for `config` (preset name, JSON path or config)
    in `precision` (a Precision, or its mode name). `report` receives, for a quantized model, a
    line on what runs in int8 and one on what stays float. `keep_intermediates` (default: below
    -O2) gives every intermediate tensor its own DRAM, for per-layer comparison; otherwise DRAM
    of dead tensors is reused. `state` ("auto", or output -> input pairs) makes outputs update
    their inputs in place, in DRAM placed first (compiler/state.py). `disabled_passes` names passes
    of the level not to run (see `pass_names`), or code generation steps (CODEGEN_STEPS). `fast_math` adds the
    FAST_MATH passes, which may change a result by a rounding (without it, -O2 gives the -O1 result value for
    value)."""
    known = pass_names()[1:] + list(CODEGEN_STEPS)
    unknown = sorted(set(disabled_passes) - set(known))
    if unknown:  # before any work: calibration can take minutes
        raise AccError(f"unknown pass {unknown[0]!r} (passes: {', '.join(known)})")
    config = load_config(config)
    precision = Precision(precision) if isinstance(precision, str) else precision
    if precision.mode == "int8":
        model, precision = quantize_for(model, precision, input_shapes, report)
    graph = import_model(model, input_shapes)
    if verify_each:
        verify(graph)
    graph = run_passes(graph, opt_level, dump_after, verify_each, disabled=disabled_passes, fast_math=fast_math)
    if precision.mode in ("bf16", "w8a16") or "bf16" in precision.keep.values():
        graph = apply_precision(graph, precision)
        if opt_level >= 2:
            graph = fold_cast_into_matmul(graph)
        if verify_each:
            verify(graph)
    program = generate(graph, config, opt_level < 2 if keep_intermediates is None else keep_intermediates,
                       state=state, search=opt_level >= 3,
                       steps={step for step, level in CODEGEN_STEPS.items()
                              if opt_level >= level and step not in disabled_passes})
    if report and program.precision == "int8":
        from compiler.quantize.ptq import describe

        for line in describe(graph):
            report(line)
    return program
