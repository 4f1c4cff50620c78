"""A plain, obviously-correct routed LLaVA decoder for tests.

Every token keeps a full-length state; each layer has an explicit active mask.
Attention is full attention over the active tokens with a causal mask in
ORIGINAL sequence order; RoPE uses the tokens' ORIGINAL position ids (1-D here,
3-D M-RoPE in reference_qwen.py). Deferred or deleted tokens pass through unchanged. Selection is
a per-token Python sort on (-score, index). Nothing here is shared with
graphs/: it reads the transformers model's weights and does the maths itself.
"""

from __future__ import annotations

import math

import torch


def rmsnorm(x, weight, eps):
    x32 = x.float()
    return weight * (x32 / torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rope(x, positions, theta):
    """x: [heads, n, hd], positions: [n] -> rotated x (pairs (i, i + hd/2))."""
    hd = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2).float() / hd)
    ang = positions.float()[:, None] * inv[None, :]  # [n, hd/2]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class ReferenceLlava:
    def __init__(self, hf_model):
        self.hf = hf_model
        tc = hf_model.config.text_config
        self.heads, self.kv_heads = tc.num_attention_heads, tc.num_key_value_heads
        self.hd = tc.hidden_size // tc.num_attention_heads
        self.eps, self.theta = tc.rms_norm_eps, tc.rope_parameters["rope_theta"]
        self.layers = hf_model.model.language_model.layers

    @torch.no_grad()
    def embeddings(self, input_ids, pixel_values):
        """HF's own embedding + image merge for one batch: [B, T, d]."""
        emb = self.hf.get_input_embeddings()(input_ids)
        feats = self.hf.model.get_image_features(pixel_values=pixel_values).pooler_output
        feats = torch.cat(list(feats), 0)
        mask = (input_ids == self.hf.config.image_token_id)[..., None].expand_as(emb)
        return emb.masked_scatter(mask, feats)

    def _qkv(self, layer, h, positions):
        a = layer.self_attn
        n = h.shape[0]
        q = a.q_proj(h).view(n, self.heads, self.hd).transpose(0, 1)
        k = a.k_proj(h).view(n, self.kv_heads, self.hd).transpose(0, 1)
        v = a.v_proj(h).view(n, self.kv_heads, self.hd).transpose(0, 1)
        return self._rope(q, positions), self._rope(k, positions), v

    def _rope(self, x, positions):
        return rope(x, positions, self.theta)

    def _layer(self, layer, x, active, positions):
        """Run one decoder layer on the active tokens of x [T, d]; inactive rows pass through."""
        idx = torch.nonzero(active)[:, 0]  # the tokens this layer processes
        xa, pa = x[idx], positions[..., idx]  # positions [T] or [3, T]: gathered explicitly
        h = rmsnorm(xa, layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
        q, k, v = self._qkv(layer, h, pa)
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
        allowed = idx[None, :] <= idx[:, None]  # causal in ORIGINAL sequence order
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.hd)
        probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1)
        attn = (probs @ v).transpose(0, 1).reshape(len(idx), -1)
        y = xa + layer.self_attn.o_proj(attn)
        y = y + layer.mlp(rmsnorm(y, layer.post_attention_layernorm.weight, self.eps))
        out = x.clone()
        out[idx] = y
        return out

    def _scores(self, layer, x, in_sequence, positions):
        """Head-mean attention of the last token over the tokens still in the sequence."""
        h = rmsnorm(x, layer.input_layernorm.weight, self.eps)
        q, k, _ = self._qkv(layer, h, positions)
        k = k.repeat_interleave(self.heads // self.kv_heads, 0)
        last = int(torch.nonzero(in_sequence)[-1])
        logits = (q[:, last : last + 1] @ k.transpose(-1, -2))[:, 0] / math.sqrt(self.hd)  # [H, T]
        logits = logits.masked_fill(~in_sequence[None, :], float("-inf"))
        return torch.softmax(logits.float(), -1).mean(0)  # [T]

    @torch.no_grad()
    def forward(self, x, schedule, v0, plan=None, positions=None):
        """One sample. x: [T, d]. Without ``plan`` routing is decided here (prefill) and returned;
        with ``plan`` (per-layer active masks from a prefill) the decisions are replayed and any
        extra tokens beyond the plan's length are text (decode steps). positions: [T] or [3, T]
        position ids (default 0..T-1)."""
        t = x.shape[0]
        positions = torch.arange(t) if positions is None else positions
        visual = torch.zeros(t, dtype=torch.bool)
        visual[v0 : v0 + schedule.num_visual] = True
        stage_at = {d: s for s, d in enumerate(schedule.layers)}
        alive = torch.ones(t, dtype=torch.bool)
        active = torch.ones(t, dtype=torch.bool)
        new_plan, selections = [], []
        for i, layer in enumerate(self.layers):
            if plan is not None:
                active = torch.ones(t, dtype=torch.bool)
                active[: len(plan[i])] = plan[i]
            elif i in stage_at:
                s = stage_at[i]
                in_sequence = alive if schedule.action == "physical_delete" else torch.ones(t, dtype=torch.bool)
                scores = self._scores(layer, x, in_sequence, positions)
                candidates = [j for j in range(t) if visual[j] and in_sequence[j]]
                ranked = sorted(candidates, key=lambda j: (-float(scores[j]), j))
                chosen = sorted(ranked[: schedule.k[s]])
                selections.append([j - v0 for j in chosen])
                active = ~visual
                active[chosen] = True
                if schedule.action == "physical_delete":
                    alive = active.clone()
            new_plan.append(active.clone())
            x = self._layer(layer, x, active, positions)
        lm = self.hf.model.language_model
        logits = self.hf.lm_head(rmsnorm(x[-1], lm.norm.weight, self.eps))
        return logits, new_plan, selections

    @torch.no_grad()
    def generate(self, embeds, schedule, v0, steps, positions=None):
        """Greedy tokens for one sample, recomputing the full sequence each step with routing fixed.
        Each generated token's position is the largest position so far + 1, on every row."""
        positions = torch.arange(embeds.shape[0]) if positions is None else positions
        logits, plan, selections = self.forward(embeds, schedule, v0, positions=positions)
        first_logits = logits
        tokens = []
        x = embeds
        for _ in range(steps):
            tok = int(torch.argmax(logits))
            tokens.append(tok)
            x = torch.cat([x, self.hf.get_input_embeddings()(torch.tensor([tok]))], 0)
            nxt = positions.max() + 1
            positions = torch.cat([positions, torch.full_like(positions[..., :1], int(nxt))], -1)
            logits, _, _ = self.forward(x, schedule, v0, plan, positions)
        return first_logits, selections, tokens
