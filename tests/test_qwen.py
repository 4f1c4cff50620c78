"""Qwen2.5-VL's routed PyTorch reference: against transformers and against the plain masked reference.

Two image sizes give different N_v (336x336 -> 144 visual tokens, 448x308 -> 176); a batch holds two
images of one size, so routing is per sample.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engines.generate import generate_inputs
from engines.torch_runner import TorchBackend
from exporter.models import load_model
from exporter.samples import synthetic_image
from graphs.schedule import solve_schedule

from .reference_qwen import ReferenceQwen

RATIOS = [1 / 3, 2 / 9, 1 / 9, 0.25]
ROUTED = ["fastv", "pdrop", "reroute-fastv", "reroute"]
SIZES = {144: (336, 336), 176: (448, 308)}
STEPS = 16
QUESTION = "What is shown here?"

# Other widths than the tiny preset: 6 query heads on 2 KV heads, head_dim 16, a 3-block ViT.
DIR_TEXT = dict(hidden_size=96, intermediate_size=200, num_hidden_layers=28, num_attention_heads=6,
                num_key_value_heads=2, vocab_size=512, mrope_section=[2, 2, 4])
DIR_VISION = dict(depth=3, hidden_size=48, intermediate_size=96, num_heads=3, fullatt_block_indexes=[2])


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py; qwen_tiny comes from there too


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    """A save_pretrained directory (weights, tokenizer, image processor) with other widths."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from exporter.presets import seeded_init
    from exporter.presets_qwen import SPECIAL_TOKENS, build_processor, qwen_config

    processor = build_processor(DIR_TEXT["vocab_size"])
    ids = {t: processor.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    model = Qwen2_5_VLForConditionalGeneration(qwen_config(DIR_TEXT, DIR_VISION, ids))
    seeded_init(model, seed=11)
    path = tmp_path_factory.mktemp("qwen-dir")
    model.save_pretrained(path)
    processor.tokenizer.save_pretrained(path)
    processor.image_processor.save_pretrained(path)
    return load_model(str(path))


def _inputs(loaded, num_visual, seed=0):
    prompt = loaded.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
        add_generation_prompt=True)
    images = [synthetic_image(seed + i, SIZES[num_visual]) for i in range(2)]
    inputs = loaded.encode([prompt, prompt], images)
    assert inputs.num_visual == num_visual
    return inputs


def _hf(loaded, inputs):
    kwargs = dict(input_ids=torch.from_numpy(inputs.input_ids), pixel_values=torch.from_numpy(inputs.pixel_values),
                  image_grid_thw=torch.from_numpy(inputs.image_grid_thw),
                  mm_token_type_ids=torch.from_numpy((inputs.input_ids == loaded.config.image_token_id) * 1))
    with torch.no_grad():
        logits = loaded.hf_model(**kwargs).logits[:, -1].numpy()
        out = loaded.hf_model.generate(**kwargs, max_new_tokens=STEPS, do_sample=False, eos_token_id=None,
                                       pad_token_id=0)
    return logits, out[:, inputs.input_ids.shape[1]:].tolist()


@pytest.mark.parametrize("num_visual", sorted(SIZES))
@pytest.mark.parametrize("which", ["qwen_tiny", "qwen_dir"])
def test_unrouted_equals_transformers(request, which, num_visual):
    """method none and ratio 1 (reroute, pdrop) give transformers' logits and greedy tokens."""
    loaded = request.getfixturevalue(which)
    inputs = _inputs(loaded, num_visual)
    hf_logits, hf_tokens = _hf(loaded, inputs)
    for method in ("none", "reroute", "pdrop"):
        schedule = solve_schedule(method, 1.0, loaded.decoder_config.num_layers, loaded.num_visual)
        gen = generate_inputs(TorchBackend(loaded, schedule), inputs, STEPS)
        assert np.abs(gen.prefill_logits - hf_logits).max() <= 1e-5, method
        assert gen.generated == hf_tokens, method
        assert gen.cache_lengths == [inputs.input_ids.shape[1]] * loaded.decoder_config.num_layers


@pytest.fixture(scope="module")
def reference(qwen_tiny):
    return ReferenceQwen(qwen_tiny.hf_model)


@pytest.mark.parametrize("num_visual", sorted(SIZES))
@pytest.mark.parametrize("ratio", RATIOS, ids=["1/3", "2/9", "1/9", "1/4"])
@pytest.mark.parametrize("method", ROUTED)
def test_routed_matches_plain_reference(qwen_tiny, reference, method, ratio, num_visual):
    inputs = _inputs(qwen_tiny, num_visual, seed=3)
    schedule = solve_schedule(method, ratio, 28, qwen_tiny.num_visual, at_least_one=True)
    gen = generate_inputs(TorchBackend(qwen_tiny, schedule), inputs, STEPS)
    per_image = schedule.for_num_visual(num_visual)
    expected_k = []
    for r in schedule.keep_ratios:  # k_s = max(1, floor(N_v r_s)), deletion capped by the survivors
        k = max(1, math.floor(num_visual * r + 1e-9))
        expected_k.append(min(k, expected_k[-1]) if method in ("fastv", "pdrop") and expected_k else k)
    assert list(per_image.k) == expected_k
    text = inputs.input_ids.shape[1] - num_visual
    assert gen.cache_lengths == [text + v for v in per_image.visual_tokens_per_layer()]
    ids = torch.from_numpy(inputs.input_ids)
    grid = torch.from_numpy(inputs.image_grid_thw)
    embeds = reference.embeddings(ids, torch.from_numpy(inputs.pixel_values), grid)
    positions = reference.positions(ids, grid)  # [3, B, T]
    np.testing.assert_array_equal(positions.numpy(), inputs.position_ids)
    for b in range(2):
        logits, selections, tokens = reference.generate(embeds[b], per_image, inputs.visual_start, STEPS,
                                                        positions[:, b])
        assert np.abs(gen.prefill_logits[b] - logits.numpy()).max() <= 1e-5
        assert [s[b].tolist() for s in gen.selections] == selections
        assert gen.generated[b] == tokens


def test_routing_is_per_sample(qwen_tiny):
    """Two images of one size route differently in one batch, each as it would alone."""
    inputs = _inputs(qwen_tiny, 144, seed=5)
    backend = TorchBackend(qwen_tiny, solve_schedule("reroute", 0.25, 28, qwen_tiny.num_visual))
    both = generate_inputs(backend, inputs, 2)
    assert not np.array_equal(both.selections[0][0], both.selections[0][1])
    assert any(set(s[0].tolist()) - set(both.selections[0][0].tolist()) for s in both.selections[1:])  # re-entry
    for b in range(2):
        alone = generate_inputs(backend, _slice(inputs, b), 2)
        assert [s[0].tolist() for s in alone.selections] == [s[b].tolist() for s in both.selections]
        np.testing.assert_allclose(alone.prefill_logits[0], both.prefill_logits[b], atol=1e-5)


def _slice(inputs, b):
    """Sample b of a batch as a batch of one (the patches of each image are contiguous, equal in number)."""
    import dataclasses

    patches = inputs.pixel_values.shape[0] // inputs.input_ids.shape[0]
    return dataclasses.replace(
        inputs, input_ids=inputs.input_ids[b : b + 1],
        pixel_values=inputs.pixel_values[b * patches : (b + 1) * patches],
        image_grid_thw=inputs.image_grid_thw[b : b + 1], position_ids=inputs.position_ids[:, b : b + 1],
        rope_delta=inputs.rope_delta[b : b + 1])
