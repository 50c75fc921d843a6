"""The onnx wheel's `light` models, as shipped and with seeded random weights.

Their shipped weights are all the constant 0.02, built by ConstantOfShape nodes, so
their outputs hardly depend on the input and hide bugs. `randomized` replaces every
ConstantOfShape whose shape is constant with an initializer of seeded random values
scaled like a trained network's (He initialisation over the tensor's fan-in; small
positive values for 1-D parameters such as BatchNorm variances), so that activations
neither vanish nor explode through fifty layers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

NAMES = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet", "squeezenet",
         "vgg19", "zfnet512")


def light_path(name: str) -> Path:
    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"


def randomized(name: str, seed: int = 0) -> onnx.ModelProto:
    model = onnx.load(str(light_path(name)))
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    constants[node.output[0]] = numpy_helper.to_array(attribute.t)
    rng = np.random.default_rng(seed)
    kept = []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in constants:
            shape = tuple(int(d) for d in constants[node.input[0]])
            graph.initializer.append(numpy_helper.from_array(_random_tensor(rng, shape), node.output[0]))
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    # IR version 4 is the first that allows initializers that are not graph inputs.
    model.ir_version = max(model.ir_version, 4)
    return model


def _random_tensor(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) <= 1:
        # Biases, BatchNorm scale/shift/mean/variance: positive and near one keeps variances valid.
        return rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
