"""Where an export's weights come from: a checkpoint read tensor by tensor, or a model already in memory.

Every route ends in the same two things: a stand-in model to trace
(exporter/skeleton.py) and ``read(name)``, one parameter in the export dtype.
Seeded presets have no files, so their weights are first written to a scratch
safetensors file one tensor at a time (holding the preset model instead would
cost its full fp32 size); a trained preset (``llava-grounding``) is read from
the file it ships.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .checkpoint_io import CheckpointReader
from .models import LoadedModel, _kind, load_config, load_processor, weights_dir
from .registry import family_of
from .skeleton import preset_checkpoint, stand_in_model

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
_HALF = {torch.float16, torch.bfloat16}


@dataclass
class WeightSource:
    loaded: LoadedModel  # stand-in weights; config and processor are real
    names: dict[int, str]  # id(stand-in parameter) -> model parameter name
    read: Callable[[str], np.ndarray]  # model parameter name -> its tensor in the export dtype
    scratch: Path | None = None  # removed by close()

    def close(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def resolve_dtype(spec: str, flag: str, loaded: LoadedModel | None = None) -> str:
    """``auto``: fp16 for ``llava`` and half-precision checkpoints, else fp32 (presets, fp32 checkpoints)."""
    if flag != "auto":
        return flag
    if loaded is not None and not loaded.source.startswith("preset:"):
        return "fp16" if next(loaded.hf_model.parameters()).dtype in _HALF else "fp32"
    kind = _kind(spec) if loaded is None else "preset"
    if kind == "preset":
        return "fp32"
    if kind == "alias":
        return "fp16"
    return "fp16" if CheckpointReader(weights_dir(spec)).dtypes() & _HALF else "fp32"


def open_source(spec: str, dtype_flag: str, scratch_parent: Path, loaded: LoadedModel | None = None,
                config=None) -> WeightSource:
    """The stand-in model and weight reader for ``spec`` (or for ``loaded``, a model in memory)."""
    dtype = DTYPES[dtype_flag]
    if loaded is not None:
        model, names = stand_in_model(loaded.config, dtype)
        real = loaded.hf_model
        read = lambda name: real.get_parameter(name).detach().to(dtype).numpy()  # noqa: E731
        return WeightSource(LoadedModel(loaded.spec, loaded.source, model, loaded.processor), names, read)
    config = config or load_config(spec)
    directory, scratch = weights_dir(spec), None
    if directory is None:  # a preset: its trained file, or its seeded weights written once, tensor by tensor
        scratch = Path(scratch_parent) / ".weights"
        folder = preset_checkpoint(spec, config, family_of(config).preset_seed(spec), scratch)
        reader, source = CheckpointReader(folder), f"preset:{spec}"
    else:
        reader, source = CheckpointReader(directory), str(directory)
    model, names = stand_in_model(config, dtype)
    read = lambda name: reader.read(reader.resolve(name), dtype)  # noqa: E731
    loaded = LoadedModel(spec, source, model, load_processor(spec, directory))
    return WeightSource(loaded, names, read, scratch)
