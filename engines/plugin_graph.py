"""The plugin-form graph TensorRT parses: ``reroute`` function nodes become plugin nodes.

TensorRT's ONNX parser inlines a local function whose op_type it finds in the
model, so the bodies are dropped; a node it has no importer for is then
mapped to a plugin by ``op_type`` (= plugin name), ``plugin_version`` and
``plugin_namespace`` (SPEC section 7). Everything else is left as exported.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper

from .plugins import PLUGIN_NAMES, PLUGIN_NAMESPACE, PLUGIN_VERSION

DOMAIN = "reroute"


def is_plugin_node(node: onnx.NodeProto) -> bool:
    attrs = {a.name for a in node.attribute}
    return node.op_type in PLUGIN_NAMES and {"plugin_namespace", "plugin_version"} <= attrs


def to_plugin_form(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every ``reroute::Pool*`` node pointing at its TensorRT plugin."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        if node.domain == DOMAIN and node.op_type in PLUGIN_NAMES and not is_plugin_node(node):
            node.attribute.extend([
                helper.make_attribute("plugin_namespace", PLUGIN_NAMESPACE),
                helper.make_attribute("plugin_version", PLUGIN_VERSION),
            ])
    kept = [f for f in out.functions if not (f.domain == DOMAIN and f.name in PLUGIN_NAMES)]
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
