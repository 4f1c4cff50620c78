"""Bind real weights to a graph traced with weights as inputs, streaming them into external data.

The graphs are traced with ``export_params=False`` (exporter/onnx_export.py), so
each parameter is a graph input and the weight-only op chains that constant
folding used to fold (the Transpose of every Linear weight, Casts, a Gather of
position embeddings by constant ids, shape arithmetic) are still nodes. This
pass folds them here: for each value that a kept node consumes and that depends
on constants and weights only, it reads the weights it needs (one tensor at a
time), evaluates the chain with ONNX's reference ops, appends the result to the
data file (64 KiB aligned when large) and replaces it by an external-data
initializer. Peak memory is about the largest weight, three times over.

Prefill and decode hand the same :class:`DataFile` in, so a weight (or its
folded form) is stored once and both graphs point at the same bytes; the key is
the folded expression, e.g. ``Transpose[perm=(1, 0)](decoder.layers.0...weight)``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

# Ops folded over constants: torch's TorchScript constant folding's set, less Gather (it left the
# position-embedding lookup by constant ids unfolded; so do we, keeping the graphs as they were).
FOLDABLE = {"Slice", "Concat", "Sqrt", "Div", "Mul", "Sub", "Add", "Unsqueeze", "Transpose", "Cast", "Reshape",
            "Shape", "ReduceL1", "ReduceL2", "ReduceProd", "Squeeze", "Equal", "Where", "Identity",
            "Neg", "Pow", "Range", "Sign", "Floor", "Ceil", "Not", "Softmax", "Exp", "Log"}
INLINE_LIMIT = 1024  # smaller tensors stay in the .onnx file, as onnx.save_model's size_threshold did
ALIGN_THRESHOLD = 1 << 20  # large tensors start on a 64 KiB boundary so runtimes can mmap them
ALIGNMENT = 1 << 16


class DataFile:
    """One external-data file; each distinct tensor (by key) is written once."""

    def __init__(self, path: Path):
        self.path, self.location = Path(path), Path(path).name
        self.file = open(self.path, "wb")
        self.stored: dict[str, tuple] = {}  # key -> (initializer name, offset, length, (dtype, shape))
        self.names: set[str] = set()

    def lookup(self, key: str):
        return self.stored.get(key)

    def add(self, key: str, name: str, array: np.ndarray) -> tuple:
        """Append ``array``; returns (initializer name, offset, length, (dtype, shape))."""
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)  # bytes without another copy
        if len(data) >= ALIGN_THRESHOLD:
            self.file.seek(-self.file.tell() % ALIGNMENT, os.SEEK_CUR)
        base, n = name, 1
        while name in self.names:  # two different folds of one weight get distinct names
            n += 1
            name = f"{base}_{n}"
        self.names.add(name)
        self.stored[key] = (name, self.file.tell(), len(data), (array.dtype, array.shape))
        self.file.write(data)
        return self.stored[key]

    def close(self) -> int:
        self.file.truncate()
        size = self.file.tell()
        self.file.close()
        return size


def _external(name: str, array_dtype, shape, location: str, offset: int, length: int) -> onnx.TensorProto:
    tensor = onnx.TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(array_dtype),
                              dims=list(shape), data_location=onnx.TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _attr_key(node: onnx.NodeProto) -> str:
    parts = []
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, onnx.TensorProto):
            value = hashlib.sha256(numpy_helper.to_array(value).tobytes()).hexdigest()[:16]
        parts.append(f"{a.name}={value}")
    return ",".join(parts)


class _Folder:
    def __init__(self, model: onnx.ModelProto, weights: dict[str, Callable[[], np.ndarray]]):
        graph = model.graph
        self.weights = weights
        self.consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain == "" and node.attribute[0].name == "value":
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        known = set(self.consts) | set(weights)
        self.producer: dict[str, tuple[onnx.NodeProto, int]] = {}
        self.folded: list[onnx.NodeProto] = []
        for node in graph.node:
            if node.domain == "" and node.op_type in FOLDABLE and all(i in known for i in node.input if i):
                self.folded.append(node)
                for k, out in enumerate(node.output):
                    self.producer[out] = (node, k)
                    known.add(out)
        self.keys: dict[str, str] = {}

    def key(self, value: str) -> str:
        """A name for what ``value`` computes, the same in every graph traced from the same modules."""
        if value not in self.keys:
            if value in self.weights:
                self.keys[value] = value
            elif value in self.consts:
                self.keys[value] = "const:" + hashlib.sha256(self.consts[value].tobytes()).hexdigest()[:16]
            else:
                node, k = self.producer[value]
                args = ",".join(self.key(i) for i in node.input if i)
                self.keys[value] = f"{node.op_type}[{_attr_key(node)}]({args})#{k}"
        return self.keys[value]

    def weight_of(self, value: str) -> str | None:
        """The first weight ``value`` depends on (names its initializer), or None for pure constants."""
        if value in self.weights:
            return value
        if value in self.producer:
            for i in self.producer[value][0].input:
                if i and (found := self.weight_of(i)) is not None:
                    return found
        return None

    def evaluate(self, value: str, memo: dict) -> np.ndarray:
        if value in self.consts:
            return self.consts[value]
        if value not in memo:
            if value in self.weights:
                memo[value] = self.weights[value]()
            else:
                from onnx.reference import ReferenceEvaluator

                node, _ = self.producer[value]
                feeds = {i: self.evaluate(i, memo) for i in node.input if i}
                for out, result in zip(node.output, ReferenceEvaluator(node).run(None, feeds)):
                    memo[out] = np.asarray(result)
        return memo[value]


def bind_weights(model: onnx.ModelProto, weights: dict[str, Callable[[], np.ndarray]], data: DataFile,
                 on_tensor: Callable[[str], None] | None = None) -> None:
    """Fold weight/constant chains of ``model`` and store their results in ``data`` (in place).

    ``weights``: {graph input name: loader of that weight, in the export dtype}.
    """
    graph = model.graph
    folder = _Folder(model, weights)
    folded_ids = {id(n) for n in folder.folded}
    kept = [n for n in graph.node if id(n) not in folded_ids]
    consumed = {i for n in kept for i in n.input} | {o.name for o in graph.output}
    frontier = [v for v in [*weights, *folder.producer] if v in consumed]
    renames, initializers, constants, added = {}, [], [], set()
    for value in frontier:
        key = folder.key(value)
        stored = data.lookup(key)
        if stored is None:
            array = np.ascontiguousarray(folder.evaluate(value, {}))
            weight = folder.weight_of(value)
            if weight is None and array.nbytes < INLINE_LIMIT:  # folded shape arithmetic: a Constant, as before
                constants.append(onnx.helper.make_node("Constant", [], [value], value=numpy_helper.from_array(array)))
                continue
            name = value if weight is None or value == weight else f"{weight}/{folder.producer[value][0].op_type}"
            stored = data.add(key, name, array)
            if on_tensor is not None:
                on_tensor(name)
        name, offset, length, (dtype, shape) = stored
        if name not in added:  # one weight folded the same way twice (two Transposes of it) is one initializer
            added.add(name)
            initializers.append(_external(name, dtype, shape, data.location, offset, length))
        if name != value:
            renames[value] = name
    _rewrite(graph, constants + kept, initializers, renames, set(weights))


def _rewrite(graph, kept, initializers, renames, weight_inputs) -> None:
    for node in kept:
        for k, i in enumerate(node.input):
            if i in renames:
                node.input[k] = renames[i]
    for out in graph.output:
        if out.name in renames:  # a graph output that is a folded weight (not in our graphs; kept correct)
            out.name = renames[out.name]
    used = {i for n in kept for i in n.input} | {o.name for o in graph.output}
    kept = [n for n in kept if not (n.op_type == "Constant" and n.output[0] not in used)]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(t for t in initializers if t.name in used)
    inputs = [i for i in graph.input if i.name not in weight_inputs]
    del graph.input[:]
    graph.input.extend(inputs)
