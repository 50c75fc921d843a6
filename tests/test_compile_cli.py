"""acc-compile's contract: bad input is one clean line and no model.bin; 200 mutated models."""

import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from compiler.cli import main as compile_main
from isa import binfile
from runtime.simulator import run

MLP = Path(__file__).parent.parent / "models" / "digits" / "digits_mlp.onnx"


def one_line_error(capsys, code):
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_compile_and_list(tmp_path, capsys):
    target = tmp_path / "mlp.bin"
    assert compile_main([str(MLP), "-o", str(target), "--input-shape", "pixels=2,64"]) == 0
    program = binfile.load(target)
    assert program.inputs[0].shape == (2, 64)
    assert compile_main(["--list-ops"]) == 0
    listed = capsys.readouterr().out
    assert "Conv" in listed and "MatMul" in listed
    assert compile_main([str(MLP), "--check"]) == 0


def test_dump_after(tmp_path, capsys):
    assert compile_main([str(MLP), "--dump-after", "import", "--input-shape", "pixels=1,64"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("graph ") and "Gemm" in text


def test_disable_pass(tmp_path, capsys):
    """The MLP's Gemm + Relu fuse at -O2 unless fuse_epilogue is disabled; an unknown name is one line."""
    shapes = ["--input-shape", "pixels=1,64", "-O", "2"]
    assert compile_main([str(MLP), *shapes, "--dump-after", "fuse_epilogue"]) == 0
    assert "FusedGemm" in capsys.readouterr().out
    assert compile_main([str(MLP), *shapes, "--dump-after", "fuse_epilogue", "--disable-pass", "fuse_epilogue"]) == 0
    assert "FusedGemm" not in capsys.readouterr().out
    line = one_line_error(capsys, compile_main([str(MLP), *shapes, "-o", str(tmp_path / "m.bin"),
                                                "--disable-pass", "fuse_everything"]))
    assert "unknown pass 'fuse_everything'" in line and not (tmp_path / "m.bin").exists()


def test_fast_math_is_asked_for(tmp_path, capsys):
    """A division by a constant stays a Div unless --fast-math is given; --list-passes marks the pass."""
    nodes = [helper.make_node("Div", ["x", "c"], ["y"])]
    graph = helper.make_graph(nodes, "div", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
                              [helper.make_tensor("c", TensorProto.FLOAT, [], [3.0])])
    source = tmp_path / "div.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    dump = [str(source), "-O", "2", "--dump-after", "reciprocal_of_constant_divisor"]
    assert compile_main(dump) == 0
    assert "= Div(" in capsys.readouterr().out
    assert compile_main(dump + ["--fast-math"]) == 0
    assert "= Mul(%x, %c.reciprocal)" in capsys.readouterr().out
    assert compile_main(["--list-passes"]) == 0
    assert "reciprocal_of_constant_divisor (--fast-math)" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("content,message", [
    (b"this is not an onnx model", "not"),
    (MLP.read_bytes()[:300], ""),
])
def test_bad_model_files(tmp_path, capsys, content, message):
    source = tmp_path / "bad.onnx"
    source.write_bytes(content)
    line = one_line_error(capsys, compile_main([str(source), "-o", str(tmp_path / "out.bin")]))
    assert message in line
    assert not (tmp_path / "out.bin").exists()


def test_unsupported_op_names_op_node_and_opset(tmp_path, capsys):
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["selected"], name="nms_1")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 4, 4]),
                                            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 4])],
                              [helper.make_tensor_value_info("selected", TensorProto.INT64, ["n", 3])])
    path = tmp_path / "nms.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    line = one_line_error(capsys, compile_main([str(path), "-o", str(tmp_path / "out.bin")]))
    assert "NonMaxSuppression" in line and "nms_1" in line and "17" in line
    assert compile_main([str(path), "--check"]) == 1
    assert "NonMaxSuppression" in capsys.readouterr().out


def test_check_reports_data_types_the_kernels_refuse(tmp_path, capsys):
    """An op with a kernel is still unsupported on a type its kernel refuses: --check says so, as
    compiling would."""
    x = helper.make_tensor_value_info("x", TensorProto.INT64, [4])
    nodes = [helper.make_node("Add", ["x", "x"], ["sum"], name="add_i64"),
             helper.make_node("Less", ["x", "x"], ["less"], name="less_i64")]  # narrowed to int32: supported
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("sum", TensorProto.INT64, [4]),
                                                helper.make_tensor_value_info("less", TensorProto.BOOL, [4])])
    path = tmp_path / "i64.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert compile_main([str(path), "--check"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "unsupported op 'Add' (node 'add_i64'): the vector unit does not compute on i64"]
    line = one_line_error(capsys, compile_main([str(path), "-o", str(tmp_path / "out.bin")]))
    assert "does not compute on i64" in line


@pytest.mark.parametrize("binding,message", [
    ("nothere=1,64", "nothere"),
    ("pixels=1,2,3", "pixels"),
    ("pixels=1,63", "pixels"),
    ("pixels", "NAME=D0"),
])
def test_bad_input_shape(tmp_path, capsys, binding, message):
    line = one_line_error(capsys, compile_main([str(MLP), "-o", str(tmp_path / "o.bin"), "--input-shape", binding]))
    assert message in line
    assert not (tmp_path / "o.bin").exists()


def test_missing_output_directory(tmp_path, capsys):
    line = one_line_error(capsys, compile_main([str(MLP), "-o", str(tmp_path / "no" / "o.bin")]))
    assert "does not exist" in line


# Mutations -------------------------------------------------------------------------------------
def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    if rng.random() < 0.3:
        return bytes(out[:rng.randrange(len(out))])
    for _ in range(rng.randint(1, 6)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def _mutate_proto(model: onnx.ModelProto, rng: random.Random) -> bytes:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    choice = rng.randrange(5)
    if choice == 0 and graph.node:  # corrupt an attribute
        node = rng.choice(list(graph.node))
        if node.attribute:
            attribute = rng.choice(list(node.attribute))
            attribute.i = rng.choice([-5, 0, 1, 2, 10**6])
            attribute.f = rng.choice([-1.0, 0.0, float("nan"), 1e30])
            attribute.type = rng.choice([attribute.type, onnx.AttributeProto.INTS, onnx.AttributeProto.STRING])
        else:
            node.attribute.append(helper.make_attribute(rng.choice(["alpha", "axis", "transB"]), rng.randint(-3, 3)))
    elif choice == 1:  # corrupt an input shape
        dims = graph.input[0].type.tensor_type.shape.dim
        if dims:
            dim = rng.choice(list(dims))
            dim.dim_value = rng.choice([0, 1, 3, 63, 65, 1000])
    elif choice == 2 and graph.initializer:  # corrupt an initializer's shape
        tensor = rng.choice(list(graph.initializer))
        if tensor.dims:
            tensor.dims[rng.randrange(len(tensor.dims))] = rng.choice([0, 1, 7, 129])
    elif choice == 3 and graph.node:  # rewire or rename
        node = rng.choice(list(graph.node))
        if node.input:
            node.input[rng.randrange(len(node.input))] = rng.choice(["", "missing", graph.input[0].name])
        if rng.random() < 0.5:
            node.op_type = rng.choice(["Relu", "Gemm", "Foo", "MatMul", "Softmax", "Add"])
    else:  # change the opset
        model.opset_import[0].version = rng.choice([1, 6, 9, 13, 17, 21, 99])
    return model.SerializeToString()


def _reference(data: bytes, x: np.ndarray):
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})
    except Exception:
        return None


@pytest.mark.slow
def test_200_mutated_models_compile_correctly_or_fail_cleanly(tmp_path, capsys):
    original = MLP.read_bytes()
    model = onnx.load(str(MLP))
    x = np.random.default_rng(0).random((1, 64)).astype(np.float32)
    compiled = refused = 0
    for seed in range(200):
        rng = random.Random(seed)
        data = _mutate_bytes(original, rng) if seed % 2 else _mutate_proto(model, rng)
        source, target = tmp_path / f"m{seed}.onnx", tmp_path / f"m{seed}.bin"
        source.write_bytes(data)
        code = compile_main([str(source), "-o", str(target), "--input-shape", "pixels=1,64"])
        captured = capsys.readouterr()
        if code != 0:
            assert code == 2, f"seed {seed}: exit {code}: {captured.err}"
            assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err, seed
            assert not target.exists(), f"seed {seed}: a model.bin was left behind"
            refused += 1
            continue
        compiled += 1
        program = binfile.load(target)
        expected = _reference(data, x)
        if expected is not None and program.inputs[0].shape == x.shape:
            outputs = run(program, {program.inputs[0].name: x}).outputs
            for (name, actual), reference in zip(outputs.items(), expected, strict=True):
                np.testing.assert_allclose(actual, reference, rtol=1e-4, atol=1e-4,
                                           err_msg=f"seed {seed}: output {name}")
    print(f"{compiled} compiled, {refused} refused cleanly")
    assert compiled + refused == 200
