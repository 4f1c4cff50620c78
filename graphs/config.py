"""One config dataclass for the routed Llama-family decoder (Llama, Qwen2)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


class UnsupportedModelError(ValueError):
    """The checkpoint uses a feature the routed decoder does not implement."""


@dataclass(frozen=True)
class DecoderConfig:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    attention_bias: bool = False
    mlp_bias: bool = False
    qkv_bias: bool = False  # Qwen2: biases on q/k/v only (o_proj has none)
    mrope_section: tuple[int, ...] = ()  # M-RoPE channel split (Qwen2.5-VL); empty: 1-D RoPE

    @property
    def mrope(self) -> bool:
        return bool(self.mrope_section)

    @property
    def kv_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    def to_dict(self) -> dict:
        return asdict(self)
