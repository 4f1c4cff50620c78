"""The plugin-form graph TensorRT parses: ``reroute`` function nodes become plugin nodes.

TensorRT's ONNX parser inlines a local function whose op_type it finds in the
model, so the bodies are dropped; a node it has no importer for is then
mapped to a plugin by ``op_type`` (= plugin name), ``plugin_version`` and
``plugin_namespace`` (SPEC section 7). Everything else is left as exported.

The dynamic-N_v ops (``Pool*Dynamic``) take their sizes (k, num_candidates) as int64 [1]
tensors computed from shapes. A plugin's output shape is built from input *dimensions*
(IExprBuilder), and its enqueue sees dimensions, not host values; so each size input
is replaced by an *extent*: ``ConstantOfShape(size)``, an int32 tensor of shape [size]
whose first dimension carries the value (4 bytes per element, never read). TensorRT
then knows k and P symbolically at build time, bounds them by the optimization profile
(N_v <= the manifest's max_visual_tokens), and hands them to the plugin at run time.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from .plugins import DYNAMIC_PLUGIN_NAMES, PLUGIN_NAMES, PLUGIN_NAMESPACE, PLUGIN_VERSION

DOMAIN = "reroute"
ALL_PLUGIN_NAMES = PLUGIN_NAMES + DYNAMIC_PLUGIN_NAMES
# dynamic op -> the indices of its size inputs, which the plugin form feeds as extents
EXTENT_INPUTS = {"PoolSelectDynamic": (3, 4), "PoolGatherDynamic": (3,), "PoolScatterDynamic": (4,)}


def is_plugin_node(node: onnx.NodeProto) -> bool:
    attrs = {a.name for a in node.attribute}
    return node.op_type in ALL_PLUGIN_NAMES and {"plugin_namespace", "plugin_version"} <= attrs


def _extent_node(node: onnx.NodeProto, index: int, serial: int) -> onnx.NodeProto:
    """Point the pool node's size input ``index`` at a new extent tensor; returns the node that makes it."""
    size = node.input[index]
    extent = f"{node.name or node.op_type}/extent_{index}_{serial}"  # serial: unique even for unnamed nodes
    zero = helper.make_tensor("value", TensorProto.INT32, [1], [0])
    node.input[index] = extent
    return helper.make_node("ConstantOfShape", [size], [extent], name=extent, value=zero)  # [size] int32


def to_plugin_form(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every ``reroute::Pool*`` node pointing at its TensorRT plugin."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for node in out.graph.node:
        if node.domain == DOMAIN and node.op_type in ALL_PLUGIN_NAMES and not is_plugin_node(node):
            for index in EXTENT_INPUTS.get(node.op_type, ()):
                nodes.append(_extent_node(node, index, len(nodes)))  # before the node: order stays topological
            node.attribute.extend([
                helper.make_attribute("plugin_namespace", PLUGIN_NAMESPACE),
                helper.make_attribute("plugin_version", PLUGIN_VERSION),
            ])
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    kept = [f for f in out.functions if not (f.domain == DOMAIN and f.name in ALL_PLUGIN_NAMES)]
    del out.functions[:]
    out.functions.extend(kept)
    return out


def plugin_form_path(graph_path) -> Path:
    """``prefill.onnx`` -> ``prefill.plugins.onnx`` in the same folder, so the external weights
    (``prefill.onnx.data``) resolve the same way for ONNX tools and TensorRT's parser."""
    graph_path = Path(graph_path)
    return graph_path.with_name(graph_path.stem + ".plugins.onnx")


def write_plugin_form(graph_path) -> Path:
    """Write the plugin-form copy of an exported graph beside it; returns its path."""
    out = plugin_form_path(graph_path)
    onnx.save(to_plugin_form(onnx.load(str(graph_path), load_external_data=False)), str(out))
    return out
