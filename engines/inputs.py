"""Turn ``--image`` / ``--prompt`` into model inputs, with one-line errors for bad input."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .errors import RerouteError

__all__ = ["IMAGE_PLACEHOLDER", "PromptInputs", "chat_prompt", "check_prompt", "encode", "load_image",
           "stack_inputs", "visual_span_start"]

IMAGE_PLACEHOLDER = "<image>"
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif"}


@dataclass
class PromptInputs:
    input_ids: np.ndarray  # [B, T] int64
    pixel_values: np.ndarray  # LLaVA: [B, 3, H, W]; Qwen2.5-VL: [B * patches, 3 * 2 * 14 * 14] (flattened)
    visual_start: int  # first visual token, the same for every sample
    num_visual: int = 0  # N_v of this batch's images (equal for every sample)
    image_grid_thw: np.ndarray | None = None  # [B, 3] patch grid per image (dynamic-resolution families)
    position_ids: np.ndarray | None = None  # [3, B, T] M-RoPE position ids of the prompt
    rope_delta: np.ndarray | None = None  # [B] (max prompt position + 1) - T: decode positions' offset


def stack_inputs(parts: list[PromptInputs]) -> PromptInputs:
    """One batch from samples of one shape (same length, visual_start and N_v); pixel rows concatenate
    for both layouts (LLaVA's [B, 3, H, W], Qwen's flattened patches)."""
    import dataclasses

    def cat(name, axis=0):
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else np.concatenate(values, axis=axis)

    return dataclasses.replace(parts[0], input_ids=cat("input_ids"), pixel_values=cat("pixel_values"),
                               image_grid_thw=cat("image_grid_thw"), position_ids=cat("position_ids", axis=1),
                               rope_delta=cat("rope_delta"))


# Largest image accepted, in pixels (width x height): 50 MP, above any camera photo LLaVA would see (it resizes
# to 336 px) and far below what a small compressed file can expand to (a 2.7 MB PNG can hold 30000 x 30000 =
# 900 MP, 2.7 GB decoded). Checked from the header before decoding. PIL refuses above ~179 MP while opening and
# warns above ~89 MP: both give our message instead (the warning is silenced, our limit is lower).
MAX_IMAGE_PIXELS = 50_000_000


class ImageError(RerouteError):
    """An image that cannot be used: unreadable, truncated, or over MAX_IMAGE_PIXELS."""


def decode_image(source, what: str):
    """An RGB PIL image from a path or a binary file object; ImageError (one line) if it cannot be used.

    ``what`` names the image in the message (a path, or "input 'image'").
    """
    import warnings

    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        with Image.open(source) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise ImageError(_too_large(what, f"{img.width}x{img.height} pixels"))
            return img.convert("RGB")  # decodes: a truncated file fails here
    except Image.DecompressionBombError:
        raise ImageError(_too_large(what, "its declared size")) from None
    except FileNotFoundError:
        raise ImageError(f"image not found: {what}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # PIL's decoders raise all of these
        detail = "truncated" if "truncated" in str(exc) else type(exc).__name__
        raise ImageError(f"cannot read image {what}: {detail}") from None


def _too_large(what: str, size: str) -> str:
    return f"image {what} is too large ({size}; the limit is {MAX_IMAGE_PIXELS:,} pixels)"


def load_image(path: str):
    if os.path.splitext(path)[1].lower() in VIDEO_SUFFIXES:
        raise RerouteError(f"videos are not supported, give one still image: {path}")
    return decode_image(path, path)


def check_prompt(prompt: str) -> None:
    count = prompt.count(IMAGE_PLACEHOLDER)
    if count != 1:
        raise RerouteError(
            f"the prompt must contain exactly one {IMAGE_PLACEHOLDER} placeholder, found {count}"
            + (" (use --chat to wrap a plain question)" if count == 0 else "")
        )


def chat_prompt(processor, question: str, placeholder: str = IMAGE_PLACEHOLDER) -> str:
    """Wrap a plain question in the model's chat template (LLaVA-1.5's USER/ASSISTANT form by default)."""
    if placeholder in question or IMAGE_PLACEHOLDER in question:
        raise RerouteError(f"with --chat, give a plain question without {placeholder}")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    return f"USER: {IMAGE_PLACEHOLDER}\n{question} ASSISTANT:"


def visual_span_start(input_ids: np.ndarray, image_token_id: int, num_visual: int) -> int:
    """Check the visual tokens form one span of N_v per sample, at the same place, with text after it."""
    starts = set()
    for row in np.asarray(input_ids):
        where = np.flatnonzero(row == image_token_id)
        if len(where) != num_visual or (len(where) and where[-1] - where[0] != num_visual - 1):
            raise RerouteError(
                f"expected one contiguous span of {num_visual} image tokens per sample, found {len(where)}"
            )
        starts.add(int(where[0]))
    if len(starts) != 1:
        raise RerouteError("all samples of a batch must place the image at the same position")
    start = starts.pop()
    if start + num_visual >= input_ids.shape[1]:
        raise RerouteError("the prompt needs at least one text token after the image")
    return start


def encode(processor, prompts: list[str], images: list, image_token_id: int, num_visual: int) -> PromptInputs:
    """Tokenize prompts (each with one <image>) and preprocess images; equal-length prompts only."""
    for prompt in prompts:
        check_prompt(prompt)
    batch = processor(images=images, text=prompts, return_tensors="np")
    lengths = {len(ids) for ids in batch["input_ids"]}
    if len(lengths) != 1:
        raise RerouteError("prompts of a batch must tokenize to the same length")
    input_ids = np.asarray(batch["input_ids"], dtype=np.int64)
    start = visual_span_start(input_ids, image_token_id, num_visual)
    return PromptInputs(input_ids, np.asarray(batch["pixel_values"], dtype=np.float32), start, num_visual)
