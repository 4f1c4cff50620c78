"""Preprocessing for Qwen2.5-VL's exported vision graph: the grid-dependent index tensors it takes as inputs.

Everything that depends on the image grid (window order, attention blocks, rotary
positions) is computed here, per request, with transformers' own helpers, so the
graph (graphs/qwen_vision_graph.py) holds no Python control flow on data.
"""

from __future__ import annotations

import numpy as np

VISION_INDEX_INPUTS = ("window_index", "reverse_index", "rotary_pos", "image_segments", "window_segments")


def vision_index_inputs(image_grid_thw: np.ndarray, vision_config) -> dict[str, np.ndarray]:
    """image_grid_thw [B, 3] -> the vision graph's index inputs (int64 numpy arrays, see the graph's docstring)."""
    import torch
    from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

    grid = torch.from_numpy(np.asarray(image_grid_thw, dtype=np.int64))
    merge = vision_config.spatial_merge_size
    unit = merge * merge
    window_index, cu_windows = get_vision_window_index(grid, spatial_merge_size=merge,
                                                       window_size=vision_config.window_size,
                                                       patch_size=vision_config.patch_size)
    cu_images = get_vision_cu_seqlens(grid)
    positions = get_vision_position_ids(grid, merge)  # [P, 2], image order
    patches = positions.shape[0]
    # patch order after the window permutation (merge units move as a whole)
    patch_order = (window_index[:, None] * unit + torch.arange(unit)).reshape(-1)  # [P]
    return {
        "window_index": window_index.numpy().astype(np.int64),
        "reverse_index": torch.argsort(window_index).numpy().astype(np.int64),
        "rotary_pos": positions[patch_order].numpy().astype(np.int64),
        "image_segments": _segments(cu_images, patches),
        "window_segments": _segments(cu_windows, patches),
    }


def _segments(cu_seqlens, total: int) -> np.ndarray:
    """Cumulative lengths [S + 1] -> segment id of each of the ``total`` positions, int64 [total]."""
    bounds = np.asarray(cu_seqlens, dtype=np.int64)[1:]
    return np.searchsorted(bounds, np.arange(total), side="right").astype(np.int64)
