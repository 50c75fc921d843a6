"""Cycles of the hand-written int8 GEMM (models/asm/gemm_int8.s) against its roofline.

Runs the double-buffered and the serial variant on the tiny and the edge config, checks
each result against numpy, and prints a Markdown table (the one in docs/asm_programs.md):

    python benchmarks/asm_gemm.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from isa.assembly import assemble
from isa.config import load_config
from runtime.simulator import run

GEMM = Path(__file__).resolve().parent.parent / "models" / "asm" / "gemm_int8.s"
SIZES = {"tiny": {"M": 64, "K": 256, "N": 128}, "edge": {"M": 256, "K": 1024, "N": 512}}
VARIANTS = {"double-buffered": 1, "serial": 0}


def gemm_stats(config_name: str, sizes: dict[str, int], double_buffer: int) -> dict:
    """Simulate one GEMM on seeded random inputs; refuses a wrong result."""
    program = assemble(GEMM.read_text(), load_config(config_name), defines={**sizes, "DOUBLE_BUFFER": double_buffer},
                       source=GEMM.name)
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 127, (sizes["M"], sizes["K"]), endpoint=True, dtype=np.int8)
    b = rng.integers(-128, 127, (sizes["K"], sizes["N"]), endpoint=True, dtype=np.int8)
    result = run(program, {"A": a, "B": b})
    if not np.array_equal(result.outputs["C"], (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32)):
        raise AssertionError(f"gemm_int8 on {config_name} ({double_buffer=}) computed a wrong result")
    return result.stats


def main() -> None:
    print("| config | M x K x N | variant | cycles | roofline cycles | roofline / cycles |")
    print("|---|---|---|---:|---:|---:|")
    for config_name, sizes in SIZES.items():
        shape = " x ".join(str(sizes[d]) for d in "MKN")
        for variant, double_buffer in VARIANTS.items():
            stats = gemm_stats(config_name, sizes, double_buffer)
            print(f"| {config_name} | {shape} | {variant} | {stats['cycles']} | {stats['roofline_cycles']:.0f} | "
                  f"{stats['roofline_efficiency']:.1%} |")


if __name__ == "__main__":
    main()
