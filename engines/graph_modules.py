"""The four exportable graph modules over a loaded model's weights: what ``export`` traces and what
``parity`` runs as the torch reference graph by graph (so both see the very same modules)."""

from __future__ import annotations

import torch

from graphs.export_graphs import DecodeGraph, DynamicPrefillGraph, EmbedGraph, PrefillGraph
from graphs.llava import MergeEmbedding
from graphs.routed import RoutedDecoder


def build_graph_modules(loaded, schedule, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    """The four graph modules over the model's weights (shared, not copied), in ``dtype``.

    loaded: exporter.models.LoadedModel (hf_model, decoder_config, image_token_id, family).
    Dynamic-resolution families (Qwen2.5-VL) get the dynamic prefill: any N_v up to ``loaded.num_visual``
    (the capacity), every k_s computed in the graph."""
    hf = loaded.hf_model.to(dtype)
    decoder = RoutedDecoder.from_hf(hf, loaded.decoder_config, schedule)
    dynamic = getattr(loaded.family, "dynamic_visual_tokens", False)
    prefill = DynamicPrefillGraph(decoder.with_dynamic_capacity(loaded.num_visual)) if dynamic else PrefillGraph(decoder)
    return {
        "vision": loaded.family.vision_graph(hf).eval(),
        "embed": EmbedGraph(MergeEmbedding(hf.get_input_embeddings(), loaded.image_token_id)).eval(),
        "prefill": prefill.eval(),
        "decode": DecodeGraph(decoder, padded=not dynamic).eval(),  # Qwen: no padded batches yet
    }
