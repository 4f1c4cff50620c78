"""``reroute check --target tensorrt``: a static lint of what TensorRT would reject.

Checks, each reported with the node's name and a reason:
- every node has a TensorRT ONNX importer (engines/trt_support.py) or is a
  known plugin node; local functions are looked into, as TensorRT inlines them;
- TopK has ``sorted = 1`` and a K <= 3840: a constant, or shape-derived with that bound proven from
  the manifest (dynamic-resolution graphs: K from N_v <= ``capacity.max_visual_tokens``, engines/trt_bounds.py);
- no tensor types TensorRT does not take;
- inputs that feed shape computations are declared as shape inputs;
- precision is consistent (TensorRT 11 is strongly typed: the float inputs of
  an op must share one type, as the graph states).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto, numpy_helper

from .plugin_graph import is_plugin_node
from .trt_bounds import ShapeBounds
from .trt_support import (MAX_OPSET, MIN_OPSET, SHAPE_POSITIONS, SUPPORTED_OPS, SUPPORTED_TYPES,
                          TOPK_MAX_K)

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
# ops whose float inputs must agree (outputs of Cast etc. are what changes a type)
SAME_TYPE_OPS = {"Add", "Sub", "Mul", "Div", "MatMul", "Gemm", "Pow", "Max", "Min", "Sum", "Where", "Concat",
                 "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"}


@dataclass
class Problem:
    graph: str
    node: str
    reason: str

    def __str__(self) -> str:
        return f"{self.graph}: node {self.node}: {self.reason}"


def _type_name(elem: int) -> str:
    return TensorProto.DataType.Name(elem)


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _constants(nodes, initializers) -> dict:
    """Statically known tensors: initializers and Constant outputs."""
    known = {t.name: numpy_helper.to_array(t) for t in initializers
             if t.data_location != TensorProto.EXTERNAL}  # weights live outside; constants are inline
    for node in nodes:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            known[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return known


def _node_label(node, index: int, scope: str) -> str:
    return f"{scope}{node.name or f'#{index} ({node.op_type})'}"


class _Linter:
    """``shape_inputs`` None: nothing declares them (a bare .onnx file), so that check is skipped."""

    def __init__(self, graph_name: str, model: onnx.ModelProto, shape_inputs: set[str] | None,
                 dim_bounds: dict[str, int] | None = None):
        self.graph_name = graph_name
        self.model = model
        self.shape_inputs = shape_inputs
        self.bounds = ShapeBounds(model.graph, dim_bounds or {})
        self.functions = {(f.domain, f.name): f for f in model.functions}
        self.problems: list[Problem] = []

    def report(self, node_label: str, reason: str) -> None:
        self.problems.append(Problem(self.graph_name, node_label, reason))

    def run(self) -> list[Problem]:
        opset = next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), None)
        if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
            self.report("(model)", f"opset {opset} is outside TensorRT's supported range {MIN_OPSET}-{MAX_OPSET}")
        graph = self.model.graph
        known = _constants(graph.node, graph.initializer)
        self._check_nodes(graph.node, known, scope="", attrs={}, call_inputs={})
        self._check_types()
        if self.shape_inputs is not None:
            self._check_shape_inputs()
        self._check_precision()
        return self.problems

    def _check_nodes(self, nodes, known, scope: str, attrs: dict, call_inputs: dict) -> None:
        """call_inputs: inside a function body, its formal inputs -> the calling node's tensors."""
        producers = {out: node for node in nodes for out in node.output}
        for i, node in enumerate(nodes):
            label = _node_label(node, i, scope)
            if node.domain not in ("", "ai.onnx"):
                fn = self.functions.get((node.domain, node.op_type))
                if is_plugin_node(node):
                    continue
                if fn is None:
                    self.report(label, f"{node.domain}::{node.op_type} has no TensorRT importer, no plugin "
                                       f"attributes (plugin_namespace/plugin_version) and no function body")
                    continue
                # TensorRT inlines local functions: lint the body with this call's attributes
                call_attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                self._check_nodes(fn.node, _constants(fn.node, []), f"{label}/", call_attrs,
                                  dict(zip(fn.input, node.input)))
                continue
            if node.op_type not in SUPPORTED_OPS:
                self.report(label, f"{node.op_type} has no TensorRT ONNX importer")
            if node.op_type == "TopK":
                k = self._static_k(node.input[1], known, attrs, producers)
                self._check_topk(node, label, k, None if k is not None else
                                 self._bounded_k(node.input[1], producers, call_inputs))
            if node.op_type == "Cast" and _type_name(_attr(node, "to", 1)) not in SUPPORTED_TYPES:
                self.report(label, f"Cast to {_type_name(_attr(node, 'to'))}, a type TensorRT does not take")

    def _check_topk(self, node, label, k: int | None, bound: int | None) -> None:
        if _attr(node, "sorted", 1) != 1:
            self.report(label, "TopK with sorted=0 (TensorRT requires sorted=1)")
        if k is None and bound is None:
            self.report(label, "TopK K is neither a build-time constant nor shape-derived with a proven bound")
        elif k is None and bound > TOPK_MAX_K:
            self.report(label, f"TopK K is bounded only by {bound}, over TensorRT's limit of {TOPK_MAX_K}")
        elif k is not None and k > TOPK_MAX_K:
            self.report(label, f"TopK K={k} exceeds TensorRT's limit of {TOPK_MAX_K}")

    def _bounded_k(self, name, producers, call_inputs) -> int | None:
        """The proven upper bound of a shape-derived K (a function input is followed into the caller)."""
        while name in producers and producers[name].op_type in ("Reshape", "Cast", "Squeeze", "Unsqueeze",
                                                                 "Identity"):
            name = producers[name].input[0]
        return self.bounds.upper(call_inputs.get(name, name))

    @staticmethod
    def _static_k(name, known, attrs, producers):
        """Follow K back through shape-preserving ops to a constant, or to a Constant bound to a
        function attribute (``ref_attr_name``) whose value the calling node gives."""
        while name not in known:
            node = producers.get(name)
            if node is None:
                return None
            if node.op_type == "Constant":
                ref = next((a.ref_attr_name for a in node.attribute if a.ref_attr_name), None)
                return int(attrs[ref]) if ref in attrs else None
            if node.op_type not in ("Reshape", "Cast", "Squeeze", "Unsqueeze", "Identity"):
                return None
            name = node.input[0]
        return int(known[name].reshape(-1)[0])

    def _check_types(self) -> None:
        g = self.model.graph
        for value in [*g.input, *g.output, *g.value_info]:
            elem = value.type.tensor_type.elem_type
            if elem and _type_name(elem) not in SUPPORTED_TYPES:
                self.report(f"(tensor {value.name})", f"type {_type_name(elem)} is not supported by TensorRT")
        for init in g.initializer:
            if _type_name(init.data_type) not in SUPPORTED_TYPES:
                self.report(f"(initializer {init.name})", f"type {_type_name(init.data_type)} is not supported")

    def _inlined(self) -> onnx.ModelProto:
        """Functions inlined, plugin nodes kept (for data-flow analysis only)."""
        import onnx.inliner

        return onnx.inliner.inline_local_functions(self.model)

    def _check_shape_inputs(self) -> None:
        g = self._inlined().graph
        consumers: dict[str, list] = {}
        for node in g.node:
            for idx, name in enumerate(node.input):
                consumers.setdefault(name, []).append((node, idx))
        for inp in g.input:
            hit = self._reaches_shape_position(inp.name, consumers)
            if hit and inp.name not in self.shape_inputs:
                self.report(hit, f"input {inp.name!r} feeds a shape computation but is not declared as a "
                                 f"shape input (TensorRT needs its values in the optimization profile)")

    @staticmethod
    def _reaches_shape_position(start: str, consumers) -> str | None:
        seen, frontier = {start}, [start]
        while frontier:
            name = frontier.pop()
            for node, idx in consumers.get(name, []):
                if idx in SHAPE_POSITIONS.get(node.op_type, ()):
                    return node.name or node.op_type
                if node.op_type in ("Shape", "Size") or is_plugin_node(node):
                    continue  # shape-of and plugin (device) inputs end the flow
                for out in node.output:
                    if out not in seen:
                        seen.add(out)
                        frontier.append(out)
        return None

    def _check_precision(self) -> None:
        try:
            inferred = onnx.shape_inference.infer_shapes(self._inlined(), strict_mode=False)
        except Exception as exc:  # noqa: BLE001 - report, don't crash the lint
            self.report("(model)", f"shape inference failed: {str(exc).splitlines()[0]}")
            return
        g = inferred.graph
        types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
        types.update({t.name: t.data_type for t in g.initializer})
        for i, node in enumerate(g.node):
            if node.op_type not in SAME_TYPE_OPS:
                continue
            start = 1 if node.op_type == "Where" else 0
            floats = {types.get(n) for n in node.input[start:] if types.get(n) in FLOAT_TYPES}
            if len(floats) > 1:
                names = "/".join(sorted(_type_name(t) for t in floats))
                self.report(_node_label(node, i, ""), f"mixes {names} inputs (TensorRT 11 is strongly typed)")


def shape_inputs_of(model: onnx.ModelProto) -> list[str]:
    """Graph inputs TensorRT will treat as shape tensors (their values belong in the build profile)."""
    linter = _Linter("graph", model, set())
    g = linter._inlined().graph
    consumers: dict[str, list] = {}
    for node in g.node:
        for idx, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, idx))
    return [i.name for i in g.input if linter._reaches_shape_position(i.name, consumers)]


def lint_model(model: onnx.ModelProto, graph_name: str = "graph", shape_inputs=(),
               dim_bounds: dict[str, int] | None = None) -> list[Problem]:
    """``shape_inputs=None`` skips the shape-input check (nothing declares them); ``dim_bounds``: the
    largest value of each named dynamic input dimension (e.g. ``{"N_v": 576}``), to bound shape-derived K."""
    shape_set = None if shape_inputs is None else set(shape_inputs)
    return _Linter(graph_name, model, shape_set, dim_bounds).run()


BARE_FILE_NOTE = ("note: a bare .onnx file declares no shape inputs (an artifact's manifest does), so the "
                  "shape-input check and the manifest's file checks are skipped")


def check_onnx_file(path, plugins: bool = False) -> list[Problem]:
    """Lint one ONNX file, as ``polygraphy check lint`` takes any graph: the ONNX checker, then the TensorRT
    checks that need no artifact (see BARE_FILE_NOTE). External weights are not read."""
    from pathlib import Path

    from google.protobuf.message import DecodeError

    from .errors import RerouteError

    from .plugin_graph import to_plugin_form

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError, ValueError) as exc:
        raise RerouteError(f"cannot read {path} as an ONNX model: {type(exc).__name__}") from None
    try:  # by path, so external weights are looked for beside the file (they are checked, not loaded)
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        return [Problem(path.stem, "(model)", f"ONNX checker: {str(exc).strip().splitlines()[0]}")]
    return lint_model(to_plugin_form(model) if plugins else model, path.stem, shape_inputs=None)


def manifest_dim_bounds(manifest: dict) -> dict[str, int]:
    """Named dynamic dimensions the manifest bounds: ``N_v`` <= ``capacity.max_visual_tokens``
    (dynamic-resolution artifacts, derived from max_pixels when exported)."""
    bound = manifest.get("capacity", {}).get("max_visual_tokens")
    return {} if bound is None else {"N_v": int(bound)}


def check_artifact(path, plugins: bool = False) -> list[Problem]:
    """Lint every graph of an artifact (the exported form, or the plugin form with ``plugins``)."""
    from .artifact import GRAPHS, open_artifact

    from .plugin_graph import to_plugin_form

    artifact = open_artifact(path)
    problems: list[Problem] = []
    for name in GRAPHS:
        model = onnx.load(str(artifact.graph_path(name)), load_external_data=False)
        if plugins:
            model = to_plugin_form(model)
        declared = artifact.manifest["graphs"][name].get("shape_inputs", [])
        # the plugin form hands visual_start to plugins, except where a pool op has no plugin and stays a
        # function (the dynamic-N_v ops): there it still feeds a Slice, as the manifest declares
        problems += lint_model(model, name, declared, manifest_dim_bounds(artifact.manifest))
    return problems
