"""fp16 export with a decision at layer 0: the residual stream stays fp16, so the pool scatter is consistent."""

from __future__ import annotations

import onnx

from exporter.onnx_export import export_artifact
from exporter.parity import format_report


def _pool_input_types(path) -> set[int]:
    """Element types of the data inputs (x, compact) of every PoolGather / PoolScatter in prefill; the
    int64 position ids the routed tokens gather (per-sample positions, artifact format 2) are left out."""
    model = onnx.load(str(path / "prefill.onnx"), load_external_data=False)
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.value_info, *inferred.input]}
    found = set()
    for node in model.graph.node:
        if node.op_type == "PoolScatter":
            found |= {types[node.input[0]], types[node.input[1]]}
        elif node.op_type == "PoolGather" and types[node.input[0]] != onnx.TensorProto.INT64:
            found.add(types[node.input[0]])
    return found


def test_fp16_decision_at_layer_0_exports_and_passes_parity(tmp_path):
    path, report = export_artifact("llava-tiny", "reroute", 0.25, out=str(tmp_path / "fp16-l0"), dtype="fp16",
                                   layers=[0, 1, 2, 3], keep_ratios=[0.36, 0.36, 0.18, 0.09],
                                   parity_samples=2, quiet=True)
    assert report["dtype"] == "float16" and report["passed"], format_report(report)
    assert _pool_input_types(path) == {onnx.TensorProto.FLOAT16}
