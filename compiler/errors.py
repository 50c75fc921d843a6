"""The compiler's user errors (all `AccError`s: one line at the command line, no traceback).

- `ModelError`: the model file is unreadable, not ONNX, fails onnx's checker or shape
  inference, or is inconsistent (an input whose shape no op accepts).
- `UnsupportedOpError`: a valid model that uses something acc does not handle. It is a
  `NotImplementedError` too, which is what onnx's backend test runner counts as
  "unsupported" rather than "failed". `UnsupportedTypeError` is the same for a tensor
  of a data type acc does not handle.
- `InputShapeError`: an `--input-shape` binding that does not fit the model, or a
  dynamic dimension that no binding fixes.
- `CalibrationError`: calibration samples that do not fit the model (unreadable, empty,
  misnamed, of the wrong shape or dtype, not finite), or a model that fails on them.
- `StateError`: a state declaration (`--state OUT=IN`) that names no output or input,
  pairs tensors of different shapes or dtypes, or an output that cannot update its input
  in place.
"""

from __future__ import annotations

from isa.errors import AccError


class ModelError(AccError):
    """A malformed, unreadable or inconsistent ONNX model."""


class UnsupportedOpError(AccError, NotImplementedError):
    """A valid op (or a valid use of one) that acc cannot compile.

    The message names the op type, the node and the opset, e.g.
    ``unsupported op 'NonMaxSuppression' (node 'nms_1', opset 17)``, followed by the
    reason when the op is supported in general but not this use of it."""

    def __init__(self, op_type: str, node_name: str, opset: int | None = None, reason: str = "",
                 needs_constant: str | None = None):
        self.op_type, self.node_name, self.opset, self.reason = op_type, node_name, opset, reason
        # The value the compiler would need as a compile-time constant, when that is the only obstacle:
        # runtime.backend then compiles once run() brings it.
        self.needs_constant = needs_constant
        where = f"node {node_name!r}" + (f", opset {opset}" if opset is not None else "")
        super().__init__(f"unsupported op {op_type!r} ({where})" + (f": {reason}" if reason else ""))

    def __reduce__(self):
        return type(self), (self.op_type, self.node_name, self.opset, self.reason, self.needs_constant)


class UnsupportedTypeError(UnsupportedOpError):
    """A tensor of a data type acc does not compute with (double, float16, string, ...)."""

    def __init__(self, tensor: str, dtype: str, where: str = ""):
        self.tensor, self.dtype, self.where = tensor, dtype, where
        message = f"unsupported data type {dtype} of tensor {tensor!r}" + (f" ({where})" if where else "")
        AccError.__init__(self, message)
        self.op_type, self.node_name, self.opset, self.reason, self.needs_constant = None, None, None, "", None

    def __reduce__(self):
        return type(self), (self.tensor, self.dtype, self.where)


class InputShapeError(AccError):
    """An input shape binding that names no input, has the wrong rank or contradicts the model."""


class CalibrationError(AccError):
    """Calibration samples that are unreadable, empty or do not fit the model's inputs, or a sample the model
    fails on; the message names the array or sample and the problem."""


class StateError(AccError):
    """A state pair (an output that updates an input in place) that the model cannot honour; the message
    names the pair and why."""
