"""Code generation: a verified, legalised Graph -> a Program (instructions, constants, I/O, debug).

Every value gets a DRAM region (constants in the constants section; ops in
kernels.ALIASES share their input's region); each node's kernel emits its
instructions under the node's name, and the emitter inserts the synchronisation.
"""

from __future__ import annotations

from compiler.codegen.context import CodegenContext, View, accelerator_dtype
from compiler.codegen.kernels import ALIASES, KERNELS
from compiler.errors import UnsupportedOpError
from compiler.ir import Graph
from isa.config import AcceleratorConfig
from isa.program import Program, TensorInfo


def generate(graph: Graph, config: AcceleratorConfig) -> Program:
    ctx = CodegenContext(config, graph)
    for name in graph.inputs:
        value = graph.values[name]
        ctx.views[name] = ctx.allocate(value.shape, accelerator_dtype(value.dtype, name, "model input"))
    used = {name for node in graph.nodes for name in node.inputs if name} | set(graph.outputs)
    for value in graph.constants():
        if value.name in used and value.name not in ctx.views:
            ctx.views[value.name] = ctx.constant(value.const, accelerator_dtype(value.dtype, value.name), value.name)
    for node in graph.nodes:
        if node.op not in KERNELS and node.op not in ALIASES:
            raise UnsupportedOpError(node.op, node.name, None, "the code generator has no kernel for it yet")
        outputs = [graph.values[name] for name in node.outputs if name]
        if node.op in ALIASES:
            source = ctx.views[node.inputs[0]]
            ctx.views[outputs[0].name] = View.dense(source.addr, source.dtype, outputs[0].shape)
            continue
        for value in outputs:
            ctx.views[value.name] = ctx.allocate(value.shape, accelerator_dtype(value.dtype, value.name, node.op))
        with ctx.emitter.node(node.name or f"{node.op}:{node.outputs[0]}"):
            KERNELS[node.op](ctx, node)
    instructions, debug = ctx.emitter.finish()
    inputs = [_tensor(graph, name, ctx.views[name]) for name in graph.inputs]
    outputs = [_tensor(graph, name, ctx.views[name]) for name in graph.outputs]
    # Every node output keeps its own DRAM (no reuse yet), so all of them can be compared.
    kept = [_tensor(graph, name, ctx.views[name], node.name or node.op) for node in graph.nodes
            for name in node.outputs if name and name in ctx.views and name not in graph.outputs]
    return Program(config, instructions, inputs, outputs, ctx.constants, debug, max(ctx.dram_end, 4),
                   debug_tensors=kept, precision=_precision(graph))


def _precision(graph: Graph) -> str:
    """The lowest precision any matrix op computes in."""
    operands = {graph.values[node.inputs[0]].dtype for node in graph.nodes
                if node.op in ("Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedGemm", "QLinearConv",
                              "QLinearMatMul")}
    return "int8" if operands & {"i8", "u8"} else "bf16" if "bf16" in operands else "fp32"


def _tensor(graph: Graph, name: str, view: View, node: str = "") -> TensorInfo:
    """A tensor's entry; a quantized one carries its scale, zero point and the float tensor it stands for."""
    if name in graph.quantized_from:
        source, scale, zero_point = graph.quantized_from[name]
        return TensorInfo(name, view.shape, view.dtype, view.addr, (scale,), (zero_point,), node=node, source=source)
    return TensorInfo(name, view.shape, view.dtype, view.addr, node=node)
