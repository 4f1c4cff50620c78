"""A weightless LLaVA model to trace: real structure, real buffers, zero-memory stand-in parameters.

The graphs' structure depends on shapes, dtypes and the (static) routing
capacities only, so tracing needs no real weight: each parameter becomes a view
of one shared zero tensor per shape (``_shared_zeros``), which reads as the
kernel's zero page and so costs no resident memory. Routing decisions on those
are meaningless, but the fixed-capacity graph is the same. The real weights are
bound afterwards, one tensor at a time (exporter/weight_binder.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint_io import StreamingWriter


@contextmanager
def _parameters_on_meta():
    """Every parameter created inside lives on the meta device; buffers (position ids, RoPE) stay real."""
    original = nn.Module.register_parameter

    def register(module, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def meta_model(config):
    """The family's transformers model (LLaVA, Qwen2.5-VL) for ``config`` with every parameter on meta."""
    from .registry import family_of

    model_class = family_of(config).model_class()
    with _parameters_on_meta():
        return model_class(config).eval()


def stand_in_model(config, dtype: torch.dtype):
    """(model, {id(stand-in): parameter name}) with zero-memory stand-ins in ``dtype``."""
    model = meta_model(config).to(dtype)  # float buffers follow the export dtype, as a loaded model's do
    names, zeros = {}, {}
    for name, param in list(model.named_parameters()):
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner)
        stand_in = nn.Parameter(_shared_zeros(zeros, tuple(param.shape), param.dtype), requires_grad=False)
        module._parameters[attr] = stand_in
        names[id(stand_in)] = name
    return model, names


def _shared_zeros(cache: dict, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """One real, contiguous zero tensor per (shape, dtype), shared by every stand-in of that shape.

    Why not ``zeros(()).expand(shape)`` (one element): every matmul on a zero-stride
    weight materialises a contiguous copy first, so tracing a 7B decoder spent most
    of its time allocating and faulting in those copies (system time). A real buffer
    costs nothing until written: a large ``np.zeros`` is fresh anonymous
    memory (calloc), and reading it maps the kernel's shared zero page, not RSS. Each stand-in is
    its own Parameter (its own TensorImpl), so the tracer still gives each its own input.
    """
    key = (shape, dtype)
    if key not in cache:
        # numpy's zeros is calloc: large blocks come fresh from mmap, never memset (torch.zeros writes them)
        cache[key] = torch.from_numpy(np.zeros(shape, dtype=torch.empty((), dtype=dtype).numpy().dtype))
    return cache[key]


def parameter_sources(module: nn.Module, names: dict[int, str]) -> dict[str, str]:
    """{graph module parameter name: model parameter name}, matched by identity (graph modules share them)."""
    return {name: names[id(p)] for name, p in module.named_parameters() if id(p) in names}


def preset_checkpoint(spec: str, config, seed: int, scratch: Path) -> Path:
    """The folder holding preset ``spec``'s weights, for a streamed export or ``reroute verify``: the
    folder of its trained file when it ships one (``llava-grounding``), else ``scratch``, created and
    given the seeded weights (``write_preset_checkpoint``)."""
    from .presets import trained_weights

    trained = trained_weights(spec)
    if trained is not None:
        return trained.parent
    scratch.mkdir()
    write_preset_checkpoint(config, seed, scratch / "model.safetensors")
    return scratch


def write_preset_checkpoint(config, seed: int, path: Path) -> None:
    """The preset's seeded weights (exporter/presets.py ``seeded_init``), fp32, written one tensor at a time.

    Same random stream as ``seeded_init`` (modules in name order: Linear/Conv weight then bias,
    Embedding weight; then class embeddings); every other parameter is a norm (weight 1, bias 0),
    as transformers initialises it. tests/test_streamed_export.py checks equality with build_preset.
    """
    model = meta_model(config)
    params = dict(model.named_parameters())
    writer = StreamingWriter(path, {k: (tuple(p.shape), torch.float32) for k, p in params.items()})
    gen = torch.Generator().manual_seed(seed)
    written = set()

    def put(key, tensor):
        writer.write(key, tensor)
        written.add(key)

    try:
        for name, module in sorted(model.named_modules(), key=lambda kv: kv[0]):
            prefix = f"{name}." if name else ""
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv3d)):  # Conv3d: Qwen2.5-VL's patch embedding
                shape = module.weight.shape
                put(prefix + "weight", torch.randn(shape, generator=gen) / module.weight[0].numel() ** 0.5)
                if module.bias is not None:
                    put(prefix + "bias", torch.randn(module.bias.shape, generator=gen) * 0.02)
            elif isinstance(module, nn.Embedding):
                put(prefix + "weight", torch.randn(module.weight.shape, generator=gen))
        for name in sorted(params):
            if name.endswith("class_embedding"):
                put(name, torch.randn(params[name].shape, generator=gen))
        for name in sorted(set(params) - written):
            owner = type(model.get_submodule(name.rpartition(".")[0])).__name__
            if "Norm" not in owner:
                raise ValueError(f"no seeded rule for {name} ({owner})")
            fill = torch.ones if name.endswith("weight") else torch.zeros
            put(name, fill(params[name].shape))
    finally:
        writer.close()
