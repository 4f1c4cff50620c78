"""Resolve ``--model``: built-in configs (llava, qwen2.5-vl), presets, HF ids and save_pretrained directories."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from engines.errors import RerouteError
from graphs.config import DecoderConfig, UnsupportedModelError

from .families import Family, PromptInputs, all_aliases, all_presets, family_of, family_of_alias, family_of_preset

ALIASES = all_aliases()
PRESETS = all_presets()
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoadedModel:
    spec: str  # what the user passed
    source: str  # preset:NAME, a directory, or a hub id
    hf_model: object  # transformers *ForConditionalGeneration of a registered family, eval mode
    processor: object  # its processor (Qwen2.5-VL: images only)

    @property
    def config(self):
        return self.hf_model.config

    @property
    def family(self) -> Family:
        return family_of(self.config)

    @property
    def decoder_config(self) -> DecoderConfig:
        return self.family.decoder_config(self.config)

    @property
    def num_visual(self) -> int:
        """Visual tokens per image; for dynamic-resolution families the most one image can give."""
        return self.family.num_visual_tokens(self.config, self.processor)

    def encode(self, prompts: list[str], images: list) -> PromptInputs:
        """Tokenize prompts (one image each) and preprocess images, with the family's checks."""
        return self.family.encode(self.processor, self.config, prompts, images)

    @property
    def image_token_id(self) -> int:
        return self.config.image_token_id


def _known() -> str:
    return ", ".join([*ALIASES, *PRESETS])


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
            config = family_of_preset(spec).preset_config(spec)
        elif kind == "alias":
            config = family_of_alias(spec).builtin_config(spec)
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
        model, processor = family_of_preset(spec).build_preset(spec)
        return LoadedModel(spec, f"preset:{spec}", model.to(dtype), processor)
    source = ALIASES.get(spec, spec)
    try:
        family = family_of(load_config(spec))
        _quiet_transformers()
        model, processor = family.from_pretrained(source, local_only=kind in ("dir", "alias"), dtype=dtype)
    except RerouteError:
        raise
    except (OSError, ValueError, EnvironmentError) as exc:
        if kind == "alias":
            raise _weights_missing(spec, source) from None
        raise RerouteError(f"cannot load model {spec!r}: {_first_line(exc)}") from None
    return LoadedModel(spec, source if kind != "dir" else str(Path(spec).resolve()), model, processor)


def _weights_missing(spec: str, source: str) -> RerouteError:
    family = family_of_alias(spec)
    title, tiny = family.alias_titles.get(spec, spec), family.tiny_preset
    return RerouteError(f"{title} weights ({source}) are not in the local HF cache and the hub is unreachable; "
                        f"use --model {tiny}, or a local directory written by save_pretrained")


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its per-tensor loading bar floods the terminal; ours reports stages


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
            raise _weights_missing(spec, source) from None
        raise RerouteError(f"cannot load model {spec!r}: {_first_line(exc)}") from None


def load_processor(spec: str, directory: Path | None):
    """The model's processor: the preset's offline one, or the one saved beside the weights."""
    if directory is None:
        return family_of_preset(spec).preset_processor(spec)
    try:
        return family_of(load_config(str(directory))).load_processor(str(directory))
    except (OSError, ValueError) as exc:
        raise RerouteError(f"cannot load the processor of {spec!r}: {_first_line(exc)}") from None
