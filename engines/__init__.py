"""Runtimes and builders: PyTorch reference, ONNX Runtime, TensorRT, plugins, serving.

Heavy dependencies (onnxruntime, tensorrt, tritonclient) are imported lazily,
so every module here imports without them.
"""
