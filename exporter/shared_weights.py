"""One external-data file for graphs that hold the same weights (prefill and decode).

The routed prefill and the decode step carry the same decoder, final norm and
lm_head. Exported one by one, each graph writes its own ``NAME.onnx.data``, so an
artifact stores the decoder twice (2 x 13 GB for LLaVA-1.5-7B in fp16). This pass
rewrites the graphs' external-data references into one file, storing each distinct
tensor once (matched by content, since the exporter names folded constants
differently per graph). ONNX Runtime and TensorRT's ONNX parser both resolve
``location`` / ``offset`` / ``length`` relative to the model file, so nothing else
changes for them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

import onnx

SHARED_DATA = "decoder.onnx.data"
# Large tensors start on an allocation-granularity boundary so runtimes can mmap them
# (the same rule onnx.save_model applies when it aligns external data).
ALIGN_THRESHOLD = 1 << 20
ALIGNMENT = 1 << 16


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


def _external_info(tensor: onnx.TensorProto) -> tuple[str, int, int]:
    info = {e.key: e.value for e in tensor.external_data}
    return info["location"], int(info.get("offset", 0)), int(info["length"])


def _set_external(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def share_external_data(directory: Path, names: list[str], location: str = SHARED_DATA) -> dict:
    """Rewrite ``directory/NAME.onnx`` for each name so their external tensors live in one
    deduplicated ``directory/location``; the graphs' old data files are removed.

    Returns {"tensors": referenced, "unique": stored, "bytes_before", "bytes_after"}.
    """
    directory = Path(directory)
    models = {n: onnx.load(str(directory / f"{n}.onnx"), load_external_data=False) for n in names}
    stored: dict[tuple[int, str, int], tuple[int, int]] = {}  # (data_type, sha256, length) -> (offset, length)
    old_files: set[Path] = set()
    referenced = bytes_before = 0
    target = directory / location
    tmp = target.with_name(target.name + ".partial")
    with open(tmp, "wb") as out:
        for name, model in models.items():
            handles: dict[str, object] = {}
            try:
                for tensor in external_tensors(model):
                    src, offset, length = _external_info(tensor)
                    if src not in handles:
                        handles[src] = open(directory / src, "rb")
                        old_files.add(directory / src)
                    fh = handles[src]
                    fh.seek(offset)
                    data = fh.read(length)
                    if len(data) != length:
                        raise ValueError(f"{name}.onnx: {src} ends before {tensor.name}'s data")
                    referenced += 1
                    bytes_before += length
                    key = (tensor.data_type, hashlib.sha256(data).hexdigest(), length)
                    if key not in stored:
                        if length >= ALIGN_THRESHOLD:
                            out.seek(-out.tell() % ALIGNMENT, os.SEEK_CUR)
                        stored[key] = (out.tell(), length)
                        out.write(data)
                    _set_external(tensor, location, *stored[key])
            finally:
                for fh in handles.values():
                    fh.close()
        out.truncate()
        bytes_after = out.tell()
    os.replace(tmp, target)
    for name, model in models.items():
        onnx.save_model(model, str(directory / f"{name}.onnx"))
    for path in old_files - {target}:
        path.unlink()
    return {"tensors": referenced, "unique": len(stored), "bytes_before": bytes_before, "bytes_after": bytes_after}
