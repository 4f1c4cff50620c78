"""Llama decoder building blocks with explicit positions (gpt-fast style).

Positions are passed per token (``[B, n]``, or ``[3, B, n]`` with M-RoPE)
because routed sequences keep their ORIGINAL position ids: RoPE positions have
gaps where tokens were deferred or deleted, and they differ per sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import DecoderConfig
from .mrope import mrope_angles


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class Rotary(nn.Module):
    """cos/sin for arbitrary position ids, computed in fp32 like transformers does."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        exponent = torch.arange(0, cfg.head_dim, 2, dtype=torch.int64).float() / cfg.head_dim
        self.register_buffer("inv_freq", 1.0 / (cfg.rope_theta**exponent), persistent=False)
        self.mrope_section = tuple(cfg.mrope_section)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, n] (1-D RoPE) or [3, B, n] (M-RoPE) -> cos, sin [B, n, hd]."""
        if positions.dim() == 3:
            freqs = mrope_angles(positions, self.inv_freq, self.mrope_section)  # [B, n, hd/2]
        else:
            freqs = positions[..., None].float() * self.inv_freq  # [B, n, hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [B, n, hd]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [B, h, n, hd]; cos/sin: [B, n, hd] -> broadcast over heads
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, kvh, n, hd] -> [B, kvh * groups, n, hd]; query head h uses KV head h // groups."""
    if groups == 1:
        return x
    b, kvh, n, hd = x.shape
    return x[:, :, None].expand(b, kvh, groups, n, hd).reshape(b, kvh * groups, n, hd)


def attend(q, k, v, causal: bool, scale: float, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale [+ causal mask]) v, the softmax in fp32 and everything else in q's dtype.

    Written out rather than through F.scaled_dot_product_attention: the TorchScript ONNX exporter's
    symbolic for it builds its scale and causal mask from fp32 constants, which promotes an fp16
    graph's attention output, and with it the whole residual stream, to fp32 (and a pool scatter
    then mixes fp16 and fp32 when the first decision is at layer 0).
    q: [B, H, n, hd]; k, v: [B, H, s, hd] with s = n (prefill) or past + n (decode).
    key_mask: [B, s] bool, False at (left) padding: no query attends a padding key. A padding query
    still attends itself, so its row stays finite; nothing real ever reads it.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, H, n, s]
    scores = scores.float()
    pos = torch.arange(q.shape[2], device=q.device) if causal else None
    if causal:  # prefill: s == n, token i sees keys 0..i
        scores = scores.masked_fill(pos[None, :] > pos[:, None], float("-inf"))  # [n, n] broadcast
    if key_mask is not None:
        allowed = key_mask[:, None, None, :]  # [B, 1, 1, s]
        if causal:  # the diagonal as a comparison: ONNX Runtime has no bool EyeLike
            allowed = allowed | (pos[None, :] == pos[:, None])  # [B, 1, n, n]
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(q.dtype)
    return torch.matmul(probs, v)  # [B, H, n, hd]


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        d, hd = cfg.hidden_size, cfg.head_dim
        qkv_bias = cfg.attention_bias or cfg.qkv_bias
        self.q_proj = nn.Linear(d, cfg.num_heads * hd, bias=qkv_bias)
        self.k_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=qkv_bias)
        self.v_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=qkv_bias)
        self.o_proj = nn.Linear(cfg.num_heads * hd, d, bias=cfg.attention_bias)

    def _heads(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, heads, self.cfg.head_dim).transpose(1, 2)  # [B, heads, n, hd]

    def query(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return apply_rope(self._heads(self.q_proj(h), self.cfg.num_heads), cos, sin)  # [B, H, n, hd]

    def rope_key(self, k_lin: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """k_proj output [B, n, KVH * hd] -> RoPE'd keys [B, KVH, n, hd]."""
        return apply_rope(self._heads(k_lin, self.cfg.num_kv_heads), cos, sin)

    def forward(self, h, cos, sin, past: tuple[torch.Tensor, torch.Tensor] | None = None,
                k_lin: torch.Tensor | None = None, key_mask: torch.Tensor | None = None):
        """Causal attention over the given (possibly compact) sequence, or one decode step over ``past``.

        ``k_lin``: this sequence's k_proj output when the caller already has it (a decision layer's
        scoring pass computed it for every token), so it is not computed twice. ``key_mask``: [B, past + n]
        bool, False at padding (see :func:`attend`).
        """
        q = self.query(h, cos, sin)
        k = self.rope_key(self.k_proj(h) if k_lin is None else k_lin, cos, sin)
        v = self._heads(self.v_proj(h), self.cfg.num_kv_heads)  # [B, KVH, n, hd]
        if past is not None:
            k = torch.cat((past[0], k), dim=2)  # [B, KVH, past + n, hd]
            v = torch.cat((past[1], v), dim=2)
        groups = self.cfg.kv_groups
        # Prefill: plain causal mask in compact order (order == original position order).
        # Decode: one new token sees every cached entry, so no mask at all.
        out = attend(q, repeat_kv(k, groups), repeat_kv(v, groups), causal=past is None,
                     scale=self.cfg.head_dim**-0.5, key_mask=key_mask)  # [B, H, n, hd]
        b, _, n, _ = out.shape
        out = out.transpose(1, 2).reshape(b, n, -1)  # [B, n, H * hd]
        return self.o_proj(out), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        d, m = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(d, m, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(d, m, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(m, d, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, past=None, normed=None, k_lin=None, key_mask=None):
        """``normed`` / ``k_lin``: input_layernorm(x) and its k_proj, when a decision layer's scoring
        pass already computed them (rows gathered from the pool); otherwise computed here.
        ``key_mask``: [B, past + n] bool, False at padding."""
        h = self.input_layernorm(x) if normed is None else normed
        attn, kv = self.self_attn(h, cos, sin, past, k_lin, key_mask)
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, kv
