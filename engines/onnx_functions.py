"""ONNX local-function bodies for the ``reroute`` pool ops, built from standard ops (opset 18).

ONNX Runtime inlines model-local functions at load, so an exported file with
``reroute::PoolSelect`` nodes runs as it is. TensorRT's parser would inline
them too; the plugin pass (engines/plugin_graph.py) drops these bodies and
points the nodes at plugins instead.

Inputs (all ops): ``visual_start`` is int64 [B] (or [1], one start for the whole batch), each
sample's first candidate index (a left-padded batch places each image at its own position).
- PoolSelect(q_last [B,H,hd], keys [B,KVH,n,hd], visual_start, pad_lengths [B]) -> selected [B,k] int64
  attrs: k, num_candidates (P), scale. Softmax of the last token's row (fp32) over the keys
  after each sample's first pad_lengths[b] (its left padding), mean over heads, restricted to
  [v0, v0+P), TopK (ties -> lower index), indices sorted ascending.
- PoolGather(x [B,n,C], selected, visual_start) -> [B, n-P+k, C]  (GatherND over rows)
- PoolScatter(x [B,n,C], compact [B,n-P+k,C], selected, visual_start) -> [B,n,C]  (ScatterND over rows)

Dynamic-N_v forms (dynamic-resolution families, graphs/capacity.py; one visual_start [1] for the
batch and no padding input yet): ``PoolSelectDynamic(q_last, keys, visual_start, k, num_candidates)``,
``PoolGatherDynamic(x, selected, visual_start, num_candidates)`` and ``PoolScatterDynamic(x, compact, selected, visual_start, num_candidates)`` take ``k`` and ``num_candidates``
as int64 [1] inputs computed from shapes in the calling graph, with the same semantics (TopK's K is then
shape-derived; its bound comes from the artifact's max_pixels).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

DOMAIN = "reroute"
OPSET = 18
OPSET_IMPORTS = [helper.make_opsetid("", OPSET)]


class _Body:
    """Tiny node-list builder: each call appends one node and returns its output name."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def __call__(self, op: str, *inputs: str, n_out: int = 1, **attrs):
        self._count += 1
        outs = [f"t{self._count}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def const_ints(self, *values: int) -> str:
        return self("Constant", value=helper.make_tensor("c", TensorProto.INT64, [len(values)], list(values)))

    def _attr_constant(self, attr: str, value_kind: str, attr_type) -> str:
        """A Constant whose value is the function attribute ``attr`` (ref_attr_name)."""
        self._count += 1
        node = helper.make_node("Constant", [], [f"a_{attr}_{self._count}"])
        node.attribute.append(helper.make_attribute_ref(value_kind, attr_type))
        node.attribute[-1].ref_attr_name = attr
        self.nodes.append(node)
        return node.output[0]

    def attr_int(self, attr: str) -> str:
        """A [1] int64 tensor holding the function attribute ``attr``."""
        scalar = self._attr_constant(attr, "value_int", onnx.AttributeProto.INT)
        return self("Reshape", scalar, self.const_ints(1))

    def attr_float(self, attr: str) -> str:
        return self._attr_constant(attr, "value_float", onnx.AttributeProto.FLOAT)

    def dim(self, tensor: str, axis: int) -> str:
        """Shape(tensor)[axis] as a [1] int64 tensor."""
        return self("Shape", tensor, start=axis, end=axis + 1)


def _starts(f: _Body, v0: str) -> str:
    """visual_start [B] (or [1]) -> [B, 1] (or [1, 1]), to broadcast against [B, m] slot grids."""
    return f("Reshape", v0, f.const_ints(-1, 1))


def _compact_source_index(f: _Body, selected: str, n: str, k: str, p: str, batch: str, v0: str) -> str:
    """[B, n - P + k] int64: for each compact slot, its index in the n-token sequence."""
    zero, one = f.const_ints(0), f.const_ints(1)
    v0 = _starts(f, v0)  # [B, 1]: each sample's span start
    m = f("Add", f("Sub", n, p), k)
    slots = f("Range", f("Squeeze", zero), f("Squeeze", m), f("Squeeze", one))  # [m]
    rel = f("Clip", f("Sub", slots, v0), f("Squeeze", zero), f("Squeeze", f("Sub", k, one)))  # [B or 1, m]
    rel_b = f("Expand", rel, f("Concat", batch, m, axis=0))  # [B, m]
    from_pool = f("Add", f("GatherElements", selected, rel_b, axis=1), v0)
    after = f("Add", slots, f("Sub", p, k))  # text after the span shifts by the deferred count
    src = f("Where", f("Less", slots, f("Add", v0, k)), from_pool, after)
    return f("Where", f("Less", slots, v0), slots, src)  # [B, m]


def _row_index(f: _Body, x: str, selected: str, v0: str, p: str) -> str:
    """[B, m, 1] int64: the row of x [B, n, C] behind each compact slot (selected [B, k]); p: [1] pool size."""
    n, k, batch = f.dim(x, 1), f.dim(selected, 1), f.dim(x, 0)
    src = _compact_source_index(f, selected, n, k, p, batch, v0)
    return f("Unsqueeze", src, f.const_ints(-1))


def _make(name: str, inputs: list[str], outputs: list[str], attrs: list[str], f: _Body) -> onnx.FunctionProto:
    return helper.make_function(DOMAIN, name, inputs, outputs, f.nodes, OPSET_IMPORTS, attrs)


def _mask_padding(f: _Body, logits: str, keys: str, pad: str) -> str:
    """-inf at each sample's first pad[b] keys: logits [B, KVH, G, n], pad [B] int64."""
    slots = f("Range", f("Squeeze", f.const_ints(0)), f("Squeeze", f.dim(keys, 2)), f("Squeeze", f.const_ints(1)))
    padding = f("Less", f("Unsqueeze", slots, f.const_ints(0)), _starts(f, pad))  # [B, n]
    padding = f("Unsqueeze", padding, f.const_ints(1, 2))  # [B, 1, 1, n]
    minus_inf = f("Constant", value=helper.make_tensor("c", TensorProto.FLOAT, [], [float("-inf")]))
    return f("Where", padding, minus_inf, logits)


def _select_body(f: _Body, k: str, p: str, pad: str | None = None) -> None:
    """PoolSelect's nodes; ``k`` and ``p`` ([1] int64) are attribute constants or inputs; ``pad``: the
    [B] left-padding input (None: the dynamic form, no padding)."""
    q, keys, v0 = "q_last", "keys", "visual_start"
    q32, k32 = f("Cast", q, to=TensorProto.FLOAT), f("Cast", keys, to=TensorProto.FLOAT)
    # [B, H, hd] -> [B, KVH, G, hd]: query head h uses KV group h // G
    q4 = f("Reshape", q32, f("Concat", f.const_ints(0), f.dim(keys, 1), f.const_ints(-1), f.dim(q, 2), axis=0))
    logits = f("Mul", f("MatMul", q4, f("Transpose", k32, perm=[0, 1, 3, 2])), f.attr_float("scale"))  # [B,KVH,G,n]
    if pad is not None:
        logits = _mask_padding(f, logits, keys, pad)
    probs = f("Softmax", logits, axis=-1)
    probs = f("Reshape", probs, f("Concat", f.const_ints(0, -1), f.dim(keys, 2), axis=0))  # [B, H, n]
    row = f("ReduceMean", probs, f.const_ints(1), keepdims=0)  # [B, n]
    if pad is None:  # the dynamic form keeps one start for the batch, a Slice (visual_start a shape input)
        span = f("Slice", row, v0, f("Add", v0, p), f.const_ints(1))  # [B, P]
    else:  # each sample's span: [B, P] indices v0[b] + 0..P-1
        offsets = f("Range", f("Squeeze", f.const_ints(0)), f("Squeeze", p), f("Squeeze", f.const_ints(1)))  # [P]
        span_index = f("Expand", f("Add", _starts(f, v0), f("Unsqueeze", offsets, f.const_ints(0))),
                       f("Concat", f.dim(row, 0), p, axis=0))  # [B, P]
        span = f("GatherElements", row, span_index, axis=1)  # [B, P]
    _, top = f("TopK", span, k, n_out=2, axis=-1, largest=1, sorted=1)  # ties -> lower index (ONNX spec)
    # sort the chosen indices ascending: TopK of the negated indices (exact in fp32 below 2^24)
    neg = f("Neg", f("Cast", top, to=TensorProto.FLOAT))
    asc, _ = f("TopK", neg, k, n_out=2, axis=-1, largest=1, sorted=1)
    f("Cast", f("Neg", asc), to=TensorProto.INT64)
    f.nodes[-1].output[0] = "selected"


def pool_select_function() -> onnx.FunctionProto:
    f = _Body()
    _select_body(f, f.attr_int("k"), f.attr_int("num_candidates"), pad="pad_lengths")
    return _make("PoolSelect", ["q_last", "keys", "visual_start", "pad_lengths"], ["selected"],
                 ["k", "num_candidates", "scale"], f)


def pool_select_dynamic_function() -> onnx.FunctionProto:
    f = _Body()
    _select_body(f, "k", "num_candidates")
    return _make("PoolSelectDynamic", ["q_last", "keys", "visual_start", "k", "num_candidates"], ["selected"],
                 ["scale"], f)


def _gather_body(f: _Body, p: str) -> None:
    rows = _row_index(f, "x", "selected", "visual_start", p)
    # GatherND with one batch dim copies whole C-wide rows (no [B, m, C] index tensor to build or read)
    f("GatherND", "x", rows, batch_dims=1)
    f.nodes[-1].output[0] = "compact"


def pool_gather_function() -> onnx.FunctionProto:
    f = _Body()
    _gather_body(f, f.attr_int("num_candidates"))
    return _make("PoolGather", ["x", "selected", "visual_start"], ["compact"], ["num_candidates"], f)


def pool_gather_dynamic_function() -> onnx.FunctionProto:
    f = _Body()
    _gather_body(f, "num_candidates")
    return _make("PoolGatherDynamic", ["x", "selected", "visual_start", "num_candidates"], ["compact"], [], f)


def _scatter_body(f: _Body, p: str) -> None:
    rows = _row_index(f, "x", "selected", "visual_start", p)  # [B, m, 1]; distinct rows per sample
    # ScatterND has no batch_dims: address (sample, row) pairs, [B, m, 2], and write whole rows
    zero, one = f("Squeeze", f.const_ints(0)), f("Squeeze", f.const_ints(1))
    batch = f("Range", zero, f("Squeeze", f.dim("x", 0)), one)  # [B]
    sample = f("Expand", f("Unsqueeze", batch, f.const_ints(1, 2)), f("Shape", rows))  # [B, m, 1]
    f("ScatterND", "x", f("Concat", sample, rows, axis=-1), "compact")
    f.nodes[-1].output[0] = "out"


def pool_scatter_function() -> onnx.FunctionProto:
    f = _Body()
    _scatter_body(f, f.attr_int("num_candidates"))
    return _make("PoolScatter", ["x", "compact", "selected", "visual_start"], ["out"], ["num_candidates"], f)


def pool_scatter_dynamic_function() -> onnx.FunctionProto:
    f = _Body()
    _scatter_body(f, "num_candidates")
    return _make("PoolScatterDynamic", ["x", "compact", "selected", "visual_start", "num_candidates"], ["out"],
                 [], f)


def pool_functions() -> list[onnx.FunctionProto]:
    return [pool_select_function(), pool_gather_function(), pool_scatter_function(),
            pool_select_dynamic_function(), pool_gather_dynamic_function(), pool_scatter_dynamic_function()]


def attach_pool_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add the function bodies and the ``reroute`` opset import to a model that uses the ops."""
    used = {n.op_type for n in model.graph.node if n.domain == DOMAIN}
    del model.functions[:]
    model.functions.extend(fn for fn in pool_functions() if fn.name in used)
    if used and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return model
