"""Qwen2.5-VL's processor without a video processor, built in (export) and loaded back (artifacts, serving).

transformers' ``Qwen2_5_VLProcessor`` insists on a video processor, which needs
torchvision (none matches the CPU torch build here, SPEC section 9), and
``AutoProcessor`` on a saved images-only processor returns the tokenizer alone.
"""

from __future__ import annotations


def images_only_processor(image_processor, tokenizer, chat_template=None):
    """Qwen2_5_VLProcessor without its video processor (images only).

    transformers' processor insists on a video processor, which needs torchvision; this subclass declares
    only the image processor and tokenizer as its parts, so it builds (and saves) without one.
    """
    from transformers import Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class Qwen2_5_VLImageProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return Qwen2_5_VLImageProcessor(image_processor, tokenizer,
                                    chat_template=chat_template or getattr(tokenizer, "chat_template", None))


def load_images_only_processor(directory):
    """The processor saved by ``save_pretrained`` of :func:`images_only_processor`, loaded offline."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(directory, local_files_only=True)
    return images_only_processor(image_processor, tokenizer, saved_chat_template(directory, tokenizer))


def saved_chat_template(directory, tokenizer) -> str | None:
    """The tokenizer's chat template, else the processor-level file of a directory (a hub id has none)."""
    import json
    from pathlib import Path

    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    for name in ("chat_template.jinja", "chat_template.json"):
        path = Path(directory) / name
        if Path(directory).is_dir() and path.is_file():
            text = path.read_text(encoding="utf-8")
            return text if name.endswith(".jinja") else json.loads(text).get("chat_template")
    return None
