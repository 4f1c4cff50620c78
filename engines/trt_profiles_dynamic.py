"""TensorRT optimization profiles for dynamic-resolution artifacts (Qwen2.5-VL): N_v ranges over 1..capacity.

The fixed-resolution profiles (engines/trt_build.py) pin N_v; here the visual
token count and with it the patch count, the prompt length and every layer's
KV length vary per request, bounded by the manifest's ``max_visual_tokens``.
``visual_start`` stays a shape input (its values bound the pool's slice).
"""

from __future__ import annotations

Shape = tuple[int, ...]


def dynamic_profiles(artifact, graph: str, opt_text: int) -> dict[str, tuple[Shape, Shape, Shape]]:
    m = artifact.manifest
    cfg = artifact.decoder_config
    b, s_max = m["capacity"]["max_batch"], m["capacity"]["max_sequence"]
    n_max = m["capacity"]["max_visual_tokens"]
    unit = m["model"]["vision"]["spatial_merge_size"] ** 2
    n_opt = min(n_max, 256)
    s_min, s_opt = 4, min(n_opt + opt_text, s_max)  # vision start, one pad, vision end, one text token
    d, kvh, hd = cfg.hidden_size, cfg.num_kv_heads, cfg.head_dim
    if graph == "vision":
        width = m["graphs"]["vision"]["inputs"][0]["shape"][1]
        patches = (unit, unit * n_opt, b * unit * n_max)
        units = (1, n_opt, b * n_max)
        slots = (m["model"]["vision"]["window_size"] // m["model"]["vision"]["patch_size"]) ** 2  # S per window
        windows = (1, max(1, n_opt * unit // slots), b * n_max)  # a window holds 1..S / unit merge units
        return {"pixel_values": tuple((p, width) for p in patches), "image_grid_thw": ((1, 3), (1, 3), (b, 3)),
                "window_index": tuple((u,) for u in units), "reverse_index": tuple((u,) for u in units),
                "rotary_pos": tuple((p, 2) for p in patches), "window_slots": tuple((w, slots) for w in windows),
                "patch_slots": tuple((p,) for p in patches)}
    if graph == "embed":
        return {"input_ids": ((1, 1), (1, s_opt), (b, s_max)),
                "image_features": ((1, 0, d), (1, n_opt, d), (b, n_max, d))}
    if graph == "prefill":
        profile = {"inputs_embeds": ((1, s_min, d), (1, s_opt, d), (b, s_max, d)),
                   "position_ids": ((3, 1, s_min), (3, 1, s_opt), (3, b, s_max))}
        names = {t["name"] for t in m["graphs"]["prefill"]["inputs"]}
        if "visual_start" in names:
            profile["visual_start"] = ((1,), (opt_text // 2,), (s_max - 3,))  # values: after <|vision_start|>
            profile["visual_span"] = ((1,), (n_opt,), (n_max,))
        return profile
    profile = {"inputs_embeds": ((1, 1, d), (1, 1, d), (b, 1, d)), "position_ids": ((3, 1, 1), (3, 1, 1), (3, b, 1))}
    for entry in m["kv"]:
        # past = text + this layer's visual tokens; both vary with the request (N_v from 1 to the capacity)
        lengths = (s_min - 1, opt_text + n_opt, s_max - 1)
        for kind in ("key", "value"):
            profile[f"past_key_values.{entry['layer']}.{kind}"] = tuple((bb, kvh, n, hd) for bb, n in
                                                                        zip((1, 1, b), lengths))
    return profile
