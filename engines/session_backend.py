"""Backends that run the exported graphs by name (ONNX Runtime, TensorRT): the four-graph calls once."""

from __future__ import annotations

import numpy as np

from graphs.export_graphs import kv_names

from .base import Prefill
from .errors import RerouteError

GRAPH_NAMES = ("vision", "embed", "prefill", "decode")
WEIGHT_SHARING = ("prefill", "decode")  # graphs that read the same decoder weights


class SessionBackend:
    """Subclasses implement :meth:`_open` (an inactive Polygraphy runner for one graph) and
    :meth:`comparator_runner`; feeds are cast to each graph's declared input dtypes.

    ``low_memory``: prefill and decode hold the same decoder weights (one data file, but each session or
    engine loads its own copy, and ONNX Runtime on CPU widens fp16 weights to fp32 per session), so at most
    one of them is open at a time, opened when first run. Parity uses it; serving keeps all open.
    """

    name = "session"
    copy_outputs = True  # runners (TensorRT) may reuse their output buffers on the next call

    def __init__(self, artifact, low_memory: bool = False):
        self.artifact = artifact
        self.low_memory = low_memory
        self.num_layers = artifact.decoder_config.num_layers
        self.num_stages = len(artifact.schedule.layers)
        self.dtypes = {g: {t["name"]: np.dtype(t["dtype"]) for t in spec["inputs"]}
                       for g, spec in artifact.manifest["graphs"].items()}
        self.runners: dict = {}

    def _open(self, graph: str):  # pragma: no cover - interface
        raise NotImplementedError

    def _forget(self, graph: str) -> None:
        """Drop what the subclass holds for ``graph`` besides its runner (e.g. its session)."""

    def _open_all(self, graphs) -> None:
        """Open the runners now (errors surface at start), unless ``low_memory`` opens them on first use."""
        if not self.low_memory:
            for graph in graphs:
                self._runner(graph)

    def _runner(self, graph: str):
        """The active runner of ``graph``; in low-memory mode its weight-sharing sibling is closed first."""
        if graph not in self.runners:
            self._make_room_for(graph)
            runner = self._open(graph)
            runner.activate()
            self.runners[graph] = runner
        return self.runners[graph]

    def _make_room_for(self, graph: str) -> None:
        """Low-memory mode: close the decoder graphs before ``graph``, one of them, opens."""
        if self.low_memory and graph in WEIGHT_SHARING:
            for other in WEIGHT_SHARING:
                self._close_one(other)

    def _close_one(self, graph: str) -> None:
        runner = self.runners.pop(graph, None)
        if runner is not None and runner.is_active:
            runner.deactivate()
        self._forget(graph)

    def comparator_runner(self, graph: str):  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        for graph in list(self.runners):
            self._close_one(graph)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def run(self, graph: str, feeds: dict) -> dict:
        """One graph: only its own inputs (an unrouted prefill has no visual_start), cast to its dtypes;
        outputs copied, as runners may reuse their buffers."""
        dtypes = self.dtypes[graph]
        cast = {k: np.ascontiguousarray(v, dtype=dtypes[k]) for k, v in feeds.items() if k in dtypes}
        out = self._runner(graph).infer(cast, check_inputs=False)
        return {k: np.array(v) for k, v in out.items()} if self.copy_outputs else dict(out)

    def vision(self, pixel_values, image_grid_thw=None):
        """Dynamic-resolution graphs also take ``image_grid_thw`` [B, 3] and its index tensors
        (engines/qwen_vision_inputs.py), from the vision settings the manifest records."""
        feeds = {"pixel_values": pixel_values}
        if image_grid_thw is not None:
            from types import SimpleNamespace

            from .qwen_vision_inputs import vision_index_inputs

            vision_config = SimpleNamespace(**self.artifact.manifest["model"]["vision"])
            feeds.update(image_grid_thw=image_grid_thw, **vision_index_inputs(image_grid_thw, vision_config))
            missing = sorted(set(self.dtypes["vision"]) - set(feeds))
            if missing:  # an export from before the vision graph's inputs changed (window batches)
                raise RerouteError(f"{self.artifact.root}: its vision graph takes {', '.join(missing)}, inputs of an "
                                   f"older export; re-export the artifact")
        return self.run("vision", feeds)["image_features"]

    def embed(self, input_ids, image_features):
        return self.run("embed", {"input_ids": input_ids, "image_features": image_features})["inputs_embeds"]

    def _cache(self, out: dict) -> list:
        names = kv_names("present", self.num_layers)
        return [(out[names[2 * i]], out[names[2 * i + 1]]) for i in range(self.num_layers)]

    def prefill(self, inputs_embeds, visual_start, position_ids=None, num_visual: int | None = None,
                attention_mask=None) -> Prefill:
        """visual_start: an int, or one per sample ([B], a left-padded batch with ``attention_mask`` [B, T]
        and ``position_ids`` [B, T]); :func:`prefill_feeds` fills what a padding-free call leaves out.
        position_ids [3, B, T] and num_visual (N_v) for dynamic-resolution graphs: N_v reaches the graph
        as the length of ``visual_span`` (the span's prompt indices), from which it derives every k_s."""
        if num_visual is not None:
            feeds = {"inputs_embeds": inputs_embeds, "visual_start": np.array([visual_start], dtype=np.int64),
                     "position_ids": position_ids,
                     "visual_span": np.arange(visual_start, visual_start + num_visual, dtype=np.int64)}
        else:
            feeds = prefill_feeds(inputs_embeds, visual_start, position_ids, attention_mask)
        out = self.run("prefill", feeds)
        selections = [out[f"routing.{s}.indices"] for s in range(self.num_stages)]
        return Prefill(out["logits"].astype(np.float32), self._cache(out), selections)

    def decode(self, inputs_embeds, positions, cache, pad_lengths=None):
        """pad_lengths: [B] left padding at the front of each sample's caches (None: none); graphs
        without the input (dynamic resolution) are not fed it."""
        b = inputs_embeds.shape[0]
        pad = np.zeros(b, dtype=np.int64) if pad_lengths is None else np.asarray(pad_lengths, dtype=np.int64)
        feeds = {"inputs_embeds": inputs_embeds, "position_ids": positions, "pad_lengths": pad}
        for i, (k, v) in enumerate(cache):
            feeds[f"past_key_values.{i}.key"], feeds[f"past_key_values.{i}.value"] = k, v
        out = self.run("decode", feeds)
        return out["logits"].astype(np.float32), self._cache(out)

    def cache_lengths(self, cache) -> list[int]:
        return [k.shape[2] for k, _ in cache]


def prefill_feeds(inputs_embeds, visual_start, position_ids=None, attention_mask=None) -> dict:
    """The fixed-resolution prefill's feeds: visual_start [B], position_ids [B, T], attention_mask [B, T].

    A padding-free call may give one int start and no positions or mask: every sample then starts its
    span at ``visual_start``, positions are 0..T-1 and the mask is all ones (the graph's unpadded result).
    """
    b, t = inputs_embeds.shape[:2]
    starts = np.broadcast_to(np.asarray(visual_start, dtype=np.int64).reshape(-1), (b,))
    positions = np.broadcast_to(np.arange(t, dtype=np.int64), (b, t)) if position_ids is None else position_ids
    mask = np.ones((b, t), dtype=np.int64) if attention_mask is None else attention_mask
    return {"inputs_embeds": inputs_embeds, "visual_start": starts, "position_ids": positions,
            "attention_mask": mask}
