"""numpy reference implementations of the TensorRT plugins, as ``onnx.reference`` custom ops.

``ReferenceEvaluator(plugin_form_model, new_ops=PLUGIN_OPS)`` runs the exact
graph TensorRT will parse on CPU, one small class per plugin, written from the
op contracts (engines/onnx_functions.py, docs/PLUGINS.md) independently of the
torch code.
"""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun


def _per_sample(values, batch: int) -> list[int]:
    """visual_start / pad_lengths: an int, a [1] array (one for the batch) or a [B] array -> B ints."""
    flat = np.asarray(values, dtype=np.int64).reshape(-1)
    return [int(v) for v in (np.broadcast_to(flat, (batch,)) if flat.size == 1 else flat)]


def _source_index(n: int, p: int, selected: np.ndarray, v0) -> np.ndarray:
    """[B, n - P + k]: for each compact slot, its index in the n-token sequence (v0: per sample)."""
    b, k = selected.shape
    src = np.empty((b, n - p + k), dtype=np.int64)
    for i, start in enumerate(_per_sample(v0, b)):
        for slot in range(n - p + k):
            if slot < start:
                src[i, slot] = slot
            elif slot < start + k:
                src[i, slot] = start + selected[i, slot - start]
            else:
                src[i, slot] = slot + (p - k)
    return src


def pool_scores_ref(q_last, keys, v0, num_candidates: int, scale, pad_lengths=0) -> np.ndarray:
    """[B, P] fp32: head-averaged softmax row of the last query over each sample's candidate span,
    the sample's first pad_lengths[b] keys (left padding) left out of the softmax."""
    b, h, hd = q_last.shape
    kvh, n = keys.shape[1], keys.shape[2]
    q = q_last.astype(np.float32).reshape(b, kvh, h // kvh, hd)
    logits = np.einsum("bgqd,bgnd->bgqn", q, keys.astype(np.float32)) * np.float32(scale)
    for i, pad in enumerate(_per_sample(pad_lengths, b)):
        logits[i, ..., :pad] = -np.inf
    logits -= logits.max(-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(-1, keepdims=True)
    row = probs.reshape(b, h, n).mean(1)  # [B, n]
    return np.stack([row[i, s : s + num_candidates] for i, s in enumerate(_per_sample(v0, b))])


def pool_select_ref(q_last, keys, v0, k: int, num_candidates: int, scale, pad_lengths=0) -> np.ndarray:
    """[B, k] int64: the k best candidates (score desc, then index asc), ascending."""
    scores = pool_scores_ref(q_last, keys, v0, num_candidates, scale, pad_lengths)
    out = np.empty((scores.shape[0], k), dtype=np.int64)
    for i in range(scores.shape[0]):
        order = np.lexsort((np.arange(num_candidates), -scores[i]))  # score desc, then index asc
        out[i] = np.sort(order[:k])
    return out


def pool_gather_ref(x, selected, v0, num_candidates: int) -> np.ndarray:
    src = _source_index(x.shape[1], num_candidates, selected, v0)
    return np.take_along_axis(x, src.reshape(src.shape + (1,) * (x.ndim - 2)), axis=1)


def pool_scatter_ref(x, compact, selected, v0, num_candidates: int) -> np.ndarray:
    src = _source_index(x.shape[1], num_candidates, selected, v0)
    out = x.copy()
    index = np.broadcast_to(src.reshape(src.shape + (1,) * (x.ndim - 2)), compact.shape)
    np.put_along_axis(out, index, compact, axis=1)
    return out


class PoolSelect(OpRun):
    op_domain = "reroute"

    def _run(self, q_last, keys, visual_start, pad_lengths, k=None, num_candidates=None, scale=None,
             plugin_namespace=None, plugin_version=None):
        return (pool_select_ref(q_last, keys, visual_start, k, num_candidates, scale, pad_lengths),)


class PoolGather(OpRun):
    op_domain = "reroute"

    def _run(self, x, selected, visual_start, num_candidates=None, plugin_namespace=None, plugin_version=None):
        return (pool_gather_ref(x, selected, visual_start, num_candidates),)


class PoolScatter(OpRun):
    op_domain = "reroute"

    def _run(self, x, compact, selected, visual_start, num_candidates=None, plugin_namespace=None,
             plugin_version=None):
        return (pool_scatter_ref(x, compact, selected, visual_start, num_candidates),)


def _size(t, plugin_form) -> int:
    """A dynamic op's size input: an int64 [1] value, or in the plugin form (engines/plugin_graph.py) an
    extent, a tensor whose length is the size."""
    return int(t.shape[0]) if plugin_form else int(t.reshape(-1)[0])


class PoolSelectDynamic(OpRun):
    """PoolSelect with ``k`` and ``num_candidates`` as int64 [1] inputs (dynamic N_v), or extents in the
    plugin form; no padding input."""

    op_domain = "reroute"

    def _run(self, q_last, keys, visual_start, k, num_candidates, scale=None, plugin_namespace=None,
             plugin_version=None):
        plugin = plugin_namespace is not None
        return (pool_select_ref(q_last, keys, visual_start, _size(k, plugin), _size(num_candidates, plugin),
                                scale),)


class PoolGatherDynamic(OpRun):
    op_domain = "reroute"

    def _run(self, x, selected, visual_start, num_candidates, plugin_namespace=None, plugin_version=None):
        return PoolGather._run(self, x, selected, visual_start,
                               num_candidates=_size(num_candidates, plugin_namespace is not None))


class PoolScatterDynamic(OpRun):
    op_domain = "reroute"

    def _run(self, x, compact, selected, visual_start, num_candidates, plugin_namespace=None, plugin_version=None):
        return PoolScatter._run(self, x, compact, selected, visual_start,
                                num_candidates=_size(num_candidates, plugin_namespace is not None))


class GatherElements(OpRun):
    """Standard GatherElements via take_along_axis: onnx.reference's own uses np.choose, which fails
    past 32 choices and then falls back to a wrong 2-D path (seen with a [1, 286] gather)."""

    op_domain = ""

    def _run(self, data, indices, axis=None):
        axis = 0 if axis is None else axis
        return (np.take_along_axis(data, np.where(indices < 0, indices + data.shape[axis], indices), axis=axis),)


PLUGIN_OPS = [PoolSelect, PoolGather, PoolScatter, PoolSelectDynamic, PoolGatherDynamic, PoolScatterDynamic,
              GatherElements]


def reference_session(model):
    """A ``ReferenceEvaluator`` over a plugin-form model (path or ModelProto)."""
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model, new_ops=PLUGIN_OPS)
