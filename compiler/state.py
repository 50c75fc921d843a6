"""State: model outputs that update a model input in place, such as a KV cache kept in DRAM.

A state pair (output, input) declares that the output is the next value of the input and
lives in the same DRAM: the program updates the input where it is, and a device that keeps
its DRAM between runs (runtime/simulator.py, `Machine`) already holds the next run's input
when a run ends. For that to be correct and cheap, the output must be made by the one op
that writes into its data in place, a `ScatterND` whose data is the input, and nothing else
may read the input (it would see rows the scatter has replaced).

The code generator (compiler/codegen/__init__.py) places every state input first in DRAM,
sorted by input name, before any other tensor, so two programs with the same state
declaration (a prefill and a decode) have the same state addresses; the DRAM plan never
reuses it.

`--state auto` pairs every output whose name, with "present" replaced by "past", names an
input of the same shape and dtype (the convention of exported decoder graphs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from compiler.errors import StateError
from compiler.ir import Graph

AUTO = "auto"
# What `auto` replaces in an output's name to find its input.
AUTO_OUTPUT_WORD, AUTO_INPUT_WORD = "present", "past"
# The op that can update its data input in place, and which of its inputs that is.
IN_PLACE_OPS = {"ScatterND": 0}

StatePairs = list[tuple[str, str]]
StateDeclaration = str | Mapping[str, str] | Sequence[tuple[str, str]] | None


def parse_state_option(text: str) -> tuple[str, str] | str:
    """`OUT=IN` -> ("OUT", "IN"); `auto` -> "auto"."""
    if text == AUTO:
        return AUTO
    output, sep, input_name = text.partition("=")
    if not sep or not output or not input_name:
        raise StateError(f"--state expects OUT=IN (an output that updates an input in place) or 'auto', got {text!r}")
    return output, input_name


def state_from_options(texts: Sequence[str]) -> StateDeclaration:
    """The declaration given by repeated --state options (None when there are none)."""
    parsed = [parse_state_option(text) for text in texts]
    if AUTO in parsed:
        if len(parsed) > 1:
            raise StateError("--state auto pairs every present/past itself; do not combine it with --state OUT=IN")
        return AUTO
    return parsed or None


def auto_pairs(graph: Graph) -> StatePairs:
    """Every (output, input) whose names differ by "present" -> "past" and whose shapes and dtypes agree."""
    pairs = []
    for output in graph.outputs:
        input_name = output.replace(AUTO_OUTPUT_WORD, AUTO_INPUT_WORD)
        if input_name != output and input_name in graph.inputs and _same_type(graph, output, input_name):
            pairs.append((output, input_name))
    if not pairs:
        raise StateError(f"--state auto: no output whose name with {AUTO_OUTPUT_WORD!r} replaced by "
                         f"{AUTO_INPUT_WORD!r} names an input of the same shape and dtype")
    return pairs


def resolve_state(graph: Graph, declaration: StateDeclaration) -> StatePairs:
    """The checked (output, input) pairs of `declaration` ("auto", a mapping output -> input or a list of
    pairs), sorted by input name: the order the state is placed in DRAM. Raises StateError, naming the
    pair and the reason, for a pair the program cannot update in place."""
    if declaration is None:
        return []
    if isinstance(declaration, str):
        if declaration != AUTO:
            raise StateError(f"state {declaration!r}: give 'auto' or (output, input) pairs")
        pairs = auto_pairs(graph)
    elif isinstance(declaration, Mapping):
        pairs = list(declaration.items())
    else:
        pairs = [tuple(pair) for pair in declaration]
    producers, readers = graph.producers(), graph.consumers()
    seen_outputs: set[str] = set()
    seen_inputs: set[str] = set()
    for output, input_name in pairs:
        where = f"state {output}={input_name}"
        if output not in graph.outputs:
            raise StateError(f"{where}: {output!r} is not an output of the model ({_names(graph.outputs)})")
        if input_name not in graph.inputs:
            raise StateError(f"{where}: {input_name!r} is not an input of the model ({_names(graph.inputs)})")
        if output in seen_outputs or input_name in seen_inputs:
            raise StateError(f"{where}: each output and input may be in one state pair only")
        seen_outputs.add(output)
        seen_inputs.add(input_name)
        if not _same_type(graph, output, input_name):
            out, inp = graph.values[output], graph.values[input_name]
            raise StateError(f"{where}: the output is {out.dtype}{list(out.shape)}, the input "
                             f"{inp.dtype}{list(inp.shape)}; a state output must have its input's shape and dtype")
        _check_in_place(where, graph, output, input_name, producers.get(output), readers.get(input_name, []))
    return sorted(pairs, key=lambda pair: pair[1])


def _check_in_place(where: str, graph: Graph, output: str, input_name: str, producer, readers) -> None:
    """The output is written by an in-place op over the input, and nothing else reads the input."""
    if producer is None:
        raise StateError(f"{where}: {output!r} is not computed by the program (it is an input or a constant)")
    data = IN_PLACE_OPS.get(producer.op)
    if data is None or producer.inputs[data] != input_name:
        raise StateError(f"{where}: {output!r} is made by {producer.op} (node {producer.name!r}), not by a ScatterND "
                         f"of {input_name!r}; only a ScatterND can update its data in place")
    if any(name == input_name for index, name in enumerate(producer.inputs) if index != data):
        raise StateError(f"{where}: node {producer.name!r} also reads {input_name!r} as its indices or updates")
    others = [node for node in readers if node is not producer]
    if others:
        raise StateError(f"{where}: {input_name!r} is also read by node {others[0].name!r} ({others[0].op}); "
                         "updating it in place would change what that node reads")
    if input_name in graph.outputs:
        raise StateError(f"{where}: {input_name!r} is also an output of the model")


def _same_type(graph: Graph, output: str, input_name: str) -> bool:
    out, inp = graph.values[output], graph.values[input_name]
    return tuple(out.shape) == tuple(inp.shape) and out.dtype == inp.dtype


def _names(names: Sequence[str], shown: int = 8) -> str:
    listed = ", ".join(names[:shown])
    return listed + (f", ... ({len(names)} in all)" if len(names) > shown else "")
