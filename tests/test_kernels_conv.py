"""Conv, ConvTranspose, MaxPool and AveragePool kernels against onnxruntime, on tiny (tiling
forced) and edge, with 1, 2 and 3 spatial axes, and with filters (and bias) that are
graph inputs rather than constants: every program runs hazard-free."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from compiler.codegen import generate
from compiler.ir import Graph, Node, Value
from isa.config import load_config
from runtime.simulator import run

CONFIGS = ["tiny", "edge"]


def reference(op: str, values: dict, attrs: dict, runtime: set) -> np.ndarray:
    """onnxruntime's result for one node whose inputs are `values` in order; those named in
    `runtime` (and the first) are graph inputs, the rest initializers."""
    feeds = {name: value for i, (name, value) in enumerate(values.items()) if i == 0 or name in runtime}
    inits = [helper.make_tensor(name, TensorProto.FLOAT, value.shape, value.ravel()) for name, value in
             values.items() if name not in feeds]
    node = helper.make_node(op, list(values), ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(name, TensorProto.FLOAT, value.shape)
                                            for name, value in feeds.items()],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    return ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]


def simulate(op: str, values: dict, attrs: dict, runtime: set, shape, config: str) -> np.ndarray:
    """The same node compiled for `config` and simulated with the hazard check."""
    graph = Graph()
    feeds = {name: value for i, (name, value) in enumerate(values.items()) if i == 0 or name in runtime}
    for name, value in values.items():
        if name in feeds:
            graph.add_value(Value(name, "f32", value.shape))
            graph.inputs.append(name)
        else:
            graph.const(name, value)
    graph.add_value(Value("y", "f32", shape))
    graph.outputs = ["y"]
    graph.nodes = [Node(op, list(values), ["y"], attrs, "node")]
    result = run(generate(graph, load_config(config)), feeds, check_hazards=True)
    assert not result.hazards
    assert result.stats["cycles"] >= result.stats["roofline_cycles"]
    return result.outputs["y"]


def check(op: str, values: dict, attrs: dict, config: str, runtime: set = frozenset(), ir_attrs: dict | None = None,
          tolerance: float = 1e-5) -> None:
    expected = reference(op, values, attrs, runtime)
    actual = simulate(op, values, ir_attrs or attrs, runtime, expected.shape, config)
    np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance * max(np.abs(expected).max(), 1))


def conv_program(values: dict, attrs: dict, config: str):
    """The program of a Conv of values' x by its constant W (no bias)."""
    graph = Graph()
    graph.add_value(Value("x", "f32", values["x"].shape))
    graph.inputs = ["x"]
    graph.const("W", values["W"])
    graph.add_value(Value("y", "f32", reference("Conv", {"x": values["x"], "W": values["W"]}, attrs, set()).shape))
    graph.outputs = ["y"]
    graph.nodes = [Node("Conv", ["x", "W"], ["y"], attrs, "conv")]
    return generate(graph, load_config(config))


def conv_notes(values: dict, attrs: dict, config: str) -> list[str]:
    """The code generator's notes on a Conv of values' x by its constant W (no bias)."""
    return conv_program(values, attrs, config).notes["conv"]


def conv_values(seed: int, x_shape, w_shape, bias_channels: int | None) -> dict:
    rng = np.random.default_rng(seed)
    values = {"x": rng.standard_normal(x_shape).astype(np.float32),
              "W": rng.standard_normal(w_shape).astype(np.float32)}
    if bias_channels:
        values["b"] = rng.standard_normal(bias_channels).astype(np.float32)
    return values


CONV_CASES = [
    ((1, 3, 9, 11), (5, 3, 3, 3), dict(pads=[1, 1, 1, 1]), True),
    ((2, 4, 10, 7), (6, 2, 3, 2), dict(pads=[0, 1, 2, 0], strides=[2, 1], dilations=[1, 2], group=2), True),
    ((1, 20, 12, 40), (40, 20, 3, 3), dict(pads=[1, 1, 1, 1]), True),
    ((1, 8, 6, 6), (8, 1, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2], group=8), False),
    ((1, 6, 5, 17), (4, 6, 1, 1), dict(), True),
    ((2, 3, 15), (4, 3, 3), dict(pads=[1, 1], strides=[2]), True),
    # 3-D: filters stationary (wide depth slices), patch stationary (more output channels than
    # a slice has pixels), strides/dilations/asymmetric pads with groups, depthwise.
    ((1, 3, 5, 6, 7), (4, 3, 3, 3, 3), dict(pads=[1, 1, 1, 1, 1, 1]), True),
    ((1, 8, 3, 8, 10), (12, 8, 3, 3, 3), dict(pads=[1, 1, 1, 1, 1, 1]), False),
    ((1, 4, 4, 3, 3), (16, 4, 2, 2, 2), dict(), True),
    ((2, 4, 6, 5, 7), (6, 2, 2, 3, 2), dict(pads=[0, 1, 1, 1, 0, 2], strides=[2, 1, 2], dilations=[1, 2, 1],
                                            group=2), True),
    ((1, 6, 4, 5, 5), (6, 1, 3, 3, 3), dict(pads=[1, 1, 1, 1, 1, 1], strides=[1, 2, 2], group=6), True),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("x_shape,w_shape,attrs,bias", CONV_CASES)
def test_conv(config, x_shape, w_shape, attrs, bias):
    check("Conv", conv_values(0, x_shape, w_shape, w_shape[0] if bias else None), attrs, config)


# Stride-1 convolutions whose output rows do not fill the array's columns: pixel tiles run across
# row ends (patch and filters stationary, wider kernels, dilation with uneven pads, groups, depth,
# batches), with the pixels a kernel column moves out of their row set to the padding.
ROW_END_CASES = [
    ((1, 6, 3, 20), (64, 6, 3, 3), dict(pads=[1, 1, 1, 1])),
    ((1, 5, 9, 13), (7, 5, 3, 3), dict(pads=[1, 1, 1, 1])),
    ((1, 4, 6, 17), (120, 4, 5, 5), dict(pads=[2, 2, 2, 2])),
    ((1, 3, 7, 17), (8, 3, 3, 3), dict(pads=[1, 3, 3, 1], dilations=[2, 2])),
    ((1, 4, 3, 5, 17), (6, 2, 3, 3, 3), dict(pads=[1, 1, 1, 1, 1, 1], group=2)),
    ((2, 3, 5, 4, 18), (5, 3, 3, 3, 3), dict(pads=[1, 1, 1, 1, 1, 1], strides=[2, 1, 1])),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("x_shape,w_shape,attrs", ROW_END_CASES)
def test_conv_tiles_across_row_ends(config, x_shape, w_shape, attrs):
    values = conv_values(2, x_shape, w_shape, w_shape[0])
    check("Conv", values, attrs, config)
    assert any("across row ends" in note for note in conv_notes(values, attrs, config))


# Filters stationary in blocks of output channels, so that more pixels fit the accumulator: with
# the filters on chip, the next block's replace them K tile by K tile (across groups, where a
# block of fewer channels is followed by a larger one, and batches); else streamed.
CHANNEL_BLOCK_CASES = [
    ("tiny", (2, 8, 5, 5), (48, 4, 3, 3), dict(pads=[1, 1, 1, 1], group=2), "on chip"),
    ("tiny", (2, 64, 10, 10), (200, 32, 3, 3), dict(pads=[1, 1, 1, 1], group=2), "streamed"),
    ("edge", (1, 32, 14, 14), (256, 32, 3, 3), dict(pads=[1, 1, 1, 1]), "on chip"),
]


@pytest.mark.parametrize("config,x_shape,w_shape,attrs,filters", CHANNEL_BLOCK_CASES)
def test_conv_filters_stationary_in_channel_blocks(config, x_shape, w_shape, attrs, filters):
    values = conv_values(3, x_shape, w_shape, w_shape[0])
    check("Conv", values, attrs, config)
    note = conv_notes(values, attrs, config)[-1]
    assert note.startswith("filters stationary") and "channel blocks of" in note and f"filters {filters}" in note


# Patch stationary with filters too large to stay on chip: each tile of them is loaded for its
# matmuls, LOOKAHEAD K tiles ahead in a ring when the ring fits ("streamed ahead"), else in two
# buffers; stored tile by tile when constant, read from the arranged run-time filters otherwise.
STREAMED_CASES = [
    ("tiny", (1, 32, 2, 3), (24, 32, 3, 3), "streamed ahead"),
    ("edge", (1, 512, 2, 3), (128, 512, 3, 3), "streamed ahead"),
    ("tiny", (1, 32, 2, 3), (64, 32, 3, 3), "streamed"),
    ("edge", (1, 64, 2, 3), (512, 64, 3, 3), "streamed"),
]


@pytest.mark.parametrize("config,x_shape,w_shape,filters", STREAMED_CASES)
@pytest.mark.parametrize("runtime", [frozenset(), {"W"}])
def test_conv_patch_stationary_streams_filters(config, x_shape, w_shape, filters, runtime):
    values = conv_values(4, x_shape, w_shape, w_shape[0])
    attrs = dict(pads=[1, 1, 1, 1])
    check("Conv", values, attrs, config, runtime)
    note = conv_notes(values, attrs, config)[-1]
    assert note.startswith("patch stationary") and note.endswith(f"filters {filters}")


def test_conv_patch_stationary_loads_the_next_filter_block_while_the_last_one_multiplies():
    """Filters on chip in two channel blocks of 512 (1024 x 64 f32 on edge) take two buffers in turn: the
    second block's filters load while the first block's matmuls run, not after them."""
    from isa.timing import Timeline

    values = conv_values(5, (1, 64, 2, 3), (1024, 64, 1, 1), 1024)
    check("Conv", values, {}, "edge")
    assert conv_notes(values, {}, "edge")[-1].endswith("filters on chip per block, two blocks in turn")
    program = conv_program(values, {}, "edge").instructions
    times = {index: (begins, ends) for index, _, begins, ends, _ in Timeline(program, load_config("edge"))}
    block_loads = [index for index, instruction in enumerate(program) if instruction.mnemonic == "dma_load"
                   and instruction["n0"] * instruction["n1"] * instruction["n2"] * instruction["esize"] == 512 * 64 * 4]
    assert len(block_loads) == 2
    first_block_matmuls = [index for index in range(block_loads[1]) if program[index].mnemonic == "matmul"]
    assert times[block_loads[1]][0] < times[first_block_matmuls[-1]][1]


# An image network's stem (few channels, a stride) runs as a stride-1 convolution of the input
# rearranged space-to-depth when channels x stride^2 fit the array's rows; odd sizes need the
# padded input extended to a multiple of the stride.
STEM_CASES = [
    ((1, 3, 23, 21), (8, 3, 7, 7), dict(pads=[3, 3, 3, 3], strides=[2, 2])),
    ((2, 2, 9, 10), (5, 2, 3, 3), dict(pads=[1, 0, 1, 2], strides=[2, 2])),
    ((1, 1, 12, 12), (4, 1, 4, 4), dict(strides=[3, 3])),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("x_shape,w_shape,attrs", STEM_CASES)
def test_strided_stem_as_space_to_depth(config, x_shape, w_shape, attrs):
    check("Conv", conv_values(1, x_shape, w_shape, w_shape[0]), attrs, config)
    notes = conv_notes(conv_values(1, x_shape, w_shape, None), attrs, config)
    step = attrs["strides"][0]
    assert any("space-to-depth" in note for note in notes) == (x_shape[1] * step * step <= load_config(config).array_rows)


CONV_TRANSPOSE_CASES = [
    ((1, 3, 4, 5), (3, 2, 3, 3), dict(strides=[2, 2])),
    ((1, 4, 5, 5), (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])),
    ((2, 4, 3, 4), (4, 2, 2, 3), dict(strides=[1, 2], dilations=[2, 1], group=2, pads=[0, 1, 1, 0])),
    ((1, 2, 6, 6), (2, 3, 3, 3), dict(pads=[2, 2, 2, 2])),  # padding larger than the kernel reach: cropping
    ((1, 3, 7), (3, 2, 3), dict(strides=[3])),
    ((1, 2, 3, 4, 3), (2, 3, 2, 3, 3), dict(strides=[2, 1, 2], pads=[0, 1, 1, 1, 0, 0], output_padding=[1, 0, 1])),
    ((1, 4, 3, 3, 4), (4, 2, 3, 2, 2), dict(strides=[1, 2, 2], dilations=[2, 1, 1], group=2)),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("x_shape,w_shape,attrs", CONV_TRANSPOSE_CASES)
def test_conv_transpose(config, x_shape, w_shape, attrs):
    values = conv_values(2, x_shape, w_shape, w_shape[1] * attrs.get("group", 1))
    check("ConvTranspose", values, attrs, config, ir_attrs=dict(attrs, kernel_shape=list(w_shape[2:])))


# Filters (and bias) that are graph inputs: arranged on the accelerator at run time, in
# both orientations (patch stationary: [group, cout, K]; filters stationary: [group, K, cout]).
RUNTIME_CASES = [
    ("Conv", (1, 3, 9, 11), (5, 3, 3, 3), dict(pads=[1, 1, 1, 1]), {"W"}),
    ("Conv", (1, 3, 9, 11), (5, 3, 3, 3), dict(pads=[1, 1, 1, 1]), {"b"}),
    ("Conv", (2, 4, 10, 7), (6, 2, 3, 2), dict(pads=[0, 1, 2, 0], strides=[2, 1], dilations=[1, 2], group=2),
     {"W", "b"}),
    ("Conv", (1, 6, 2, 3), (16, 6, 1, 1), dict(), {"W", "b"}),  # [cout, cin] is already arranged: no copy
    ("Conv", (1, 16, 6, 3), (24, 16, 3, 3), dict(pads=[1, 1, 1, 1]), {"W"}),  # more output channels than pixels
    ("Conv", (2, 3, 15), (4, 3, 3), dict(pads=[1, 1], strides=[2]), {"W", "b"}),
    ("Conv", (1, 4, 4, 5, 6), (6, 2, 2, 3, 2), dict(pads=[0, 1, 1, 1, 0, 1], strides=[1, 2, 1], group=2),
     {"W", "b"}),
    ("ConvTranspose", (1, 3, 4, 5), (3, 2, 3, 3), dict(strides=[2, 2]), {"W"}),
    ("ConvTranspose", (2, 4, 3, 4), (4, 2, 2, 3), dict(strides=[1, 2], dilations=[2, 1], group=2, pads=[0, 1, 1, 0]),
     {"W", "b"}),
    ("ConvTranspose", (1, 3, 7), (3, 2, 3), dict(strides=[3]), {"W", "b"}),
    ("ConvTranspose", (1, 8, 2, 2), (8, 24, 2, 2), dict(), {"W"}),  # more output channels than pixels
    ("ConvTranspose", (1, 2, 3, 4, 3), (2, 3, 2, 3, 3), dict(strides=[2, 1, 2], output_padding=[1, 0, 1]), {"W"}),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("op,x_shape,w_shape,attrs,runtime", RUNTIME_CASES)
def test_filters_at_run_time(config, op, x_shape, w_shape, attrs, runtime):
    channels = w_shape[0] if op == "Conv" else w_shape[1] * attrs.get("group", 1)
    values = conv_values(3, x_shape, w_shape, channels)
    check(op, values, attrs, config, runtime=runtime, ir_attrs=dict(attrs, kernel_shape=list(w_shape[2:])))


POOL_CASES = [
    ("MaxPool", (1, 3, 9, 11), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])),
    ("MaxPool", (2, 5, 8, 8), dict(kernel_shape=[2, 2], strides=[2, 2])),
    ("MaxPool", (1, 4, 7, 7), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    ("MaxPool", (1, 2, 10, 10), dict(kernel_shape=[2, 2], dilations=[2, 2])),
    ("AveragePool", (1, 3, 9, 11), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])),
    ("AveragePool", (1, 3, 9, 11), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2],
                                        count_include_pad=1)),
    ("AveragePool", (1, 6, 7, 7), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    ("AveragePool", (1, 2, 9), dict(kernel_shape=[2], strides=[2])),
    ("MaxPool", (1, 3, 5, 6, 7), dict(kernel_shape=[2, 3, 3], pads=[1, 1, 1, 0, 1, 1], strides=[2, 2, 2])),
    ("MaxPool", (2, 2, 7, 6, 7), dict(kernel_shape=[2, 2, 3], strides=[2, 2, 1], dilations=[2, 1, 2], ceil_mode=1)),
    ("AveragePool", (1, 4, 4, 6, 6), dict(kernel_shape=[2, 2, 2], strides=[2, 2, 2])),
    ("AveragePool", (1, 3, 5, 6, 7), dict(kernel_shape=[3, 2, 3], pads=[1, 0, 1, 1, 1, 0], strides=[2, 2, 2])),
    ("AveragePool", (1, 3, 5, 6, 7), dict(kernel_shape=[3, 2, 3], pads=[1, 0, 1, 1, 1, 0], strides=[2, 2, 2],
                                          count_include_pad=1)),
    ("AveragePool", (1, 2, 7, 7, 6), dict(kernel_shape=[3, 3, 2], strides=[2, 2, 2], dilations=[1, 2, 1],
                                          ceil_mode=1)),
    # One window over the whole input (ResNet-50's last pool): a reduction per channel.
    ("AveragePool", (1, 40, 7, 7), dict(kernel_shape=[7, 7])),
    ("MaxPool", (2, 3, 5, 6), dict(kernel_shape=[5, 6], strides=[2, 2], ceil_mode=1)),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("op,x_shape,attrs", POOL_CASES)
def test_pool(config, op, x_shape, attrs):
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    check(op, {"x": x}, attrs, config, tolerance=1e-6)


# A 2-D max pool over many channels folds each row's window columns, then each output row's window rows
# (ResNet-50's 3x3/2: 4 passes where the window's 8 folds pass over every output value): row tiles,
# channel blocks, padding, ceil mode, a batch, an oblong window.
SEPARABLE_CASES = [
    ((1, 64, 20, 20), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])),
    ((1, 32, 15, 15), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    ((2, 48, 9, 13), dict(kernel_shape=[3, 2], pads=[1, 0, 1, 1], strides=[1, 2])),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("x_shape,attrs", SEPARABLE_CASES)
def test_max_pool_by_rows_then_columns(config, x_shape, attrs):
    x = np.random.default_rng(2).standard_normal(x_shape).astype(np.float32)
    check("MaxPool", {"x": x}, attrs, config, tolerance=0)
    graph = Graph()
    graph.add_value(Value("x", "f32", x_shape))
    graph.inputs = ["x"]
    graph.add_value(Value("y", "f32", reference("MaxPool", {"x": x}, attrs, set()).shape))
    graph.outputs = ["y"]
    graph.nodes = [Node("MaxPool", ["x"], ["y"], attrs, "pool")]
    assert generate(graph, load_config(config)).notes["pool"][0].startswith("max pool by rows, then columns")


def test_pool_of_one_whole_window_fills_the_vector_lanes():
    """ResNet-50's last AveragePool (7x7 over 7x7, 2048 channels) on edge runs as a reduction per
    channel: within twice its DRAM bound (it took 16 times that pooling column by column)."""
    from compiler.pipeline import compile
    from runtime.simulator import run

    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[7, 7])
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2048, 7, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2048, 1, 1])])
    program = compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), "edge")
    assert any("whole input" in note for notes in program.notes.values() for note in notes)
    stats = run(program).stats
    assert stats["cycles"] <= 2 * stats["roofline_cycles"]
