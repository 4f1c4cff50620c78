"""Polygraphy runners: a CPU torch runner for the reference graphs, beside Polygraphy's OnnxrtRunner.

Both follow Polygraphy's runner protocol (activate / infer / deactivate), so
``polygraphy.comparator.Comparator`` runs them on the same feeds and compares
their outputs per name.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np


def input_metadata(io_spec: list[dict]):
    """Polygraphy TensorMetadata from manifest-style [{name, dtype, shape}] (symbolic dims -> None)."""
    from polygraphy.common import TensorMetadata

    meta = TensorMetadata()
    for t in io_spec:
        meta.add(t["name"], np.dtype(t["dtype"]), [d if isinstance(d, int) else None for d in t["shape"]])
    return meta


def _torch_runner_base():
    from polygraphy.backend.base import BaseRunner

    return BaseRunner


class TorchGraphRunner(_torch_runner_base()):
    """Runs one graph module (graphs/export_graphs.py) with torch on ``device`` (the module must be there);
    outputs by the graph's names, as host numpy arrays."""

    def __init__(self, module, inputs_spec: list[dict], name: str | None = None, device="cpu"):
        super().__init__(name=name or f"torch-{type(module).__name__}", prefix="torch-runner")
        self.module = module
        self.inputs_spec = inputs_spec
        self.device = device

    def activate_impl(self):
        pass

    def deactivate_impl(self):
        pass

    def get_input_metadata_impl(self):
        return input_metadata(self.inputs_spec)

    def infer_impl(self, feed_dict):
        import torch

        # feed what the exported graph takes (an unrouted prefill has no visual_start input)
        kwargs = {name: torch.from_numpy(np.ascontiguousarray(feed_dict[name])).to(self.device)
                  for name in self.module.input_names() if name in feed_dict}
        start = time.perf_counter()
        with torch.inference_mode():
            outs = self.module(**kwargs)
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize()  # CUDA launches are asynchronous: time the work, not the launch
        self.inference_time = time.perf_counter() - start
        outs = outs if isinstance(outs, tuple) else (outs,)
        return OrderedDict((n, o.cpu().numpy().copy()) for n, o in zip(self.module.output_names(), outs))
