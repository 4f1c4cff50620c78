"""ONNX Runtime backend over an exported artifact (Polygraphy's OnnxrtRunner around our sessions)."""

from __future__ import annotations

import os

from .session_backend import GRAPH_NAMES, SessionBackend


def make_session(path, providers: list[str] | None = None, threads: int | None = None, options=None):
    """An InferenceSession with ORT_ENABLE_ALL (``options``: caller-made SessionOptions, e.g. for profiling)."""
    import onnxruntime as ort

    if options is None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
    return ort.InferenceSession(os.fspath(path), sess_options=options, providers=providers or ["CPUExecutionProvider"])


class OrtBackend(SessionBackend):
    """``graphs``: open only these graphs' sessions (the bench times prefill and decode from different
    artifacts); ``options``: SessionOptions for every session (the bench's profiler)."""

    name = "onnxruntime"
    copy_outputs = False  # InferenceSession.run returns fresh arrays: no buffer is reused between calls

    def __init__(self, artifact, providers: list[str] | None = None, threads: int | None = None,
                 graphs: tuple[str, ...] = GRAPH_NAMES, options=None, low_memory: bool = False):
        super().__init__(artifact, low_memory)
        self.providers, self.threads, self.options = providers, threads, options
        self.sessions: dict = {}
        self._open_all(graphs)

    def _open(self, graph: str):
        """A new session (kept in ``sessions`` while its runner is open) and a runner over it."""
        from polygraphy.backend.onnxrt import OnnxrtRunner

        self.sessions[graph] = make_session(self.artifact.graph_path(graph), self.providers, self.threads,
                                            self.options)
        return OnnxrtRunner(self.sessions[graph], name=f"ort-{graph}")

    def _forget(self, graph: str) -> None:
        self.sessions.pop(graph, None)

    def comparator_runner(self, graph: str):
        """A fresh, inactive runner over the same session (Polygraphy's Comparator activates its runners)."""
        from polygraphy.backend.onnxrt import OnnxrtRunner

        self._runner(graph)  # opens the session (closing its weight-sharing sibling in low-memory mode)
        return OnnxrtRunner(self.sessions[graph], name=f"onnxruntime-{graph}")
