"""CUDA latency of every routing method against the unrouted decoder, random weights built on the GPU.

Needs only torch and graphs/ (no transformers, no download): the decoder shapes are fixed here and a
CPU test checks them against the presets (llava-bench, LLaVA-1.5-7B). Timing: CUDA events around the
prefill and around DECODE_STEPS decode steps; methods run interleaved within each round (the order
rotates), and every figure is reported as a ratio to the unrouted model in the same round (median
over rounds), next to the median milliseconds.
"""

from __future__ import annotations

import statistics
import time

from graphs.config import DecoderConfig
from graphs.schedule import METHODS, solve_schedule

SHAPES = {
    "llava-bench": DecoderConfig(hidden_size=1024, intermediate_size=2816, num_layers=32, num_heads=16,
                                 num_kv_heads=16, head_dim=64, vocab_size=32000),
    "llava-1.5-7b": DecoderConfig(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
                                  num_kv_heads=32, head_dim=128, vocab_size=32064),
}
NUM_VISUAL = 576  # (336 / 14)^2 patches, LLaVA-1.5
TEXT_BEFORE, TEXT_AFTER = 35, 29  # a LLaVA-1.5 chat prompt around the image: 640 tokens in all
RATIO = 0.25
DECODE_STEPS = 16
BASELINE = "none"


def prompt_tokens() -> int:
    return TEXT_BEFORE + NUM_VISUAL + TEXT_AFTER


def parameter_count(cfg: DecoderConfig) -> int:
    """Decoder + final norm + lm_head (the embedding table is not needed: inputs are embeddings)."""
    d, kv = cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim
    attn = d * cfg.num_heads * cfg.head_dim * 2 + d * kv * 2
    mlp = 3 * d * cfg.intermediate_size
    return cfg.num_layers * (attn + mlp + 2 * d) + d + cfg.vocab_size * d


def memory_estimate(cfg: DecoderConfig, batch: int = 1, dtype_bytes: int = 2) -> dict:
    """Bytes on the GPU for one shape: shared weights, the unrouted KV cache (the largest) and
    activations: one layer's MLP intermediates (gate, up, product: [B, T, I] each) plus, should SDPA
    fall back to its math kernel, the [B, H, T, T] attention scores in fp32."""
    t = prompt_tokens() + DECODE_STEPS
    weights = parameter_count(cfg) * dtype_bytes
    kv_cache = cfg.num_layers * 2 * batch * cfg.num_kv_heads * t * cfg.head_dim * dtype_bytes
    activations = 3 * batch * t * cfg.intermediate_size * dtype_bytes + batch * cfg.num_heads * t * t * 4
    return {"weights": weights, "kv_cache": kv_cache, "activations": activations,
            "total": weights + kv_cache + activations}


def schedules(cfg: DecoderConfig) -> dict:
    """Every method at RATIO, plus the unrouted baseline."""
    return {m: solve_schedule(m, 1.0 if m == BASELINE else RATIO, cfg.num_layers, NUM_VISUAL) for m in METHODS}


def build_base(cfg: DecoderConfig, schedule, device, dtype, seed: int = 0):
    """RoutedDecoder with random N(0, 0.02) weights created directly on ``device`` in ``dtype``."""
    import torch

    from graphs.routed import RoutedDecoder

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are born in dtype: no fp32 copy of 7B weights
    try:
        with torch.device(device):
            model = RoutedDecoder(cfg, schedule)
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.02)
    return model.eval()


def routed_view(base, schedule):
    """A RoutedDecoder for ``schedule`` sharing ``base``'s parameters (no copy)."""
    import torch

    from graphs.routed import RoutedDecoder

    with torch.device("meta"):
        model = RoutedDecoder(base.cfg, schedule)
    model.load_state_dict(base.state_dict(), assign=True, strict=True)
    model.rotary = base.rotary  # non-persistent buffer: not in the state dict
    return model.eval()


def time_once(model, embeds, steps: int) -> tuple[float, float]:
    """(prefill ms, decode ms per token) measured with CUDA events on the current stream."""
    import torch

    b, t, _ = embeds.shape
    events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
    token = embeds[:, -1:]  # [B, 1, d]
    with torch.inference_mode():
        events[0].record()
        cache = model.prefill(embeds, TEXT_BEFORE).cache
        events[1].record()
        for i in range(steps):
            positions = torch.full((b, 1), t + i, dtype=torch.int64, device=embeds.device)  # [B, 1]
            _, cache = model.decode_step(token, positions, cache)
        events[2].record()
    events[2].synchronize()
    return events[0].elapsed_time(events[1]), events[1].elapsed_time(events[2]) / steps


def summarize(rounds: list[dict]) -> dict:
    """Per method: median ms and the median of per-round ratios to BASELINE (same round)."""
    out = {}
    for method in rounds[0]:
        pre = [r[method][0] for r in rounds]
        dec = [r[method][1] for r in rounds]
        out[method] = {
            "prefill_ms": statistics.median(pre),
            "decode_ms_per_token": statistics.median(dec),
            "prefill_ratio": statistics.median(r[method][0] / r[BASELINE][0] for r in rounds),
            "decode_ratio": statistics.median(r[method][1] / r[BASELINE][1] for r in rounds),
        }
    return out


def bench_shape(name: str, budget_s: float, max_rounds: int = 15, device="cuda") -> dict:
    """Interleaved rounds for one shape until max_rounds or 85% of budget_s is spent."""
    import torch

    cfg = SHAPES[name]
    need = memory_estimate(cfg)["total"]
    free, _ = torch.cuda.mem_get_info()
    if free < 1.2 * need:
        return {"shape": name, "skipped": f"needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"}
    start = time.monotonic()
    plans = schedules(cfg)
    base = build_base(cfg, plans[BASELINE], device, torch.float16)
    models = {m: base if m == BASELINE else routed_view(base, s) for m, s in plans.items()}
    gen = torch.Generator(device=device).manual_seed(1)
    embeds = torch.randn((1, prompt_tokens(), cfg.hidden_size), generator=gen, device=device,
                         dtype=torch.float16)  # [B, T, d]
    order = list(models)
    for m in order:  # warm-up: kernels chosen, allocator primed
        time_once(models[m], embeds, 2)
    build_s = time.monotonic() - start
    rounds = []
    while len(rounds) < max_rounds and time.monotonic() - start < 0.85 * budget_s:
        shift = len(rounds) % len(order)
        rounds.append({m: time_once(models[m], embeds, DECODE_STEPS) for m in order[shift:] + order[:shift]})
    with torch.inference_mode():
        kv = {m: sum(k.shape[2] for k, _ in models[m].prefill(embeds, TEXT_BEFORE).cache) for m in order}
    del models, base
    torch.cuda.empty_cache()
    return {"shape": name, "config": cfg.to_dict(), "parameters": parameter_count(cfg), "ratio": RATIO,
            "prompt_tokens": prompt_tokens(), "decode_steps": DECODE_STEPS, "rounds": len(rounds),
            "setup_s": round(build_s, 1), "kv_tokens": kv, "methods": summarize(rounds)}
