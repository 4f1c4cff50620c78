"""The routed PyTorch reference against transformers and against a plain masked implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.generate import greedy_generate
from engines.inputs import encode
from engines.torch_runner import TorchBackend
from graphs.schedule import solve_schedule

from .conftest import PROMPTS, make_image
from .reference_impl import ReferenceLlava

RATIOS = [1 / 3, 2 / 9, 1 / 9, 0.25]
ROUTED = ["fastv", "pdrop", "reroute-fastv", "reroute"]
STEPS = 16


def _inputs(loaded, n=2, seed=0):
    images = [make_image(seed + i) for i in range(n)]
    prompts = [PROMPTS[0]] * n  # same length: one template, different images
    return encode(loaded.processor, prompts, images, loaded.image_token_id, loaded.num_visual)


def _hf(loaded, inputs):
    ids, pix = torch.from_numpy(inputs.input_ids), torch.from_numpy(inputs.pixel_values)
    with torch.no_grad():
        logits = loaded.hf_model(input_ids=ids, pixel_values=pix).logits[:, -1].numpy()
        out = loaded.hf_model.generate(input_ids=ids, pixel_values=pix, max_new_tokens=STEPS, do_sample=False,
                                       eos_token_id=None, pad_token_id=0)
    return logits, out[:, ids.shape[1]:].tolist()


@pytest.mark.parametrize("which", ["tiny", "gqa"])
@pytest.mark.parametrize("method,ratio", [("none", 1.0), ("reroute", 1.0), ("pdrop", 1.0)])
def test_unrouted_equals_transformers(request, which, method, ratio):
    loaded = request.getfixturevalue(which)
    inputs = _inputs(loaded)
    schedule = solve_schedule(method, ratio, loaded.decoder_config.num_layers, loaded.num_visual)
    gen = greedy_generate(TorchBackend(loaded, schedule), inputs.input_ids, inputs.pixel_values,
                          inputs.visual_start, STEPS)
    hf_logits, hf_tokens = _hf(loaded, inputs)
    assert np.abs(gen.prefill_logits - hf_logits).max() <= 1e-5
    assert gen.generated == hf_tokens
    assert gen.cache_lengths == [inputs.input_ids.shape[1]] * loaded.decoder_config.num_layers


@pytest.fixture(scope="module")
def references(tiny, gqa):
    return {"tiny": (tiny, ReferenceLlava(tiny.hf_model)), "gqa": (gqa, ReferenceLlava(gqa.hf_model))}


def _check_against_reference(loaded, ref, method, ratio):
    inputs = _inputs(loaded, n=2, seed=3)
    schedule = solve_schedule(method, ratio, loaded.decoder_config.num_layers, loaded.num_visual)
    gen = greedy_generate(TorchBackend(loaded, schedule), inputs.input_ids, inputs.pixel_values,
                          inputs.visual_start, STEPS)
    embeds = ref.embeddings(torch.from_numpy(inputs.input_ids), torch.from_numpy(inputs.pixel_values))
    text = inputs.input_ids.shape[1] - loaded.num_visual
    expected_kv = [text + v for v in schedule.visual_tokens_per_layer()]
    assert gen.cache_lengths == expected_kv
    for b in range(inputs.input_ids.shape[0]):
        logits, selections, tokens = ref.generate(embeds[b], schedule, inputs.visual_start, STEPS)
        assert np.abs(gen.prefill_logits[b] - logits.numpy()).max() <= 1e-5
        assert [s[b].tolist() for s in gen.selections] == selections
        assert gen.generated[b] == tokens


@pytest.mark.parametrize("ratio", RATIOS, ids=["1/3", "2/9", "1/9", "1/4"])
@pytest.mark.parametrize("method", ROUTED)
def test_routed_matches_plain_reference_tiny(references, method, ratio):
    _check_against_reference(*references["tiny"], method, ratio)


@pytest.mark.parametrize("method", ROUTED)
@pytest.mark.parametrize("ratio", [1 / 3, 1 / 9], ids=["1/3", "1/9"])
def test_routed_matches_plain_reference_gqa(references, method, ratio):
    _check_against_reference(*references["gqa"], method, ratio)


def test_routing_is_per_sample(tiny):
    """Two different images in one batch route differently, each as it would alone."""
    inputs = _inputs(tiny, n=2, seed=5)
    schedule = solve_schedule("reroute", 0.25, 32, tiny.num_visual)
    backend = TorchBackend(tiny, schedule)
    both = greedy_generate(backend, inputs.input_ids, inputs.pixel_values, inputs.visual_start, 4)
    assert not np.array_equal(both.selections[0][0], both.selections[0][1])
    for b in range(2):
        alone = greedy_generate(backend, inputs.input_ids[b : b + 1], inputs.pixel_values[b : b + 1],
                                inputs.visual_start, 4)
        assert [s[0].tolist() for s in alone.selections] == [s[b].tolist() for s in both.selections]
        np.testing.assert_allclose(alone.prefill_logits[0], both.prefill_logits[b], atol=1e-5)


def test_reroute_lets_deferred_tokens_reenter(tiny):
    """Compact routing re-scores all N_v tokens: some token deferred at one stage is active at a later one."""
    inputs = _inputs(tiny, n=1, seed=1)
    schedule = solve_schedule("reroute", 0.25, 32, tiny.num_visual)
    gen = greedy_generate(TorchBackend(tiny, schedule), inputs.input_ids, inputs.pixel_values,
                          inputs.visual_start, 1)
    sets = [set(s[0].tolist()) for s in gen.selections]
    assert any(sets[j] - sets[i] for i in range(len(sets)) for j in range(i + 1, len(sets)))
    pdrop = greedy_generate(TorchBackend(tiny, solve_schedule("pdrop", 0.25, 32, tiny.num_visual)),
                            inputs.input_ids, inputs.pixel_values, inputs.visual_start, 1)
    kept = [set(s[0].tolist()) for s in pdrop.selections]
    assert all(b <= a for a, b in zip(kept, kept[1:]))  # deletion is monotonic


@pytest.mark.parametrize("method", ["reroute", "pdrop"])
def test_decision_layers_run_k_proj_once(tiny, method):
    """A decision layer takes its kept tokens' k_proj rows from the scoring pass: one k_proj call per layer,
    over the whole candidate sequence at a decision layer and over the layer's own tokens elsewhere."""
    inputs = _inputs(tiny, n=1)
    schedule = solve_schedule(method, 0.25, tiny.decoder_config.num_layers, tiny.num_visual)
    backend = TorchBackend(tiny, schedule)
    rows: dict[int, list[int]] = {}
    hooks = [layer.self_attn.k_proj.register_forward_hook(
        lambda mod, args, out, i=i: rows.setdefault(i, []).append(args[0].shape[1]))
        for i, layer in enumerate(backend.decoder.layers)]
    try:
        out = backend.prefill(backend.embed(inputs.input_ids, backend.vision(inputs.pixel_values)),
                              inputs.visual_start)
    finally:
        for h in hooks:
            h.remove()
    kept = backend.cache_lengths(out.cache)  # tokens each layer processed
    total = inputs.input_ids.shape[1]
    for i, counts in rows.items():
        assert len(counts) == 1, f"layer {i} ran k_proj {len(counts)} times"
        if i in schedule.layers:
            scored = total if method == "reroute" or i == schedule.layers[0] else kept[i - 1]
            assert counts[0] == scored > kept[i]
        else:
            assert counts[0] == kept[i]
