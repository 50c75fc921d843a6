"""The project's exceptions.

`AccError` and its subclasses are user errors: the command-line tools print their message
as one line and exit non-zero (the traceback only with --debug). Anything else escaping
to the top level is an internal error, a bug in acc.
"""


class AccError(Exception):
    """A problem with what the user gave us (a file, a config, an input)."""


class ConfigError(AccError):
    """An impossible or malformed accelerator config."""


class EncodingError(AccError):
    """A value that does not fit its instruction field, or bits that decode to no instruction."""


class AssemblyError(AccError):
    """Assembly text that does not parse or names something unknown."""


class BinaryFormatError(AccError):
    """A model.bin that is corrupt, truncated, of an unknown version or inconsistent."""


class SimulationError(AccError):
    """An instruction that cannot execute: out of range, misaligned, a deadlock.

    The message names the instruction index and its disassembly."""

    def __init__(self, message: str, index: int | None = None, disassembly: str | None = None):
        where = f"instruction {index}" if index is not None else "program"
        if disassembly:
            where += f" ({disassembly})"
        super().__init__(f"{where}: {message}")
        self.index = index


class InputError(AccError):
    """Inputs that do not match the program's I/O table (name, shape, dtype)."""


class InternalError(Exception):
    """An invariant of acc itself broke (e.g. simulated cycles below the roofline)."""
