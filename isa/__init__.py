"""The acc instruction set: the accelerator config, the one ISA table, encoding,
assembly text and the model.bin format."""
