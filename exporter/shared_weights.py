"""One external-data file for graphs that hold the same weights (prefill and decode).

The routed prefill and the decode step carry the same decoder, final norm and
lm_head. exporter/weight_binder.py writes both graphs' weights into one
``decoder.onnx.data``, each weight (or folded form of it) once, matched by the
parameter it comes from. ONNX Runtime and TensorRT's ONNX parser both resolve
``location`` / ``offset`` / ``length`` relative to the model file. This module
keeps the file name and the walk over a model's external tensors (for checks).
"""

from __future__ import annotations

from typing import Iterator

import onnx

SHARED_DATA = "decoder.onnx.data"


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for g in attr.graphs:
            yield from _graph_tensors(g)


def external_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model (graph, subgraphs, function bodies) whose data lives outside it."""
    tensors = list(_graph_tensors(model.graph))
    for function in model.functions:
        for node in function.node:
            tensors.extend(_node_tensors(node))
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor
