"""Code generation: a verified, legalised Graph -> a Program (instructions, constants, I/O, debug).

Every value gets a DRAM region from the DRAM plan (compiler/codegen/memory.py): constants
in the constants region, placed when a kernel first reads them; ops in kernels.ALIASES
share their input's region. Each node's kernel emits its instructions under the node's
name, and the emitter inserts the synchronisation.

With `keep_intermediates` every activation keeps its own DRAM to the end, so all of them
can be compared layer by layer (model.bin lists them as debug tensors). Without it, an
activation's DRAM is reused once its last reader has run (and kernels' scratch once its
node has), and the debug tensors are only the ones whose DRAM nothing reused afterwards:
they still hold their values when the program ends.

`state` pairs (compiler/state.py) make an output share its input's DRAM: the state inputs
are placed first, sorted by name, their DRAM is never reused, and the in-place op that
makes each state output (a ScatterND of the input) gets the input's view as its output,
so its kernel writes only the rows it changes.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from functools import partial
from itertools import pairwise

from compiler.codegen.context import CodegenContext, View, accelerator_dtype, node_label
from compiler.codegen.interleave import JOIN, Recorded, interleave
from compiler.codegen.kernels import ALIASES, KERNELS, MATRIX_KERNELS, attention, conv_chain, mlp
from compiler.codegen.kernels.rows import ROW_KERNELS
from compiler.codegen.memory import CONSTANTS_BASE, Lifetimes, aligned, relocate_constants
from compiler.errors import UnsupportedOpError
from compiler.ir import Graph, Node
from compiler.passes.fuse_epilogue import CONVOLUTIONS
from compiler.passes.precision import MATRIX_OPS
from compiler.state import StateDeclaration, resolve_state
from isa.config import AcceleratorConfig
from isa.program import Program, TensorInfo

ROOM = 1 / 8  # an interleaved kernel's buffers go above the previous kernel's when this share of a memory is left


def generate(graph: Graph, config: AcceleratorConfig, keep_intermediates: bool = True,
             state: StateDeclaration = None, search: bool = False, steps: Collection[str] = ()) -> Program:
    """`steps`: the optional code generation steps to take (pipeline.CODEGEN_STEPS: "interleave",
    "attention", "mlp")."""
    with _cycle_collection_paused():
        return _generate(graph, config, keep_intermediates, state, search, steps)


@contextmanager
def _cycle_collection_paused():
    """Code generation keeps a few objects per instruction alive to the end (hundreds of thousands
    for ResNet-50) and makes no garbage cycles of note; left on, the cycle collector rescans them all
    every so often, about 1 s of ResNet-50's compile."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _generate(graph: Graph, config: AcceleratorConfig, keep_intermediates: bool, state: StateDeclaration,
              search: bool, steps: Collection[str]) -> Program:
    ctx = CodegenContext(config, graph, search)
    reuse = not keep_intermediates
    state_pairs = resolve_state(graph, state)
    state_input_of = dict(state_pairs)  # state output -> the input it updates in place
    state_inputs = [name for _, name in state_pairs]  # sorted by name
    lifetimes = Lifetimes.of(graph, ALIASES, live_to_end=set(state_inputs))
    placed: dict[str, int] = {}  # region root -> its block's index in the allocator's history
    # The state first, so that programs declaring the same state have it at the same addresses.
    for name in state_inputs + [name for name in graph.inputs if name not in state_inputs]:
        value = graph.values[name]
        ctx.views[name] = ctx.allocate(value.shape, accelerator_dtype(value.dtype, name, "model input"))
        placed[name] = len(ctx.dram.history) - 1
    # Kernels whose code interleaves with the previous kernel's (compiler/codegen/interleave.py): node index
    # -> that kernel's node index.
    interleaved = _interleaved(graph) if "interleave" in steps else {}
    producers = {producer: consumer for consumer, producer in interleaved.items()}
    pending: Recorded = []  # the previous kernel's code while the next one is to interleave with it
    pending_label = ""  # the node (or fused pair) that code is of
    timings: dict = {}  # interleave's timings of such code alone, by its shape
    # Runs of kernels that may run as one (FUSIONS): first node index -> (the other nodes' indices, step);
    # `fused` holds the nodes emitted with the one before them.
    groups = _groups(graph, interleaved, steps)
    fused: set[int] = set()
    written: set[str] = set()  # what the previous kernel wrote (and aliases of it)

    def place_outputs(node: Node) -> None:
        for value in (graph.values[name] for name in node.outputs if name):
            if value.name in ctx.views:  # placed early, with the scores product before it
                continue
            if value.name in state_input_of:  # updated in place: the kernel sees its data's view
                ctx.views[value.name] = ctx.views[state_input_of[value.name]]
                continue
            ctx.views[value.name] = ctx.allocate(value.shape, accelerator_dtype(value.dtype, value.name, node.op))
            placed[value.name] = len(ctx.dram.history) - 1

    for index, node in enumerate(graph.nodes):
        if node.op not in KERNELS and node.op not in ALIASES:
            raise UnsupportedOpError(node.op, node.name, None, "the code generator has no kernel for it yet")
        outputs = [graph.values[name] for name in node.outputs if name]
        scratch: list[int] = []
        if index in fused:
            pass  # emitted with the node before it, as one kernel
        elif node.op in ALIASES:
            source = ctx.view(node.inputs[0])
            ctx.views[outputs[0].name] = View.dense(source.addr, source.dtype, outputs[0].shape)
            if node.inputs[0] in written:
                written.add(outputs[0].name)
        elif index in groups and (emitted := _fused(ctx, [node, *(graph.nodes[i] for i in groups[index][0])],
                                                    groups[index][1], place_outputs,
                                                    record=groups[index][0][-1] in producers)) is not None:
            code, count = emitted
            taken = groups[index][0][:count - 1]
            fused.update(taken)
            if count - 1 == len(groups[index][0]) and taken[-1] in producers:  # the next kernel interleaves
                pending = code
                pending_label = JOIN.join(node_label(graph.nodes[i]) for i in [index, *taken])
            else:
                for instruction, group in code:
                    ctx.emitter.append(instruction, group)
        else:
            place_outputs(node)
            # An interleaved kernel's buffers stay clear of the code it merges into; a kernel that reads nothing
            # the previous one wrote has its loads start while that one still computes (not a convolution, whose
            # schedule takes the room it finds: a strided 3x3 above a projection's buffers, 130 k -> 143 k).
            independent = "interleave" in steps and not written.intersection(node.inputs) \
                and node.op not in CONVOLUTIONS
            above = _above(ctx) if index in interleaved else _above(ctx, independent=True) if independent else None
            name = node_label(node)
            # Only code that interleaves, or that the next kernel interleaves with, is recorded; the rest is
            # appended as it is emitted.
            ctx.next_reads_rows = index in producers and graph.nodes[producers[index]].op in ROW_KERNELS
            code, scratch = _kernel(ctx, node, name, above, record=index in interleaved or index in producers)
            ctx.next_reads_rows = False
            if index in interleaved:
                code, pending = interleave(pending, code, config, ctx.emitter.fresh, timings), []
                _describe_group(ctx, code, pending_label, name)
            if index in producers:
                pending, pending_label = code, name
            else:
                for instruction, group in code:
                    ctx.emitter.append(instruction, group)
        if node.op not in ALIASES:  # a fused node's outputs join those of the node it was emitted with
            written = (written if index in fused else set()) | {name for name in node.outputs if name}
        if reuse:  # an interleaved kernel's outputs may take this DRAM: the merge orders its writes there
            # (attention's probabilities, kept on chip, never had any)
            for address in [ctx.views[root].addr for root in lifetimes.dies_after[index] if root in ctx.views] \
                    + scratch:
                ctx.dram.free(address)
    outputs = [_tensor(graph, name, ctx.view(name)) for name in graph.outputs]
    instructions, debug = ctx.emitter.finish()
    activation_bytes = aligned(ctx.dram.end)
    instructions, constants = relocate_constants(instructions, ctx.constants, activation_bytes)
    outputs = [_relocated(t, activation_bytes) for t in outputs]
    dram_bytes = activation_bytes + ctx.constants_end - CONSTANTS_BASE
    if dram_bytes > config.dram_bytes:
        raise MemoryError(f"the model needs more than the config's {config.dram_bytes} bytes of DRAM")
    inputs = [_tensor(graph, name, ctx.views[name]) for name in graph.inputs]
    overwritten = ctx.dram.overwritten()
    kept = [_tensor(graph, name, ctx.views[name], node.name or node.op) for node in graph.nodes
            for name in node.outputs if name in lifetimes.root and lifetimes.root[name] in placed
            and name not in graph.outputs and not overwritten[placed[lifetimes.root[name]]]]
    return Program(config, instructions, inputs, outputs, constants, debug, max(dram_bytes, 4),
                   debug_tensors=kept, precision=_precision(graph), activation_bytes=activation_bytes,
                   notes=ctx.notes, scratchpad_peak=ctx.scratchpad_peak, state=state_pairs)


def _describe_group(ctx: CodegenContext, code: Recorded, producer: str, consumer: str) -> None:
    """--report's notes and scratchpad bytes for the span where two kernels' code alternates, if any."""
    group = producer + JOIN + consumer
    if any(node == group for _, node in code):
        ctx.notes[group] = [f"{consumer} interleaved with {producer}"]
        ctx.scratchpad_peak[group] = max(ctx.scratchpad_peak.get(producer, 0), ctx.local_high[0])


def _consecutive_kernels(graph: Graph) -> Iterator[tuple[int, int]]:
    """(index, index) of each node with a kernel and the next one (only aliases between them)."""
    return pairwise(index for index, node in enumerate(graph.nodes) if node.op not in ALIASES)


def _interleaved(graph: Graph) -> dict[int, int]:
    """The nodes whose code interleaves with the previous kernel's, each with that kernel's node: kernels
    without matrix work right after one with (their vector work overlaps its matrix work)."""
    return {index: previous for previous, index in _consecutive_kernels(graph)
            if graph.nodes[previous].op in MATRIX_KERNELS and graph.nodes[index].op not in MATRIX_KERNELS}


@dataclass(frozen=True)
class Fusion:
    """Consecutive kernels emitted as one kernel where the cost model times that faster (an -O2 code
    generation step)."""
    fusable: Callable[[Graph, Node, Node], bool]  # whether a node and the next one qualify
    kernel: Callable[..., None]  # kernel(ctx, *nodes)
    leads: bool  # the last node's code may have the next kernel's interleaved into it
    # Whether the kernel stores a node's result (read by the next node on chip) to DRAM too; None: never.
    stores: Callable[[Graph, Node, Node], bool] | None = None
    chains: bool = False  # more than two nodes, each fusable with the one before


FUSIONS = {"attention": Fusion(attention.fusable, attention.attention_kernel, False),
           "mlp": Fusion(mlp.fusable, mlp.mlp_kernel, True),
           "conv_chain": Fusion(conv_chain.fusable, conv_chain.conv_chain_kernel, True, conv_chain.stored,
                                chains=True)}


# What a fused kernel's choice does not depend on: quantization parameters change values, not code.
QUANTIZATION_ATTRS = {"x_scale", "x_zero_point", "w_scale", "w_zero_point", "y_scale", "y_zero_point"}


def _groups(graph: Graph, interleaved: dict[int, int], steps: Collection[str]) -> dict[int, tuple[list[int], str]]:
    """The runs of consecutive kernels (only aliases between) that FUSIONS' steps in `steps` allow: first
    node index -> (the following nodes' indices, step). Two nodes, or as many as each is fusable with the
    one before for a step that chains. Kernels whose code interleaves keep to that, but for a last node
    whose step lets the next kernel interleave with the group. A node takes part in one group."""
    taking_part = set(interleaved) | set(interleaved.values())
    groups: dict[int, tuple[list[int], str]] = {}
    grouped: set[int] = set()
    consecutive = list(_consecutive_kernels(graph))
    next_kernel = dict(consecutive)
    for previous, index in consecutive:
        if previous in grouped or previous in taking_part or index in interleaved:
            continue
        for step, fusion in FUSIONS.items():
            if step in steps and (fusion.leads or index not in taking_part) \
                    and fusion.fusable(graph, graph.nodes[previous], graph.nodes[index]):
                following = [index]
                while fusion.chains and following[-1] in next_kernel:
                    after = next_kernel[following[-1]]
                    if after in interleaved or after in taking_part and not fusion.leads \
                            or not fusion.fusable(graph, graph.nodes[following[-1]], graph.nodes[after]):
                        break
                    following.append(after)
                groups[previous] = following, step
                grouped |= {previous, *following}
                break
    return groups


def _fused(ctx: CodegenContext, nodes: list[Node], step: str, place_outputs,
           record: bool) -> tuple[Recorded, int] | None:
    """Emit the nodes, or the first ones of them, as one kernel (FUSIONS[step]), the results the kernel keeps
    on chip never in DRAM, when the cost model times that faster than the kernels apart (a small attention on
    a wide array can do better apart: the scores product there puts several heads side by side in one
    weight tile): its code (recorded if `record`, else appended and not returned: []) and how many nodes it
    took, at least two. None, having emitted nothing, when apart is faster (or nothing fits on chip): the
    caller then emits them one by one."""
    graph = ctx.graph
    fusion = FUSIONS[step]

    def allocated(*nodes: Node) -> None:
        # For the trials, which put back the DRAM they take (but not what place_outputs records).
        for node in nodes:
            for value in (graph.values[name] for name in node.outputs if name):
                ctx.views[value.name] = ctx.allocate(value.shape, accelerator_dtype(value.dtype, value.name, node.op))

    def in_dram(count: int) -> list[Node]:
        """Of the first `count` nodes run as one kernel, those whose results reach DRAM."""
        return [node for node, reader in zip(nodes[:count - 1], nodes[1:count], strict=True)
                if fusion.stores is not None and fusion.stores(graph, node, reader)] + [nodes[count - 1]]

    def on_chip(count: int) -> None:
        allocated(*in_dram(count))
        fusion.kernel(ctx, *nodes[:count])
        allocated(*nodes[count:])
        for node in nodes[count:]:
            KERNELS[node.op](ctx, node)

    def apart() -> None:
        allocated(*nodes)
        for node in nodes:
            KERNELS[node.op](ctx, node)

    # Groups of the same shapes take the same choice.
    key = (step, *(repr(({name: value for name, value in node.attrs.items() if name not in QUANTIZATION_ATTRS},
                         [(graph.values[name].shape, graph.values[name].dtype)
                          for name in node.inputs + node.outputs if name]))
                   for node in nodes))
    # The choices: the most nodes on chip that fit (name -> how many), against none.
    counts = {"on chip" if count == len(nodes) else f"first {count} on chip": count
              for count in range(len(nodes), 1, -1)}
    with ctx.emitter.node(JOIN.join(node_label(node) for node in nodes)):
        try:
            best = ctx.fastest({**{name: partial(on_chip, count) for name, count in counts.items()}, "apart": apart},
                               key, first_fit=True)
        except UnsupportedOpError:  # either way: apart, the kernel that cannot will say why
            return None
        if best not in counts:
            return None
        count = counts[best]
        for node in in_dram(count):
            place_outputs(node)
    with ctx.emitter.node(JOIN.join(node_label(node) for node in nodes[:count])), ctx.local_floors((0, 0)), \
            ctx.emitter.recording() if record else nullcontext([]) as code:
        fusion.kernel(ctx, *nodes[:count])
    return code, count


def _above(ctx: CodegenContext, independent: bool = False) -> tuple[int, int] | None:
    """Where the next kernel's buffers start so as not to meet the previous kernel's: above its highest
    scratchpad byte, and above its highest accumulator byte or, without room there, at the accumulator's
    end (none), or for an `independent` kernel (one that reads nothing the previous one wrote) at its
    bottom: it then waits there only for the previous kernel's last result tiles. None when the scratchpad
    has no room (ROOM)."""
    config = ctx.config
    spad_high, acc_high = ctx.local_high
    if spad_high > config.spad_bytes * (1 - ROOM):
        return None
    if acc_high <= config.acc_bytes * (1 - ROOM):
        return spad_high, acc_high
    return spad_high, 0 if independent else config.acc_bytes


def _kernel(ctx: CodegenContext, node: Node, name: str, above: tuple[int, int] | None,
            record: bool) -> tuple[Recorded, list[int]]:
    """Emit the node's kernel with its buffers from `above` up when they fit there, else from the bottom
    of each memory; its code (recorded if `record`, else appended and not returned) and the DRAM scratch
    the kernel allocated."""
    if above is not None:
        saved = ctx.saved()
        try:
            return _emitted_at(ctx, node, name, above, record)
        except (MemoryError, UnsupportedOpError):
            ctx.restore(saved)
    return _emitted_at(ctx, node, name, (0, 0), record)


def _emitted_at(ctx: CodegenContext, node: Node, name: str, floor: tuple[int, int],
                record: bool) -> tuple[Recorded, list[int]]:
    with ctx.local_floors(floor), ctx.emitter.recording() if record else nullcontext([]) as code, \
            ctx.emitter.node(name), ctx.node_scratch() as scratch:
        KERNELS[node.op](ctx, node)
    return code, scratch


def _relocated(tensor: TensorInfo, activation_bytes: int) -> TensorInfo:
    """A model output that is a constant, moved with the constants region."""
    if tensor.dram < CONSTANTS_BASE:
        return tensor
    return replace(tensor, dram=tensor.dram - CONSTANTS_BASE + activation_bytes)


def _precision(graph: Graph) -> str:
    """The lowest precision any matrix op computes in (w8a16: int8 weights with bf16 activations)."""
    operands = {"bf16" if node.attrs.get("round_a") else graph.values[node.inputs[0]].dtype for node in graph.nodes
                if node.op in MATRIX_OPS or node.op in ("QLinearConv", "QLinearMatMul")}
    if operands & {"i8", "u8"}:
        return "int8"
    if any(node.op == "MatMulW8" for node in graph.nodes):
        return "w8a16"
    return "bf16" if "bf16" in operands else "fp32"


def _tensor(graph: Graph, name: str, view: View, node: str = "") -> TensorInfo:
    """A tensor's entry; a quantized one carries its scale, zero point and the float tensor it stands for."""
    if name in graph.quantized_from:
        source, scale, zero_point = graph.quantized_from[name]
        return TensorInfo(name, view.shape, view.dtype, view.addr, (scale,), (zero_point,), node=node, source=source)
    return TensorInfo(name, view.shape, view.dtype, view.addr, node=node)
