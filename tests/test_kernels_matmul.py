"""MatMul and Gemm against onnxruntime, in both orientations, on tiny (tiling forced) and edge."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from compiler.pipeline import compile
from isa.dtypes import DType
from runtime.simulator import run

CASES = [  # (M, K, N, transB, bias, alpha, beta, op, batch)
    (1, 300, 100, 0, True, 1.0, 1.0, "Gemm", None),  # one row: the transposed orientation
    (2, 70, 45, 1, True, 0.5, 2.0, "Gemm", None),
    (5, 64, 200, 1, True, 1.0, 1.0, "Gemm", None),
    (40, 33, 17, 0, True, 1.0, 1.0, "Gemm", None),  # many rows: weights stationary
    (1, 100, 10, 0, False, 1.0, 1.0, "Gemm", None),
    (3, 50, 70, 0, False, 1.0, 1.0, "MatMul", (2,)),
    (64, 40, 24, 0, False, 1.0, 1.0, "MatMul", (2, 3)),
]


@pytest.mark.parametrize("config", ["tiny", "edge"])
@pytest.mark.parametrize("m,k,n,trans_b,bias,alpha,beta,op,batch", CASES)
def test_matmul_and_gemm(config, m, k, n, trans_b, bias, alpha, beta, op, batch):
    rng = np.random.default_rng(0)
    x_shape = (m, k) if batch is None else (*batch, m, k)
    x = rng.standard_normal(x_shape).astype(np.float32)
    weight = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    initializers = [helper.make_tensor("W", TensorProto.FLOAT, weight.shape, weight.ravel())]
    if op == "Gemm":
        inputs = ["x", "W"]
        if bias:
            b = rng.standard_normal(n).astype(np.float32)
            initializers.append(helper.make_tensor("b", TensorProto.FLOAT, b.shape, b.ravel()))
            inputs.append("b")
        node = helper.make_node("Gemm", inputs, ["y"], transB=trans_b, alpha=alpha, beta=beta)
    else:
        node = helper.make_node("MatMul", ["x", "W"], ["y"])
    out_shape = x_shape[:-1] + (n,)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    result = run(compile(model, config), {"x": x}, check_hazards=True)
    assert not result.hazards
    np.testing.assert_allclose(result.outputs["y"], expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("dtype", ["f32", "int8"])
def test_one_row_streams_each_weight_once(dtype):
    """A batch-1 fully connected layer keeps its one row on chip and streams the weights through the
    array: stored once (in column blocks), each byte read once in contiguous DMAs, each tile shifted
    in once, at the pace of the array's weight path."""
    from onnx import numpy_helper

    m, k, n = 1, 2048, 1000
    rng = np.random.default_rng(0)
    if dtype == "f32":
        weights = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
        node, inputs, elem = helper.make_node("MatMul", ["x", "w"], ["y"]), [weights], TensorProto.FLOAT
        out_elem = TensorProto.FLOAT
    else:
        weights = numpy_helper.from_array(rng.integers(-64, 63, (k, n), dtype=np.int8), "w")
        scalars = [numpy_helper.from_array(np.array(v, t), name) for name, v, t in
                   [("xs", 0.1, np.float32), ("xz", 3, np.uint8), ("ws", 0.01, np.float32), ("wz", 0, np.int8),
                    ("ys", 2.0, np.float32), ("yz", 5, np.uint8)]]
        node = helper.make_node("QLinearMatMul", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])
        inputs, elem, out_elem = [weights] + scalars, TensorProto.UINT8, TensorProto.UINT8
    graph = helper.make_graph([node], "fc", [helper.make_tensor_value_info("x", elem, [m, k])],
                              [helper.make_tensor_value_info("y", out_elem, [m, n])], inputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    program = compile(model, "edge")
    weight_bytes = k * n * (4 if dtype == "f32" else 1)
    (stored,) = [c for c in program.constants if c.name in ("w", "w.T", "w.blocks")]
    assert stored.name == "w.blocks" and len(stored.data) == weight_bytes  # one layout, not two
    reads = [i.fields for i in program.instructions if i.mnemonic == "dma_load"
             and stored.dram <= i.fields["dram"] < stored.dram + weight_bytes]
    assert sum(f["n0"] * f["n1"] * f["n2"] * f["esize"] for f in reads) == weight_bytes
    assert all(f["n1"] == f["n2"] == 1 for f in reads)  # contiguous runs
    tiles = -(-k // 32) * -(-n // 32)
    assert sum(i.mnemonic == "load_weights" for i in program.instructions) == tiles
    x = (rng.standard_normal((m, k)).astype(np.float32) if dtype == "f32"
         else rng.integers(0, 255, (m, k), dtype=np.uint8))
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    result = run(program, {"x": x}, check_hazards=True)
    got = result.outputs["y"]
    assert not result.hazards
    # Each tile shifts in 32 rows at the row rate of its dtype; the rest of the work hides under it.
    weight_path = tiles * 32 * program.config.row_cycles(DType.F32 if dtype == "f32" else DType.I8)
    assert weight_path <= result.stats["cycles"] <= 1.1 * weight_path + 1000, (result.stats["cycles"], weight_path)
    if dtype == "f32":
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
    else:
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


ATTENTION_CASES = [  # (config, tokens, heads, head_dim, rows of q)
    ("tiny", 16, 3, 2, 2),  # three heads side by side in one 8-wide tile
    ("tiny", 20, 2, 12, 3),  # K tiles of the array's 8 rows
    ("tiny", 40, 4, 16, 5),  # caches too large to load whole: tile by tile, K^T's tiles by rows of K
    ("edge", 40, 5, 12, 3),  # an odd head count: the last tile holds one head
    ("edge", 70, 3, 19, 17),
    ("server", 256, 12, 64, 1),  # GPT-2 small's decode step
]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("config,tokens,heads,head_dim,m", ATTENTION_CASES)
def test_attention_reads_its_caches_in_place(config, tokens, heads, head_dim, m, precision):
    """q @ K^T and p @ V over [tokens, heads, head_dim] caches, at -O2: the transposes fold into the MatMuls,
    which load each cache whole and shift the heads' tiles in with a row stride (K^T transposed on
    load), rounding to bf16 on chip in bf16."""
    import ml_dtypes

    rng = np.random.default_rng(0)
    q = rng.standard_normal((heads, m, head_dim)).astype(np.float32)
    k, v = (rng.standard_normal((tokens, heads, head_dim)).astype(np.float32) for _ in range(2))
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 2, 0]), helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Transpose", ["v"], ["vt"], perm=[1, 0, 2]), helper.make_node("MatMul", ["s", "vt"], ["y"])]
    values = {"q": q, "k": k, "v": v}
    graph = helper.make_graph(nodes, "attention",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, x.shape) for n, x in values.items()],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, (heads, m, head_dim)),
                               helper.make_tensor_value_info("s", TensorProto.FLOAT, (heads, m, tokens))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    program = compile(model, config, opt_level=2, precision=precision)
    assert not [node for node in program.notes if "Transpose" in node]
    result = run(program, values, check_hazards=True)
    assert not result.hazards

    def operand(x):
        x = np.asarray(x, np.float32)
        return (x.astype(ml_dtypes.bfloat16) if precision == "bf16" else x).astype(np.float64)

    k_t, v_t = k.transpose(1, 2, 0), v.transpose(1, 0, 2)
    scores = operand(q) @ operand(k_t)
    np.testing.assert_allclose(result.outputs["s"], scores, rtol=0,
                               atol=(head_dim + 1) * 2.0 ** -23 * (np.abs(operand(q)) @ np.abs(operand(k_t))).max())
    p = operand(result.outputs["s"])  # what p @ V multiplied
    np.testing.assert_allclose(result.outputs["y"], p @ operand(v_t), rtol=0,
                               atol=(tokens + 1) * 2.0 ** -23 * (np.abs(p) @ np.abs(operand(v_t))).max())
