"""GPT-2 generation figures per precision: prefill and decode cycles, tokens/s, the DRAM bound.

    python benchmarks/generation.py [--size small|test] [--config server] [--precisions fp32,bf16,w8a16]
                                    [--steps 4] [--no-cache]

For each precision it compiles the size's prefill and decode graphs (models/gpt2, -O2,
`state="auto"`), runs `runtime.generate.generate` on the seeded prompt for `--steps` decode
steps and prints one table row: prefill cycles and their roofline efficiency (the
simulator's roofline: MACs at the array's peak or bytes at DRAM speed, whichever is
larger), decode cycles per token (mean over the steps), tokens/s at the config's clock, the
decode's DRAM bound (weights and cache read once per token, runtime/generate.py) and the
ratio of the two. Then each precision's tokens and logits against the first one's.

Compiling the small size takes tens of seconds and several GiB per graph, so compiled
programs are kept beside the ONNX graphs in the model cache (models/cache.py), under a name
that carries a hash of the graph, the options and the compiler's own sources: a change to
the compiler compiles again, and the superseded file is removed.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SOURCES = ("compiler", "isa")  # the code a compiled program depends on


@functools.cache
def sources_digest() -> str:
    """A hash of the compiler's and ISA's sources (read once per run): compiled programs are cached under it."""
    digest = hashlib.sha256()
    for package in SOURCES:
        for path in sorted((ROOT / package).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def compiled(size: str, graph: str, config: str, precision: str, use_cache: bool):
    """The compiled program of one graph, from the cache when it is there and current."""
    from compiler.pipeline import compile
    from isa import binfile
    from models.cache import gpt2_onnx

    onnx_path = gpt2_onnx(size, graph)
    stat = onnx_path.stat()
    key = hashlib.sha256(f"{onnx_path.name}:{stat.st_size}:{stat.st_mtime_ns}:{config}:{precision}:O2:"
                         f"{sources_digest()}".encode()).hexdigest()[:16]
    directory = onnx_path.parent / "compiled"
    stem = f"{onnx_path.stem}_{config}_{precision}"
    path = directory / f"{stem}_{key}.bin"
    if use_cache and path.is_file():
        start = time.perf_counter()
        program = binfile.load(path)
        print(f"  {graph}: loaded {path.name} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
        return program
    start = time.perf_counter()
    program = compile(onnx_path, config, opt_level=2, state="auto", precision=precision)
    print(f"  {graph}: compiled in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if use_cache:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(f"{stem}_*.bin"):
            stale.unlink()
        binfile.save(program, path)
    return program


def main() -> int:
    import numpy as np

    from models.gpt2.reference import prompt_ids
    from runtime.generate import generate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=["test", "small"])
    parser.add_argument("--config", default="server")
    parser.add_argument("--precisions", default="fp32,bf16,w8a16")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--no-cache", dest="cache", action="store_false",
                        help="compile every time, and keep nothing in the model cache")
    args = parser.parse_args()
    precisions = args.precisions.split(",")
    prompt = prompt_ids(args.size)
    rows, tokens = [], {}
    for precision in precisions:
        print(f"{precision}:", file=sys.stderr)
        prefill, decode = (compiled(args.size, graph, args.config, precision, args.cache)
                           for graph in ("prefill", "decode"))
        start = time.perf_counter()
        result = generate(prefill, decode, prompt, args.steps)
        print(f"  generated {args.steps} tokens in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        tokens[precision] = result
        rows.append((precision, result))
    print(f"GPT-2 {args.size}, {args.config}, prompt {prompt.shape[1]} tokens, {args.steps} decode steps\n")
    print("| precision | prefill cycles | prefill roofline eff. | decode cycles/token | tokens/s | "
          "bound (cycles/token) | ratio | vs first |")
    print("|---|---|---|---|---|---|---|---|")
    first = rows[0][1].decode_cycles_per_token
    for precision, result in rows:
        print(f"| {precision} | {result.prefill_cycles:,} | {result.prefill_roofline_efficiency:.2f} | "
              f"{result.decode_cycles_per_token:,.0f} | {result.tokens_per_second:,.0f} | "
              f"{result.bound_cycles:,.0f} | {result.bound_ratio:.2f} | "
              f"{first / result.decode_cycles_per_token:.2f}x |")
    reference = tokens[precisions[0]]
    for precision in precisions[1:]:
        result = tokens[precision]
        same = int((result.tokens == reference.tokens).sum())
        # Each step's logits come from the tokens before it: comparable up to the first token that differs.
        agree = same if same == reference.tokens.size else int(np.argmin(result.tokens == reference.tokens)) + 1
        cosine = (result.logits[:agree] * reference.logits[:agree]).sum(axis=1) / \
            np.linalg.norm(result.logits[:agree], axis=1) / np.linalg.norm(reference.logits[:agree], axis=1)
        print(f"\n{precision} against {precisions[0]}: {same} of {reference.tokens.size} tokens equal; logits "
              f"cosine >= {cosine.min():.6f} over the first {agree} steps", end="")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
