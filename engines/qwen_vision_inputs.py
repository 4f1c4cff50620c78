"""Preprocessing for Qwen2.5-VL's exported vision graph: the grid-dependent index tensors it takes as inputs.

Everything that depends on the image grid (window order, attention blocks, rotary
positions) is computed here, per request, with transformers' own helpers, so the
graph (graphs/qwen_vision_graph.py) holds no Python control flow on data.
"""

from __future__ import annotations

import numpy as np

VISION_INDEX_INPUTS = ("window_index", "reverse_index", "rotary_pos", "window_slots", "patch_slots")


def vision_index_inputs(image_grid_thw: np.ndarray, vision_config) -> dict[str, np.ndarray]:
    """image_grid_thw [B, 3] -> the vision graph's index inputs (int64 numpy arrays, see the graph's docstring)."""
    import torch
    from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

    grid = torch.from_numpy(np.asarray(image_grid_thw, dtype=np.int64))
    merge = vision_config.spatial_merge_size
    unit = merge * merge
    window_index, cu_windows = get_vision_window_index(grid, spatial_merge_size=merge,
                                                       window_size=vision_config.window_size,
                                                       patch_size=vision_config.patch_size)
    positions = get_vision_position_ids(grid, merge)  # [P, 2], image order
    patches = positions.shape[0]
    # patch order after the window permutation (merge units move as a whole)
    patch_order = (window_index[:, None] * unit + torch.arange(unit)).reshape(-1)  # [P]
    return {
        "window_index": window_index.numpy().astype(np.int64),
        "reverse_index": torch.argsort(window_index).numpy().astype(np.int64),
        "rotary_pos": positions[patch_order].numpy().astype(np.int64),
        **window_slots(cu_windows, patches, window_patches(vision_config)),
    }


def window_patches(vision_config) -> int:
    """The most patches one attention window holds: (window_size / patch_size)^2 (64 for Qwen2.5-VL)."""
    return (vision_config.window_size // vision_config.patch_size) ** 2


def window_slots(cu_windows, patches: int, width: int) -> dict[str, np.ndarray]:
    """Windows as a padded batch: ``window_slots`` [W, width], the patches (window order) of each window,
    ``patches`` (a zero pad row) past its end; ``patch_slots`` [P], each patch's place in the flattened
    [W * width] batch. Windows are contiguous runs in window order (``cu_windows``); edge windows are shorter."""
    bounds = np.asarray(cu_windows, dtype=np.int64)
    starts, lengths = bounds[:-1], np.diff(bounds)  # [W] each
    offsets = np.arange(width, dtype=np.int64)  # [width]
    slots = np.where(offsets < lengths[:, None], starts[:, None] + offsets, patches)  # [W, width]
    window_of = np.repeat(np.arange(len(starts), dtype=np.int64), lengths)  # [P]
    return {"window_slots": slots.astype(np.int64),
            "patch_slots": window_of * width + (np.arange(patches, dtype=np.int64) - starts[window_of])}
