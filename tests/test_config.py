"""Tests of isa/config.py: the presets, derived sizes, JSON loading and refusal of impossible configs.

Every refusal must be a ConfigError whose message names the offending field, so that the
command-line tools can print it as one line the user can act on.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from isa.config import (
    DEFAULT_PRESET,
    LOCAL_ADDRESS_BITS,
    PRESETS,
    AcceleratorConfig,
    KiB,
    MiB,
    config_from_dict,
    load_config,
)
from isa.dtypes import DType
from isa.errors import AccError, ConfigError

# The preset table of README.md ("The accelerator"): MAC array, scratchpad, accumulator, DRAM bytes/cycle.
DOCUMENTED_PRESETS = {
    "tiny": dict(array_rows=8, array_cols=8, spad_bytes=16 * KiB, acc_bytes=4 * KiB, dram_bytes_per_cycle=8),
    "edge": dict(array_rows=32, array_cols=32, spad_bytes=512 * KiB, acc_bytes=128 * KiB, dram_bytes_per_cycle=64),
    "server": dict(array_rows=128, array_cols=128, spad_bytes=16 * MiB, acc_bytes=4 * MiB,
                   dram_bytes_per_cycle=512),
}


# Presets ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(DOCUMENTED_PRESETS))
def test_preset_has_documented_values(name):
    config = PRESETS[name]
    assert config.name == name
    for field, value in DOCUMENTED_PRESETS[name].items():
        assert getattr(config, field) == value, f"{name}.{field}"


def test_presets_are_exactly_the_documented_ones():
    assert set(PRESETS) == set(DOCUMENTED_PRESETS)
    assert DEFAULT_PRESET == "edge"
    assert load_config() is PRESETS["edge"]


def test_edge_is_a_32x32_array_with_64_bytes_per_cycle():
    edge = load_config("edge")
    assert (edge.array_rows, edge.array_cols, edge.dram_bytes_per_cycle) == (32, 32, 64)


def test_tiny_forces_tiling_of_small_models():
    """tiny exists so that tests tile: a 64x64 matmul exceeds its array and its scratchpad."""
    tiny = PRESETS["tiny"]
    assert tiny.array_rows < 64 and tiny.array_cols < 64
    assert 64 * 64 * 4 > tiny.acc_bytes  # the int32 result alone overflows the accumulator
    assert tiny.array_rows * tiny.array_cols < PRESETS["edge"].array_rows * PRESETS["edge"].array_cols


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_fit_the_instruction_fields(name):
    config = PRESETS[name]
    assert config.local_bytes <= 1 << LOCAL_ADDRESS_BITS
    assert config.dram_bytes <= 1 << 32


# Derived properties -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_derived_sizes(name):
    config = PRESETS[name]
    assert config.acc_base == config.spad_bytes
    assert config.local_bytes == config.spad_bytes + config.acc_bytes
    assert config.row_cycles(DType.I8) == config.int8_row_cycles
    assert config.row_cycles(DType.U8) == config.int8_row_cycles
    assert config.row_cycles(DType.BF16) == config.bf16_row_cycles
    assert config.row_cycles(DType.F32) == config.fp32_row_cycles
    for dtype in (DType.I8, DType.BF16, DType.F32):
        assert config.peak_macs_per_cycle(dtype) == config.array_rows * config.array_cols / config.row_cycles(dtype)


def test_matrix_unit_has_no_int32_mode():
    with pytest.raises(ConfigError, match="i32"):
        PRESETS["edge"].row_cycles(DType.I32)


def test_derived_sizes_follow_overrides():
    config = PRESETS["edge"].replace(spad_bytes=256 * KiB)
    assert config.acc_base == 256 * KiB
    assert config.local_bytes == 256 * KiB + config.acc_bytes


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_is_canonical_and_round_trips(name):
    config = PRESETS[name]
    text = config.to_json()
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert config_from_dict(json.loads(text)) == config
    assert config.to_dict() == dataclasses.asdict(config)


# Frozen -------------------------------------------------------------------------------------------
def test_config_is_frozen():
    config = PRESETS["edge"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.array_rows = 64
    assert config.array_rows == 32


def test_replace_returns_a_new_validated_config():
    edge = PRESETS["edge"]
    bigger = edge.replace(array_rows=64, array_cols=64)
    assert (bigger.array_rows, edge.array_rows) == (64, 32)
    with pytest.raises(ConfigError, match="'array_rows'"):
        edge.replace(array_rows=0)


# Loading ------------------------------------------------------------------------------------------
def write_json(tmp_path, content, name="chip.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_load_preset_by_name_and_pass_through():
    assert load_config("tiny") is PRESETS["tiny"]
    config = PRESETS["server"]
    assert load_config(config) is config


def test_load_file_with_base_and_overrides(tmp_path):
    path = write_json(tmp_path, {"base": "edge", "array_rows": 64, "array_cols": 64, "dma_latency": 50})
    config = load_config(path)
    assert (config.array_rows, config.array_cols, config.dma_latency) == (64, 64, 50)
    assert config.name == "chip"  # the file's stem when the file gives no name
    expected = PRESETS["edge"].replace(name="chip", array_rows=64, array_cols=64, dma_latency=50)
    assert config == expected
    assert load_config(str(path)) == config


def test_load_file_keeps_its_own_name(tmp_path):
    path = write_json(tmp_path, {"base": "tiny", "name": "my_chip"})
    assert load_config(path) == PRESETS["tiny"].replace(name="my_chip")


def test_load_complete_file_without_base(tmp_path):
    fields = PRESETS["server"].to_dict()
    fields["name"] = "copy"
    assert load_config(write_json(tmp_path, fields)) == PRESETS["server"].replace(name="copy")


def test_missing_field_without_base_is_named(tmp_path):
    fields = PRESETS["edge"].to_dict()
    del fields["vector_lanes"]
    with pytest.raises(ConfigError, match="'vector_lanes'"):
        load_config(write_json(tmp_path, fields))


def test_unknown_field_is_named(tmp_path):
    with pytest.raises(ConfigError, match="'array_depth'"):
        load_config(write_json(tmp_path, {"base": "edge", "array_depth": 4}))


def test_unknown_base_preset(tmp_path):
    with pytest.raises(ConfigError, match="'base'.*'huge'"):
        load_config(write_json(tmp_path, {"base": "huge"}))


@pytest.mark.parametrize("base", [["edge"], {"name": "edge"}, 5, 1.5])
def test_malformed_base_is_a_config_error(base):
    """"base" must be a preset name; any other JSON value is a user error, not a crash."""
    with pytest.raises(ConfigError, match="'base'"):
        config_from_dict({"base": base})


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.json"
    with pytest.raises(ConfigError, match="nowhere.json.*does not exist"):
        load_config(path)


def test_unknown_name_that_is_not_a_file():
    with pytest.raises(ConfigError, match="'laptop'"):
        load_config("laptop")


@pytest.mark.parametrize("content", ['{"base": "edge", "array_rows": }', "{", "", "[1, 2", "\x00\x01"])
def test_bad_json(tmp_path, content):
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(write_json(tmp_path, content))


def test_json_number_too_long_to_parse_is_a_config_error(tmp_path):
    """Python refuses integers of more than 4300 digits with a ValueError; that is still bad input."""
    with pytest.raises(ConfigError):
        load_config(write_json(tmp_path, '{"base": "edge", "dma_latency": ' + "9" * 5000 + "}"))


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "chip.json"
    path.write_bytes(b'{"base": "edge", "name": "\xff\xfe"}')
    with pytest.raises(ConfigError):
        load_config(path)


def test_directory_is_not_a_config(tmp_path):
    directory = tmp_path / "chip.json"
    directory.mkdir()
    with pytest.raises(ConfigError):
        load_config(directory)


@pytest.mark.parametrize("content", [[1, 2], json.dumps("edge"), 3])
def test_json_that_is_not_an_object(tmp_path, content):
    with pytest.raises(ConfigError, match="JSON object"):
        load_config(write_json(tmp_path, content))


# Impossible values: each names its field --------------------------------------------------------
IMPOSSIBLE = [
    ("array_rows", 0),
    ("array_cols", 0),
    ("array_rows", 4096),  # the k field of load_weights is 12 bits
    ("array_cols", -1),
    ("spad_bytes", 3000),  # not a power of two
    ("spad_bytes", 0),
    ("acc_bytes", 100_000),
    ("dram_bytes", 3 * MiB),
    ("dram_bytes_per_cycle", 48),
    ("vector_lanes", 0),
    ("spad_bytes", 1 << LOCAL_ADDRESS_BITS),  # with the accumulator, past the 26-bit local address
    ("dram_bytes", 1 << 33),  # past the 32-bit DRAM address
    ("acc_bytes", 64),  # less than one row of int32 outputs of the 32-wide array
    ("spad_bytes", 2 * KiB),  # less than one fp32 32x32 weight tile
    ("dma_latency", -1),
    ("vector_latency", -5),
    ("int8_row_cycles", 0),
    ("bf16_row_cycles", 0),
    ("fp32_row_cycles", -1),
    ("array_rows", 32.0),  # not an integer
    ("array_rows", "32"),
    ("spad_bytes", True),
    ("weight_double_buffer", 1),
    ("weight_double_buffer", "yes"),
    ("clock_mhz", 0),
    ("clock_mhz", -100.0),
    ("clock_mhz", "fast"),
    ("clock_mhz", float("nan")),
    ("clock_mhz", float("inf")),
    ("name", ""),
    ("name", 7),
]


@pytest.mark.parametrize(("field", "value"), IMPOSSIBLE, ids=[f"{f}={v!r}" for f, v in IMPOSSIBLE])
def test_impossible_value_names_its_field(field, value):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        config_from_dict({"base": "edge", field: value})


@pytest.mark.parametrize(("field", "value"), IMPOSSIBLE[:12], ids=[f"{f}={v!r}" for f, v in IMPOSSIBLE[:12]])
def test_impossible_value_in_a_file_names_its_field(tmp_path, field, value):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        load_config(write_json(tmp_path, {"base": "tiny", field: value}))


def test_impossible_value_at_construction():
    fields = PRESETS["edge"].to_dict()
    fields["array_rows"] = 0
    with pytest.raises(ConfigError, match="'array_rows'"):
        AcceleratorConfig(**fields)


def test_config_error_is_a_user_error():
    assert issubclass(ConfigError, AccError)


def test_largest_local_memory_that_fits_is_accepted():
    config = config_from_dict({"base": "edge", "spad_bytes": 1 << (LOCAL_ADDRESS_BITS - 1),
                               "acc_bytes": 1 << (LOCAL_ADDRESS_BITS - 1)})
    assert config.local_bytes == 1 << LOCAL_ADDRESS_BITS
