"""Issue 13 item 1 (torch level): a left-padded batch of different prompts, each with its own image position,
gives every sample exactly its solo result (prefill logits, selected indices, 32 greedy tokens), every method.

The routed decoder only (graphs/): random weights, a random token table standing in for the embedding; the
visual span is a run of random "image feature" rows at a different position in each prompt.
"""

from __future__ import annotations

import pytest
import torch

from graphs.config import DecoderConfig
from graphs.routed import RoutedDecoder
from graphs.schedule import METHODS, solve_schedule

NUM_VISUAL, STEPS = 16, 32
# (text before the image, text after it): lengths and image positions all differ
PROMPTS = [(3, 5), (7, 2), (1, 9), (5, 6)]
CFG = DecoderConfig(hidden_size=64, intermediate_size=128, num_layers=8, num_heads=4, num_kv_heads=2, head_dim=16,
                    vocab_size=97)


def _decoder(method: str) -> RoutedDecoder:
    torch.manual_seed(0)
    schedule = solve_schedule(method, 0.5, CFG.num_layers, NUM_VISUAL)
    model = RoutedDecoder(CFG, schedule).eval()
    for p in model.parameters():  # the default init of RMSNorm is ones: perturb it too
        p.data.normal_(0.0, 0.3 if p.dim() > 1 else 1.0)
    return model.double()


def _prompts(table: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
    """(embeds [1, T, d], visual start) per prompt."""
    g = torch.Generator().manual_seed(1)
    out = []
    for before, after in PROMPTS:
        ids = torch.randint(0, CFG.vocab_size, (before + after,), generator=g)
        image = torch.randn(NUM_VISUAL, CFG.hidden_size, generator=g, dtype=torch.float64)
        embeds = torch.cat([table[ids[:before]], image, table[ids[before:]]])[None]
        out.append((embeds, before))
    return out


def _greedy(model, table, embeds, visual_start, positions=None, mask=None):
    """Prefill + STEPS-1 decode steps: (prefill logits, selections, tokens [B, STEPS])."""
    b, t, _ = embeds.shape
    pad = torch.zeros(b, dtype=torch.long) if mask is None else (t - mask.sum(1)).long()
    with torch.no_grad():
        out = model.prefill(embeds, visual_start, positions=positions, attention_mask=mask)
        token = out.logits.argmax(-1)
        tokens, cache = [token], out.cache
        for step in range(1, STEPS):
            pos = (t - pad + step - 1)[:, None]  # [B, 1] each sample's own next position
            logits, cache = model.decode_step(table[token][:, None], pos, cache,
                                              pad_lengths=None if mask is None else pad)
            token = logits.argmax(-1)
            tokens.append(token)
    return out.logits, out.selections, torch.stack(tokens, 1)


def _left_pad(prompts):
    """Batch the prompts with left padding: embeds [B, T, d], mask [B, T], positions [B, T], starts [B]."""
    t = max(e.shape[1] for e, _ in prompts)
    embeds, masks, positions, starts = [], [], [], []
    for e, v in prompts:
        pad = t - e.shape[1]
        embeds.append(torch.cat([torch.full((1, pad, e.shape[2]), 7.0, dtype=e.dtype), e], 1))  # junk padding
        masks.append(torch.arange(t) >= pad)
        positions.append((torch.arange(t) - pad).clamp(min=0))
        starts.append(pad + v)
    return torch.cat(embeds), torch.stack(masks), torch.stack(positions), torch.tensor(starts)


@pytest.mark.parametrize("method", list(METHODS))
def test_left_padded_batch_equals_each_prompt_alone(method):
    model = _decoder(method)
    table = torch.randn(CFG.vocab_size, CFG.hidden_size, generator=torch.Generator().manual_seed(2),
                        dtype=torch.float64)
    prompts = _prompts(table)
    embeds, mask, positions, starts = _left_pad(prompts)
    logits, selections, tokens = _greedy(model, table, embeds, starts, positions, mask)
    for i, (e, v) in enumerate(prompts):
        solo_logits, solo_sel, solo_tokens = _greedy(model, table, e, v)
        assert (logits[i] - solo_logits[0]).abs().max() <= 1e-5
        assert [s[i].tolist() for s in selections] == [s[0].tolist() for s in solo_sel]
        assert tokens[i].tolist() == solo_tokens[0].tolist()
