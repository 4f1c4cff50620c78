"""Write a LLaVA checkpoint offline: the built-in config, seeded random fp16 weights, the presets' processor.

Usage: python scripts/make_checkpoint.py --like llava-1.5-7b --out DIR [--layers N] [--seed S] [--force]

The folder is what ``LlavaForConditionalGeneration.save_pretrained`` (fp16) plus ``LlavaProcessor.save_pretrained``
write: ``config.json``, safetensors shards of about 2 GB with ``model.safetensors.index.json``, tokenizer and image
processor files; ``reroute ... --model DIR`` loads it. Memory stays bounded at any size: names and shapes come from
a meta-device model, and each tensor is generated, written and dropped before the next one (peak: the largest
tensor in fp32, 0.5 GB for LLaVA-1.5-7B's embedding). ``--layers N`` keeps the first N decoder layers at full width
so a 7B-wide model small enough for a CPU can be checked numerically.

Every tensor has its own generator, seeded from ``--seed`` and the tensor's name, so any one of them can be
regenerated alone (``expected_tensor``) to check a load. Linear and conv weights ~ N(0, 1/fan_in), embeddings
~ N(0, 1), biases ~ N(0, 0.02^2), norms 1/0: the scale of ``exporter.presets.seeded_init`` (unit-scale activations,
finite in fp16, peaked attention so routing has real choices).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

SHARD_BYTES = 2 * 10**9
LIKE = ("llava-1.5-7b", "llava-tiny", "llava-bench")
# Module names in transformers 5's LlavaForConditionalGeneration -> the names its save_pretrained writes
# (the original llava-hf checkpoint layout, which from_pretrained maps back).
SAVED_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
)


class CheckpointError(Exception):
    """Bad arguments or a destination that cannot be written: one line, exit status 2."""


@dataclass(frozen=True)
class TensorSpec:
    name: str  # as saved
    shape: tuple[int, ...]
    init: str  # "linear", "bias", "embedding", "ones", "zeros"

    @property
    def nbytes(self) -> int:  # fp16
        return 2 * _numel(self.shape)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def checkpoint_config(like: str, layers: int | None):
    """(LlavaConfig in fp16, processor) for ``--like``, cut to ``layers`` decoder layers (same widths)."""
    from exporter.presets import PRESETS, build_processor, llava_15_7b_config, preset_config

    if like == "llava-1.5-7b":
        config = llava_15_7b_config()
        processor = build_processor(config.text_config.vocab_size, config.image_token_id)
    elif like in PRESETS:
        config = preset_config(like)
        processor = build_processor(PRESETS[like]["text"]["vocab_size"])
    else:
        raise CheckpointError(f"unknown --like {like!r}: use one of {', '.join(LIKE)}")
    depth = config.text_config.num_hidden_layers
    if layers is not None:
        if not 1 <= layers <= depth:
            raise CheckpointError(f"--layers must be between 1 and {depth}, got {layers}")
        config.text_config.num_hidden_layers = layers
        if getattr(config.text_config, "layer_types", None):
            config.text_config.layer_types = config.text_config.layer_types[:layers]
    config.dtype = "float16"
    return config, processor


def saved_name(name: str) -> str:
    for prefix, saved in SAVED_PREFIXES:
        if name.startswith(prefix):
            return saved + name[len(prefix):]
    return name


def tensor_specs(config) -> list[TensorSpec]:
    """Every tensor of the model with its saved name, shape and init rule, from a meta-device model."""
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    kinds = {}
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            kinds[prefix + "weight"] = "linear"
            kinds[prefix + "bias"] = "bias"
        elif isinstance(module, torch.nn.Embedding):
            kinds[prefix + "weight"] = "embedding"
    specs = []
    for name, tensor in model.state_dict().items():
        if name.endswith("class_embedding"):
            init = "embedding"
        else:  # what is left: norm weights (1) and biases (0)
            init = kinds.get(name, "zeros" if name.endswith("bias") else "ones")
        specs.append(TensorSpec(saved_name(name), tuple(tensor.shape), init))
    return sorted(specs, key=lambda s: s.name)


def expected_tensor(spec: TensorSpec, seed: int) -> torch.Tensor:
    """The fp16 values of one tensor; depends only on (seed, name, shape)."""
    if spec.init == "ones":
        return torch.ones(spec.shape, dtype=torch.float16)
    if spec.init == "zeros":
        return torch.zeros(spec.shape, dtype=torch.float16)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(spec.name.encode()))
    values = torch.randn(spec.shape, generator=gen)
    if spec.init == "linear":
        values /= _numel(spec.shape[1:]) ** 0.5
    elif spec.init == "bias":
        values *= 0.02
    return values.to(torch.float16)


def plan_shards(specs: list[TensorSpec], shard_bytes: int = SHARD_BYTES) -> list[list[TensorSpec]]:
    shards, current, size = [], [], 0
    for spec in specs:
        if current and size + spec.nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(spec)
        size += spec.nbytes
    return shards + [current] if current else shards


def write_shard(path: Path, specs: list[TensorSpec], seed: int, on_tensor=lambda spec: None) -> None:
    """A safetensors file written tensor by tensor: the header is known from shapes, so nothing is held."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for spec in specs:
        header[spec.name] = {"dtype": "F16", "shape": list(spec.shape), "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8 bytes with spaces
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)) + encoded)
        for spec in specs:
            out.write(expected_tensor(spec, seed).numpy().tobytes())
            on_tensor(spec)


def write_checkpoint(out: Path, like: str, layers: int | None, seed: int, force: bool = False,
                     quiet: bool = False, shard_bytes: int = SHARD_BYTES) -> Path:
    """Build the checkpoint in a temp folder beside ``out`` and rename it into place (nothing half-written)."""
    from engines.atomic import publish, replace_dir

    config, processor = checkpoint_config(like, layers)
    specs = tensor_specs(config)
    total = sum(s.nbytes for s in specs)
    tmp = _make_temp_beside(out, force, total)
    try:
        shards = plan_shards(specs, shard_bytes)
        progress = _Progress(total, quiet)
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            write_shard(tmp / file, shard, seed, progress.advance)
            weight_map.update({s.name: file for s in shard})
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        config.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        publish(tmp)
        replace_dir(tmp, out)
        progress.finish()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _make_temp_beside(out: Path, force: bool, total: int) -> Path:
    if (out.exists() or out.is_symlink()) and not force:
        raise CheckpointError(f"{out} already exists (use --force to replace it)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(out.parent).free
        if free < total * 1.02 + 2**20:
            raise CheckpointError(
                f"not enough disk space in {out.parent}: need {total / 1e9:.1f} GB, {free / 1e9:.1f} GB free")
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise CheckpointError(f"cannot write to {out.parent}: {exc.strerror or exc}") from None


class _Progress:
    """One line, rewritten in place: bytes written of the total."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet, self.done, self.t0 = total, quiet, 0, time.perf_counter()
        self.shown = 0.0

    def advance(self, spec: TensorSpec) -> None:
        self.done += spec.nbytes
        now = time.perf_counter()
        if not self.quiet and (now - self.shown > 0.5 or self.done == self.total):
            self.shown = now
            sys.stderr.write(f"\rwriting weights: {self.done / 1e9:6.2f} / {self.total / 1e9:.2f} GB "
                             f"({time.perf_counter() - self.t0:.0f} s)")
            sys.stderr.flush()

    def finish(self) -> None:
        if not self.quiet:
            sys.stderr.write("\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--like", default="llava-1.5-7b", help=f"one of {', '.join(LIKE)}")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--layers", type=int, default=None, help="keep the first N decoder layers (same widths)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="replace --out if it exists")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        out = write_checkpoint(args.out, args.like, args.layers, args.seed, args.force, args.quiet)
    except CheckpointError as exc:
        print(f"make_checkpoint: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("make_checkpoint: interrupted; nothing was left behind", file=sys.stderr)
        return 130
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
