"""What every acc command-line tool shares: one-line errors, --debug, atomic file writes.

A user error (`AccError`) prints `TOOL: error: MESSAGE` on one line and exits 2; any
other exception is a bug in acc and prints `TOOL: internal error: ...` and exits 3. With
`--debug` the traceback is shown instead. Output files are written to a temporary file
in the same directory and renamed, so they appear whole or not at all.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from isa.errors import AccError

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other error."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def run_tool(prog: str, main: Callable[[list[str]], int], argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        return main(argv)
    except AccError as err:
        if debug:
            raise
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # the reader went away (acc-objdump | head): not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug in acc, not in the user's input
        if debug:
            raise
        print(f"{prog}: internal error: {type(err).__name__}: {_one_line(err)} (rerun with --debug for the "
              "traceback)", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write `data` to `path` so that the file appears whole or not at all."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise AccError(f"cannot write {str(path)!r}: directory {str(directory)!r} does not exist")
    if path.is_dir():
        raise AccError(f"cannot write {str(path)!r}: it is a directory")
    if isinstance(data, str):
        data = data.encode()
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise AccError(f"cannot write {str(path)!r}: {err.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise AccError(f"cannot write {str(path)!r}: {err.strerror}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ProgressLine:
    """`LABEL: 12/32 UNIT  DETAIL` rewritten in place on a stream (stderr), for a long loop of a tool;
    `close` ends the line."""

    def __init__(self, label: str, total: int, unit: str, stream=None):
        self.label, self.total, self.unit, self.done = label, total, unit, 0
        self.stream = stream or sys.stderr
        self._width = 0
        self._show("")

    def step(self, detail: str = "") -> None:
        self.done += 1
        self._show(detail)

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()

    def _show(self, detail: str) -> None:
        text = f"{self.label}: {self.done}/{self.total} {self.unit}" + (f"  {detail}" if detail else "")
        self.stream.write("\r" + text.ljust(self._width))  # padded over a longer previous line
        self._width = max(self._width, len(text))
        self.stream.flush()
