"""Division by a constant becomes multiplication by its reciprocal (--fast-math).

The vector unit's `vdiv` costs four passes over a tile and `vmul` one (isa/SPEC.md), and
a transformer's GELU, x * 0.5 * (1 + erf(x / sqrt(2))), divides every activation of its
widest layer. This rewrite may change a result, which is why it runs only when asked
(pipeline.FAST_MATH; every other pass leaves each value as -O1 computes it): x * fl(1/c)
differs from the correctly rounded x / c by at most one unit in the last place (for
c = sqrt(2), in 41% of fp32 values), and not at all when c is a power of two. onnxruntime
computes the same product in its own Gelu kernel (0.5 * x * (1 + erf(x * M_SQRT1_2))), which
its default optimisation level fuses from this pattern; XLA's algebraic simplifier rewrites
A / const the same way.
"""

from __future__ import annotations

import numpy as np

from compiler.ir import Graph


def reciprocal_of_constant_divisor(graph: Graph) -> Graph:
    """Div(x, c) -> Mul(x, 1 / c) for an fp32 x and an fp32 constant c whose elements and their
    reciprocals are finite normal numbers (a zero, infinite or subnormal divisor keeps its Div,
    whose special values the reciprocal would not reproduce). The Mul broadcasts as the Div did."""
    tiny = np.finfo(np.float32).tiny
    for node in graph.nodes:
        if node.op != "Div":
            continue
        x, divisor = (graph.values[name] for name in node.inputs)
        if x.dtype != "f32" or divisor.dtype != "f32" or not divisor.is_const:
            continue
        with np.errstate(divide="ignore", over="ignore"):
            reciprocal = np.float32(1.0) / divisor.const
        magnitudes = np.abs(np.concatenate([divisor.const.reshape(-1), reciprocal.reshape(-1)]))
        if not np.all(np.isfinite(magnitudes) & (magnitudes >= tiny)):
            continue
        name = graph.fresh_name(node.inputs[1] + ".reciprocal")
        graph.const(name, reciprocal.astype(np.float32))
        node.op, node.inputs = "Mul", [node.inputs[0], name]
    return graph.prune()
