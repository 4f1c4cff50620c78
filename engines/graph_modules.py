"""The four exportable graph modules over a loaded model's weights: what ``export`` traces and what
``parity`` runs as the torch reference graph by graph (so both see the very same modules)."""

from __future__ import annotations

import torch

from graphs.export_graphs import DecodeGraph, EmbedGraph, PrefillGraph, VisionGraph
from graphs.llava import MergeEmbedding, VisionEncoder
from graphs.routed import RoutedDecoder


def build_graph_modules(loaded, schedule, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    """The four graph modules over the model's weights (shared, not copied), in ``dtype``.

    loaded: exporter.models.LoadedModel (hf_model, decoder_config, image_token_id)."""
    hf = loaded.hf_model.to(dtype)
    decoder = RoutedDecoder.from_hf(hf, loaded.decoder_config, schedule)
    return {
        "vision": VisionGraph(VisionEncoder(hf)).eval(),
        "embed": EmbedGraph(MergeEmbedding(hf.get_input_embeddings(), loaded.image_token_id)).eval(),
        "prefill": PrefillGraph(decoder).eval(),
        "decode": DecodeGraph(decoder).eval(),
    }
