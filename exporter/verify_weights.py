"""Check that every weight of an exported artifact points at the right bytes of its data file.

For artifacts too large to run here (LLaVA-1.5-7B fp16 under ONNX Runtime CPU),
this is the check that remains: each external initializer named after a
parameter (``NAME``, or ``NAME/Transpose`` for a folded Linear weight) is read
at its offset and compared byte for byte with the checkpoint's tensor, converted
to the artifact's dtype and transformed the same way. One tensor at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engines.artifact import GRAPHS, open_artifact
from engines.graph_modules import build_graph_modules

from .checkpoint_io import CheckpointReader
from .models import LoadedModel, load_config
from .skeleton import parameter_sources, stand_in_model

_TRANSFORMS = {"": lambda a: a, "/Transpose": lambda a: np.ascontiguousarray(a.T)}


def _graph_parameters(artifact, config, dtype) -> dict[str, dict[str, str]]:
    """{graph: {graph parameter name: model parameter name}} rebuilt from the manifest's schedule."""
    model, names = stand_in_model(config, dtype)
    loaded = LoadedModel("", "", model, None)
    modules = build_graph_modules(loaded, artifact.schedule, dtype)
    return {g: parameter_sources(modules[g], names) for g in GRAPHS}


def _split(name: str, params: dict[str, str]):
    for suffix in _TRANSFORMS:
        if suffix and not name.endswith(suffix):
            continue
        base = name[: len(name) - len(suffix)] if suffix else name
        if base in params:
            return base, suffix
    return None, None


def verify_weights(artifact_dir, weights_dir, config=None) -> dict:
    """{"checked", "mismatched": [names], "unverified": [names], "first_offset"} over all four graphs.

    ``config``: the model's config when ``weights_dir`` holds safetensors only (a preset's written weights).
    """
    import onnx

    from .shared_weights import external_tensors

    artifact = open_artifact(artifact_dir, verify=False)  # hashing 14 GB is not this check's job
    dtype = getattr(torch, artifact.dtype)
    reader = CheckpointReader(weights_dir)
    per_graph = _graph_parameters(artifact, config or load_config(str(weights_dir)), dtype)
    seen, mismatched, unverified, first = set(), [], [], None
    for graph, params in per_graph.items():
        model = onnx.load(str(artifact.graph_path(graph)), load_external_data=False)
        for tensor in external_tensors(model):
            info = {e.key: e.value for e in tensor.external_data}
            where = (info["location"], int(info.get("offset", 0)), int(info["length"]))
            if where in seen:
                continue
            seen.add(where)
            base, suffix = _split(tensor.name, params)
            if base is None:
                if any(tensor.name.startswith(p) for p in params):
                    unverified.append(tensor.name)
                continue
            expected = _TRANSFORMS[suffix](reader.read(reader.resolve(params[base]), dtype)).tobytes()
            with open(Path(artifact_dir) / where[0], "rb") as f:
                f.seek(where[1])
                got = f.read(where[2])
            if got != expected:
                mismatched.append(f"{graph}:{tensor.name}")
            first = where[1] if first is None and where[0] == "decoder.onnx.data" else first
    return {"checked": len(seen), "mismatched": mismatched, "unverified": unverified, "first_offset": first}


# Shape bookkeeping the tracer shares between neighbouring layers of equal length (a second layer reuses
# the first one's Shape/Gather/Concat): not part of what a layer computes, so left out of its signature.
_SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Constant", "Slice", "Cast", "Equal", "Where",
              "ConstantOfShape", "Expand", "Range", "Identity"}


def _layer_signatures(model) -> dict[int, tuple]:
    """{decoder layer: (its compute ops in order, its weights' shapes)} from node scopes and weight names."""
    ops: dict[int, list[str]] = {}
    for node in model.graph.node:
        scope = node.name.split("/")[1] if node.name.count("/") > 1 else ""
        if scope.startswith("layers.") and node.op_type not in _SHAPE_OPS:
            ops.setdefault(int(scope.split(".")[1]), []).append(node.op_type)
    shapes: dict[int, list] = {}
    for t in model.graph.initializer:
        parts = t.name.split(".")
        if t.name.startswith("decoder.layers."):
            shapes.setdefault(int(parts[2]), []).append((".".join(parts[3:]), tuple(t.dims), t.data_type))
    return {i: (tuple(ops[i]), tuple(sorted(shapes.get(i, [])))) for i in ops}


def compare_layer_structure(full_artifact, cut_artifact) -> dict:
    """Each decoder layer of the full-depth artifact (prefill and decode) against the depth-cut one's:
    {graph: [full layers whose ops / weight shapes match no layer of the cut]} (empty lists: same per layer)."""
    import onnx

    out = {}
    for graph in ("prefill", "decode"):
        full, cut = (_layer_signatures(onnx.load(str(open_artifact(a, verify=False).graph_path(graph)),
                                                  load_external_data=False)) for a in (full_artifact, cut_artifact))
        known = set(cut.values())
        if not full or not known:
            raise ValueError(f"{graph}: no decoder layer scopes found")
        out[graph] = [i for i, sig in sorted(full.items()) if sig not in known]
    return out
