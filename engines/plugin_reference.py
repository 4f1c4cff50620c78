"""numpy reference implementations of the TensorRT plugins, as ``onnx.reference`` custom ops.

``ReferenceEvaluator(plugin_form_model, new_ops=PLUGIN_OPS)`` runs the exact
graph TensorRT will parse on CPU, one small class per plugin, written from the
op contracts (engines/onnx_functions.py, docs/PLUGINS.md) independently of the
torch code.
"""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun


def _source_index(n: int, p: int, selected: np.ndarray, v0: int) -> np.ndarray:
    """[B, n - P + k]: for each compact slot, its index in the n-token sequence."""
    b, k = selected.shape
    src = np.empty((b, n - p + k), dtype=np.int64)
    for slot in range(n - p + k):
        if slot < v0:
            src[:, slot] = slot
        elif slot < v0 + k:
            src[:, slot] = v0 + selected[:, slot - v0]
        else:
            src[:, slot] = slot + (p - k)
    return src


def pool_scores_ref(q_last, keys, v0: int, num_candidates: int, scale) -> np.ndarray:
    """[B, P] fp32: head-averaged softmax row of the last query over the candidate span."""
    b, h, hd = q_last.shape
    kvh, n = keys.shape[1], keys.shape[2]
    q = q_last.astype(np.float32).reshape(b, kvh, h // kvh, hd)
    logits = np.einsum("bgqd,bgnd->bgqn", q, keys.astype(np.float32)) * np.float32(scale)
    logits -= logits.max(-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(-1, keepdims=True)
    row = probs.reshape(b, h, n).mean(1)  # [B, n]
    return row[:, v0 : v0 + num_candidates]


def pool_select_ref(q_last, keys, v0: int, k: int, num_candidates: int, scale) -> np.ndarray:
    """[B, k] int64: the k best candidates (score desc, then index asc), ascending."""
    scores = pool_scores_ref(q_last, keys, v0, num_candidates, scale)
    out = np.empty((scores.shape[0], k), dtype=np.int64)
    for i in range(scores.shape[0]):
        order = np.lexsort((np.arange(num_candidates), -scores[i]))  # score desc, then index asc
        out[i] = np.sort(order[:k])
    return out


def pool_gather_ref(x, selected, v0: int, num_candidates: int) -> np.ndarray:
    src = _source_index(x.shape[1], num_candidates, selected, v0)
    return np.take_along_axis(x, src.reshape(src.shape + (1,) * (x.ndim - 2)), axis=1)


def pool_scatter_ref(x, compact, selected, v0: int, num_candidates: int) -> np.ndarray:
    src = _source_index(x.shape[1], num_candidates, selected, v0)
    out = x.copy()
    index = np.broadcast_to(src.reshape(src.shape + (1,) * (x.ndim - 2)), compact.shape)
    np.put_along_axis(out, index, compact, axis=1)
    return out


class PoolSelect(OpRun):
    op_domain = "reroute"

    def _run(self, q_last, keys, visual_start, k=None, num_candidates=None, scale=None,
             plugin_namespace=None, plugin_version=None):
        return (pool_select_ref(q_last, keys, int(visual_start.reshape(-1)[0]), k, num_candidates, scale),)


class PoolGather(OpRun):
    op_domain = "reroute"

    def _run(self, x, selected, visual_start, num_candidates=None, plugin_namespace=None, plugin_version=None):
        return (pool_gather_ref(x, selected, int(visual_start.reshape(-1)[0]), num_candidates),)


class PoolScatter(OpRun):
    op_domain = "reroute"

    def _run(self, x, compact, selected, visual_start, num_candidates=None, plugin_namespace=None,
             plugin_version=None):
        return (pool_scatter_ref(x, compact, selected, int(visual_start.reshape(-1)[0]), num_candidates),)


def _size(t, plugin_form) -> int:
    """A dynamic op's size input: an int64 [1] value, or in the plugin form (engines/plugin_graph.py) an
    extent, a tensor whose length is the size."""
    return int(t.shape[0]) if plugin_form else int(t.reshape(-1)[0])


class PoolSelectDynamic(OpRun):
    """PoolSelect with ``k`` and ``num_candidates`` as int64 [1] inputs (dynamic N_v), or extents."""

    op_domain = "reroute"

    def _run(self, q_last, keys, visual_start, k, num_candidates, scale=None, plugin_namespace=None,
             plugin_version=None):
        plugin = plugin_namespace is not None
        return PoolSelect._run(self, q_last, keys, visual_start, k=_size(k, plugin),
                               num_candidates=_size(num_candidates, plugin), scale=scale)


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
