"""Shared by the pass tests: run a pass on IR text, with the verifier before and after it."""

from __future__ import annotations

from compiler.ir import parse, to_text
from compiler.verify import verify


def run_pass(function, before: str, **options) -> str:
    """The text of the graph `before` describes after `function(graph, **options)`."""
    graph = parse(before)
    verify(graph)
    graph = function(graph, **options)
    verify(graph)
    return to_text(graph)


def same(text: str) -> str:
    """`text` as the printer writes it (the form run_pass's result is compared in)."""
    return to_text(parse(text))
