"""Upper bounds of shape-derived integers, for ``reroute check``'s TopK rule.

TensorRT takes a TopK whose K is computed from tensor shapes (a shape tensor),
but K must never exceed 3840. Dynamic-resolution graphs compute K from N_v,
the length of the ``visual_span`` input (graphs/capacity.py); the artifact's
manifest bounds N_v (``max_pixels``). This module proves ``K <= bound`` by
interval arithmetic over the few ops such a computation uses, with each
graph input's dynamic dimension given an interval by name (e.g. ``N_v``).
Anything it cannot follow gives ``None``: the check then reports K as unbounded.
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper

Interval = tuple[int, int]  # inclusive [low, high]
_SAME = ("Reshape", "Cast", "Squeeze", "Unsqueeze", "Identity")


class ShapeBounds:
    """Interval evaluation of int tensors in ``graph`` whose values derive from shapes and constants."""

    def __init__(self, graph: onnx.GraphProto, dim_bounds: dict[str, int]):
        self.producers = {out: node for node in graph.node for out in node.output}
        self.inputs = {i.name: i for i in graph.input}
        self.dim_bounds = dim_bounds

    def upper(self, name: str) -> int | None:
        interval = self._eval(name, depth=0)
        return None if interval is None else interval[1]

    def _eval(self, name: str, depth: int) -> Interval | None:
        node = self.producers.get(name)
        if node is None or depth > 64:
            return None
        op = node.op_type
        if op == "Constant":
            return _constant(node)
        if op in _SAME:
            return self._eval(node.input[0], depth + 1)
        if op == "Gather":  # one dimension of a Shape, by a constant index
            return self._shape_dim(node, depth)
        if op in ("Add", "Mul", "Div", "Min", "Max"):
            a, b = (self._eval(i, depth + 1) for i in node.input[:2])
            return None if a is None or b is None else _combine(op, a, b)
        if op == "Clip":
            return self._clip(node, depth)
        return None

    def _shape_dim(self, node, depth: int) -> Interval | None:
        shape_node = self.producers.get(node.input[0])
        index = self._eval(node.input[1], depth + 1)
        if shape_node is None or shape_node.op_type != "Shape" or index is None or index[0] != index[1]:
            return None
        value = self.inputs.get(shape_node.input[0])
        if value is None:  # a shape of an intermediate tensor: not followed
            return None
        dims = value.type.tensor_type.shape.dim
        start = next((a.i for a in shape_node.attribute if a.name == "start"), 0)
        dim = dims[start + index[0]]
        if dim.HasField("dim_value"):
            return dim.dim_value, dim.dim_value
        bound = self.dim_bounds.get(dim.dim_param)
        return None if bound is None else (0, bound)

    def _clip(self, node, depth: int) -> Interval | None:
        x = self._eval(node.input[0], depth + 1)
        if x is None:
            return None
        low, high = x
        if len(node.input) > 1 and node.input[1]:
            lo = self._eval(node.input[1], depth + 1)
            if lo is None:
                return None
            low, high = max(low, lo[0]), max(high, lo[1])
        if len(node.input) > 2 and node.input[2]:
            hi = self._eval(node.input[2], depth + 1)
            if hi is None:
                return None
            low, high = min(low, hi[0]), min(high, hi[1])
        return low, high


def _constant(node) -> Interval | None:
    attr = node.attribute[0] if node.attribute else None
    if attr is None or attr.type != onnx.AttributeProto.TENSOR:
        return None
    values = numpy_helper.to_array(attr.t).reshape(-1)
    if values.size == 0 or values.dtype.kind not in "iu":
        return None
    return int(values.min()), int(values.max())


def _combine(op: str, a: Interval, b: Interval) -> Interval | None:
    if op == "Min":
        return min(a[0], b[0]), min(a[1], b[1])
    if op == "Max":
        return max(a[0], b[0]), max(a[1], b[1])
    if a[0] < 0 or b[0] < 0:  # the monotone rules below hold for non-negative operands only
        return None
    if op == "Add":
        return a[0] + b[0], a[1] + b[1]
    if op == "Mul":
        return a[0] * b[0], a[1] * b[1]
    if b[0] == 0:  # Div: integer division by a positive divisor
        return None
    return a[0] // b[1], a[1] // b[0]
