"""One config dataclass for the routed Llama-family decoder."""

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

    @property
    def kv_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    def to_dict(self) -> dict:
        return asdict(self)
