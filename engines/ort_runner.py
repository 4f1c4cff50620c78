"""ONNX Runtime backend over an exported artifact (Polygraphy's OnnxrtRunner around our sessions)."""

from __future__ import annotations

import os

import numpy as np

from graphs.export_graphs import kv_names

from .base import Prefill


def make_session(path, providers: list[str] | None = None, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(os.fspath(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"])


class OrtBackend:
    name = "onnxruntime"

    def __init__(self, artifact, providers: list[str] | None = None, threads: int | None = None):
        from polygraphy.backend.onnxrt import OnnxrtRunner

        self.artifact = artifact
        self.num_layers = artifact.decoder_config.num_layers
        self.num_stages = len(artifact.schedule.layers)
        self.sessions = {name: make_session(artifact.graph_path(name), providers, threads)
                         for name in ("vision", "embed", "prefill", "decode")}
        self.runners = {}
        for name, session in self.sessions.items():
            self.runners[name] = OnnxrtRunner(session, name=f"ort-{name}")
            self.runners[name].activate()
        self.dtypes = {name: {t["name"]: np.dtype(t["dtype"]) for t in g["inputs"]}
                       for name, g in artifact.manifest["graphs"].items()}

    def comparator_runner(self, graph: str):
        """A fresh, inactive runner over the same session (Polygraphy's Comparator activates its runners)."""
        from polygraphy.backend.onnxrt import OnnxrtRunner

        return OnnxrtRunner(self.sessions[graph], name=f"onnxruntime-{graph}")

    def close(self):
        for runner in self.runners.values():
            runner.deactivate()
        self.runners = {}

    def run(self, graph: str, feeds: dict) -> dict:
        """One graph, feeds cast to the graph's input dtypes; outputs copied (runners reuse buffers)."""
        dtypes = self.dtypes[graph]  # only the graph's own inputs (an unrouted prefill has no visual_start)
        cast = {k: np.ascontiguousarray(v, dtype=dtypes[k]) for k, v in feeds.items() if k in dtypes}
        return {k: np.array(v) for k, v in self.runners[graph].infer(cast, check_inputs=False).items()}

    def vision(self, pixel_values):
        return self.run("vision", {"pixel_values": pixel_values})["image_features"]

    def embed(self, input_ids, image_features):
        return self.run("embed", {"input_ids": input_ids, "image_features": image_features})["inputs_embeds"]

    def prefill(self, inputs_embeds, visual_start: int) -> Prefill:
        out = self.run("prefill", {"inputs_embeds": inputs_embeds,
                                   "visual_start": np.array([visual_start], dtype=np.int64)})
        names = kv_names("present", self.num_layers)
        cache = [(out[names[2 * i]], out[names[2 * i + 1]]) for i in range(self.num_layers)]
        selections = [out[f"routing.{s}.indices"] for s in range(self.num_stages)]
        return Prefill(out["logits"].astype(np.float32), cache, selections)

    def decode(self, inputs_embeds, positions, cache):
        feeds = {"inputs_embeds": inputs_embeds, "position_ids": positions}
        for i, (k, v) in enumerate(cache):
            feeds[f"past_key_values.{i}.key"], feeds[f"past_key_values.{i}.value"] = k, v
        out = self.run("decode", feeds)
        names = kv_names("present", self.num_layers)
        new = [(out[names[2 * i]], out[names[2 * i + 1]]) for i in range(self.num_layers)]
        return out["logits"].astype(np.float32), new

    def cache_lengths(self, cache) -> list[int]:
        return [k.shape[2] for k, _ in cache]
