"""The graph IR: one node type, values with static shapes, a text form and a verifier.

A `Graph` is a list of `Node`s in topological order over named `Value`s (single
assignment). Constants are values with data. Op semantics, arity, attributes and shape
rules live in one table, `compiler/ops.py`, used by the importer, the verifier and the
printer alike.

Text form (print with `to_text`, read back with `parse`):

    graph main
      input %x: f32[1, 4]
      const %w: f32[4, 2] = [0.5, 1.0, ...]        ; the data, row-major
      %y: f32[1, 2] = MatMul(%x, %w)  @node_name
      %z: f32[1, 2] = Relu(%y) {alpha=0.5}
      output %z

An absent optional input is written `_`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DTYPES = {
    "f32": np.float32, "f64": np.float64, "f16": np.float16, "bf16": None, "i8": np.int8, "u8": np.uint8,
    "i16": np.int16, "u16": np.uint16, "i32": np.int32, "u32": np.uint32, "i64": np.int64, "u64": np.uint64,
    "bool": np.bool_,
}


def numpy_dtype(dtype: str) -> np.dtype:
    if dtype == "bf16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(DTYPES[dtype])


def dtype_name(dtype) -> str:
    dtype = np.dtype(dtype)
    for name in DTYPES:
        if numpy_dtype(name) == dtype:
            return name
    raise ValueError(f"no IR dtype for {dtype}")


@dataclass
class Value:
    name: str
    dtype: str
    shape: tuple[int, ...]
    const: np.ndarray | None = None

    @property
    def is_const(self) -> bool:
        return self.const is not None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class Node:
    op: str
    inputs: list[str]  # "" for an absent optional input
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""


@dataclass
class Graph:
    name: str = "main"
    values: dict[str, Value] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    # Quantized tensor -> (the float tensor it quantizes, scale, zero point): recorded by
    # compiler/passes/quantized.py so that int8 results can be compared with the float model's.
    quantized_from: dict[str, tuple[str, float, int]] = field(default_factory=dict)

    def add_value(self, value: Value) -> Value:
        self.values[value.name] = value
        return value

    def const(self, name: str, data: np.ndarray) -> Value:
        data = np.asarray(data)
        return self.add_value(Value(name, dtype_name(data.dtype), tuple(data.shape), data))

    def fresh_name(self, base: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.:/-]", "_", base) or "v"
        if base not in self.values:
            return base
        counter = 1
        while f"{base}_{counter}" in self.values:
            counter += 1
        return f"{base}_{counter}"

    def producers(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        result: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    result.setdefault(name, []).append(node)
        return result

    def constants(self) -> list[Value]:
        return [v for v in self.values.values() if v.is_const]

    def prune(self) -> Graph:
        """Drop nodes and values that no output depends on (in place; returns self)."""
        needed = set(self.outputs)
        kept = []
        for node in reversed(self.nodes):
            if any(out in needed for out in node.outputs):
                kept.append(node)
                needed.update(name for name in node.inputs + node.outputs if name)  # unused outputs keep a Value
        self.nodes = kept[::-1]
        needed.update(self.inputs)
        self.values = {name: value for name, value in self.values.items() if name in needed}
        return self


# Text form ---------------------------------------------------------------------------------------
def _format_attr(value) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format_attr(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (np.floating,)):
        return repr(float(value))
    raise TypeError(f"attribute value {value!r} has no text form")


def _type_text(value: Value) -> str:
    return f"{value.dtype}[{', '.join(map(str, value.shape))}]"


def _const_text(value: Value, full: bool) -> str:
    data = value.const.reshape(-1)
    if not full and data.size > 16:
        return f"<{data.size} values>"
    if value.dtype == "bool":
        items = ["1" if v else "0" for v in data]
    elif data.dtype.kind == "f" or value.dtype == "bf16":
        items = [repr(float(v)) for v in data.astype(np.float64)]
    else:
        items = [str(int(v)) for v in data]
    return "[" + ", ".join(items) + "]"


def attributes_text(op: str, attrs: dict[str, Any]) -> str:
    """` {name=value, ...}` in the op table's order (empty when there are none)."""
    from compiler.ops import OPS

    order = list(OPS[op].attrs) if op in OPS else []
    names = sorted(attrs, key=lambda a: (order.index(a) if a in order else len(order), a))
    return " {" + ", ".join(f"{a}={_format_attr(attrs[a])}" for a in names) + "}" if names else ""


def to_text(graph: Graph, full_constants: bool = True) -> str:
    """The text form; with full_constants=False, large constants are elided (not parseable)."""
    lines = [f"graph {graph.name}"]
    for name in graph.inputs:
        lines.append(f"  input {_ref(name)}: {_type_text(graph.values[name])}")
    used = {n for node in graph.nodes for n in node.inputs} | set(graph.outputs)
    for value in graph.values.values():
        if value.is_const and value.name in used:
            lines.append(f"  const {_ref(value.name)}: {_type_text(value)} = {_const_text(value, full_constants)}")
    for node in graph.nodes:
        results = ", ".join(f"{_ref(o)}: {_type_text(graph.values[o])}" if o else "_" for o in node.outputs)
        args = ", ".join(_ref(i) if i else "_" for i in node.inputs)
        text = f"  {results} = {node.op}({args})"
        text += attributes_text(node.op, node.attrs)
        if node.name:
            text += f"  @{_quote_node_name(node.name)}"
        lines.append(text)
    for name in graph.outputs:
        lines.append(f"  output {_ref(name)}")
    return "\n".join(lines) + "\n"


_NAME = r"[A-Za-z0-9_./\-]+"


def _quote_name(name: str) -> str:
    return name if re.fullmatch(_NAME, name) else '"' + name.replace('"', "'") + '"'


def _quote_node_name(name: str) -> str:
    """After @ a bare name must read as one name token: "7_relu" would read as a number and a name."""
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./\-]*", name) else '"' + name.replace('"', "'") + '"'


def _ref(name: str) -> str:
    return "%" + _quote_name(name)


class IRParseError(ValueError):
    pass


_TOKEN = re.compile(r"""\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?
    |[-+]?inf|nan)|(?P<value>%(?:[A-Za-z0-9_./\-]+|"[^"]*"))|(?P<name>[A-Za-z_][A-Za-z0-9_./\-]*)
    |(?P<punct>[\[\](){}=,:@_<>]))""", re.VERBOSE)


def _tokens(line: str, number: int) -> list[tuple[str, str]]:
    position, result = 0, []
    line = line.split(";")[0] if '"' not in line else line
    while position < len(line):
        if line[position:].strip() == "":
            break
        match = _TOKEN.match(line, position)
        if not match:
            raise IRParseError(f"line {number}: cannot read {line[position:position + 20]!r}")
        kind = match.lastgroup
        result.append((kind, match.group(kind)))
        position = match.end()
    return result


class _Reader:
    def __init__(self, tokens, number):
        self.tokens, self.position, self.number = tokens, 0, number

    def peek(self):
        return self.tokens[self.position] if self.position < len(self.tokens) else (None, None)

    def take(self, expected: str | None = None, kind: str | None = None) -> str:
        token_kind, text = self.peek()
        if text is None or (expected is not None and text != expected) or (kind is not None and token_kind != kind):
            raise IRParseError(f"line {self.number}: expected {expected or kind}, found {text!r}")
        self.position += 1
        return text

    def done(self) -> bool:
        return self.position >= len(self.tokens)

    def value_name(self) -> str:
        text = self.take(kind="value")[1:]
        return text[1:-1] if text.startswith('"') else text

    def type(self) -> tuple[str, tuple[int, ...]]:
        dtype = self.take(kind="name")
        if dtype not in DTYPES:
            raise IRParseError(f"line {self.number}: unknown dtype {dtype!r}")
        self.take("[")
        dims = []
        while self.peek()[1] != "]":
            dims.append(int(self.take(kind="number")))
            if self.peek()[1] == ",":
                self.take(",")
        self.take("]")
        return dtype, tuple(dims)

    def attributes(self) -> dict[str, Any]:
        """An optional `{name=value, ...}`."""
        attrs = {}
        if self.peek()[1] == "{":
            self.take("{")
            while self.peek()[1] != "}":
                key = self.take(kind="name")
                self.take("=")
                attrs[key] = self.literal()
                if self.peek()[1] == ",":
                    self.take(",")
            self.take("}")
        return attrs

    def literal(self):
        kind, text = self.peek()
        if text == "[":
            self.take("[")
            items = []
            while self.peek()[1] != "]":
                items.append(self.literal())
                if self.peek()[1] == ",":
                    self.take(",")
            self.take("]")
            return items
        self.position += 1
        if kind == "string":
            return text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        if kind == "number":
            return float(text) if any(c in text for c in ".en") and not text.lstrip("-+").isdigit() else int(text)
        raise IRParseError(f"line {self.number}: expected a value, found {text!r}")


def parse(text: str) -> Graph:
    """Read the text form back into a Graph (shapes as written; run the verifier to check them)."""
    graph = Graph()
    for number, raw in enumerate(text.splitlines(), start=1):
        tokens = _tokens(raw, number)
        if not tokens:
            continue
        reader = _Reader(tokens, number)
        head = reader.peek()[1]
        if head == "graph":
            reader.take()
            graph.name = reader.take(kind="name")
        elif head == "input":
            reader.take()
            name = reader.value_name()
            reader.take(":")
            dtype, shape = reader.type()
            graph.add_value(Value(name, dtype, shape))
            graph.inputs.append(name)
        elif head == "output":
            reader.take()
            graph.outputs.append(reader.value_name())
        elif head == "const":
            reader.take()
            name = reader.value_name()
            reader.take(":")
            dtype, shape = reader.type()
            reader.take("=")
            data = np.array(reader.literal(), dtype=np.float64 if dtype in ("f32", "f64", "f16", "bf16") else np.int64)
            if data.size != int(np.prod(shape, dtype=np.int64)):
                raise IRParseError(f"line {number}: const %{name} has {data.size} values for shape {list(shape)}")
            graph.add_value(Value(name, dtype, shape, data.reshape(shape).astype(numpy_dtype(dtype))))
        else:
            outputs = []
            while True:
                if reader.peek()[1] == "_":
                    reader.take("_")
                    outputs.append("")
                else:
                    name = reader.value_name()
                    reader.take(":")
                    dtype, shape = reader.type()
                    graph.add_value(Value(name, dtype, shape))
                    outputs.append(name)
                if reader.peek()[1] != ",":
                    break
                reader.take(",")
            reader.take("=")
            op = reader.take(kind="name")
            reader.take("(")
            inputs = []
            while reader.peek()[1] != ")":
                if reader.peek()[1] == "_":
                    reader.take("_")
                    inputs.append("")
                else:
                    inputs.append(reader.value_name())
                if reader.peek()[1] == ",":
                    reader.take(",")
            reader.take(")")
            attrs = reader.attributes()
            node_name = ""
            if reader.peek()[1] == "@":
                reader.take("@")
                kind, text_name = reader.peek()
                reader.position += 1
                node_name = text_name[1:-1] if kind == "string" else text_name
            if not reader.done():
                raise IRParseError(f"line {number}: unexpected {reader.peek()[1]!r}")
            graph.nodes.append(Node(op, inputs, outputs, attrs, node_name))
    return graph
