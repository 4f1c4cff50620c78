"""The fp32 artifacts the ONNX Runtime side of the bench times: exported once, reused when unchanged."""

from __future__ import annotations

import json
import os
from pathlib import Path

from engines.artifact import MANIFEST

from .common import BASELINE

def _graph_signature(path) -> tuple:
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    return tuple((n.op_type, n.domain, tuple(n.input), tuple(n.output)) for n in model.graph.node) + tuple(
        sorted(f.name for f in model.functions))


def _artifact_dir(root: Path, model: str, method: str, ratio: float) -> Path:
    slug = Path(model).name if os.path.isdir(model) else model.replace("/", "--")
    return root / (f"{slug}-none" if method == BASELINE else f"{slug}-{method}-r{ratio:.6g}")


def _ensure_artifact(root: Path, loaded, schedule) -> Path:
    """Export (or reuse, when the folder holds the same model and schedule) an fp32 artifact."""
    from ..onnx_export import export_artifact

    path = _artifact_dir(root, loaded.spec, schedule.method, schedule.ratio)
    manifest = path / MANIFEST
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
            if (data["model"]["spec"] == loaded.spec and data["schedule"] == schedule.to_dict(exact=True)
                    and data["dtype"] == "float32"):
                return path
        except (ValueError, KeyError):
            pass
    export_artifact(loaded.spec, schedule.method, schedule.ratio, out=str(path), force=True, parity_samples=0,
                    quiet=True, loaded=loaded)
    return path
