"""The acc compiler: ONNX -> graph IR -> passes -> Program (model.bin).

    program = compiler.compile("model.onnx", config="edge", input_shapes={"x": (1, 3, 224, 224)})
"""


def compile(*args, **kwargs):
    """See compiler.pipeline.compile."""
    from compiler.pipeline import compile as compile_model

    return compile_model(*args, **kwargs)
