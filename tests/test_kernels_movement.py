"""Data-movement kernels (compiler/codegen/kernels/movement.py) against numpy and onnx's reference.

Each op is built as a one-node IR graph, compiled for `tiny` (where the scratchpad forces
chunking) and `edge`, and simulated with the hazard check on; data movement must be
exact and hazard-free.
"""

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from compiler.codegen import generate
from compiler.errors import UnsupportedOpError
from compiler.ir import Graph, Node, Value, dtype_name
from isa.config import load_config
from runtime.simulator import run

CONFIGS = ["tiny", "edge"]
rng = np.random.default_rng(0)


def sample(shape, dtype=np.float32) -> np.ndarray:
    if np.dtype(dtype) == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -(2**40)), min(info.max, 2**40), size=shape, endpoint=True).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def simulate(op: str, inputs: dict, attrs: dict, outputs: dict, config: str, consts: dict | None = None) -> dict:
    """Compile and run one node; `outputs` maps each output name to (shape, numpy dtype)."""
    graph = Graph()
    for name, value in inputs.items():
        graph.add_value(Value(name, dtype_name(value.dtype), value.shape))
        graph.inputs.append(name)
    for name, value in (consts or {}).items():
        graph.const(name, value)
    for name, (shape, dtype) in outputs.items():
        graph.add_value(Value(name, dtype_name(dtype), tuple(shape)))
        graph.outputs.append(name)
    graph.nodes = [Node(op, [*inputs, *(consts or {})], list(outputs), attrs, "node")]
    result = run(generate(graph, load_config(config)), inputs, check_hazards=True)
    assert not result.hazards
    assert result.stats["cycles"] >= result.stats["roofline_cycles"]
    return result.outputs


def check_one(op: str, x: np.ndarray, attrs: dict, expected: np.ndarray, config: str) -> None:
    actual = simulate(op, {"x": x}, attrs, {"y": (expected.shape, expected.dtype)}, config)["y"]
    assert actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual, expected)


# Transpose, DepthToSpace, SpaceToDepth -------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("shape,perm,dtype", [
    ((2, 3, 4), (2, 0, 1), np.float32),
    ((1, 12, 16, 8), (0, 2, 1, 3), np.float32),
    ((1, 4, 6, 5), (0, 2, 3, 1), np.int8),
    ((70, 90), (1, 0), np.float32),  # several chunks on tiny
    ((3, 5, 2), (1, 2, 0), np.int64),
    ((4, 7), (1, 0), np.bool_),
    ((2, 3, 8), (2, 1, 0), ml_dtypes.bfloat16),
    ((5,), (0,), np.uint8),
    ((20, 300), (1, 0), np.float32),  # source rows longer than a vmov column stride reaches
    ((3, 40, 260), (0, 2, 1), np.int8),
    ((2, 16, 9, 7), (0, 2, 3, 1), np.int32),  # NCHW -> NHWC
])
def test_transpose(config, shape, perm, dtype):
    x = sample(shape, dtype)
    check_one("Transpose", x, {"perm": list(perm)}, np.transpose(x, perm), config)


def depth_to_space(x: np.ndarray, b: int, mode: str) -> np.ndarray:
    n, c, h, w = x.shape
    if mode == "DCR":
        t = x.reshape(n, b, b, c // b**2, h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        t = x.reshape(n, c // b**2, b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return t.reshape(n, c // b**2, h * b, w * b)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("shape,block,mode", [((1, 8, 3, 5), 2, "DCR"), ((2, 18, 2, 3), 3, "CRD"),
                                              ((1, 32, 6, 6), 2, "CRD")])
def test_depth_to_space(config, shape, block, mode):
    x = sample(shape)
    check_one("DepthToSpace", x, {"blocksize": block, "mode": mode}, depth_to_space(x, block, mode), config)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("shape,block,mode", [((1, 2, 4, 6), 2, "DCR"), ((2, 3, 6, 9), 3, "DCR"),
                                              ((1, 2, 4, 6), 2, "CRD")])
def test_space_to_depth(config, shape, block, mode):
    x = sample(shape)
    n, c, h, w = shape
    blocks = x.reshape(n, c, h // block, block, w // block, block)
    expected = blocks.transpose((0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4))
    check_one("SpaceToDepth", x, {"blocksize": block, "mode": mode},
              expected.reshape(n, c * block**2, h // block, w // block), config)


# Concat, Split ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("shapes,axis,dtype", [
    ([(2, 3, 4), (2, 1, 4), (2, 5, 4)], 1, np.float32),
    ([(3, 2), (4, 2)], 0, np.int64),
    ([(1, 64, 20, 3), (1, 40, 20, 3)], 1, np.float32),
    ([(2, 3), (2, 0), (2, 1)], 1, np.bool_),
])
def test_concat(config, shapes, axis, dtype):
    inputs = {f"x{i}": sample(shape, dtype) for i, shape in enumerate(shapes)}
    expected = np.concatenate(list(inputs.values()), axis=axis)
    actual = simulate("Concat", inputs, {"axis": axis}, {"y": (expected.shape, expected.dtype)}, config)["y"]
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("shape,axis,split,dtype", [
    ((2, 6, 3), 1, [2, 3, 1], np.float32),
    ((9, 4), 0, [3, 3, 3], np.int32),
    ((1, 30, 100), 2, [64, 36], np.float32),
])
def test_split(config, shape, axis, split, dtype):
    x = sample(shape, dtype)
    expected = np.split(x, np.cumsum(split)[:-1], axis=axis)
    outputs = {f"y{i}": (part.shape, part.dtype) for i, part in enumerate(expected)}
    actual = simulate("Split", {"x": x}, {"axis": axis, "split": split}, outputs, config)
    for i, part in enumerate(expected):
        np.testing.assert_array_equal(actual[f"y{i}"], part)


def numpy_slice(x: np.ndarray, starts, ends, steps) -> np.ndarray:
    """x sliced as the IR's normalised Slice says (a negative step's end -1 means before index 0)."""
    return x[tuple(slice(s, None if e == -1 else e, t) for s, e, t in zip(starts, ends, steps, strict=True))]


# Slice -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("shape,starts,ends,steps,dtype", [
    ((4, 10), [1, 2], [3, 9], [1, 2], np.float32),
    ((20, 10, 5), [19, 9, 4], [-1, -1, 0], [-1, -3, -2], np.float32),  # onnx's slice_neg_steps
    ((3, 40), [0, 39], [3, -1], [1, -1], np.int64),  # reversed innermost axis
    ((50, 8), [49, 0], [-1, 8], [-1, 1], np.int8),  # reversed outer axis, contiguous rows
    ((2, 3, 4), [0, 0, 0], [2, 3, 4], [1, 1, 1], np.bool_),
    ((6, 5), [2, 1], [2, 4], [1, 1], np.float32),  # empty
])
def test_slice(config, shape, starts, ends, steps, dtype):
    x = sample(shape, dtype)
    expected = numpy_slice(x, starts, ends, steps)
    attrs = {"starts": starts, "ends": ends, "axes": list(range(len(shape))), "steps": steps}
    check_one("Slice", x, attrs, expected, config)


@pytest.mark.parametrize("config", CONFIGS)
def test_slice_transpose_fuzz(config):
    """Seeded random slices (any steps) and permutations of random shapes and types."""
    fuzz = np.random.default_rng(7)
    for _ in range(6):
        rank = int(fuzz.integers(1, 5))
        shape = tuple(int(n) for n in fuzz.integers(1, 9, size=rank))
        dtype = [np.float32, np.int8, np.int64, ml_dtypes.bfloat16, np.bool_][int(fuzz.integers(5))]
        x = sample(shape, dtype)
        starts, ends, steps = [], [], []
        for n in shape:
            step = int(fuzz.choice([-3, -2, -1, 1, 2, 3]))
            if step > 0:
                start, end = sorted(int(v) for v in fuzz.integers(0, n + 1, size=2))
            else:
                start, end = int(fuzz.integers(0, n)), int(fuzz.integers(-1, n))
            starts.append(start), ends.append(end), steps.append(step)
        expected = numpy_slice(x, starts, ends, steps)
        attrs = {"starts": starts, "ends": ends, "axes": list(range(rank)), "steps": steps}
        check_one("Slice", x, attrs, expected, config)
        perm = [int(p) for p in fuzz.permutation(rank)]
        check_one("Transpose", x, {"perm": perm}, np.transpose(x, perm), config)


def test_innermost_transpose_and_broadcast_run_near_the_dram_roofline():
    """On edge these go through the vector unit; by DMA alone each element would be a DRAM burst."""
    cases = [("Transpose", sample((12, 128, 32)), {"perm": [0, 2, 1]}, (12, 32, 128)),
             ("Expand", sample((128, 1)), {"shape": [128, 384]}, (128, 384))]
    for op, x, attrs, shape in cases:
        graph = Graph(values={"x": Value("x", "f32", x.shape), "y": Value("y", "f32", shape)},
                      nodes=[Node(op, ["x"], ["y"], attrs, "node")], inputs=["x"], outputs=["y"])
        stats = run(generate(graph, load_config("edge")), {"x": x}).stats
        assert stats["cycles"] < 1.5 * stats["roofline_cycles"]


# Pad -------------------------------------------------------------------------------------------------
def onnx_pad(x: np.ndarray, pads: list[int], mode: str, value: float) -> np.ndarray:
    """numpy's pad, after cropping by the negative pads first (as onnxruntime does)."""
    rank = x.ndim
    cropped = x[tuple(slice(max(-pads[i], 0), x.shape[i] - max(-pads[rank + i], 0)) for i in range(rank))]
    widths = [(max(pads[i], 0), max(pads[rank + i], 0)) for i in range(rank)]
    if mode == "constant":
        return np.pad(cropped, widths, mode=mode, constant_values=np.asarray(value).astype(x.dtype))
    return np.pad(cropped, widths, mode=mode)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("shape,pads,mode,value,dtype", [
    ((1, 3, 4, 5), [0, 0, 1, 1, 0, 0, 1, 1], "constant", 0.0, np.float32),
    ((2, 3), [1, 2, 3, 0], "constant", 1.5, np.float32),
    ((2, 3), [1, 2, 3, 0], "constant", 7, np.int64),
    ((1, 2, 5, 6), [0, 0, 2, 3, 0, 0, 1, 2], "reflect", 0.0, np.float32),
    ((3, 4), [2, 1, 1, 3], "edge", 0.0, np.int32),
    ((3, 4), [1, 5, 2, 6], "wrap", 0.0, np.float32),
    ((4, 6), [-1, 2, 1, -3], "constant", -2.0, np.float32),
    ((4, 6), [-1, 2, 1, -3], "reflect", 0.0, np.uint8),
    ((3, 5), [0, -1, 0, 3], "wrap", 0.0, np.float32),
    ((1, 16, 30, 30), [0, 0, 1, 1, 0, 0, 1, 1], "constant", 0.0, np.float32),  # chunks on tiny
])
def test_pad(config, shape, pads, mode, value, dtype):
    x = sample(shape, dtype)
    expected = onnx_pad(x, pads, mode, value)
    check_one("Pad", x, {"pads": pads, "mode": mode, "value": float(value)}, expected, config)


# Expand, Tile ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("shape,target,dtype", [
    ((3, 1), (2, 3, 4), np.float32),
    ((), (5, 3), np.int32),
    ((1, 1, 1, 128), (1, 1, 128, 128), np.bool_),
    ((4, 1, 6), (4, 5, 6), np.int64),
    ((1, 128, 1), (1, 128, 384), np.float32),  # innermost broadcast
    ((7, 1), (3, 7, 300), np.uint8),
])
def test_expand(config, shape, target, dtype):
    x = sample(shape, dtype)
    check_one("Expand", x, {"shape": list(target)}, np.broadcast_to(x, target).copy(), config)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("shape,repeats,dtype", [((2, 3), (2, 3), np.float32), ((3, 1, 4), (1, 5, 2), np.int64),
                                                 ((4,), (0,), np.float32)])
def test_tile(config, shape, repeats, dtype):
    x = sample(shape, dtype)
    check_one("Tile", x, {"repeats": list(repeats)}, np.tile(x, repeats), config)


# Gather ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("shape,axis,indices,constant,dtype", [
    ((10, 4), 0, np.array([[0, 9, -1], [3, 3, -10]], np.int64), False, np.float32),
    ((10, 4), 0, np.array([[0, 9, -1], [3, 3, -10]], np.int64), True, np.float32),
    ((3, 7, 2), 1, np.array([6, -7, 2, 0], np.int32), False, np.int64),
    ((3, 7, 2), 2, np.array(-1, np.int64), True, np.int8),
    ((1000, 64), 0, rng.integers(-1000, 1000, size=(1, 50)).astype(np.int64), False, np.float32),
    ((2, 5), 1, np.array([4, 0, -5, 1], np.int32), True, np.bool_),
    ((4, 3000), 0, np.array([3, 0, -2], np.int64), False, np.float32),  # rows wider than a buffer on tiny
    ((50, 3), 0, rng.integers(-50, 50, size=300).astype(np.int32), False, np.int64),  # several index chunks
    ((2, 3, 5, 6), 3, np.array([[5, 0], [-1, 2]], np.int64), False, np.uint8),  # many outer indices per gather
])
def test_gather(config, shape, axis, indices, constant, dtype):
    data = sample(shape, dtype)
    expected = np.take(data, indices, axis=axis)
    inputs, consts = ({"data": data}, {"indices": indices}) if constant else ({"data": data, "indices": indices}, {})
    actual = simulate("Gather", inputs, {"axis": axis}, {"y": (expected.shape, expected.dtype)}, config, consts)["y"]
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("bad", [6, -7, 2**40])
@pytest.mark.parametrize("constant", [False, True])
def test_gather_out_of_range_index_is_the_simulators_error(bad, constant):
    """Also when several outer indices share one gather, where a wrong index could reach the next one's rows."""
    data, indices = sample((4, 6, 3)), np.array([1, bad], np.int64)
    inputs, consts = ({"data": data}, {"indices": indices}) if constant else ({"data": data, "indices": indices}, {})
    with pytest.raises(Exception, match="outside"):
        simulate("Gather", inputs, {"axis": 1}, {"y": ((4, 2, 3), np.float32)}, "tiny", consts)


# Resize ----------------------------------------------------------------------------------------------
def onnx_resize(x: np.ndarray, scales, sizes, attrs: dict) -> np.ndarray:
    inputs = ["x", "", "scales" if scales is not None else "", "sizes" if sizes is not None else ""]
    inits = [numpy_helper.from_array(np.array(scales, np.float32), "scales")] if scales is not None else []
    inits += [numpy_helper.from_array(np.array(sizes, np.int64), "sizes")] if sizes is not None else []
    node = helper.make_node("Resize", inputs, ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    return ReferenceEvaluator(model).run(None, {"x": x})[0]


def ir_resize_attrs(shape, scales, sizes, attrs: dict) -> dict:
    """The IR's normalised Resize: full-rank scales and sizes, as the importer writes them."""
    if sizes is not None:
        scales = [s / n for s, n in zip(sizes, shape, strict=True)]
    else:
        scales = [float(np.float32(s)) for s in scales]
        sizes = [int(np.floor(n * s)) for n, s in zip(shape, scales, strict=True)]
    return {**attrs, "scales": scales, "sizes": list(sizes)}


RESIZE_CASES = [
    ((1, 2, 4, 5), [1, 1, 2, 2], None, dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                                             nearest_mode="floor")),
    ((1, 2, 4, 5), [1, 1, 2, 3], None, dict(mode="nearest")),
    ((1, 1, 6, 7), None, [1, 1, 4, 10], dict(mode="nearest", nearest_mode="round_prefer_ceil")),
    ((1, 3, 8, 8), [1, 1, 0.5, 0.5], None, dict(mode="nearest")),
    ((2, 5, 9), None, [2, 5, 4], dict(mode="nearest", coordinate_transformation_mode="align_corners",
                                      nearest_mode="ceil")),
    ((1, 2, 4, 5), [1, 1, 2, 2], None, dict(mode="linear")),
    ((1, 2, 5, 4), None, [1, 2, 9, 7], dict(mode="linear", coordinate_transformation_mode="align_corners")),
    ((1, 3, 9, 8), [1, 1, 0.6, 0.7], None, dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel")),
    ((2, 7), [1, 1.7], None, dict(mode="linear", coordinate_transformation_mode="asymmetric")),
    ((1, 2, 6, 6), [1, 1, 1.5, 0.75], None, dict(mode="linear",
                                                 coordinate_transformation_mode="half_pixel_symmetric")),
    ((1, 4, 16, 40), [1, 1, 2, 2], None, dict(mode="linear")),  # several chunks on tiny
    ((1, 1, 3, 4), [1, 1, 1, 1], None, dict(mode="linear")),  # identity
    ((1, 1, 300, 4), [1, 1, 1.5, 1], None, dict(mode="linear")),  # more output rows than a chunk holds
    ((2, 1500), [1, 1.5], None, dict(mode="nearest")),
    ((1, 8, 30, 20), [1, 1, 1, 2.5], None, dict(mode="linear", coordinate_transformation_mode="align_corners")),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("shape,scales,sizes,attrs", RESIZE_CASES)
def test_resize(config, shape, scales, sizes, attrs):
    x = sample(shape)
    expected = onnx_resize(x, scales, sizes, attrs)
    actual = simulate("Resize", {"x": x}, ir_resize_attrs(shape, scales, sizes, attrs),
                      {"y": (expected.shape, np.float32)}, config)["y"]
    if attrs["mode"] == "nearest":
        np.testing.assert_array_equal(actual, expected)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.int64, ml_dtypes.bfloat16])
def test_resize_nearest_moves_any_dtype(dtype):
    x = sample((2, 3, 5), dtype)
    attrs = ir_resize_attrs(x.shape, [1, 1.5, 0.6], None, dict(mode="nearest"))
    expected = x[:, [0, 0, 1, 2], :][:, :, [0, 2, 4]]
    check_one("Resize", x, attrs, expected, "tiny")


@pytest.mark.parametrize("shape", [(1, 1, 3, 4), (1, 3, 20, 30)])
def test_resize_linear_bf16(shape):
    x = sample(shape).astype(ml_dtypes.bfloat16)
    attrs = ir_resize_attrs(x.shape, [1, 1, 2, 1.5], None, dict(mode="linear"))
    expected = onnx_resize(x.astype(np.float32), [1, 1, 2, 1.5], None, dict(mode="linear"))
    actual = simulate("Resize", {"x": x}, attrs, {"y": (expected.shape, ml_dtypes.bfloat16)}, "tiny")["y"]
    np.testing.assert_allclose(actual.astype(np.float32), expected, rtol=2e-2, atol=2e-2)


def test_resize_tf_half_pixel_for_nn_matches_onnxruntime():
    """An opset-11 coordinate transform that onnx's reference no longer implements."""
    x = sample((1, 2, 5, 7))
    node = helper.make_node("Resize", ["x", "roi", "scales"], ["y"], mode="nearest",
                            coordinate_transformation_mode="tf_half_pixel_for_nn")
    inits = [numpy_helper.from_array(np.array([], np.float32), "roi"),
             numpy_helper.from_array(np.array([1, 1, 1.6, 2.5], np.float32), "scales")]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    attrs = ir_resize_attrs(x.shape, [1, 1, 1.6, 2.5], None, dict(mode="nearest",
                                                                  coordinate_transformation_mode="tf_half_pixel_for_nn"))
    check_one("Resize", x, attrs, expected, "tiny")


@pytest.mark.parametrize("attrs,reason", [(dict(mode="cubic"), "mode 'cubic'"),
                                          (dict(mode="nearest", coordinate_transformation_mode="tf_crop_and_resize"),
                                           "tf_crop_and_resize")])
def test_resize_refuses(attrs, reason):
    x = sample((1, 1, 2, 2))
    with pytest.raises(UnsupportedOpError, match=reason):
        simulate("Resize", {"x": x}, ir_resize_attrs(x.shape, [1, 1, 2, 2], None, attrs),
                 {"y": ((1, 1, 4, 4), np.float32)}, "tiny")


def test_resize_linear_refuses_integers():
    x = sample((1, 1, 2, 2), np.uint8)
    with pytest.raises(UnsupportedOpError, match="linear resize of u8"):
        simulate("Resize", {"x": x}, ir_resize_attrs(x.shape, [1, 1, 2, 2], None, dict(mode="linear")),
                 {"y": ((1, 1, 4, 4), np.uint8)}, "tiny")
