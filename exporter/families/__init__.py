"""The registry of model families reroute can route (see base.py for what a family provides).

Every family names a tiny built-in preset; a test fails when a registered family has none.
"""

from __future__ import annotations

from graphs.config import UnsupportedModelError

from .base import Family, PromptInputs
from .llava import LLAVA
from .qwen2_5_vl import QWEN2_5_VL

FAMILIES: dict[str, Family] = {f.model_type: f for f in (LLAVA, QWEN2_5_VL)}


def family_of(config) -> Family:
    """The family of a transformers VLM config; unsupported types and text models fail with one line."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; supported families: {', '.join(FAMILIES)}"
        )
    family = FAMILIES[model_type]
    family.check(config)
    return family


def family_of_preset(name: str) -> Family | None:
    return next((f for f in FAMILIES.values() if name in f.presets), None)


def family_of_alias(name: str) -> Family | None:
    return next((f for f in FAMILIES.values() if name in f.aliases), None)


def all_presets() -> list[str]:
    return [p for f in FAMILIES.values() for p in f.presets]


def all_aliases() -> dict[str, str]:
    return {a: hub for f in FAMILIES.values() for a, hub in f.aliases.items()}


__all__ = ["FAMILIES", "Family", "PromptInputs", "all_aliases", "all_presets", "family_of", "family_of_alias",
           "family_of_preset"]
