"""Generation with the KV cache kept in the accelerator's DRAM (runtime/generate.py, compiler/state.py).

The test-size GPT-2 graphs (models/gpt2) are compiled with `state="auto"`: each present cache is
its past updated in place. Generation runs the prefill and then one decode per token on one
machine whose DRAM persists, and is checked against onnxruntime's loop (the same tokens, every
step's logits within 1e-4 relative). Then: the state layout both programs share, a hazard-free
decode step that writes only its own cache row, state declarations refused with one clean line,
model.bin keeping the state, and acc-run --generate's table.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from test_compile_cli import one_line_error

import compiler
from compiler.cli import main as compile_main
from compiler.errors import StateError
from isa import binfile
from isa.errors import BinaryFormatError, InputError
from models.cache import gpt2_onnx
from models.gpt2.reference import generate_onnxruntime, prompt_ids
from runtime.cli import main as run_main
from runtime.generate import generate
from runtime.machine import Machine
from runtime.simulator import run

STEPS = 32
RTOL = 1e-4  # max abs difference over max abs reference, per step's logits row


def compile_pair(config: str = "edge", state="auto"):
    return tuple(compiler.compile(gpt2_onnx("test", graph), config, opt_level=2, state=state)
                 for graph in ("prefill", "decode"))


@pytest.fixture(scope="module")
def programs():
    return compile_pair()


@pytest.fixture(scope="module")
def reference():
    return generate_onnxruntime("test", prompt_ids("test"), steps=STEPS)


def test_generation_matches_onnxruntime(programs, reference):
    prefill, decode = programs
    result = generate(prefill, decode, prompt_ids("test"), STEPS)
    np.testing.assert_array_equal(result.tokens, reference.tokens)
    error = np.abs(result.logits - reference.logits).max(axis=1) / np.abs(reference.logits).max(axis=1)
    assert error.max() <= RTOL, error
    assert result.cycles.shape == (STEPS + 1,) and (result.cycles > 0).all()
    # The bound reads at least the cache and the weights of the c_attn Gemms; the simulation never beats it.
    assert result.state_bytes == 4 * 64 * 4 * 32 * 4
    assert result.constant_bytes > result.weight_bytes > 2 * 128 * 384 * 4
    assert result.decode_cycles_per_token >= result.bound_cycles and result.bound_ratio >= 1
    assert result.tokens_per_second == pytest.approx(decode.config.clock_mhz * 1e6 / result.decode_cycles_per_token)


def test_state_is_placed_first_and_shared(programs):
    prefill, decode = programs
    names = ["past_key.0", "past_key.1", "past_value.0", "past_value.1"]
    for program in programs:
        assert [name for _, name in program.state] == names
        state = program.state_inputs()
        # Sorted by name, one after another from address 0; every other tensor lies above them.
        assert [t.dram for t in state] == [i * state[0].nbytes for i in range(4)]
        state_end = 4 * state[0].nbytes
        others = [t for t in program.inputs + program.outputs + program.debug_tensors
                  if t.name not in dict(program.state) and t.name not in names]
        assert min(t.dram for t in others) >= state_end
        dram = {t.name: t.dram for t in program.inputs + program.outputs}
        assert all(dram[output] == dram[input_name] for output, input_name in program.state)
        # Nothing but the ScatterND that updates the cache writes into it (the DRAM plan never reuses it).
        scatters = {entry.node for entry in program.debug if "ScatterND" in entry.node}
        for index, instruction in enumerate(program.instructions):
            if instruction.mnemonic in ("dma_store", "dma_scatter") and instruction.fields["dram"] < state_end:
                assert program.node_of(index) in scatters, (index, instruction)
    assert [(t.name, t.dram, t.shape) for t in prefill.state_inputs()] == \
        [(t.name, t.dram, t.shape) for t in decode.state_inputs()]


def test_decode_step_is_hazard_free_and_writes_one_row(programs):
    prefill, decode = programs
    machine = Machine(decode.config, max(p.dram_bytes for p in programs))
    prompt = prompt_ids("test")
    run(prefill, {"input_ids": prompt}, machine=machine)
    caches = {t.name: machine.dram[t.dram:t.dram + t.nbytes].view(np.float32).reshape(t.shape).copy()
              for t in decode.state_inputs()}
    # The prefill wrote every prompt row of every cache, and nothing after them.
    assert all(np.abs(cache[:16]).max(axis=(1, 2)).min() > 0 and not cache[16:].any() for cache in caches.values())
    result = run(decode, {"input_ids": np.array([[7]]), "position": np.array([16])}, machine=machine,
                 check_hazards=True)
    assert result.hazards == [] and result.stats["hazards"] == 0
    for output, input_name in decode.state:
        present = result.outputs[output]
        np.testing.assert_array_equal(present[:16], caches[input_name][:16])  # the prompt's rows stay
        assert np.abs(present[16]).max() > 0 and not present[17:].any()  # the new row, and nothing after it


def test_a_fresh_run_still_takes_every_input(programs):
    """Without a machine, run() is unchanged: the state inputs come from the host like any other."""
    _, decode = programs
    feeds = {t.name: np.ones(t.shape, t.dtype.numpy) for t in decode.inputs}
    feeds["position"] = np.array([3])
    outputs = run(decode, feeds).outputs
    assert (outputs["present_key.0"][:3] == 1).all() and (outputs["present_key.0"][4:] == 1).all()
    with pytest.raises(InputError, match="missing input 'past_key.0'"):
        run(decode, {"input_ids": feeds["input_ids"], "position": feeds["position"]})


def test_generate_refuses_programs_that_do_not_fit(programs):
    prefill, decode = programs
    with pytest.raises(InputError, match="49 decode steps after 16 prompt tokens: give 1 to 48"):
        generate(prefill, decode, prompt_ids("test"), 49)
    with pytest.raises(InputError, match="the prompt has 15 tokens; the prefill program takes 16"):
        generate(prefill, decode, prompt_ids("test", 15), 4)
    with pytest.raises(InputError, match="built for config 'edge', the decode for 'server'"):
        generate(prefill, compile_pair("server")[1], prompt_ids("test"), 4)
    stateless = compiler.compile(gpt2_onnx("test", "decode"), "edge", opt_level=2)
    with pytest.raises(InputError, match="no state"):
        generate(prefill, stateless, prompt_ids("test"), 4)
    with pytest.raises(InputError, match="different state"):
        generate(prefill, compile_pair(state={"present_key.0": "past_key.0"})[1], prompt_ids("test"), 4)


# State declarations the compiler refuses -------------------------------------------------------------
def cache_model(second_reader: bool = False, through_add: bool = False) -> onnx.ModelProto:
    """present = ScatterND(past, row, update) on an [8, 4] cache; optionally also out = past + 1 (a second
    reader of the past), or the present made by an Add instead."""
    nodes = [helper.make_node("Add", ["past", "one"], ["present"]) if through_add
             else helper.make_node("ScatterND", ["past", "row", "update"], ["present"], name="scatter")]
    outputs = [helper.make_tensor_value_info("present", TensorProto.FLOAT, [8, 4])]
    if second_reader:
        nodes.append(helper.make_node("Mul", ["past", "one"], ["twice"], name="reader"))
        outputs.append(helper.make_tensor_value_info("twice", TensorProto.FLOAT, [8, 4]))
    graph = helper.make_graph(
        nodes, "cache",
        [helper.make_tensor_value_info("past", TensorProto.FLOAT, [8, 4]),
         helper.make_tensor_value_info("short_past", TensorProto.FLOAT, [7, 4]),
         helper.make_tensor_value_info("row", TensorProto.INT64, [1, 1]),
         helper.make_tensor_value_info("update", TensorProto.FLOAT, [1, 4])],
        outputs, [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 9
    return proto


@pytest.mark.parametrize("model_kind, state, message", [
    ("plain", ["presnt=past"], "state presnt=past: 'presnt' is not an output of the model (present)"),
    ("plain", ["present=pasts"], "'pasts' is not an input of the model"),
    ("plain", ["present=short_past"], "the output is f32[8, 4], the input f32[7, 4]"),
    ("plain", ["present"], "--state expects OUT=IN"),
    ("plain", ["auto", "present=past"], "do not combine it with --state OUT=IN"),
    ("reader", ["present=past"], "'past' is also read by node 'reader' (Mul)"),
    ("add", ["present=past"], "'present' is made by Add"),
    ("renamed", ["auto"], "--state auto: no output whose name"),
])
def test_bad_state_declarations_are_one_line(tmp_path, capsys, model_kind, state, message):
    path = tmp_path / "cache.onnx"
    proto = cache_model(second_reader=model_kind == "reader", through_add=model_kind == "add")
    if model_kind == "renamed":  # no output named like an input with "present" for "past"
        proto.graph.output[0].name = proto.graph.node[0].output[0] = "next"
    onnx.save(proto, path)
    target = tmp_path / "cache.bin"
    line = one_line_error(capsys, compile_main([str(path), "-o", str(target), *(f"--state={s}" for s in state)]))
    assert message in line and not target.exists()


def test_state_in_place_on_a_small_cache():
    program = compiler.compile(cache_model(), "tiny", state="auto")
    assert program.state == [("present", "past")]
    with pytest.raises(StateError, match="also read by node 'reader'"):
        compiler.compile(cache_model(second_reader=True), "tiny", state={"present": "past"})
    machine = Machine(program.config, program.dram_bytes)
    for row in (2, 5):
        update = np.full((1, 4), row, np.float32)
        result = run(program, {"short_past": np.zeros((7, 4), np.float32), "row": np.array([[row]]),
                               "update": update}, machine=machine, check_hazards=True)
        assert not result.hazards
    expected = np.zeros((8, 4), np.float32)
    expected[2], expected[5] = 2, 5
    np.testing.assert_array_equal(result.outputs["present"], expected)  # both updates stayed in DRAM


# model.bin -------------------------------------------------------------------------------------------
def test_model_bin_keeps_state(programs):
    _, decode = programs
    data = binfile.to_bytes(decode)
    loaded = binfile.from_bytes(data)
    assert loaded.state == decode.state and binfile.to_bytes(loaded) == data
    stateless = compiler.compile(cache_model(), "tiny")
    assert stateless.state == [] and b'"state"' not in binfile.to_bytes(stateless)  # as before state existed
    assert binfile.from_bytes(binfile.to_bytes(stateless)).state == []
    # A state pair whose output is not at its input's DRAM (checksum made valid again) is refused.
    body = data[:-32].replace(b'["present_key.0","past_key.0"]', b'["present_key.0","past_key.1"]')
    assert len(body) == len(data) - 32 and body != data[:-32]
    moved = body + hashlib.sha256(body).digest()
    with pytest.raises(BinaryFormatError, match="not the input's DRAM"):
        binfile.from_bytes(moved)


# acc-compile --state and acc-run --generate ---------------------------------------------------------
def test_cli_generation_prints_tokens_and_table(tmp_path, capsys, reference):
    binaries = {}
    for graph in ("prefill", "decode"):
        binaries[graph] = tmp_path / f"{graph}.bin"
        assert compile_main([str(gpt2_onnx("test", graph)), "-o", str(binaries[graph]), "-O2", "--state", "auto"]) == 0
    assert "state (updated in place): 4 pair(s), 131,072 B from DRAM 0x0" in capsys.readouterr().err
    stats = tmp_path / "generation.json"
    assert run_main([str(binaries["decode"]), "--generate", "4", "--prefill", str(binaries["prefill"]),
                     "--stats", str(stats)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[1:] == [str(t) for t in prompt_ids("test")[0]]
    assert out[1].split()[1:] == [str(t) for t in reference.tokens[:5]]
    assert [line.split()[0] for line in out[2:]] == ["prefill", "decode", "tokens/s", "bound", "ratio"]
    figures = json.loads(stats.read_text())
    assert figures["decode_steps"] == 4 and figures["bound_ratio"] > 1

    assert run_main([str(binaries["decode"])]) == 0  # one run with random inputs lists the state
    assert "state (outputs updated in place): present_key.0=past_key.0" in capsys.readouterr().out
    with pytest.raises(SystemExit) as usage:  # a usage error: argparse's one line
        run_main([str(binaries["decode"]), "--generate", "4"])
    assert usage.value.code == 2 and "--generate needs --prefill" in capsys.readouterr().err
    for arguments, message in [
        (["--generate", "60", "--prefill", str(binaries["prefill"])], "60 decode steps after 16 prompt tokens"),
        (["--generate", "4", "--prefill", str(binaries["decode"])], "the prefill program's inputs besides"),
    ]:
        line = one_line_error(capsys, run_main([str(binaries["decode"]), *arguments]))
        assert message in line, line
