"""GPT-2-style decoder with a static KV cache: its ONNX export and the onnxruntime reference loop."""
