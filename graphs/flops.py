"""Theoretical FLOPs and KV-cache bytes (SPEC section 6).

Convention: per decoder layer with n tokens, ``4 n d^2 + 2 n^2 d + 3 n d m``
(multiply-adds, SwiGLU MLP), as in the PDrop/VisionZip/VScan tables. The
``visual`` convention counts visual tokens only (3.817 T for LLaVA-1.5-7B at
576 tokens); the ``all`` convention counts every token a layer processes,
text included, which is what wall-clock time follows.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import DecoderConfig
from .schedule import ROUTE, Schedule


def layer_flops(n: int, d: int, m: int) -> float:
    return 4 * n * d * d + 2 * n * n * d + 3 * n * d * m


def scoring_flops(cfg: DecoderConfig, tokens: int) -> float:
    """One scoring row: q for the last token, k for ``tokens`` keys, one dot product per key and head."""
    q = cfg.hidden_size * cfg.num_heads * cfg.head_dim
    k = tokens * cfg.hidden_size * cfg.num_kv_heads * cfg.head_dim
    dots = tokens * cfg.num_heads * cfg.head_dim
    return q + k + dots


@dataclass(frozen=True)
class FlopsReport:
    full: float  # unrouted model, all layers on every counted token
    routed: float  # routed model, decoder layers only
    scoring: float  # pool scoring overhead of the routed model, reported separately

    def as_tflops(self) -> dict:
        return {"full": self.full / 1e12, "routed": self.routed / 1e12, "scoring_overhead": self.scoring / 1e12}


def tokens_per_layer(schedule: Schedule, text_tokens: int = 0) -> list[int]:
    return [v + text_tokens for v in schedule.visual_tokens_per_layer()]


def flops(cfg: DecoderConfig, schedule: Schedule, text_tokens: int = 0) -> FlopsReport:
    """``text_tokens = 0`` is the visual-token convention; pass the prompt's text length for ``all``."""
    d, m = cfg.hidden_size, cfg.intermediate_size
    full_n = schedule.num_visual + text_tokens
    full = cfg.num_layers * layer_flops(full_n, d, m)
    routed = sum(layer_flops(n, d, m) for n in tokens_per_layer(schedule, text_tokens))
    scoring = 0.0
    for stage in range(len(schedule.layers)):
        # routing scores the whole pool; deletion only the survivors still in the sequence
        pool = schedule.num_visual if schedule.action == ROUTE else schedule.candidates(stage)
        scoring += scoring_flops(cfg, pool + text_tokens)
    return FlopsReport(full, routed, scoring)


def reused_flops(cfg: DecoderConfig, schedule: Schedule, text_tokens: int = 0) -> float:
    """Counted twice by the convention, executed once: at each decision layer the layer takes the kept
    tokens' (text + k_s) k_proj rows from the scoring pass (graphs/routed.py) instead of recomputing them."""
    kvd = cfg.num_kv_heads * cfg.head_dim
    return float(sum((text_tokens + k) * cfg.hidden_size * kvd for k in schedule.k))


def kv_bytes(cfg: DecoderConfig, tokens: list[int], bytes_per_element: int) -> int:
    """KV bytes = sum over layers of 2 * kv_heads * head_dim * tokens_in_layer * bytes."""
    return sum(2 * cfg.num_kv_heads * cfg.head_dim * n * bytes_per_element for n in tokens)
