"""Open an artifact for ``generate`` with a non-torch backend."""

from __future__ import annotations

from engines.artifact import open_artifact
from .parity import make_backend


def artifact_backend(path: str, backend: str, plugins: bool = True):
    """(processor, image_token_id, num_visual, backend, eos_token_id, artifact) for an exported folder."""
    artifact = open_artifact(path)
    model = artifact.manifest["model"]
    runner = make_backend(backend, artifact, plugins=plugins)
    return artifact.processor(), model["image_token_id"], model["num_visual"], runner, model["eos_token_id"], artifact
