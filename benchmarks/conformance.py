"""onnx's conformance suite through the acc backend: every case passed, refused, wrong or crashed.

Runs every node case of `onnx.backend.test.case.node.collect_testcases()` and every model of
the data sets in the onnx wheel (`onnx/backend/test/data/{pytorch-converted,
pytorch-operator,simple}`, and the `light` models named by `data/real`) through
`runtime.backend` (compile, then simulate), compares with the case's expected outputs the
way onnx's own runner does (`Runner.assert_similar_outputs`: same number of outputs, same
shape, same dtype, `np.testing.assert_allclose` with the case's rtol/atol) and classifies
each case:

- passed;
- unsupported: the backend raised NotImplementedError (acc's UnsupportedOpError is one);
- wrong: it ran, but an output differs, or has the wrong shape, dtype or count;
- crashed: any other exception, the worker process dying, or the per-case time limit.

Cases run in worker processes (`--jobs`), each killed at its time limit. Prints a Markdown
table per suite (node cases by op type, model data sets by directory), the totals and
the acceptance figures of issue 3; exits 1 if any case is wrong or crashed.

    python benchmarks/conformance.py                       # everything (the light models take minutes)
    python benchmarks/conformance.py --skip-light --json conformance.json
    python benchmarks/conformance.py --filter '^node/test_conv' -v
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing
import os
import re
import sys
import time
import traceback
import warnings
from collections import Counter, defaultdict, deque
from dataclasses import asdict, dataclass
from multiprocessing.connection import wait
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.test.loader import DATA_DIR, load_model_tests
from onnx.backend.test.runner import Runner

SUITES = ("node", "pytorch-converted", "pytorch-operator", "simple", "light")
MODEL_SUITES = ("pytorch-converted", "pytorch-operator", "simple")  # the 95% acceptance figure
STATUSES = ("passed", "unsupported", "wrong", "crashed")
NODE_CASES_TARGET = 700
MODEL_PASS_RATE_TARGET = 0.95
MESSAGE_LIMIT = 4000  # characters of a message kept in the JSON report


@dataclass
class Case:
    """One conformance case: a model and its data sets, or where to find them."""

    suite: str
    name: str
    group: str  # the row of the table: the op type (node cases) or the directory name
    rtol: float
    atol: float
    model: onnx.ModelProto | None = None  # node cases carry model and data in memory
    data_sets: list | None = None
    model_path: str | None = None  # the model data sets are read from disk in the worker
    light_output: str | None = None  # light models: the expected output of the runner's dummy input

    @property
    def id(self) -> str:
        return f"{self.suite}/{self.name}"


@dataclass
class Outcome:
    suite: str
    name: str
    group: str
    status: str
    message: str = ""
    phase: str = ""  # where it stopped: load, compile, run, compare
    compile_seconds: float = 0.0
    run_seconds: float = 0.0
    traceback: str = ""
    # the backend compiled graph inputs in as constants once run() brought their values
    # (runtime.backend's specialisation): the inputs so bound, if any
    specialised_on: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.suite}/{self.name}"


# --- the cases ---------------------------------------------------------------------------


def _node_group(model: onnx.ModelProto, base_op: dict[str, str], name: str) -> str:
    """The op a node case tests; an `_expanded` case (the op's function body) counts for its op."""
    base = re.sub(r"_expanded(_ver\d+)?$", "", name)
    if base != name and base in base_op:
        return base_op[base]
    return model.graph.node[0].op_type if len(model.graph.node) else "?"


def load_node_cases() -> list[Case]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():  # the case generators overflow casts on purpose
        warnings.simplefilter("ignore")
        tests = collect_testcases()
    base_op = {t.name: t.model.graph.node[0].op_type for t in tests if len(t.model.graph.node) == 1}
    return [Case("node", t.name, _node_group(t.model, base_op, t.name), t.rtol, t.atol,
                 model=t.model, data_sets=list(t.data_sets)) for t in tests]


def load_model_dir_cases(suite: str) -> list[Case]:
    return [Case(suite, t.name, t.name, t.rtol, t.atol, model_path=os.path.join(t.model_dir, "model.onnx"))
            for t in sorted(load_model_tests(kind=suite), key=lambda t: t.name)]


def load_light_cases() -> list[Case]:
    """The light models: data/real names them and their tolerances, data/light holds them."""
    cases = []
    for t in sorted(load_model_tests(kind="real"), key=lambda t: t.name):
        if not (t.url or "").startswith("onnx/backend/test/data/light/"):
            continue  # a real model to download: not part of the wheel
        path = os.path.normpath(os.path.join(DATA_DIR, "..", "..", "..", "..", t.url))
        cases.append(Case("light", t.name, t.name, t.rtol, t.atol, model_path=path,
                          light_output=os.path.splitext(path)[0] + "_output_0.pb"))
    return cases


def load_cases(suites: tuple[str, ...] = SUITES, name_filter: str | None = None) -> list[Case]:
    """The cases of `suites` whose `suite/name` matches the regular expression `name_filter`."""
    cases: list[Case] = []
    for suite in suites:
        if suite == "node":
            cases += load_node_cases()
        elif suite == "light":
            cases += load_light_cases()
        else:
            cases += load_model_dir_cases(suite)
    if name_filter:
        pattern = re.compile(name_filter)
        cases = [case for case in cases if pattern.search(case.id)]
    return cases


def _load_value(path: str, type_proto: onnx.TypeProto):
    """One input_*.pb / output_*.pb as onnx's runner reads it (tensor, sequence or optional)."""
    data = Path(path).read_bytes()
    if type_proto.HasField("sequence_type"):
        sequence = onnx.SequenceProto()
        sequence.ParseFromString(data)
        return numpy_helper.to_list(sequence)
    if type_proto.HasField("optional_type"):
        optional = onnx.OptionalProto()
        optional.ParseFromString(data)
        return numpy_helper.to_optional(optional)
    tensor = onnx.TensorProto()
    tensor.ParseFromString(data)
    return numpy_helper.to_array(tensor)


def _to_numpy(value):
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value


def load_model_and_data(case: Case) -> tuple[onnx.ModelProto, list[tuple[list, list]]]:
    """The case's model and its (inputs, expected outputs) data sets."""
    if case.model is not None:
        return case.model, [([_to_numpy(x) for x in inputs], [_to_numpy(y) for y in outputs])
                            for inputs, outputs in case.data_sets]
    model = onnx.load(case.model_path)
    if case.light_output is not None:
        initializers = {init.name for init in model.graph.initializer}
        inputs = [Runner.generate_dummy_data(x, seed=0, name=case.name, random=False)
                  for x in model.graph.input if x.name not in initializers]
        return model, [(inputs, [_load_value(case.light_output, model.graph.output[0].type)])]
    data_sets = []
    for directory in sorted(glob.glob(os.path.join(os.path.dirname(case.model_path), "test_data_set*"))):
        count_in = len(glob.glob(os.path.join(directory, "input_*.pb")))
        count_out = len(glob.glob(os.path.join(directory, "output_*.pb")))
        inputs = [_load_value(os.path.join(directory, f"input_{i}.pb"), model.graph.input[i].type)
                  for i in range(count_in)]
        outputs = [_load_value(os.path.join(directory, f"output_{i}.pb"), model.graph.output[i].type)
                   for i in range(count_out)]
        data_sets.append((inputs, outputs))
    return model, data_sets


# --- one case ----------------------------------------------------------------------------


def _describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= MESSAGE_LIMIT else text[:MESSAGE_LIMIT] + " ..."


def _signature(values) -> str:
    """Shapes and dtypes, e.g. '[(3, 4) float32, () int64]'."""
    try:
        return "[" + ", ".join(f"{np.shape(v)} {getattr(v, 'dtype', type(v).__name__)}" for v in values) + "]"
    except TypeError:
        return type(values).__name__


def run_case(case: Case, config: str = "edge") -> Outcome:
    """Compile and simulate one case in this process and classify the result."""
    import runtime.backend as acc_backend

    outcome = Outcome(case.suite, case.name, case.group, "crashed")
    phase = "load"
    try:
        model, data_sets = load_model_and_data(case)
        phase = "compile"
        start = time.perf_counter()
        try:
            rep = acc_backend.prepare(model, "CPU", config=config)
        finally:
            outcome.compile_seconds = time.perf_counter() - start
        for inputs, expected in data_sets:
            phase = "run"
            start = time.perf_counter()
            try:
                outputs = rep.run(inputs)
            finally:
                outcome.run_seconds += time.perf_counter() - start
                outcome.specialised_on = tuple(getattr(rep, "bound", ()))
            phase = "compare"
            try:
                Runner.assert_similar_outputs(expected, list(outputs), rtol=case.rtol, atol=case.atol)
            except Exception as error:  # AssertionError, or outputs that cannot even be compared
                outcome.status = "wrong"
                outcome.message = f"got {_signature(outputs)}, expected {_signature(expected)}: {_describe(error)}"
                break
        else:
            outcome.status = "passed"
    except NotImplementedError as error:
        outcome.status, outcome.message = "unsupported", _describe(error)
    except Exception as error:  # noqa: BLE001 - every other exception is what "crashed" means
        outcome.message = _describe(error)
        outcome.traceback = "".join(traceback.format_exception(error)[-12:])[-MESSAGE_LIMIT:]
    outcome.phase = "" if outcome.status == "passed" else phase
    return outcome


# --- worker processes --------------------------------------------------------------------


def _worker_main(connection, config: str, memory_limit_gb: float) -> None:
    if memory_limit_gb > 0:
        import resource

        limit = int(memory_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    warnings.simplefilter("ignore")
    np.seterr(all="ignore")
    while True:
        case = connection.recv()
        if case is None:
            return
        connection.send(run_case(case, config))


class _Worker:
    """A process that runs one case at a time; killed and replaced when a case overruns."""

    def __init__(self, context, config: str, memory_limit_gb: float):
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, config, memory_limit_gb), daemon=True)
        self.process.start()
        child.close()
        self.case: Case | None = None
        self.index = -1  # of the case in run_cases' list
        self.started = 0.0
        self.deadline = 0.0

    def give(self, index: int, case: Case, timeout: float) -> None:
        self.index, self.case, self.started, self.deadline = index, case, time.monotonic(), time.monotonic() + timeout
        self.connection.send(case)

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.connection.close()

    def stop(self) -> None:
        try:
            self.connection.send(None)
        except OSError:
            pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.kill()


def _failed_outcome(case: Case, message: str, seconds: float) -> Outcome:
    return Outcome(case.suite, case.name, case.group, "crashed", message, phase="worker", run_seconds=seconds)


def run_cases(cases: list[Case], config: str = "edge", jobs: int = 2, timeout: float = 120.0,
              light_timeout: float = 1800.0, memory_limit_gb: float = 8.0, progress=None) -> list[Outcome]:
    """Run `cases` in `jobs` worker processes; a case over its time limit counts as crashed.

    `progress(outcome, done, total)` is called after each case. Outcomes come back in the
    order of `cases`."""
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    # the light models take longest: start them first so that they overlap with the rest
    pending = deque(sorted(range(len(cases)), key=lambda i: cases[i].suite != "light"))
    workers = [_Worker(context, config, memory_limit_gb) for _ in range(max(1, min(jobs, len(cases))))]
    outcomes: dict[int, Outcome] = {}

    def finish(worker: _Worker, outcome: Outcome) -> None:
        outcomes[worker.index] = outcome
        worker.case = None
        if progress:
            progress(outcome, len(outcomes), len(cases))

    try:
        while len(outcomes) < len(cases):
            for worker in workers:
                if worker.case is None and pending:
                    index = pending.popleft()
                    worker.give(index, cases[index], light_timeout if cases[index].suite == "light" else timeout)
            busy = [worker for worker in workers if worker.case is not None]
            ready = wait([worker.connection for worker in busy],
                         timeout=max(0.0, min(worker.deadline for worker in busy) - time.monotonic()))
            for i, worker in enumerate(workers):
                if worker.case is None:
                    continue
                elapsed = time.monotonic() - worker.started
                if worker.connection in ready:
                    try:
                        finish(worker, worker.connection.recv())
                        continue
                    except (EOFError, OSError):
                        worker.process.join()
                        outcome = _failed_outcome(worker.case, f"worker process died (exit code "
                                                  f"{worker.process.exitcode})", elapsed)
                elif time.monotonic() >= worker.deadline:
                    outcome = _failed_outcome(worker.case, f"timeout: still running after {elapsed:.0f} s",
                                              elapsed)
                else:
                    continue
                worker.kill()
                workers[i] = _Worker(context, config, memory_limit_gb)
                finish(worker, outcome)
    finally:
        for worker in workers:
            if worker.case is None:
                worker.stop()
            else:
                worker.kill()
    return [outcomes[i] for i in range(len(cases))]


# --- the report --------------------------------------------------------------------------


def counts(outcomes: list[Outcome]) -> Counter:
    return Counter(outcome.status for outcome in outcomes)


def _row(label: str, outcomes: list[Outcome]) -> str:
    c = counts(outcomes)
    return f"| {label} | " + " | ".join(str(c[status]) for status in STATUSES) + f" | {len(outcomes)} |"


def format_tables(outcomes: list[Outcome]) -> str:
    """One Markdown table per suite, a row per op (node cases) or directory, then the totals."""
    lines = []
    by_suite: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        by_suite[outcome.suite].append(outcome)
    for suite in SUITES:
        if suite not in by_suite:
            continue
        by_group: dict[str, list[Outcome]] = defaultdict(list)
        for outcome in by_suite[suite]:
            by_group[outcome.group].append(outcome)
        lines += [f"### {suite}", "", f"| {'op' if suite == 'node' else 'case'} | "
                  + " | ".join(STATUSES) + " | total |", "|---" + "|---:" * (len(STATUSES) + 1) + "|"]
        lines += [_row(group, by_group[group]) for group in sorted(by_group)]
        lines += [_row("**total**", by_suite[suite]), ""]
    lines += ["### totals", "", "| suite | " + " | ".join(STATUSES) + " | total |",
              "|---" + "|---:" * (len(STATUSES) + 1) + "|"]
    lines += [_row(suite, by_suite[suite]) for suite in SUITES if suite in by_suite]
    lines += [_row("**all**", outcomes), ""]
    return "\n".join(lines)


def acceptance(outcomes: list[Outcome]) -> dict:
    """Issue 3's figures: node cases passing, the pass rate of the small model data sets, 0 wrong and crashed."""
    node = [o for o in outcomes if o.suite == "node"]
    models = [o for o in outcomes if o.suite in MODEL_SUITES]
    model_passed = counts(models)["passed"]
    total = counts(outcomes)
    return {
        "node_passed": counts(node)["passed"], "node_cases": len(node),
        "node_passed_specialised": sum(o.status == "passed" and bool(o.specialised_on) for o in node),
        "model_passed": model_passed, "model_cases": len(models),
        "model_pass_rate": model_passed / len(models) if models else None,
        "wrong": total["wrong"], "crashed": total["crashed"],
    }


def format_acceptance(figures: dict) -> str:
    lines = ["### acceptance (issue 3)", ""]
    if figures["node_cases"]:
        ok = "met" if figures["node_passed"] >= NODE_CASES_TARGET else "NOT met"
        lines.append(f"- node cases passing: {figures['node_passed']} of {figures['node_cases']} "
                     f"(target >= {NODE_CASES_TARGET}: {ok}); {figures['node_passed_specialised']} of them with "
                     "graph inputs compiled in as constants when run() brought their values")
    if figures["model_cases"]:
        ok = "met" if figures["model_pass_rate"] >= MODEL_PASS_RATE_TARGET else "NOT met"
        lines.append(f"- pytorch-converted + pytorch-operator + simple passing: {figures['model_passed']} of "
                     f"{figures['model_cases']} = {100 * figures['model_pass_rate']:.1f}% "
                     f"(target >= {100 * MODEL_PASS_RATE_TARGET:.0f}%: {ok})")
    ok = "met" if figures["wrong"] == 0 and figures["crashed"] == 0 else "NOT met"
    lines.append(f"- wrong: {figures['wrong']}, crashed: {figures['crashed']} (target 0 and 0: {ok})")
    return "\n".join(lines) + "\n"


def short_message(message: str, limit: int = 160) -> str:
    """One line of a message: numpy's assertion text up to its array dumps, joined by '; '."""
    lines = []
    for line in message.splitlines():
        line = line.strip()
        if line.startswith(("ACTUAL:", "DESIRED:", "x:", "y:")):
            break
        if line:
            lines.append(line)
    text = "; ".join(lines).replace(":; ", ": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_failures(outcomes: list[Outcome]) -> str:
    failed = [o for o in outcomes if o.status in ("wrong", "crashed")]
    if not failed:
        return ""
    lines = ["### wrong and crashed cases", "", "| case | op | status | phase | message |", "|---|---|---|---|---|"]
    lines += [f"| {o.id} | {o.group} | {o.status} | {o.phase} | {short_message(o.message).replace('|', '/')} |"
              for o in sorted(failed, key=lambda o: (o.status, o.group, o.id))]
    return "\n".join(lines) + "\n"


def refusal_reasons(outcomes: list[Outcome], top: int = 20) -> list[tuple[str, int]]:
    """The commonest 'unsupported' messages, with node names and numbers taken out."""
    reasons = Counter()
    for outcome in outcomes:
        if outcome.status == "unsupported":
            message = re.sub(r" ?\(node [^)]*\)", "", short_message(outcome.message, 200))
            reasons[re.sub(r"'[^']*_\d+'|\b\d+\b", "#", message)] += 1
    return reasons.most_common(top)


def format_timings(outcomes: list[Outcome], wall_seconds: float) -> str:
    lines = ["### timings", ""]
    light = [o for o in outcomes if o.suite == "light"]
    if light:
        lines += ["| light model | status | compile s | simulate s |", "|---|---|---:|---:|"]
        lines += [f"| {o.name} | {o.status} | {o.compile_seconds:.1f} | {o.run_seconds:.1f} |" for o in light]
        lines.append("")
    for suite in SUITES:
        chosen = [o for o in outcomes if o.suite == suite]
        if chosen:
            busy = sum(o.compile_seconds + o.run_seconds for o in chosen)
            slowest = max(chosen, key=lambda o: o.compile_seconds + o.run_seconds)
            lines.append(f"- {suite}: {len(chosen)} cases, {busy:.0f} s of compile + simulate; slowest "
                         f"{slowest.name} ({slowest.compile_seconds + slowest.run_seconds:.1f} s)")
    lines.append(f"- wall time: {wall_seconds:.0f} s")
    return "\n".join(lines) + "\n"


def write_json(path: str, outcomes: list[Outcome], figures: dict, settings: dict) -> None:
    report = {"settings": settings, "acceptance": figures,
              "outcomes": [{"id": o.id, **asdict(o)} for o in outcomes]}
    Path(path).write_text(json.dumps(report, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--filter", help="regular expression searched in each case's 'suite/name' "
                        "(e.g. '^node/', 'conv', '^pytorch-')")
    parser.add_argument("--suites", default=",".join(SUITES), help=f"comma-separated subset of {','.join(SUITES)}")
    parser.add_argument("--skip-light", action="store_true", help="leave out the light models (ResNet-50 etc.)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case (default 120)")
    parser.add_argument("--light-timeout", type=float, default=1800.0,
                        help="seconds per light model (default 1800)")
    parser.add_argument("--memory-limit", type=float, default=8.0,
                        help="GiB of address space per worker, 0 for none (default 8)")
    parser.add_argument("--config", default="edge", help="accelerator config: preset name or JSON file")
    parser.add_argument("--json", help="write every case's outcome and message to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every case as it finishes")
    args = parser.parse_args(argv)

    suites = tuple(s for s in args.suites.split(",") if s and not (args.skip_light and s == "light"))
    unknown = set(suites) - set(SUITES)
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(sorted(unknown))}; the suites are {', '.join(SUITES)}")
    cases = load_cases(suites, args.filter)
    if not cases:
        parser.error("no case matches")
    print(f"{len(cases)} cases, config {args.config}, {args.jobs} jobs", file=sys.stderr)

    def progress(outcome: Outcome, done: int, total: int) -> None:
        if args.verbose or outcome.status in ("wrong", "crashed"):
            print(f"[{done}/{total}] {outcome.id}: {outcome.status} {short_message(outcome.message, 200)}",
                  file=sys.stderr)
        elif done % 100 == 0 or done == total:
            print(f"[{done}/{total}]", file=sys.stderr)

    start = time.perf_counter()
    outcomes = run_cases(cases, args.config, args.jobs, args.timeout, args.light_timeout, args.memory_limit,
                         progress)
    wall = time.perf_counter() - start
    figures = acceptance(outcomes)

    print(format_tables(outcomes))
    print(format_failures(outcomes))
    reasons = refusal_reasons(outcomes)
    if reasons:
        print("### commonest refusals\n\n| cases | message |\n|---:|---|")
        print("\n".join(f"| {n} | {reason.replace('|', '/')} |" for reason, n in reasons) + "\n")
    print(format_timings(outcomes, wall))
    print(format_acceptance(figures))
    if args.json:
        write_json(args.json, outcomes, figures, {**vars(args), "cases": len(cases), "wall_seconds": wall,
                                                  "onnx": onnx.__version__})
    return 1 if figures["wrong"] or figures["crashed"] else 0


if __name__ == "__main__":
    sys.exit(main())
