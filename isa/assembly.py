"""Assembler and disassembler for the acc ISA.

Text form, one statement per line (`;` or `#` start a comment):

    .equ   TILE, ARRAY_ROWS * 4          ; named constants; config fields are predefined
    .input  A dram=0x0 shape=(64, 64) dtype=i8
    .output C dram=0x1000 shape=(64, 64) dtype=i32 [scale=(..) zero_point=(..) axis=N]
    .const  S dram=0x2000 dtype=f32 values=(0.5, 0.25)   ; or fill=X shape=(..), or hex="0a0b"
    .dram   0x10000                       ; DRAM the program uses beyond its tensors
    .node   conv1                         ; source node of the instructions that follow
    .for    i in 0..4                     ; repeat with i = 0, 1, 2, 3 (nests)
      dma_load dram=i*64 local=i*64 esize=1 n0=64 signal=1
    .endfor
    .if     M % 64                        ; assemble the block only when the value is not 0
      .error "M must be a multiple of 64" ; stop with this message
    .endif
    end

An instruction is its mnemonic followed by `field=value` for any of its fields (missing
fields are 0); enum fields take names (`dtype=i8`, `engine=vector`). Predefined symbols:
the config's fields in upper case (ARRAY_ROWS, SPAD_BYTES, ...), ACC_BASE, inf and nan.
The disassembler writes the same form, so asm -> bin -> disasm -> asm is the identity.
"""

from __future__ import annotations

import math
from dataclasses import fields as dataclass_fields
from pathlib import Path

import lark
import numpy as np

from isa.config import AcceleratorConfig
from isa.dtypes import DType
from isa.encoding import Instruction
from isa.errors import AccError, AssemblyError
from isa.program import Constant, DebugRange, Program, TensorInfo
from isa.spec import BY_MNEMONIC, Engine, FieldKind

ADDRESS_FIELDS = {"dram", "local", "addr", "a", "b", "c", "dst"}

_PARSER = lark.Lark((Path(__file__).parent / "assembly.lark").read_text(), parser="lalr",
                    propagate_positions=True)


def config_symbols(config: AcceleratorConfig) -> dict[str, float | int]:
    """The symbols every program can use: the config's fields in upper case, ACC_BASE, inf, nan."""
    symbols = {f.name.upper(): getattr(config, f.name) for f in dataclass_fields(config)
               if isinstance(getattr(config, f.name), (int, float)) and not isinstance(getattr(config, f.name), bool)}
    symbols.update(ACC_BASE=config.acc_base, LOCAL_BYTES=config.local_bytes, inf=math.inf, nan=math.nan)
    return symbols


class _Assembler:
    def __init__(self, config: AcceleratorConfig, defines: dict[str, int | float], source: str):
        self.config = config
        self.source = source
        self.symbols = {**config_symbols(config), **defines}
        self.defined = set(defines)  # -D values win over .equ, so a program can give defaults
        self.instructions: list[Instruction] = []
        self.inputs: list[TensorInfo] = []
        self.outputs: list[TensorInfo] = []
        self.constants: list[Constant] = []
        self.debug: list[DebugRange] = []
        self.node: str | None = None
        self.node_start = 0
        self.dram_bytes = 0

    def error(self, tree, message: str) -> AssemblyError:
        line = getattr(tree.meta, "line", "?") if hasattr(tree, "meta") else "?"
        return AssemblyError(f"{self.source}:{line}: {message}")

    # Expressions ----------------------------------------------------------------------------
    def eval(self, tree):
        if isinstance(tree, lark.Token):
            if tree.type == "NUMBER":
                return _number(tree)
            if tree.type == "STRING":
                return tree[1:-1]
            raise AssemblyError(f"{self.source}:{tree.line}: unexpected {tree!r}")
        kind = tree.data
        if kind == "number":
            return _number(tree.children[0])
        if kind == "symbol":
            name = str(tree.children[0])
            if name not in self.symbols:
                raise self.error(tree, f"unknown symbol '{name}'")
            return self.symbols[name]
        if kind == "neg":
            return -self.eval(tree.children[0])
        if kind == "tuple":
            return tuple(self.eval(c) for c in tree.children if c is not None)
        if kind in ("cmp_expr", "or_expr", "and_expr", "shift_expr", "sum", "product"):
            value = self.eval(tree.children[0])
            for op, operand in zip(tree.children[1::2], tree.children[2::2], strict=True):
                value = _binary(str(op), value, self.eval(operand), lambda m: self.error(tree, m))
            return value
        if kind == "unary":
            return self.eval(tree.children[0])
        raise self.error(tree, f"cannot evaluate {kind}")

    def args(self, trees) -> dict:
        values = {}
        for arg in trees:
            name = str(arg.children[0])
            if name in values:
                raise self.error(arg, f"'{name}' given twice")
            value = arg.children[1]
            if isinstance(value, lark.Tree) and value.data == "symbol" and str(value.children[0]) not in self.symbols:
                values[name] = _Word(str(value.children[0]))  # an enum name such as f32 or vector
            else:
                values[name] = self.eval(value)
        return values

    # Statements -----------------------------------------------------------------------------
    def run(self, statements) -> None:
        for statement in statements:
            if isinstance(statement, _Loop):
                if statement.head.data == "if_start":
                    if self.eval(statement.head.children[0]):
                        self.run(statement.body)
                else:
                    self.run_loop(statement)
            else:
                getattr(self, f"do_{statement.data}")(statement)

    def do_error(self, tree) -> None:
        raise self.error(tree, tree.children[0][1:-1])

    def run_loop(self, loop: _Loop) -> None:
        var = str(loop.head.children[0])
        start, stop = self.eval(loop.head.children[1]), self.eval(loop.head.children[3])
        if not all(isinstance(v, int) for v in (start, stop)):
            raise self.error(loop.head, ".for bounds must be integers")
        saved = self.symbols.get(var)
        for value in range(start, stop):
            self.symbols[var] = value
            self.run(loop.body)
        if saved is None:
            self.symbols.pop(var, None)
        else:
            self.symbols[var] = saved

    def do_equ(self, tree) -> None:
        name = str(tree.children[0])
        if name not in self.defined:
            self.symbols[name] = self.eval(tree.children[1])

    def do_dram(self, tree) -> None:
        value = self.eval(tree.children[0])
        if not isinstance(value, int) or value < 0:
            raise self.error(tree, ".dram needs a non-negative integer")
        self.dram_bytes = max(self.dram_bytes, value)

    def do_node(self, tree) -> None:
        self.close_node()
        token = tree.children[0]
        self.node = (token[1:-1] if token.type == "STRING" else str(token)) or None
        self.node_start = len(self.instructions)

    def close_node(self) -> None:
        if self.node is not None and len(self.instructions) > self.node_start:
            self.debug.append(DebugRange(self.node_start, len(self.instructions), self.node))
        self.node = None

    def integer(self, tree, what: str, value, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(tree, f"{what} must be an integer >= {minimum}, got {value!r}")
        return value

    def integers(self, tree, what: str, value, minimum: int = 0) -> tuple[int, ...]:
        values = value if isinstance(value, tuple) else (value,)
        return tuple(self.integer(tree, what, v, minimum) for v in values)

    def numbers(self, tree, what: str, value) -> tuple[float, ...]:
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise self.error(tree, f"{what} must be finite numbers, got {v!r}")
        return tuple(float(v) for v in values)

    def tensor(self, tree) -> TensorInfo:
        name = str(tree.children[0])
        args = self.args(tree.children[1:])
        unknown = set(args) - {"dram", "shape", "dtype", "scale", "zero_point", "axis"}
        if unknown or not {"dram", "shape", "dtype"} <= set(args):
            raise self.error(tree, f"tensor {name}: needs dram=, shape=, dtype= (and optionally scale=, "
                                   f"zero_point=, axis=)")
        shape = self.integers(tree, f"tensor {name}: shape", args["shape"])
        scale = self.numbers(tree, f"tensor {name}: scale", args.get("scale", ()))
        zero_point = self.integers(tree, f"tensor {name}: zero_point", args.get("zero_point", ()), minimum=-(2**31))
        if len(scale) != len(zero_point):
            raise self.error(tree, f"tensor {name}: scale and zero_point differ in length")
        axis = args.get("axis")
        if axis is not None and (self.integer(tree, f"tensor {name}: axis", axis) >= max(len(shape), 1)):
            raise self.error(tree, f"tensor {name}: axis {axis} is not a dimension of shape {shape}")
        tensor = TensorInfo(name, shape, self.dtype(tree, args["dtype"]),
                            self.integer(tree, f"tensor {name}: dram", args["dram"]), scale, zero_point, axis)
        if tensor.dram % tensor.dtype.size:
            raise self.error(tree, f"tensor {name}: dram {tensor.dram:#x} is not aligned to {tensor.dtype.size} bytes")
        self.dram_bytes = max(self.dram_bytes, tensor.dram + tensor.nbytes)
        return tensor

    def dtype(self, tree, word) -> DType:
        try:
            return DType.from_name(str(word))
        except ValueError as err:
            raise self.error(tree, str(err)) from None

    def do_input(self, tree) -> None:
        self.inputs.append(self.tensor(tree))

    def do_output(self, tree) -> None:
        self.outputs.append(self.tensor(tree))

    def do_const(self, tree) -> None:
        name = str(tree.children[0])
        args = self.args(tree.children[1:])
        if "dram" not in args:
            raise self.error(tree, f".const {name}: needs dram=")
        dram = self.integer(tree, f".const {name}: dram", args["dram"])
        if "hex" in args:
            if not isinstance(args["hex"], str):
                raise self.error(tree, f'.const {name}: hex= takes a string, e.g. hex="0a0b"')
            try:
                data = bytes.fromhex(args["hex"])
            except ValueError:
                raise self.error(tree, f".const {name}: hex= is not hexadecimal") from None
        else:
            dtype = self.dtype(tree, args.get("dtype", _Word("f32")))
            if "values" in args:
                values = self.numbers(tree, f".const {name}: values", args["values"])
            elif "fill" in args and "shape" in args:
                shape = self.integers(tree, f".const {name}: shape", args["shape"])
                values = self.numbers(tree, f".const {name}: fill", args["fill"]) * math.prod(shape)
            else:
                raise self.error(tree, f".const {name}: give values=(...), fill= with shape=, or hex=")
            data = np.asarray(values, dtype=np.float64).astype(dtype.numpy).tobytes()
        self.constants.append(Constant(dram, data, name))
        self.dram_bytes = max(self.dram_bytes, dram + len(data))


    def do_instruction(self, tree) -> None:
        mnemonic = str(tree.children[0])
        definition = BY_MNEMONIC.get(mnemonic)
        if definition is None:
            raise self.error(tree, f"unknown instruction '{mnemonic}'")
        kinds = {f.name: f.kind for f in definition.fields if f.name != "opcode"}
        values = {}
        for name, value in self.args(tree.children[1:]).items():
            if name not in kinds:
                raise self.error(tree, f"{mnemonic} has no field '{name}' (fields: {', '.join(kinds)})")
            kind = kinds[name]
            if isinstance(value, _Word):
                if kind is FieldKind.DTYPE:
                    value = self.dtype(tree, value)
                elif kind is FieldKind.ENGINE and value.upper() in Engine.__members__:
                    value = Engine[value.upper()]
                else:
                    raise self.error(tree, f"unknown symbol '{value}'")
            values[name] = value
        try:
            self.instructions.append(Instruction(mnemonic, **values))
        except AccError as err:
            raise self.error(tree, str(err)) from None


class _Word(str):
    """A bare name in an argument that is not a symbol: an enum value such as f32."""


class _Loop:
    def __init__(self, head):
        self.head = head
        self.body: list = []


def _number(token) -> int | float:
    text = str(token)
    if text[:2].lower() in ("0x", "0b"):
        return int(text, 0)
    if any(c in text for c in ".eE"):
        return float(text)
    return int(text)


def _binary(op: str, left, right, error):
    if op in ("<<", ">>", "&", "|", "//", "%") and not (isinstance(left, int) and isinstance(right, int)):
        raise error(f"'{op}' needs integers")
    if op in ("/", "//", "%") and right == 0:
        raise error("division by zero")
    if op == "/":
        # Integer division that is exact stays an integer, so addresses can be computed with '/'.
        if isinstance(left, int) and isinstance(right, int) and left % right == 0:
            return left // right
        return left / right
    comparisons = {"==": lambda: left == right, "!=": lambda: left != right, "<": lambda: left < right,
                   "<=": lambda: left <= right, ">": lambda: left > right, ">=": lambda: left >= right}
    if op in comparisons:
        return int(comparisons[op]())
    return {"+": lambda: left + right, "-": lambda: left - right, "*": lambda: left * right,
            "//": lambda: left // right, "%": lambda: left % right, "<<": lambda: left << right,
            ">>": lambda: left >> right, "&": lambda: left & right, "|": lambda: left | right}[op]()


def _nest(statements, error) -> list:
    """Turn the flat statement list into a tree of .for loops and .if blocks."""
    closers = {"for_end": ("for_start", ".endfor without .for"), "if_end": ("if_start", ".endif without .if")}
    root: list = []
    stack = [root]
    opened = []
    for statement in statements:
        if statement.data in ("for_start", "if_start"):
            block = _Loop(statement)
            stack[-1].append(block)
            stack.append(block.body)
            opened.append(statement)
        elif statement.data in closers:
            opener, message = closers[statement.data]
            if not opened or opened[-1].data != opener:
                raise error(statement, message)
            stack.pop()
            opened.pop()
        else:
            stack[-1].append(statement)
    if opened:
        raise error(opened[-1], ".for without .endfor" if opened[-1].data == "for_start" else ".if without .endif")
    return root


def assemble(text: str, config: AcceleratorConfig, defines: dict | None = None,
             source: str = "<asm>") -> Program:
    """Assemble program text for `config`; errors name the source line."""
    try:
        tree = _PARSER.parse(text if text.endswith("\n") else text + "\n")
    except lark.exceptions.UnexpectedInput as err:
        raise AssemblyError(f"{source}:{err.line}:{err.column}: syntax error") from None
    assembler = _Assembler(config, defines or {}, source)
    assembler.run(_nest(tree.children, assembler.error))
    assembler.close_node()
    if not assembler.instructions or assembler.instructions[-1].mnemonic != "end":
        raise AssemblyError(f"{source}: the program must finish with 'end'")
    return Program(config, assembler.instructions, assembler.inputs, assembler.outputs, assembler.constants,
                   assembler.debug, assembler.dram_bytes)


# Disassembly ----------------------------------------------------------------------------------
def _format_value(name: str, kind: FieldKind, value) -> str:
    if kind is FieldKind.DTYPE:
        return value.asm_name
    if kind is FieldKind.ENGINE:
        return value.name.lower()
    if kind is FieldKind.IMM32:
        return repr(value) if isinstance(value, float) else str(value)
    if name in ADDRESS_FIELDS:
        return hex(value)
    return str(value)


def disassemble_instruction(instruction: Instruction) -> str:
    """One line of assembly: every field, semaphores last and only when used."""
    parts = [instruction.mnemonic]
    semaphores = []
    for f in instruction.definition.fields:
        value = instruction.fields.get(f.name)
        if f.name == "opcode" or (f.kind is FieldKind.SEM and value == 0):
            continue
        (semaphores if f.kind is FieldKind.SEM else parts).append(f"{f.name}={_format_value(f.name, f.kind, value)}")
    return " ".join(parts + semaphores)


def _tensor_directive(kind: str, t: TensorInfo) -> str:
    text = f".{kind} {t.name} dram={t.dram:#x} shape=({', '.join(map(str, t.shape))}{',' if len(t.shape) == 1 else ''})"
    text += f" dtype={t.dtype.asm_name}"
    if t.scale:
        text += f" scale=({', '.join(map(repr, t.scale))},) zero_point=({', '.join(map(str, t.zero_point))},)"
    if t.axis is not None:
        text += f" axis={t.axis}"
    return text


def disassemble(program: Program) -> str:
    """The whole program as assembly that assembles back to the same program."""
    lines = [f"; acc program for config '{program.config.name}'"]
    lines += [_tensor_directive("input", t) for t in program.inputs]
    lines += [_tensor_directive("output", t) for t in program.outputs]
    lines += [f".const {c.name or 'const'} dram={c.dram:#x} hex=\"{c.data.hex()}\"" for c in program.constants]
    lines.append(f".dram {program.dram_bytes:#x}")
    starts = {d.start: d for d in program.debug}
    open_node = None
    for index, instruction in enumerate(program.instructions):
        if index in starts:
            lines.append(f'.node "{starts[index].node}"')
            open_node = starts[index]
        elif open_node is not None and index == open_node.end:
            lines.append('.node ""')
            open_node = None
        lines.append(disassemble_instruction(instruction))
    return "\n".join(lines) + "\n"
