"""Every backend by name over an exported artifact: the one place ``generate``, ``parity`` and ``serve``
choose one. Each implements the four-graph interface of :mod:`engines.base`."""

from __future__ import annotations

from .errors import RerouteError

BACKENDS = ("torch", "onnxruntime", "tensorrt", "tensorrt-no-plugins")


def open_backend(name: str, artifact, model=None, plugins: bool = True, threads: int | None = None,
                 device: str = "cpu", low_memory: bool = False):
    """``model``: the loaded checkpoint (exporter.models.LoadedModel), needed by ``torch`` only;
    ``threads``: ONNX Runtime intra-op threads (None: its default); ``device``: where the torch reference runs;
    ``low_memory``: the graph backends open prefill and decode one at a time (engines/session_backend.py)."""
    if name == "torch":
        import torch

        from .torch_runner import TorchBackend

        if model is None:
            raise RerouteError("the torch backend runs the checkpoint, not the artifact: give the loaded model")
        return TorchBackend(model, artifact.schedule, getattr(torch, artifact.dtype), device)
    if name == "onnxruntime":
        from .ort_runner import OrtBackend

        return OrtBackend(artifact, threads=threads, low_memory=low_memory)
    if name in ("tensorrt", "tensorrt-no-plugins"):
        from .trt_runner import TrtBackend  # one-line RerouteErrors for missing TensorRT or engines

        backend = TrtBackend(artifact, plugins=plugins and name == "tensorrt", low_memory=low_memory)
        backend.name = name
        return backend
    raise RerouteError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")


def artifact_backend(path: str, backend: str, plugins: bool = True):
    """(processor, image_token_id, num_visual, backend, eos_token_id, artifact) for an exported folder
    (``generate`` with a non-torch backend)."""
    from .artifact import open_artifact

    artifact = open_artifact(path)
    model = artifact.manifest["model"]
    runner = open_backend(backend, artifact, plugins=plugins)
    return artifact.processor(), model["image_token_id"], model["num_visual"], runner, model["eos_token_id"], artifact
