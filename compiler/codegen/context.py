"""What a kernel works with: the DRAM plan, views of DRAM tensors, on-chip arenas and DMA helpers.

A `View` is a strided window on DRAM (address, dtype, shape, strides in elements); DRAM
tensors are dense and row-major, and slicing, broadcasting or transposing a view only
changes its strides. `dma_in`/`dma_out` move a view of up to three dimensions between
DRAM and a dense local tile, splitting where a stride or count exceeds its field.
"""

from __future__ import annotations

import copy
import hashlib
import operator
from collections.abc import Callable, Hashable
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace

import numpy as np

from compiler.codegen.emitter import Emitter
from compiler.codegen.memory import CONSTANTS_BASE, DramAllocator, aligned
from compiler.errors import UnsupportedOpError, UnsupportedTypeError
from compiler.ir import Graph, Node
from isa.config import AcceleratorConfig
from isa.dtypes import DType
from isa.program import Constant
from isa.timing import Timeline

LOCAL_ALIGN = 64
IR_TO_DTYPE = {"f32": DType.F32, "bf16": DType.BF16, "i8": DType.I8, "u8": DType.U8, "i32": DType.I32,
               "i64": DType.I64, "bool": DType.BOOL, "f16": DType.F16}
# Widest value each DMA field holds (isa/spec.py): counts 16 bits; strides ds0 16, ds1 24, ds2 32, ls1 16, ls2 24.
MAX_COUNT = (1 << 16) - 1
MAX_DS = ((1 << 16) - 1, (1 << 24) - 1, (1 << 32) - 1)
MAX_LS = ((1 << 16) - 1, (1 << 24) - 1)


def accelerator_dtype(ir_dtype: str, tensor: str, where: str = "") -> DType:
    if ir_dtype not in IR_TO_DTYPE:
        raise UnsupportedTypeError(tensor, ir_dtype, where)
    return IR_TO_DTYPE[ir_dtype]


def unsupported(node: Node, reason: str) -> UnsupportedOpError:
    """The error for a use of a supported op that this code generator cannot compile."""
    return UnsupportedOpError(node.op, node.name, None, reason)


@dataclass(frozen=True)
class View:
    addr: int
    dtype: DType
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # elements

    @staticmethod
    def dense(addr: int, dtype: DType, shape: tuple[int, ...]) -> View:
        strides, step = [], 1
        for n in reversed(shape):
            strides.append(step)
            step *= max(n, 1)
        return View(addr, dtype, tuple(shape), tuple(reversed(strides)))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def at(self, *index: int) -> View:
        """The sub-view with the leading dimensions fixed at `index`."""
        offset = sum(map(operator.mul, index, self.strides))
        return View(self.addr + offset * self.dtype.size, self.dtype, self.shape[len(index):],
                    self.strides[len(index):])

    def window(self, axis: int, start: int, stop: int, step: int = 1) -> View:
        shape = list(self.shape)
        strides = list(self.strides)
        shape[axis] = len(range(start, stop, step))
        strides[axis] = self.strides[axis] * step
        return View(self.addr + start * self.strides[axis] * self.dtype.size, self.dtype, tuple(shape),
                    tuple(strides))

    def transpose(self, perm) -> View:
        return View(self.addr, self.dtype, tuple(self.shape[p] for p in perm), tuple(self.strides[p] for p in perm))

    def reshape_dense(self, shape) -> View:
        if self.strides != View.dense(self.addr, self.dtype, self.shape).strides:
            raise ValueError("only a dense view can be reshaped")
        return View.dense(self.addr, self.dtype, tuple(shape))

    def broadcast_to(self, shape: tuple[int, ...]) -> View:
        """numpy broadcasting: missing leading dimensions and size-1 dimensions get stride 0."""
        pad = len(shape) - len(self.shape)
        dims = (1,) * pad + self.shape
        strides = (0,) * pad + self.strides
        return View(self.addr, self.dtype, tuple(shape),
                    tuple(0 if d == 1 and n != 1 else s for d, n, s in zip(dims, shape, strides, strict=True)))

    def with_dtype(self, dtype: DType) -> View:
        return replace(self, dtype=dtype)


class LocalArena:
    """Bump allocation of one kernel's on-chip space: [start, end) of local memory."""

    def __init__(self, start: int, end: int, what: str, on_alloc=None):
        self.start, self.next, self.end, self.what = start, start, end, what
        self.on_alloc = on_alloc  # called with the arena's bytes in use after each allocation

    @property
    def free(self) -> int:
        return self.end - self.next

    def alloc(self, nbytes: int) -> int:
        address = -(-self.next // LOCAL_ALIGN) * LOCAL_ALIGN
        if address + nbytes > self.end:
            raise MemoryError(f"{self.what}: {nbytes} bytes do not fit ({self.end - address} free)")
        self.next = address + nbytes
        if self.on_alloc:
            self.on_alloc(self.next - self.start)
        return address


class _Trial:
    cycles = 0


class CodegenContext:
    """The state shared by all kernels of one program."""

    def __init__(self, config: AcceleratorConfig, graph: Graph, search: bool = False):
        self.config = config
        self.graph = graph
        self.search = search  # kernels time their candidate schedules (choose)
        self._choices: dict = {}  # a searched problem's key -> (the choice, the node searched at)
        self.emitter = Emitter(config)
        self.views: dict[str, View] = {}
        self.constants: list[Constant] = []
        self.dram = DramAllocator(min(config.dram_bytes, CONSTANTS_BASE))  # the activations
        self.constants_end = CONSTANTS_BASE
        self._scratch: list[int] | None = None
        self._constant_cache: dict[tuple, View] = {}
        self.notes: dict[str, list[str]] = {}  # node -> what its kernel chose
        self.scratchpad_peak: dict[str, int] = {}  # node -> most scratchpad bytes its kernel used
        self.local_floor = (0, 0)  # where kernels' scratchpad and accumulator arenas start (`local_floors`)
        self.local_high = [0, 0]  # the highest scratchpad and accumulator bytes used since the last floor
        # The kernel being emitted is followed by a row operation (a LayerNorm) whose code interleaves with
        # its own (compiler/codegen/interleave.py): a product then finishes whole rows block by block.
        self.next_reads_rows = False

    # DRAM plan (compiler/codegen/memory.py) ------------------------------------------------------
    def allocate(self, shape: tuple[int, ...], dtype: DType) -> View:
        """DRAM for an activation; inside `node_scratch` it is freed when the node ends (with reuse on)."""
        nbytes = max(int(np.prod(shape, dtype=np.int64)) * dtype.size, 1)
        address = self.dram.allocate(nbytes)
        self.emitter.register_dram(address, address + nbytes)
        if self._scratch is not None:
            self._scratch.append(address)
        return View.dense(address, dtype, tuple(shape))

    @contextmanager
    def node_scratch(self):
        """Collect the DRAM kernels allocate while one node is emitted (yields the list of addresses)."""
        self._scratch = scratch = []
        try:
            yield scratch
        finally:
            self._scratch = None

    def constant(self, data: np.ndarray, dtype: DType, name: str = "") -> View:
        """Place compile-time data (a weight, or a table a kernel derives from one) in the constants
        region (at CONSTANTS_BASE until `relocate_constants` moves it after the activations)."""
        array = np.asarray(data).astype(dtype.numpy, order="C")  # keeps rank 0, unlike ascontiguousarray
        key = (dtype, array.shape, hashlib.sha256(array.reshape(-1).view(np.uint8)).digest())
        if key in self._constant_cache:
            return self._constant_cache[key]
        address = aligned(self.constants_end)
        self.constants_end = address + max(array.nbytes, 1)
        if self.constants_end - CONSTANTS_BASE > min(self.config.dram_bytes, CONSTANTS_BASE):
            raise MemoryError(f"the model needs more than the config's {self.config.dram_bytes} bytes of DRAM")
        self.emitter.register_dram(address, self.constants_end, pieces=False)
        view = View.dense(address, dtype, array.shape)
        self.constants.append(Constant(view.addr, array.tobytes(), name))
        self._constant_cache[key] = view
        return view

    def filled(self, value: float, elements: int, dtype: DType, name: str) -> View:
        """`constant` of `elements` copies of `value` (padding runs), found again without building
        and hashing the data."""
        key = ("filled", dtype, elements, value)
        if key not in self._constant_cache:
            self._constant_cache[key] = self.constant(np.full(elements, value), dtype, name)
        return self._constant_cache[key]

    def view(self, value_name: str) -> View:
        """A value's DRAM; a constant is placed the first time a kernel reads it."""
        if value_name not in self.views:
            value = self.graph.values[value_name]
            if not value.is_const:
                raise KeyError(value_name)
            self.views[value_name] = self.constant(value.const, accelerator_dtype(value.dtype, value_name),
                                                   value_name)
        return self.views[value_name]

    # On-chip space, fresh for each kernel --------------------------------------------------------
    def scratchpad(self) -> LocalArena:
        return LocalArena(self.local_floor[0], self.config.spad_bytes, "scratchpad", self._scratchpad_used)

    # What each node's kernel chose, for acc-compile --report ---------------------------------------
    def note(self, text: str) -> None:
        """Record a kernel's choice (loop order, tile sizes) under the node being emitted."""
        self.notes.setdefault(self.emitter.current_node or "", []).append(text)

    def _scratchpad_used(self, used: int) -> None:
        node = self.emitter.current_node or ""
        self.scratchpad_peak[node] = max(self.scratchpad_peak.get(node, 0), used)
        self.local_high[0] = max(self.local_high[0], self.local_floor[0] + used)

    def accumulator(self) -> LocalArena:
        return LocalArena(self.config.acc_base + self.local_floor[1], self.config.local_bytes, "accumulator",
                          self._accumulator_used)

    def _accumulator_used(self, used: int) -> None:
        self.local_high[1] = max(self.local_high[1], self.local_floor[1] + used)

    @contextmanager
    def local_floors(self, floor: tuple[int, int]):
        """Start the arenas of kernels emitted in the block `floor` = (scratchpad, accumulator) bytes up
        (above the previous node's buffers, compiler/codegen/interleave.py); `local_high` then tracks
        the highest bytes they use."""
        self.local_floor, self.local_high = floor, list(floor)
        try:
            yield
        finally:
            self.local_floor = (0, 0)

    # Trying schedules -----------------------------------------------------------------------------
    def choose(self, candidates: dict[str, Callable[[], None]], samples: dict[str, Callable[[], None]] | None = None,
               sample_note: str = "", key: Hashable = None) -> str:
        """Emit the candidate schedule (name -> function emitting it) that the cost model times
        fastest, and return its name. With `search` off, the first.

        Each candidate is emitted into a scratch program and timed alone by the ISA's timing
        rules (isa/timing.py, as acc-compile --report predicts) — on a smaller representative
        problem when `samples` gives the same candidates for one (`sample_note` says which); one
        that does not fit on chip drops out; ties go to the first. A problem with the `key` of
        one searched before takes the same choice without a search."""
        if self.search and len(candidates) > 1:
            best = self.fastest(samples or candidates, key, sample_note if samples else "")
            if best is not None:
                candidates = {best: candidates[best]}
        name, emit = next(iter(candidates.items()))
        emit()
        return name

    def fastest(self, candidates: dict[str, Callable[[], None]], key: Hashable = None,
                sample_note: str = "", first_fit: bool = False) -> str | None:
        """The name of the candidate (name -> function emitting it) the cost model times fastest, each
        emitted into a scratch program (`_trial`) that is then dropped; None when none fits on chip. A
        problem with the `key` of one timed before takes the same answer without timing. With `first_fit`,
        the candidates but the last are alternatives in order of preference (a longer fused kernel, then a
        shorter one): only the first of them that fits is timed, against the last, which is the answer
        untimed when none of them fits."""
        if key is not None and key in self._choices:
            best, searched_at = self._choices[key]
            self.note(f"as searched for {searched_at}: {best}")
            return best
        best = self._search(candidates, sample_note, first_fit)
        if key is not None and best is not None:
            self._choices[key] = best, self.emitter.current_node
        return best

    def _search(self, candidates: dict[str, Callable[[], None]], sample_note: str,
                first_fit: bool = False) -> str | None:
        timed = {}
        last = list(candidates)[-1]
        for name, emit in candidates.items():
            if first_fit and name != last and timed:
                continue  # an alternative preferred to this one fits
            if first_fit and name == last and not timed:
                self.note(f"nothing else fits: {name}")
                return name
            with suppress(MemoryError), self._trial() as trial:
                emit()
                timed[name] = trial
        if not timed:
            return None
        cycles = {name: trial.cycles for name, trial in timed.items()}
        best = min(cycles, key=cycles.get)
        self.note("searched" + (f" on {sample_note}" if sample_note else "") + ": "
                  + ", ".join(f"{name} {n:,}" for name, n in cycles.items()) + f" -> {best}")
        return best

    @contextmanager
    def _trial(self):
        """Emit into a scratch program, time it when the block ends (its `cycles`), then put
        everything the kernel may have changed back as it was."""
        saved = self.saved()
        self.emitter = self.emitter.fresh()
        trial = _Trial()
        try:
            yield trial
            code, _ = self.emitter.finish()
            timeline = Timeline(code, self.config)
            for _ in timeline:
                pass
            trial.cycles = timeline.cycles
        finally:
            self.restore(saved)

    def saved(self) -> tuple:
        """What a kernel may change besides the emitter's code, for `restore`."""
        return (self.emitter, len(self.constants), self.constants_end, dict(self._constant_cache), dict(self.views),
                copy.deepcopy(self.notes), dict(self.scratchpad_peak), copy.deepcopy(self.dram),
                None if self._scratch is None else list(self._scratch), list(self.local_high))

    def restore(self, saved: tuple) -> None:
        (self.emitter, count, self.constants_end, self._constant_cache, self.views, self.notes,
         self.scratchpad_peak, self.dram, scratch, self.local_high) = saved
        if scratch is not None:
            self._scratch[:] = scratch
        del self.constants[count:]

    # DMA ------------------------------------------------------------------------------------------
    def dma_in(self, local: int, view: View) -> None:
        """Copy `view` (at most 3-D after merging) into a dense local tile at `local`."""
        self._dma("dma_load", local, view)

    def dma_in_box(self, local: int, view: View, local_strides: tuple[int, ...]) -> None:
        """Copy a 2-D or 3-D `view` into a box of a larger local tile: element (..., i, j) goes to
        `local` + (the outer indices times `local_strides`, in elements) + j."""
        if len(view.shape) not in (2, 3) or len(view.shape) != len(local_strides) + 1 \
                or view.dtype.size not in (1, 2, 4):
            raise ValueError(f"a box of {view.shape} {view.dtype.asm_name} with local strides {local_strides}")
        self._dma_nd("dma_load", local, view.addr, view.dtype.size, list(view.shape), list(view.strides),
                     list(local_strides) + [1])

    def dma_out(self, local: int, view: View) -> None:
        """Copy the dense local tile at `local` out to `view`."""
        self._dma("dma_store", local, view)

    def _dma(self, mnemonic: str, local: int, view: View) -> None:
        shape, strides = merge_dims(view.shape, view.strides)
        esize = view.dtype.size
        if esize == 8 or esize not in (1, 2, 4):
            # 8-byte elements move as pairs of 4-byte words.
            shape, strides = shape + (2,), tuple(s * 2 for s in strides) + (1,)
            shape, strides = merge_dims(shape, strides)
            esize = 4
        self._dma_nd(mnemonic, local, view.addr, esize, list(shape), list(strides))

    def _dma_nd(self, mnemonic, local, dram, esize, shape, strides, local_strides=None) -> None:
        """DMAs of `shape` (innermost last) with DRAM `strides`, into a dense local tile, or with
        `local_strides` (elements per index of each dimension, the innermost 1) into a box of one."""
        if len(shape) == 1:
            if strides[0] > MAX_DS[0]:  # rows of one element: the wider row stride field
                shape, strides = [shape[0], 1], [strides[0], 1]
                local_strides = local_strides and [local_strides[0], 1]
            elif shape[0] > MAX_COUNT:
                for start in range(0, shape[0], MAX_COUNT):
                    self._dma_nd(mnemonic, local + start * esize, dram + start * strides[0] * esize, esize,
                                 [min(MAX_COUNT, shape[0] - start)], strides, local_strides)
                return
        boxed = local_strides is not None
        local_fits = not boxed or (local_strides[-2] <= MAX_LS[0] and (len(shape) < 3 or local_strides[0] <= MAX_LS[1]))
        if _fits(shape, strides) and local_fits:
            dims = [1] * (3 - len(shape)) + list(shape)
            steps = [0] * (3 - len(strides)) + list(strides)
            # A dense tile's row and plane strides follow from its shape; a box's are given.
            ls1, ls2 = ((local_strides[-2], local_strides[-3] if len(shape) == 3 else 0) if boxed
                        else (dims[2], dims[1] * dims[2]))
            self.emitter.emit(mnemonic, dram=dram, local=local, esize=esize, n0=dims[2], n1=dims[1], n2=dims[0],
                              ds0=steps[2], ds1=steps[1], ds2=steps[0], ls1=ls1, ls2=ls2)
            return
        outer_step = local_strides[0] if boxed else int(np.prod(shape[1:], dtype=np.int64))
        if len(shape) <= 3 and _fits([1] + list(shape[1:]), [0] + list(strides[1:])) and local_fits:
            chunk = MAX_COUNT  # only the outermost count is too large
        else:
            chunk = 1
        for start in range(0, shape[0], chunk):
            count = min(chunk, shape[0] - start)
            sub_shape = ([count] if chunk > 1 else []) + list(shape[1:])
            sub_strides = ([strides[0]] if chunk > 1 else []) + list(strides[1:])
            sub_local = None if not boxed else ([local_strides[0]] if chunk > 1 else []) + list(local_strides[1:])
            self._dma_nd(mnemonic, local + start * outer_step * esize, dram + start * strides[0] * esize, esize,
                         sub_shape, sub_strides, sub_local)


def _fits(shape, strides) -> bool:
    """Whether one DMA instruction can move this (innermost-last) shape."""
    if len(shape) > 3 or shape[-1] > MAX_COUNT or strides[-1] > MAX_DS[0]:
        return False
    if len(shape) >= 2 and (shape[-2] > MAX_COUNT or strides[-2] > MAX_DS[1] or shape[-1] > MAX_LS[0]):
        return False
    if len(shape) == 3 and (shape[0] > MAX_COUNT or strides[0] > MAX_DS[2] or shape[1] * shape[2] > MAX_LS[1]):
        return False
    return True


def merge_dims(shape, strides) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Drop size-1 dimensions and merge dimensions that are contiguous with the next one."""
    dims = [(n, s) for n, s in zip(shape, strides, strict=True) if n != 1]
    if not dims:
        return (1,), (1,)
    merged = [dims[-1]]
    for n, s in reversed(dims[:-1]):
        inner_n, inner_s = merged[-1]
        if s == inner_n * inner_s:
            merged[-1] = (n * inner_n, inner_s)
        else:
            merged.append((n, s))
    merged.reverse()
    return tuple(n for n, _ in merged), tuple(s for _, s in merged)


def node_label(node: Node) -> str:
    return node.name or f"{node.op}:{node.outputs[0]}"
