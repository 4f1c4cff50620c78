"""Routing maps: which of the 24x24 image patches each decision layer kept, deferred, or let re-enter.

``reroute inspect --routing-map OUT.png --image PATH --prompt TEXT`` runs the
PyTorch reference once (prefill + one token) and draws, over the image as the
processor crops it (336x336 for LLaVA-1.5), one panel per decision layer with a
semi-transparent colour per patch:

- active: the patch is among the layer's ``k_s`` selected visual tokens;
- deferred (routing) / deleted (FastV, PDrop): it is not;
- re-entered (routing only): active at this decision layer although it was
  deferred at the previous one, i.e. it comes back from the pool here.
  Deletion never re-admits a token, so deletion maps have no such patch.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np

from engines.errors import RerouteError

DEFERRED, ACTIVE, REENTERED = 0, 1, 2
STATE_NAMES = {DEFERRED: "deferred", ACTIVE: "active", REENTERED: "re-entered"}
# RGBA per state; alpha makes the overlay semi-transparent over the image
COLORS = {
    ACTIVE: (0.10, 0.80, 0.20, 0.30),
    DEFERRED: (0.05, 0.05, 0.15, 0.70),
    REENTERED: (1.00, 0.50, 0.00, 0.75),
}
PANEL_IN = (3.4, 3.9)  # inches per panel (width, height)
DPI = 100


def classify_patches(selections, num_visual: int) -> np.ndarray:
    """States [S, num_visual] (int8: DEFERRED 0, ACTIVE 1, REENTERED 2) from one sample's selections.

    ``selections[s]`` lists the original visual indices active from decision layer ``s`` on.
    A patch is REENTERED at ``s`` when it is active at ``s`` and was not active at ``s - 1``.
    """
    states = np.zeros((len(selections), num_visual), dtype=np.int8)
    previous = None
    for s, sel in enumerate(selections):
        idx = np.asarray(sel)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"selection {s} must be a 1-D integer array, got shape {idx.shape} {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= num_visual):
            raise ValueError(f"selection {s} has indices outside [0, {num_visual})")
        if len(np.unique(idx)) != idx.size:
            raise ValueError(f"selection {s} repeats an index")
        active = np.zeros(num_visual, dtype=bool)
        active[idx] = True
        states[s] = np.where(active, ACTIVE, DEFERRED)
        if previous is not None:
            states[s][active & ~previous] = REENTERED
        previous = active
    return states


def figure_size_px(num_decisions: int) -> tuple[int, int]:
    """(width, height) in pixels of a map with ``num_decisions`` layer panels plus the input panel."""
    return round(PANEL_IN[0] * (num_decisions + 1) * DPI), round(PANEL_IN[1] * DPI)


def cropped_image(processor, pixel_values: np.ndarray) -> np.ndarray:
    """The image as the processor cropped it: pixel_values [1, 3, H, W] un-normalized -> [H, W, 3] in [0, 1]."""
    ip = processor.image_processor
    mean = np.asarray(getattr(ip, "image_mean", None) or [0.0, 0.0, 0.0], dtype=np.float32)[:, None, None]
    std = np.asarray(getattr(ip, "image_std", None) or [1.0, 1.0, 1.0], dtype=np.float32)[:, None, None]
    img = pixel_values[0] * std + mean
    return np.clip(img.transpose(1, 2, 0), 0.0, 1.0)


def draw_routing_map(image: np.ndarray, states: np.ndarray, layers, action: str, out, title: str = "",
                     grid_shape: tuple[int, int] | None = None) -> Path:
    """Draw the panels and write the PNG atomically (temp file in the same folder, then rename).

    grid_shape: (rows, columns) of the visual tokens; default square (LLaVA's 24x24). Dynamic-resolution
    images (Qwen2.5-VL) give their own merged grid, e.g. 11 x 16 for 448x308."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    out = Path(out)
    num, n_v = states.shape
    side = math.isqrt(n_v)
    rows, cols = grid_shape or (side, side)
    if rows * cols != n_v:
        raise RerouteError(f"{n_v} visual tokens do not form a {rows}x{cols} patch grid")
    h, w = image.shape[:2]
    inactive = "deferred" if action == "compact_route" else "deleted"
    fig, axes = plt.subplots(1, num + 1, figsize=(PANEL_IN[0] * (num + 1), PANEL_IN[1]), dpi=DPI)
    axes[0].imshow(image, extent=(0, w, h, 0))
    axes[0].set_title(f"input ({w}x{h} crop)", fontsize=9)
    for s in range(num):
        ax = axes[s + 1]
        overlay = np.zeros((rows, cols, 4), dtype=np.float32)
        grid = states[s].reshape(rows, cols)
        for code, rgba in COLORS.items():
            overlay[grid == code] = rgba
        ax.imshow(image, extent=(0, w, h, 0))
        ax.imshow(overlay, extent=(0, w, h, 0), interpolation="nearest")
        counts = [int((states[s] == c).sum()) for c in (ACTIVE, REENTERED, DEFERRED)]
        kept = counts[0] + counts[1]
        text = f"layer {layers[s]}: {kept}/{n_v} active"
        if action == "compact_route" and s > 0:
            text += f"\n({counts[1]} re-entered)"
        ax.set_title(text, fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(facecolor=COLORS[ACTIVE], edgecolor="k", label="active"),
               Patch(facecolor=COLORS[DEFERRED], edgecolor="k", label=inactive)]
    if action == "compact_route":
        handles.append(Patch(facecolor=COLORS[REENTERED], edgecolor="k",
                             label="re-entered (deferred at the previous decision layer)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.80, bottom=0.08, wspace=0.04)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".png", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=DPI)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp files are private; a PNG is not
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        plt.close(fig)
    return out


def routing_map(model: str, image: str, prompt: str, method: str, ratio: float, out, layers=None,
                keep_ratios=None, loaded=None) -> dict:
    """Run the reference once and write the map; returns per-decision-layer counts."""
    from engines.generate import generate_inputs
    from engines.inputs import check_prompt, encode, load_image
    from engines.torch_runner import TorchBackend

    from .inspect_model import make_schedule
    from .models import load_model

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise RerouteError(f"--routing-map must name a .png file, got {out}")
    if not out.parent.is_dir():
        raise RerouteError(f"cannot write {out}: folder {out.parent} does not exist")
    picture = load_image(image)
    loaded = loaded or load_model(model)
    dynamic = loaded.family.dynamic_visual_tokens
    if not dynamic:
        check_prompt(prompt)
    schedule = make_schedule(loaded.config, method, ratio, layers, keep_ratios)
    if not schedule.routed:
        raise RerouteError(f"method {method!r} makes no routing decisions: choose a routed --method for a map")
    if dynamic:  # the family's checks, this image's own N_v and grid
        inputs = loaded.encode([prompt], [picture])
    else:
        inputs = encode(loaded.processor, [prompt], [picture], loaded.image_token_id, loaded.num_visual)
    gen = generate_inputs(TorchBackend(loaded, schedule), inputs, max_new_tokens=1)
    num_visual = inputs.num_visual or loaded.num_visual
    states = classify_patches([np.asarray(s[0]) for s in gen.selections], num_visual)
    title = f"{loaded.spec}: {method}, ratio {schedule.ratio:.4g} ({schedule.action})"
    if dynamic:
        grid, shown = _merged_grid(loaded.config, inputs.image_grid_thw[0], picture)
    else:
        grid, shown = None, cropped_image(loaded.processor, inputs.pixel_values)
    draw_routing_map(shown, states, schedule.layers, schedule.action, out, title, grid_shape=grid)
    return {
        "file": str(out),
        "method": method,
        "action": schedule.action,
        "layers": list(schedule.layers),
        "num_visual": int(num_visual),
        "per_layer": [{"layer": int(d), **{STATE_NAMES[c]: int((states[s] == c).sum())
                                           for c in (ACTIVE, DEFERRED, REENTERED)}}
                      for s, d in enumerate(schedule.layers)],
    }


def _merged_grid(config, grid_thw, picture) -> tuple[tuple[int, int], np.ndarray]:
    """Dynamic resolution: the visual tokens' (rows, columns) after the 2x2 merge, in raster order, and the
    picture resized as the processor resized it (each token covers a 28x28 square of it)."""
    merge = config.vision_config.spatial_merge_size
    rows, cols = int(grid_thw[1]) // merge, int(grid_thw[2]) // merge
    side = config.vision_config.patch_size * merge
    shown = np.asarray(picture.resize((cols * side, rows * side)), dtype=np.float32) / 255.0
    return (rows, cols), shown


def routing_map_for_cli(args) -> dict:
    """``reroute inspect --routing-map``: needs --image and --prompt; one-line errors otherwise."""
    if not args.routing_map:
        raise RerouteError("--image and --prompt are used with --routing-map OUT.png")
    missing = [flag for flag, value in (("--image", args.image), ("--prompt", args.prompt)) if not value]
    if missing:
        raise RerouteError(f"--routing-map needs {' and '.join(missing)}")
    return routing_map(args.model, args.image, args.prompt, args.method, args.ratio, args.routing_map,
                       args.layers, args.keep_ratios)


def format_summary(summary: dict) -> str:
    parts = [f"layer {p['layer']}: {p['active'] + p['re-entered']} active ({p['re-entered']} re-entered), "
             f"{p['deferred']} {'deferred' if summary['action'] == 'compact_route' else 'deleted'}"
             for p in summary["per_layer"]]
    return f"routing map written to {summary['file']}\n  " + "\n  ".join(parts)
