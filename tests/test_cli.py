"""The command-line contract: acc-as, acc-objdump, acc-run outputs and their one-line errors."""

import json
import shutil
import struct
import subprocess

import numpy as np
import pytest

from isa.cli import assemble_main, objdump_main
from runtime.cli import main as run_main

GEMM = """
; C = A @ B on one 8x8 tile
.input A dram=0x0 shape=(8, 8) dtype=i8
.input B dram=0x40 shape=(8, 8) dtype=i8
.output C dram=0x100 shape=(8, 8) dtype=i32
.node "matmul_0"
dma_load dram=0x0 local=0x0 n0=64 signal=1
dma_load dram=0x40 local=0x40 n0=64 signal=2
load_weights dtype=i8 addr=0x40 k=8 n=8 stride=8 wait=2
matmul dtype=i8 a=0x0 a_rs=8 m=8 c=ACC_BASE c_rs=8 wait=1 signal=3
dma_store dram=0x100 local=ACC_BASE esize=4 n0=64 wait=3
end
"""


@pytest.fixture
def gemm_bin(tmp_path):
    source = tmp_path / "gemm.s"
    source.write_text(GEMM)
    target = tmp_path / "gemm.bin"
    assert assemble_main([str(source), "-o", str(target), "--config", "tiny"]) == 0
    return target


def inputs():
    rng = np.random.default_rng(3)
    return {name: rng.integers(-128, 128, size=(8, 8)).astype(np.int8) for name in "AB"}


def one_line_error(capsys, code, expected_code=2):
    captured = capsys.readouterr()
    assert code == expected_code
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_run_writes_outputs_stats_and_trace(gemm_bin, tmp_path, capsys):
    data = inputs()
    np.savez(tmp_path / "in.npz", **data)
    out, stats, trace = tmp_path / "out.npz", tmp_path / "stats.json", tmp_path / "trace.json"
    code = run_main([str(gemm_bin), "--input", str(tmp_path / "in.npz"), "--output", str(out), "--stats",
                     str(stats), "--trace", str(trace), "--check-hazards"])
    assert code == 0, capsys.readouterr().err
    with np.load(out) as result:
        np.testing.assert_array_equal(result["C"], data["A"].astype(np.int32) @ data["B"].astype(np.int32))
    report = json.loads(stats.read_text())
    for key in ("cycles", "roofline_cycles", "macs", "dram_bytes_read", "dram_bytes_written", "engines", "config"):
        assert key in report
    assert report["config"] == "tiny" and report["macs"] == 512
    assert set(report["engines"]) == {"load", "matrix", "vector", "store"}
    assert report["cycles"] >= report["roofline_cycles"]
    events = json.loads(trace.read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert len(spans) == 5 and {e["tid"] for e in spans} == {1, 2, 4}
    assert all(e["args"]["node"] == "matmul_0" for e in spans)
    names = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert names == {"load", "matrix", "vector", "store"}


def test_lone_npy_for_single_input_program_is_refused_for_two_inputs(gemm_bin, tmp_path, capsys):
    np.save(tmp_path / "a.npy", inputs()["A"])
    line = one_line_error(capsys, run_main([str(gemm_bin), "--input", str(tmp_path / "a.npy")]))
    assert "single-input" in line


@pytest.mark.parametrize("change,message", [
    (lambda d: d.pop("B"), "missing input 'B'"),
    (lambda d: d.update(X=d["A"]), "unknown input 'X'"),
    (lambda d: d.update(A=d["A"][:4]), "shape (4, 8), expected (8, 8)"),
    (lambda d: d.update(A=d["A"].astype(np.float32)), "dtype float32, expected int8"),
])
def test_wrong_inputs_are_one_line_errors(gemm_bin, tmp_path, capsys, change, message):
    data = inputs()
    change(data)
    np.savez(tmp_path / "in.npz", **data)
    line = one_line_error(capsys, run_main([str(gemm_bin), "--input", str(tmp_path / "in.npz")]))
    assert message in line


def _rewrite(path, edit):
    data = bytearray(path.read_bytes())
    edit(data)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.__setitem__(slice(8, 12), struct.pack("<I", 99)), "unknown model.bin format version 99"),
    (lambda d: d.__delitem__(slice(len(d) - 100, len(d))), "checksum"),
    (lambda d: d.__setitem__(200, d[200] ^ 0xFF), "checksum"),
    (lambda d: d.__setitem__(slice(0, 8), b"NOTAMODL"), "bad magic"),
])
def test_corrupt_model_bin_is_a_one_line_error(gemm_bin, capsys, edit, message):
    _rewrite(gemm_bin, edit)
    line = one_line_error(capsys, run_main([str(gemm_bin)]))
    assert message in line


def test_missing_model_and_debug_traceback(tmp_path, capsys):
    line = one_line_error(capsys, run_main([str(tmp_path / "none.bin")]))
    assert "does not exist" in line
    with pytest.raises(Exception, match="does not exist"):
        run_main([str(tmp_path / "none.bin"), "--debug"])


def test_output_into_missing_directory_writes_nothing(gemm_bin, tmp_path, capsys):
    line = one_line_error(capsys, run_main([str(gemm_bin), "--output", str(tmp_path / "no" / "out.npz")]))
    assert "does not exist" in line
    assert not (tmp_path / "no").exists()


def test_assembler_errors_name_the_line(tmp_path, capsys):
    source = tmp_path / "bad.s"
    source.write_text("end\nvadd dtype=f32 dst=0x4000000 rows=1 cols=1\nend\n")
    line = one_line_error(capsys, assemble_main([str(source), "-o", str(tmp_path / "bad.bin")]))
    assert "bad.s:2" in line and "field 'dst'" in line and "26 bits" in line
    assert not (tmp_path / "bad.bin").exists()
    line = one_line_error(capsys, assemble_main([str(source), "-o", str(tmp_path / "x.bin"), "--config", "huge"]))
    assert "unknown config 'huge'" in line


def test_defines_override_equ(tmp_path, capsys):
    source = tmp_path / "fill.s"
    source.write_text(".equ N, 4\n.output Y dram=0 shape=(N,) dtype=f32\nvfill dtype=f32 dst=0 imm=2.0 rows=1 cols=N "
                      "signal=1\ndma_store dram=0 local=0 esize=4 n0=N wait=1\nend\n")
    target = tmp_path / "fill.bin"
    assert assemble_main([str(source), "-o", str(target), "-D", "N=6"]) == 0
    assert run_main([str(target), "--output", str(tmp_path / "y.npz")]) == 0
    with np.load(tmp_path / "y.npz") as result:
        np.testing.assert_array_equal(result["Y"], np.full(6, 2.0, np.float32))


def test_objdump_annotates_nodes(gemm_bin, capsys):
    assert objdump_main([str(gemm_bin)]) == 0
    text = capsys.readouterr().out
    assert "format version 1" in text and "array_rows = 8" in text
    assert "A                    i8" in text and "C                    i32" in text
    assert "matmul dtype=i8" in text and "; matmul_0" in text


def test_hazard_check_exit_code(tmp_path, capsys):
    source = tmp_path / "race.s"
    source.write_text(".input A dram=0 shape=(16,) dtype=f32\ndma_load dram=0 local=0 esize=4 n0=16\n"
                      "vaddi dtype=f32 dst=0x100 a=0 imm=1.0 rows=1 cols=16\nend\n")
    assert assemble_main([str(source), "-o", str(tmp_path / "race.bin")]) == 0
    code = run_main([str(tmp_path / "race.bin"), "--check-hazards"])
    captured = capsys.readouterr()
    assert code == 1
    assert "read after write hazard" in captured.err and "instruction 1 (vaddi" in captured.err
    assert "instruction 0 (dma_load" in captured.err


def test_console_scripts_are_installed(gemm_bin):
    for tool in ("acc-as", "acc-run", "acc-objdump", "acc-compile"):
        assert shutil.which(tool), f"{tool} is not on PATH: pip install -e ."
    done = subprocess.run(["acc-run", str(gemm_bin)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "cycles:" in done.stdout
    done = subprocess.run(["acc-compile", "model.onnx"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_if_and_error_directives(tmp_path, capsys):
    source = tmp_path / "check.s"
    source.write_text(".equ M, 48\n.if M % 32 != 0\n  .error \"M must be a multiple of 32\"\n.endif\nend\n")
    line = one_line_error(capsys, assemble_main([str(source), "-o", str(tmp_path / "c.bin")]))
    assert "check.s:3" in line and "M must be a multiple of 32" in line
    assert assemble_main([str(source), "-o", str(tmp_path / "c.bin"), "-D", "M=64"]) == 0


def test_random_inputs_for_index_inputs_stay_in_range():
    """Without --input, i64 inputs (token ids, indices) get 0 or 1, which index any axis."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compiler.pipeline import compile as compile_model
    from runtime.simulator import run

    table = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "table")
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["y"])], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 4])], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    result = run(compile_model(model, "tiny"), None)
    assert set(np.unique(result.outputs["y"][:, 0])) <= {0.0, 4.0}
