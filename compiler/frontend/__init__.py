"""The ONNX front end: ONNX model -> Graph IR (compiler/ir.py) in the normalised forms of docs/compiler.md.

`import_model` does the work (onnx_import.py); `unsupported_ops` lists what a model uses
that acc cannot import, without importing it (`acc-compile --check`); `supported_ops`
lists the op types the importer accepts (`acc-compile --list-ops`).
"""

from compiler.frontend.onnx_import import import_model, supported_ops, unsupported_ops

__all__ = ["import_model", "supported_ops", "unsupported_ops"]
