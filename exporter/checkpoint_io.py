"""Read and write safetensors one tensor at a time, with plain file reads instead of mmap.

Why not ``safetensors.safe_open``: it memory-maps each shard, and every page a
read touches stays mapped (and counted in the process's RSS) until the file is
closed, so streaming a 14 GB checkpoint through it ends with 14 GB "resident".
A plain read into a fresh buffer keeps exactly one tensor in memory; the kernel's
page cache, which is not ours, holds the rest.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch

from engines.errors import RerouteError

_TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                 "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                 "BOOL": torch.bool}
_CODES = {v: k for k, v in _TORCH_DTYPES.items()}
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# transformers >= 5 names LLaVA's parameters differently from the llava-hf checkpoints on the hub
# (and from what older save_pretrained wrote); try the model's own name first, then these.
_LEGACY_PREFIXES = (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                    ("model.vision_tower.", "vision_tower."),
                    ("model.multi_modal_projector.", "multi_modal_projector."))


def _read_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


class CheckpointReader:
    """The tensors of a safetensors checkpoint (one file or an index of shards), read one at a time."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        if (directory / INDEX).is_file():
            shards = sorted(set(json.loads((directory / INDEX).read_text())["weight_map"].values()))
        elif (directory / SINGLE).is_file():
            shards = [SINGLE]
        else:
            raise RerouteError(f"{directory} has no safetensors weights ({SINGLE} or {INDEX})")
        self.entries: dict[str, tuple[Path, int, dict]] = {}
        for shard in shards:
            header, base = _read_header(directory / shard)
            for key, entry in header.items():
                self.entries[key] = (directory / shard, base, entry)

    def resolve(self, model_name: str) -> str:
        """The checkpoint key holding the model parameter ``model_name``."""
        if model_name in self.entries:
            return model_name
        for new, old in _LEGACY_PREFIXES:
            if model_name.startswith(new) and old + model_name[len(new):] in self.entries:
                return old + model_name[len(new):]
        raise RerouteError(f"the checkpoint has no tensor for parameter {model_name!r}")

    def nbytes(self, key: str) -> int:
        start, end = self.entries[key][2]["data_offsets"]
        return end - start

    def read(self, key: str, dtype: torch.dtype | None = None) -> np.ndarray:
        path, base, entry = self.entries[key]
        start, end = entry["data_offsets"]
        buffer = bytearray(end - start)
        with open(path, "rb") as f:
            f.seek(base + start)
            if f.readinto(buffer) != len(buffer):
                raise RerouteError(f"{path.name} ends before the data of {key!r}")
        tensor = torch.frombuffer(buffer, dtype=_TORCH_DTYPES[entry["dtype"]]) if buffer else \
            torch.empty(0, dtype=_TORCH_DTYPES[entry["dtype"]])
        tensor = tensor.reshape(entry["shape"])
        if dtype is not None and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        return tensor.numpy()

    def dtypes(self) -> set[torch.dtype]:
        return {_TORCH_DTYPES[e["dtype"]] for _, _, e in self.entries.values()}


class StreamingWriter:
    """A single-file safetensors checkpoint written tensor by tensor (shapes declared up front)."""

    def __init__(self, path: Path, specs: dict[str, tuple[tuple[int, ...], torch.dtype]]):
        header, offset = {}, 0
        for key, (shape, dtype) in specs.items():
            size = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
            header[key] = {"dtype": _CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        blob = json.dumps(header).encode()
        blob += b" " * (-len(blob) % 8)  # the format asks for an 8-byte aligned data start
        self.header, self.base = header, 8 + len(blob)
        self.file = open(path, "wb")
        self.file.write(struct.pack("<Q", len(blob)) + blob)
        self.file.truncate(self.base + offset)

    def write(self, key: str, tensor: torch.Tensor) -> None:
        entry = self.header[key]
        if list(tensor.shape) != entry["shape"] or _CODES[tensor.dtype] != entry["dtype"]:
            raise ValueError(f"{key}: got {tuple(tensor.shape)} {tensor.dtype}, declared {entry}")
        self.file.seek(self.base + entry["data_offsets"][0])
        self.file.write(tensor.contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")

    def close(self) -> None:
        self.file.close()


def is_checkpoint_dir(directory: str | Path) -> bool:
    return (Path(directory) / INDEX).is_file() or (Path(directory) / SINGLE).is_file()


def checkpoint_bytes(directory: str | Path) -> int:
    directory = Path(directory)
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))
