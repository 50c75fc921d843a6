"""Chrome trace JSON of a run (opens in Perfetto or chrome://tracing): one track per engine.

Timestamps are microseconds at the config's clock; every event also carries its cycles.
"""

from __future__ import annotations

import json

from isa.assembly import disassemble_instruction
from isa.program import Program
from runtime.simulator import ENGINE_NAMES, Event


def chrome_trace(program: Program, events: list[Event]) -> dict:
    us_per_cycle = 1.0 / program.config.clock_mhz
    node_at = {}
    for entry in program.debug:
        for index in range(entry.start, entry.end):
            node_at[index] = entry.node
    trace = [{"name": "process_name", "ph": "M", "pid": 1, "args": {"name": f"acc ({program.config.name})"}}]
    for tid, name in enumerate(ENGINE_NAMES, start=1):
        trace.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": name}})
        trace.append({"name": "thread_sort_index", "ph": "M", "pid": 1, "tid": tid, "args": {"sort_index": tid}})
    for event in events:
        instruction = program.instructions[event.index]
        args = {"index": event.index, "start_cycle": event.start, "end_cycle": event.end,
                "asm": disassemble_instruction(instruction)}
        if event.index in node_at:
            args["node"] = node_at[event.index]
        trace.append({"name": instruction.mnemonic, "cat": ENGINE_NAMES[event.engine], "ph": "X", "pid": 1,
                      "tid": int(event.engine) + 1, "ts": event.start * us_per_cycle,
                      "dur": (event.end - event.start) * us_per_cycle, "args": args})
    return {"traceEvents": trace, "displayTimeUnit": "ns",
            "otherData": {"config": program.config.name, "clock_mhz": program.config.clock_mhz}}


def trace_json(program: Program, events: list[Event]) -> str:
    return json.dumps(chrome_trace(program, events), separators=(",", ":"))
