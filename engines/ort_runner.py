"""ONNX Runtime backend over an exported artifact (Polygraphy's OnnxrtRunner around our sessions)."""

from __future__ import annotations

import os

from .session_backend import GRAPH_NAMES, SessionBackend


def make_session(path, providers: list[str] | None = None, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(os.fspath(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"])


class OrtBackend(SessionBackend):
    name = "onnxruntime"

    def __init__(self, artifact, providers: list[str] | None = None, threads: int | None = None):
        from polygraphy.backend.onnxrt import OnnxrtRunner

        super().__init__(artifact)
        self.sessions = {g: make_session(artifact.graph_path(g), providers, threads) for g in GRAPH_NAMES}
        self._activate({g: OnnxrtRunner(s, name=f"ort-{g}") for g, s in self.sessions.items()})

    def comparator_runner(self, graph: str):
        """A fresh, inactive runner over the same session (Polygraphy's Comparator activates its runners)."""
        from polygraphy.backend.onnxrt import OnnxrtRunner

        return OnnxrtRunner(self.sessions[graph], name=f"onnxruntime-{graph}")
