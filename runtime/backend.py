"""An ONNX backend (onnx.backend.base.Backend) that compiles with acc and runs the simulator.

`prepare(model)` compiles for the config given as `config=` (default `edge`); the
returned rep's `run(inputs)` simulates and returns the outputs in the graph's order. An
op or data type acc cannot compile raises NotImplementedError (acc's
UnsupportedOpError) naming it, which onnx's test runner counts as unsupported.

Operands the compiler needs at compile time (a Reduce's axes, a Reshape's shape, a
Resize's scales, ...) are usually constants; when a model makes one a graph input, the
backend specialises: it compiles when `run` brings that input's value, with the value
as a constant, and recompiles (and caches) for each new value — as a JIT would. Only
inputs the importer names as needed at compile time are bound; everything else stays a
run-time input of the program.

    import runtime.backend as acc_backend
    outputs = acc_backend.run_model(model, [x])
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from isa.program import Program
from runtime.simulator import run

MAX_SPECIALISATIONS = 8


class AccBackendRep(BackendRep):
    def __init__(self, model: onnx.ModelProto, options: dict, program: Program | None = None,
                 bound: tuple[str, ...] = ()):
        self.model, self.options = model, options
        self.program = program
        self.bound = bound  # graph inputs compiled in as constants (specialisation)
        self.programs: dict[bytes, Program] = {}
        self.last_stats: dict | None = None
        initializers = {t.name for t in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in initializers]

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            if len(inputs) != len(self.input_names):
                raise ValueError(f"the model takes {len(self.input_names)} inputs, got {len(inputs)}")
            feeds = dict(zip(self.input_names, inputs, strict=True))
        feeds = {name: np.asarray(value) for name, value in feeds.items()}
        program = self.program if not self.bound else self._specialised(feeds)
        result = run(program, {t.name: feeds[t.name] for t in program.inputs})
        self.last_stats = result.stats
        return tuple(result.outputs[t.name] for t in program.outputs)

    def _specialised(self, feeds: dict[str, np.ndarray]) -> Program:
        key = b"".join(name.encode() + feeds[name].tobytes() + str(feeds[name].dtype).encode()
                       for name in sorted(feeds))
        if key not in self.programs:
            if len(self.programs) >= MAX_SPECIALISATIONS:
                self.programs.clear()
            bound = list(self.bound)
            while True:
                program, needed = _compile_binding(self.model, self.options, {n: feeds[n] for n in bound})
                if needed is None:
                    break
                bound.append(needed)
            self.programs[key] = program
        return self.programs[key]


def _bind(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The model with these graph inputs turned into initializers holding `values`."""
    bound = onnx.ModelProto.FromString(model.SerializeToString())
    kept = [i for i in bound.graph.input if i.name not in values]
    del bound.graph.input[:]
    bound.graph.input.extend(kept)
    for name, value in values.items():
        bound.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(value), name))
    return bound


def _compile_binding(model: onnx.ModelProto, options: dict, values: dict[str, np.ndarray]):
    """Compile with `values` bound; returns (program, None), or (None, name) when the compiler
    needs another graph input as a constant, or raises."""
    from compiler.errors import UnsupportedOpError
    from compiler.pipeline import compile

    try:
        program = compile(_bind(model, values) if values else model, options.get("config"),
                          opt_level=options.get("opt_level", 1), input_shapes=options.get("input_shapes"))
        return program, None
    except UnsupportedOpError as err:
        graph_inputs = {i.name for i in model.graph.input}
        if err.needs_constant in graph_inputs and err.needs_constant not in values:
            return None, err.needs_constant
        raise


class AccBackend(Backend):
    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs) -> AccBackendRep:
        program, needed = _compile_binding(model, kwargs, {})
        # An input needed at compile time: compile when run() brings its value.
        return AccBackendRep(model, kwargs, program, (needed,) if needed else ())

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper() == "CPU"  # the simulator runs on the host CPU


prepare = AccBackend.prepare
run_model = AccBackend.run_model
supports_device = AccBackend.supports_device
