"""Turn ``--image`` / ``--prompt`` into model inputs, with one-line errors for bad input."""

from __future__ import annotations

import os

import numpy as np

from .errors import RerouteError
from .families.base import PromptInputs

__all__ = ["IMAGE_PLACEHOLDER", "PromptInputs", "chat_prompt", "check_prompt", "encode", "load_image",
           "visual_span_start"]

IMAGE_PLACEHOLDER = "<image>"
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif"}


def load_image(path: str):
    from PIL import Image, UnidentifiedImageError

    if os.path.splitext(path)[1].lower() in VIDEO_SUFFIXES:
        raise RerouteError(f"videos are not supported, give one still image: {path}")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise RerouteError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RerouteError(f"cannot read image {path}: {type(exc).__name__}") from None


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
