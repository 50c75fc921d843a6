"""The acc runtime: load a model.bin and simulate it on its accelerator config.

    program = runtime.load("model.bin")
    result = runtime.run(program, {"x": x})     # result.outputs, result.stats
"""

from isa.binfile import load
from runtime.simulator import RunResult, run

__all__ = ["load", "run", "RunResult"]
