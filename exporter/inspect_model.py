"""``reroute inspect``: schedule, average visual tokens, theoretical TFLOPs and KV bytes."""

from __future__ import annotations

from engines.errors import RerouteError
from graphs.flops import flops, kv_bytes, tokens_per_layer
from graphs.schedule import Schedule, ScheduleError, solve_schedule

from .models import load_config
from .registry import decoder_config, family_of, num_visual_tokens

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def make_schedule(config, method: str, ratio: float, layers=None, keep_ratios=None,
                  num_visual: int | None = None) -> Schedule:
    """Solve the schedule for a model config, turning schedule errors into user-facing ones.

    ``num_visual``: an image's N_v (dynamic-resolution families); default the family's N_v (its capacity).
    """
    try:
        schedule = solve_schedule(method, ratio, decoder_config(config).num_layers, num_visual_tokens(config),
                                  layers, keep_ratios, at_least_one=family_of(config).dynamic_visual_tokens)
        return schedule if num_visual is None else schedule.for_num_visual(num_visual)
    except ScheduleError as exc:
        raise RerouteError(str(exc)) from None


def visual_tokens_of(config, visual_tokens: int | None = None, image: str | None = None) -> int | None:
    """N_v for ``inspect``: given (``--visual-tokens``), from an image's size (``--image``), or None (default)."""
    family = family_of(config)
    if image is not None:
        if not family.dynamic_visual_tokens:
            return None  # fixed N_v: the image does not change it
        from engines.inputs import load_image

        picture = load_image(image)
        return family.visual_tokens_for_size(config, *picture.size)
    if visual_tokens is None:
        return None
    fixed = num_visual_tokens(config)
    if not family.dynamic_visual_tokens and visual_tokens != fixed:
        raise RerouteError(f"{family.model_type} gives every image {fixed} visual tokens; "
                           f"--visual-tokens {visual_tokens} does not apply")
    if not (1 <= visual_tokens <= fixed):
        raise RerouteError(f"--visual-tokens must be in [1, {fixed}] (the most one image gives), got {visual_tokens}")
    return visual_tokens


def _dtype_name(config) -> str:
    dtype = getattr(config, "dtype", None) or getattr(config.text_config, "dtype", None) or "float32"
    return str(dtype).replace("torch.", "")


def inspect_report(model: str, method: str, ratio: float, layers=None, keep_ratios=None, text_tokens: int = 0,
                   kv_dtype: str | None = None, visual_tokens: int | None = None, image: str | None = None) -> dict:
    config = load_config(model)
    cfg = decoder_config(config)
    schedule = make_schedule(config, method, ratio, layers, keep_ratios, visual_tokens_of(config, visual_tokens, image))
    unrouted = solve_schedule("none", 1.0, cfg.num_layers, schedule.num_visual)
    dtype = kv_dtype or _dtype_name(config)
    if dtype not in DTYPE_BYTES:
        raise RerouteError(f"unknown KV dtype {dtype!r}; use one of {', '.join(DTYPE_BYTES)}")
    nbytes = DTYPE_BYTES[dtype]
    report = flops(cfg, schedule, text_tokens)
    return {
        "model": model,
        "method": schedule.method,
        "action": schedule.action,
        "ratio": schedule.ratio,
        "num_layers": cfg.num_layers,
        "num_visual": schedule.num_visual,
        "schedule": {"layers": list(schedule.layers), "keep_ratios": [round(r, 6) for r in schedule.keep_ratios],
                     "k": list(schedule.k), "value": schedule.value},
        "avg_visual_tokens": schedule.avg_visual_tokens(),
        "visual_tokens_per_layer": schedule.visual_tokens_per_layer(),
        "tflops": {**report.as_tflops(),
                   "convention": "visual tokens only" if text_tokens == 0 else f"all tokens ({text_tokens} text)",
                   "formula": "4nd^2 + 2n^2d + 3ndm per layer"},
        "kv_bytes": {"full": kv_bytes(cfg, tokens_per_layer(unrouted, text_tokens), nbytes),
                     "routed": kv_bytes(cfg, tokens_per_layer(schedule, text_tokens), nbytes),
                     "dtype": dtype, "text_tokens": text_tokens},
    }


def format_report(r: dict) -> str:
    s, t, kv = r["schedule"], r["tflops"], r["kv_bytes"]
    lines = [
        f"model {r['model']}: {r['num_layers']} layers, {r['num_visual']} visual tokens",
        f"method {r['method']} ({r['action'] or 'unrouted'}), ratio {r['ratio']:.4f}",
    ]
    if s["layers"]:
        lines.append(f"  decision layers  {s['layers']}")
        lines.append(f"  keep ratios      {[round(x, 4) for x in s['keep_ratios']]}")
        lines.append(f"  k per stage      {s['k']}")
    lines += [
        f"  avg visual tokens per layer  {r['avg_visual_tokens']:.1f} of {r['num_visual']}",
        f"  TFLOPs ({t['convention']})  full {t['full']:.3f}  routed {t['routed']:.3f}"
        f"  ({t['routed'] / t['full']:.3f}x)  + scoring {t['scoring_overhead'] * 1e3:.3f} GFLOPs",
        f"  KV cache ({kv['dtype']}, {kv['text_tokens']} text tokens)  full {kv['full'] / 2**20:.2f} MiB"
        f"  routed {kv['routed'] / 2**20:.2f} MiB  ({kv['routed'] / kv['full']:.3f}x)",
    ]
    return "\n".join(lines)
