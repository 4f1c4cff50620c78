"""Shared fixtures: tiny LLaVA models built from configs with seeded random weights, images, prompts."""

from __future__ import annotations

import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers share the two cores (README's `-n 2`): one thread each, and for the CLI and server
    # processes the tests start. A second thread per worker only waits for a time slice.
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

from exporter.models import load_model
from exporter.samples import synthetic_image

PROMPTS = [
    "USER: <image>\nWhat is shown in this picture? ASSISTANT:",
    "USER: <image>\nWhere is the red ball? ASSISTANT:",
    "USER: <image>\nCount the dogs. ASSISTANT:",
    "USER: <image>\nDescribe the left part. ASSISTANT:",
]

# A LLaVA-1.5-shaped model with GQA (6 query heads on 2 KV heads) and other widths.
GQA_TEXT = dict(hidden_size=96, intermediate_size=200, num_hidden_layers=32, num_attention_heads=6,
                num_key_value_heads=2, vocab_size=512)
GQA_VISION = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=3)


def make_image(seed: int, size=(320, 280)):
    return synthetic_image(seed, size)


@pytest.fixture(scope="session")
def tiny():
    return load_model("llava-tiny")


@pytest.fixture(scope="session")
def qwen_tiny():
    return load_model("qwen2.5-vl-tiny")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny widths: intra-op threads only contend (40x slower on a loaded 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def gqa_dir(tmp_path_factory):
    """A save_pretrained directory (config, safetensors, tokenizer, processor) with GQA and other widths."""
    from transformers import LlavaForConditionalGeneration

    from exporter.presets import build_processor, llava_config, seeded_init

    processor = build_processor(GQA_TEXT["vocab_size"])
    tok = processor.tokenizer
    config = llava_config(GQA_TEXT, GQA_VISION, image_token_id=tok.convert_tokens_to_ids("<image>"),
                          pad_token_id=tok.pad_token_id)
    model = LlavaForConditionalGeneration(config)
    seeded_init(model, seed=7)
    path = tmp_path_factory.mktemp("llava-gqa")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def gqa(gqa_dir):
    return load_model(gqa_dir)


@pytest.fixture(scope="session")
def image_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(12):
        p = root / f"img{i}.png"
        make_image(i, size=(300 + 10 * i, 260 + 7 * i)).save(p)
        paths.append(str(p))
    return paths
