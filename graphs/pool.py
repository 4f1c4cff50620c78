"""Pool management: score -> select -> gather, and scatter back (SPEC section 3).

These three operations are what the TensorRT plugins implement. Eagerly they
run plain torch; exported (TorchScript ONNX exporter) each becomes one
``reroute::<Op>`` node through its ``symbolic``, and the exporter attaches the
body as an ONNX local function made of standard ops (engines/onnx_functions.py),
so ONNX Runtime runs the file as it is and TensorRT can swap in plugins.

Sequence layout at a decision layer: ``n`` tokens, the candidate visual pool
is the contiguous span ``[v0, v0 + P)``; a stage keeps ``k`` of them.
The compact sequence is ``[text before, selected (ascending), text after]``,
``n - P + k`` tokens.

Mixed batches: ``v0`` is one start for the batch (an int, or a tensor of one
element) or one per sample (a ``[B]`` tensor, left-padded prompts whose images
sit at different positions); ``pad_lengths`` ([B] int64, the left-padding count)
keeps padding out of the scoring softmax. Left padding stays before every span,
so the compact length ``n - P + k`` is the same for every sample and the padding
count is the same at every stage: one count per sample serves every layer. The
exported ``PoolSelect`` takes it as its fourth input (a padding-free batch feeds
zeros); the dynamic-N_v ops take per-sample starts but no padding yet.
"""

from __future__ import annotations

import torch

DOMAIN = "reroute"


def _starts(v0, batch: int, device) -> torch.Tensor:
    """The span start of every sample, [B, 1] int64, from an int, a one-element tensor or a [B] tensor."""
    if not isinstance(v0, torch.Tensor):
        return torch.full((batch, 1), int(v0), dtype=torch.long, device=device)
    return v0.reshape(-1, 1).long().to(device).expand(batch, 1)


def _as_int(v) -> int:
    """A size that may arrive as a one-element int64 tensor (shape-derived in exported graphs)."""
    return int(v.reshape(-1)[0]) if isinstance(v, torch.Tensor) else int(v)


def pool_scores(q_last: torch.Tensor, keys: torch.Tensor, v0, num_candidates: int, scale: float,
                pad_lengths: torch.Tensor | None = None):
    """Head-averaged attention of the last token over the candidate span, fp32.

    q_last: [B, H, hd]; keys: [B, KVH, n, hd] (RoPE applied, whole current sequence).
    Softmax runs over all n keys (the last token's causal row; padding masked out), then the row
    is restricted to each sample's visual span. Only this one row is ever built, never the n x n map.
    """
    b, h, hd = q_last.shape
    kvh = keys.shape[1]
    q = q_last.float().reshape(b, kvh, h // kvh, hd)  # [B, KVH, G, hd]: query head h uses KV group h // G
    logits = torch.matmul(q, keys.float().transpose(-1, -2)) * scale  # [B, KVH, G, n]
    if pad_lengths is not None:  # padding (the first pad_lengths[b] keys) never enters the softmax
        padding = torch.arange(keys.shape[2], device=keys.device)[None, :] < pad_lengths.reshape(-1, 1)  # [B, n]
        logits = logits.masked_fill(padding[:, None, None, :], float("-inf"))
    probs = torch.softmax(logits, dim=-1).reshape(b, h, -1)  # [B, H, n]
    row = probs.mean(dim=1)  # [B, n]
    span = _starts(v0, b, row.device) + torch.arange(num_candidates, device=row.device)  # [B, P]
    return torch.gather(row, 1, span)  # [B, P]


def select_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k candidate indices, ties towards the lower index, sorted ascending. [B, P] -> [B, k]."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]
    return torch.sort(order, dim=-1).values


def compact_source_index(selected: torch.Tensor, v0, n: int, num_candidates: int) -> torch.Tensor:
    """For each compact slot, the index of its token in the n-token sequence. [B, k] -> [B, n - P + k]."""
    b, k = selected.shape
    starts = _starts(v0, b, selected.device)  # [B, 1]
    slots = torch.arange(n - num_candidates + k, device=selected.device)[None]  # [1, m]
    rel = (slots - starts).clamp(0, k - 1)  # [B, m] slot -> position inside the selected list
    from_pool = starts + torch.gather(selected, 1, rel)  # [B, m]
    after = (slots + (num_candidates - k)).expand(b, -1)  # text after the span shifts by the deferred count
    src = torch.where(slots < starts + k, from_pool, after)
    return torch.where(slots < starts, slots.expand(b, -1), src)  # [B, m]


class _PoolSelect(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_last, keys, v0, pad_lengths, k, num_candidates, scale):
        return select_top(pool_scores(q_last, keys, v0, num_candidates, scale, pad_lengths), k)

    @staticmethod
    def symbolic(g, q_last, keys, v0, pad_lengths, k, num_candidates, scale):
        out = g.op(f"{DOMAIN}::PoolSelect", q_last, keys, v0, pad_lengths, k_i=k, num_candidates_i=num_candidates,
                   scale_f=scale)
        out.setType(v0.type().with_dtype(torch.int64).with_sizes([None, k]))  # [B, k]
        return out


class _PoolGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, selected, v0, num_candidates):
        src = compact_source_index(selected, v0, x.shape[1], num_candidates)  # [B, m]
        return torch.gather(x, 1, src[..., None].expand(-1, -1, x.shape[2]))

    @staticmethod
    def symbolic(g, x, selected, v0, num_candidates):
        out = g.op(f"{DOMAIN}::PoolGather", x, selected, v0, num_candidates_i=num_candidates)
        sizes = x.type().varyingSizes() or [None] * 3
        out.setType(x.type().with_sizes([None, None, sizes[2]]))  # [B, n - P + k, C]
        return out


class _PoolScatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, compact, selected, v0, num_candidates):
        src = compact_source_index(selected, v0, x.shape[1], num_candidates)  # [B, m]
        return torch.scatter(x, 1, src[..., None].expand(-1, -1, x.shape[2]), compact)

    @staticmethod
    def symbolic(g, x, compact, selected, v0, num_candidates):
        out = g.op(f"{DOMAIN}::PoolScatter", x, compact, selected, v0, num_candidates_i=num_candidates)
        out.setType(x.type())  # [B, n, C]
        return out


def pool_select(q_last, keys, v0, *, k: int, num_candidates: int, scale: float,
                pad_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Score the pool and pick ``k`` candidates: [B, k] int64, ascending, in [0, P). ``pad_lengths``: [B]
    int64, the left padding of each sample (None: none)."""
    if pad_lengths is None:  # the op always has the input: the exported node's arity is fixed
        pad_lengths = torch.zeros(q_last.shape[0], dtype=torch.long, device=q_last.device)
    return _PoolSelect.apply(q_last, keys, v0, pad_lengths, k, num_candidates, float(scale))


def pool_gather(x, selected, v0, *, num_candidates: int) -> torch.Tensor:
    """Gather the compact sequence. x: [B, n, C] -> [B, n - P + k, C]."""
    return _PoolGather.apply(x, selected, v0, num_candidates)


def pool_scatter(x, compact, selected, v0, *, num_candidates: int) -> torch.Tensor:
    """Write a stage's compact results back; deferred tokens keep their frozen state. -> [B, n, C]."""
    return _PoolScatter.apply(x, compact, selected, v0, num_candidates)


# --- dynamic N_v (dynamic-resolution families): candidates and k are int64 [1] tensors computed in the graph ---
# Same semantics as above; the exported nodes are ``reroute::Pool*Dynamic`` with those sizes as inputs instead
# of attributes (engines/onnx_functions.py), so one graph serves every image size up to its bound.

class _PoolSelectDynamic(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_last, keys, v0, k, num_candidates, scale):
        scores = pool_scores(q_last, keys, v0, _as_int(num_candidates), scale)
        return select_top(scores, _as_int(k))

    @staticmethod
    def symbolic(g, q_last, keys, v0, k, num_candidates, scale):
        out = g.op(f"{DOMAIN}::PoolSelectDynamic", q_last, keys, v0, k, num_candidates, scale_f=scale)
        out.setType(v0.type().with_dtype(torch.int64).with_sizes([None, None]))  # [B, k]
        return out


class _PoolGatherDynamic(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, selected, v0, num_candidates):
        return _PoolGather.forward(ctx, x, selected, v0, _as_int(num_candidates))

    @staticmethod
    def symbolic(g, x, selected, v0, num_candidates):
        out = g.op(f"{DOMAIN}::PoolGatherDynamic", x, selected, v0, num_candidates)
        sizes = x.type().varyingSizes() or [None] * 3
        out.setType(x.type().with_sizes([None, None, sizes[2]]))  # [B, n - P + k, C]
        return out


class _PoolScatterDynamic(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, compact, selected, v0, num_candidates):
        return _PoolScatter.forward(ctx, x, compact, selected, v0, _as_int(num_candidates))

    @staticmethod
    def symbolic(g, x, compact, selected, v0, num_candidates):
        out = g.op(f"{DOMAIN}::PoolScatterDynamic", x, compact, selected, v0, num_candidates)
        out.setType(x.type())  # [B, n, C]
        return out


def pool_select_dynamic(q_last, keys, v0, *, k: torch.Tensor, num_candidates: torch.Tensor, scale: float):
    """:func:`pool_select` with ``k`` and ``num_candidates`` as int64 [1] tensors (shape-derived)."""
    return _PoolSelectDynamic.apply(q_last, keys, v0, k, num_candidates, float(scale))


def pool_gather_dynamic(x, selected, v0, *, num_candidates: torch.Tensor) -> torch.Tensor:
    return _PoolGatherDynamic.apply(x, selected, v0, num_candidates)


def pool_scatter_dynamic(x, compact, selected, v0, *, num_candidates: torch.Tensor) -> torch.Tensor:
    return _PoolScatterDynamic.apply(x, compact, selected, v0, num_candidates)
