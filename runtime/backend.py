"""An ONNX backend (onnx.backend.base.Backend) that compiles with acc and runs the simulator.

`prepare(model)` compiles for the config given as `config=` (default `edge`); the
returned rep's `run(inputs)` simulates and returns the outputs in the graph's order. An
op or data type acc cannot compile raises NotImplementedError (acc's
UnsupportedOpError) naming it, which onnx's test runner counts as unsupported.

    import runtime.backend as acc_backend
    outputs = acc_backend.run_model(model, [x])
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from isa.program import Program
from runtime.simulator import run


class AccBackendRep(BackendRep):
    def __init__(self, program: Program):
        self.program = program
        self.last_stats: dict | None = None

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            names = [t.name for t in self.program.inputs]
            if len(inputs) != len(names):
                raise ValueError(f"the model takes {len(names)} inputs, got {len(inputs)}")
            feeds = dict(zip(names, inputs, strict=True))
        result = run(self.program, {name: np.asarray(value) for name, value in feeds.items()})
        self.last_stats = result.stats
        return tuple(result.outputs[t.name] for t in self.program.outputs)


class AccBackend(Backend):
    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs) -> AccBackendRep:
        from compiler.pipeline import compile

        super().prepare(model, device, **kwargs)
        program = compile(model, kwargs.get("config"), opt_level=kwargs.get("opt_level", 1),
                          input_shapes=kwargs.get("input_shapes"))
        return AccBackendRep(program)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper() == "CPU"  # the simulator runs on the host CPU


prepare = AccBackend.prepare
run_model = AccBackend.run_model
supports_device = AccBackend.supports_device
