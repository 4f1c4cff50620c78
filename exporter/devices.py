"""``--device`` / ``--torch-dtype`` for the PyTorch reference backend (generate, parity, bench).

A command adds the flags with :func:`add_device_args` and turns them into TorchBackend keyword
arguments with one call, ``torch_options(args)``, which checks the device before any model is
loaded, so ``--device cuda`` on a machine without CUDA is a one-line error (exit 2).
"""

from __future__ import annotations

from engines.errors import RerouteError

DEVICES = ("cpu", "cuda")
TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def add_device_args(parser, dtype: bool = True) -> None:
    parser.add_argument("--device", default="cpu", choices=DEVICES,
                        help="where the PyTorch reference runs (default cpu; cuda needs a CUDA build of torch)")
    if dtype:
        parser.add_argument("--torch-dtype", choices=sorted(TORCH_DTYPES),
                            help="PyTorch reference dtype (default fp32; fp16/bf16 are meant for --device cuda)")


def torch_device(name: str):
    """torch.device for a ``--device`` value; RerouteError when CUDA is asked for and absent."""
    import torch

    if name not in DEVICES:
        raise RerouteError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        built = torch.version.cuda or "none (CPU-only build)"
        raise RerouteError(f"--device cuda: PyTorch {torch.__version__} sees no CUDA device (its CUDA: {built}); "
                           "use --device cpu")
    return torch.device(name)


def torch_dtype(name: str | None):
    import torch

    if name is None:
        return torch.float32
    if name not in TORCH_DTYPES:
        raise RerouteError(f"unknown dtype {name!r}; choose one of {', '.join(TORCH_DTYPES)}")
    return getattr(torch, TORCH_DTYPES[name])


def torch_options(args) -> dict:
    """TorchBackend keyword arguments (device, dtype) from parsed ``--device`` / ``--torch-dtype``."""
    options = {"device": torch_device(getattr(args, "device", "cpu"))}
    if getattr(args, "torch_dtype", None) is not None:
        options["dtype"] = torch_dtype(args.torch_dtype)
    return options
