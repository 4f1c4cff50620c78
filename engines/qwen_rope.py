"""Qwen2.5-VL's M-RoPE position ids from transformers' own ``get_rope_index``, on the saved config alone.

Self-contained (numpy, torch, transformers; nothing of reroute): ``reroute deploy`` copies this file
next to the Triton pipeline model, which runs without the reroute package.
"""

from __future__ import annotations

import numpy as np


def rope_index(config, input_ids: np.ndarray, mm_token_type_ids: np.ndarray, image_grid_thw: np.ndarray):
    """M-RoPE position ids [3, B, T] and rope deltas [B] from transformers' own ``get_rope_index``.

    It only reads ``config``, so it runs on a stand-in object and needs no weights (serving and the
    ONNX backends preprocess the same way).
    """
    import types

    import torch
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

    shim = types.SimpleNamespace(config=config)
    shim.get_vision_position_ids = types.MethodType(Qwen2_5_VLModel.get_vision_position_ids, shim)
    positions, deltas = Qwen2_5_VLModel.get_rope_index(
        shim, torch.from_numpy(input_ids), mm_token_type_ids=torch.from_numpy(mm_token_type_ids.astype(np.int64)),
        image_grid_thw=torch.from_numpy(image_grid_thw),
    )
    return positions.numpy().astype(np.int64), deltas.reshape(-1).numpy().astype(np.int64)
