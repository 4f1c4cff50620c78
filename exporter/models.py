"""Resolve ``--model``: the built-in LLaVA-1.5-7B config, presets, HF ids and save_pretrained directories."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from graphs.config import DecoderConfig, UnsupportedModelError

from .errors import RerouteError
from .presets import PRESETS, build_preset, llava_15_7b_config, preset_config
from .registry import decoder_config, family_of, num_visual_tokens

ALIASES = {"llava": "llava-hf/llava-1.5-7b-hf"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoadedModel:
    spec: str  # what the user passed
    source: str  # preset:NAME, a directory, or a hub id
    hf_model: object  # transformers LlavaForConditionalGeneration, eval mode
    processor: object  # LlavaProcessor

    @property
    def config(self):
        return self.hf_model.config

    @property
    def decoder_config(self) -> DecoderConfig:
        return decoder_config(self.config)

    @property
    def num_visual(self) -> int:
        return num_visual_tokens(self.config)

    @property
    def image_token_id(self) -> int:
        return self.config.image_token_id


def _known() -> str:
    return ", ".join(["llava", *PRESETS])


def _kind(spec: str) -> str:
    if spec in PRESETS:
        return "preset"
    if spec in ALIASES:
        return "alias"
    if os.path.isdir(spec):
        return "dir"
    if _HUB_ID.match(spec) and not os.path.exists(spec):
        return "hub"
    raise RerouteError(f"unknown model {spec!r}: use one of {_known()}, a HF model id, or a local directory")


def load_config(spec: str):
    """The model's config without loading weights (works offline for llava and presets)."""
    kind = _kind(spec)
    try:
        if kind == "preset":
            config = preset_config(spec)
        elif kind == "alias":
            config = llava_15_7b_config()
        else:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(spec, local_files_only=kind == "dir", trust_remote_code=False)
        family_of(config)
    except UnsupportedModelError as exc:
        raise RerouteError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise RerouteError(f"cannot read the config of {spec!r}: {_first_line(exc)}") from None
    return config


def load_model(spec: str, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load weights and processor. Presets are built from seeded random weights in seconds."""
    kind = _kind(spec)
    if kind == "preset":
        model, processor = build_preset(spec)
        return LoadedModel(spec, f"preset:{spec}", model.to(dtype), processor)
    source = ALIASES.get(spec, spec)
    try:
        family_of(load_config(spec))
        model, processor = _from_pretrained(source, local_only=kind in ("dir", "alias"), dtype=dtype)
    except RerouteError:
        raise
    except (OSError, ValueError, EnvironmentError) as exc:
        if kind == "alias":
            raise _weights_missing(source) from None
        raise RerouteError(f"cannot load model {spec!r}: {_first_line(exc)}") from None
    return LoadedModel(spec, source if kind != "dir" else str(Path(spec).resolve()), model, processor)


def _from_pretrained(source: str, local_only: bool, dtype: torch.dtype):
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its per-tensor loading bar floods the terminal; ours reports stages
    model = LlavaForConditionalGeneration.from_pretrained(
        source, local_files_only=local_only, trust_remote_code=False, dtype=dtype
    )
    processor = AutoProcessor.from_pretrained(source, local_files_only=local_only, trust_remote_code=False)
    return model.eval(), processor


def _weights_missing(source: str) -> RerouteError:
    return RerouteError(f"LLaVA-1.5-7B weights ({source}) are not in the local HF cache and the hub is unreachable; "
                        f"use --model llava-tiny, or a local directory written by save_pretrained")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def weights_dir(spec: str) -> Path | None:
    """The folder holding ``spec``'s safetensors (None for presets, which have no files).

    ``llava`` and hub ids resolve to their local HF-cache snapshot; nothing is downloaded for ``llava``.
    """
    kind = _kind(spec)
    if kind == "preset":
        return None
    if kind == "dir":
        return Path(spec).resolve()
    source = ALIASES.get(spec, spec)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, local_files_only=kind == "alias",
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as exc:  # the hub client raises many types (offline, missing, gated)
        if kind == "alias":
            raise _weights_missing(source) from None
        raise RerouteError(f"cannot load model {spec!r}: {_first_line(exc)}") from None


def load_processor(spec: str, directory: Path | None):
    """The model's processor: the preset's offline one, or the one saved beside the weights."""
    if directory is None:
        from .presets import PRESETS, build_processor

        return build_processor(PRESETS[spec]["text"]["vocab_size"])
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise RerouteError(f"cannot load the processor of {spec!r}: {_first_line(exc)}") from None
