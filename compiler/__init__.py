"""The acc compiler: ONNX -> graph IR -> passes -> model.bin (being built; see compiler/cli.py)."""
