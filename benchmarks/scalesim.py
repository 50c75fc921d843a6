"""acc's compiled layers against SCALE-Sim 3.0.0's compute cycles (32x32 array, weight stationary).

    python benchmarks/scalesim.py

Each layer is one int8 op (QLinearMatMul or QLinearConv built with onnx.helper: one cycle per
streamed row, as SCALE-Sim counts) compiled by acc for the edge config (32x32 array) with
weight double-buffering off. Printed per layer: the matrix engine's span (first
matrix instruction's start to the last one's end, fill and drain included, as SCALE-Sim's
compute cycles are),
SCALE-Sim's compute cycles (from the issue: SCALE-Sim 3.0.0, its weight-stationary
dataflow, same array), their ratio, and the saving of double-buffering on the same program
(timed again with it on) beside the overlap model's prediction (each weight tile's load, k
cycles, hidden behind the previous tile's stream, except the first: (tiles - 1) * k). The
last column is the span of the program acc compiles for the config with double-buffering,
whose loop order may differ. "acc folds" and "fold cycles" apply SCALE-Sim's
formula, k + m + R + C - 2 per weight tile, to the tiles acc's kernel chose (their count and
streamed rows m); the rest of acc's span is the matrix unit waiting for operands. isa/SPEC.md
("Against SCALE-Sim") explains the differences.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compiler.pipeline import compile  # noqa: E402
from isa.config import load_config  # noqa: E402
from isa.spec import Engine  # noqa: E402
from isa.timing import Timeline  # noqa: E402

MATRIX = int(Engine.MATRIX)

# name -> (builder arguments, SCALE-Sim 3.0.0 compute cycles)
LAYERS = {
    "GEMM 256x256x256": (("gemm", 256, 256, 256), 22_399),
    "GEMM M=128 K=384 N=1536": (("gemm", 128, 384, 1536), 127_871),
    "conv 3x3, 56x56x64 -> 64": (("conv", 56, 64, 64, 3), 116_279),
    "conv 1x1, 56x56x64 -> 256": (("conv", 56, 64, 256, 1), 51_679),
}


def _scalars(prefix: str, scale: float, zero: int, dtype) -> list:
    return [numpy_helper.from_array(np.array(scale, np.float32), f"{prefix}_scale"),
            numpy_helper.from_array(np.array(zero, dtype), f"{prefix}_zero")]


def layer_model(kind: str, *dims: int):
    rng = np.random.default_rng(0)
    q = ["x", "x_scale", "x_zero", "w", "w_scale", "w_zero", "y_scale", "y_zero"]
    inits = _scalars("x", 0.05, 0, np.int8) + _scalars("w", 0.01, 0, np.int8) + _scalars("y", 0.5, 0, np.int8)
    if kind == "gemm":
        m, k, n = dims
        inits.append(numpy_helper.from_array(rng.integers(-127, 127, (k, n), dtype=np.int8), "w"))
        node = helper.make_node("QLinearMatMul", q, ["y"])
        x_shape, y_shape = [m, k], [m, n]
    else:
        size, cin, cout, kernel = dims
        inits.append(numpy_helper.from_array(rng.integers(-127, 127, (cout, cin, kernel, kernel), dtype=np.int8), "w"))
        node = helper.make_node("QLinearConv", q, ["y"], kernel_shape=[kernel, kernel], pads=[kernel // 2] * 4)
        x_shape, y_shape = [1, cin, size, size], [1, cout, size, size]
    graph = helper.make_graph([node], kind, [helper.make_tensor_value_info("x", TensorProto.INT8, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.INT8, y_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def matrix_span(program, config) -> int:
    """The matrix engine's span in `program` timed on `config`: its first instruction's start to its last one's end."""
    events = [(start, stop) for _, engine, start, stop, _ in Timeline(program.instructions, config)
              if engine == MATRIX]
    return max(stop for _, stop in events) - min(start for start, _ in events)


def main() -> None:
    edge = load_config("edge")
    single = edge.replace(weight_double_buffer=False)
    print("| layer | acc matrix cycles (no weight double-buffering) | SCALE-Sim | acc / SCALE-Sim | acc folds "
          "(rows streamed) | fold cycles | waiting for operands | with double-buffering | saving | "
          "predicted saving | compiled with double-buffering |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    fill_drain = edge.array_rows + edge.array_cols - 2
    for name, ((kind, *dims), reference) in LAYERS.items():
        program = compile(layer_model(kind, *dims), single)
        alone, overlapped = matrix_span(program, single), matrix_span(program, edge)
        compiled = matrix_span(compile(layer_model(kind, *dims), edge), edge)
        k_cycles = [i.fields["k"] for i in program.instructions if i.definition.mnemonic == "load_weights"]
        rows = [i.fields["m"] for i in program.instructions if i.definition.mnemonic == "matmul"]
        predicted = sum(k_cycles) - k_cycles[0]
        folds = sum(k_cycles) + sum(rows) + fill_drain * len(rows)
        streamed = "/".join(f"{m}" for m in sorted(set(rows), reverse=True))
        print(f"| {name} | {alone:,} | {reference:,} | {alone / reference:.3f} | "
              f"{len(rows)} ({streamed}) | {folds:,} | {alone - folds:,} | {overlapped:,} | "
              f"{alone - overlapped:,} | {predicted:,} | {compiled:,} |")


if __name__ == "__main__":
    main()
