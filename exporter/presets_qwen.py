"""Built-in Qwen2.5-VL models: the 7B's config (offline inspect) and seeded tiny/bench presets.

The presets keep what routing depends on: a 28-layer Qwen2 decoder with GQA,
q/k/v biases and M-RoPE, Qwen2.5-VL's windowed ViT with the 2x2 patch merger,
dynamic resolution (``smart_resize`` between ``min_pixels`` and ``max_pixels``)
and Qwen's special tokens. They ship an offline byte-fallback tokenizer, the
Qwen2-VL image processor and a chat template, so ``--prompt`` text and
``--image`` files work without the hub. Videos are refused (no video processor:
it needs torchvision, which this environment cannot install).
"""

from __future__ import annotations

import string

from engines.qwen_processor import images_only_processor

# The release caps images at 451584 pixels (at most 576 visual tokens, SPEC section 9).
MAX_PIXELS = 451584
MIN_PIXELS = 56 * 56

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")

# Qwen2.5-VL's chat template reduced to what reroute feeds it: one user turn with one image.
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

PRESETS = {
    "qwen2.5-vl-tiny": {
        # head_dim 16 -> 8 rotary frequencies split 2/3/3 among (t, h, w), as 16/24/24 splits 64 in the 7B
        "text": dict(hidden_size=64, intermediate_size=160, num_hidden_layers=28, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=512, mrope_section=[2, 3, 3]),
        "vision": dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, fullatt_block_indexes=[1, 3]),
        "seed": 0,
        "description": "Qwen2.5-VL structure, tiny widths, for tests (seconds to build)",
    },
    "qwen2.5-vl-bench": {
        "text": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=28, num_attention_heads=16,
                     num_key_value_heads=4, vocab_size=32000, mrope_section=[8, 12, 12]),
        "vision": dict(depth=4, hidden_size=128, intermediate_size=256, num_heads=4, fullatt_block_indexes=[1, 3]),
        "seed": 0,
        "description": "Qwen2.5-VL structure, 1024-wide decoder, for benchmarks",
    },
}


def qwen_config(text: dict, vision: dict, token_ids: dict, **extra):
    """A Qwen2_5_VLConfig: 14 px patches, 2x2 merge, 112 px windows, M-RoPE text model."""
    from transformers import Qwen2_5_VLConfig

    text = dict(text)
    rope = {"rope_type": "default", "rope_theta": text.pop("rope_theta", 1000000.0),
            "mrope_section": list(text.pop("mrope_section"))}
    text_config = {"max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_parameters": rope,
                   "bos_token_id": token_ids["<|endoftext|>"], "eos_token_id": token_ids["<|im_end|>"],
                   "pad_token_id": token_ids["<|endoftext|>"], **text}
    vision_config = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                         tokens_per_second=2, hidden_act="silu", out_hidden_size=text["hidden_size"], **vision)
    return Qwen2_5_VLConfig(
        text_config=text_config, vision_config=vision_config,
        image_token_id=token_ids["<|image_pad|>"], video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"], vision_end_token_id=token_ids["<|vision_end|>"],
        tie_word_embeddings=False, **extra,
    )


def build_tokenizer(vocab_size: int):
    """An offline byte-fallback BPE tokenizer carrying Qwen's special tokens (no BOS prefix, as Qwen)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for ch in string.printable[:95]:
        vocab.setdefault(ch, len(vocab))
    for special in SPECIAL_TOKENS:
        vocab[special] = len(vocab)
    while len(vocab) < vocab_size:  # unused ids so the vocabulary matches the model's lm_head
        vocab[f"<extra_{len(vocab)}>"] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    core.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>",
                              "im_start_token": "<|im_start|>"},
    )
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def build_image_processor(min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14,
                                    temporal_patch_size=2, merge_size=2)


def build_processor(vocab_size: int, max_pixels: int = MAX_PIXELS):
    return images_only_processor(build_image_processor(max_pixels=max_pixels), build_tokenizer(vocab_size),
                                 QWEN_CHAT_TEMPLATE)


def preset_config(name: str):
    spec = PRESETS[name]
    tok = build_tokenizer(spec["text"]["vocab_size"])
    return qwen_config(spec["text"], spec["vision"], {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS})


def build_preset(name: str):
    """(model, processor) for a Qwen preset, fp32, eval mode, deterministic weights."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from .presets import seeded_init

    spec = PRESETS[name]
    model = Qwen2_5_VLForConditionalGeneration(preset_config(name))
    seeded_init(model, spec["seed"])
    return model.eval(), build_processor(spec["text"]["vocab_size"])


QWEN_7B_TOKEN_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                     "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|image_pad|>": 151655,
                     "<|video_pad|>": 151656}


def qwen2_5_vl_7b_config():
    """Qwen/Qwen2.5-VL-7B-Instruct's config (from its published config.json), built in for offline inspect."""
    text = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                num_key_value_heads=4, vocab_size=152064, mrope_section=[16, 24, 24], max_position_embeddings=128000)
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                  fullatt_block_indexes=[7, 15, 23, 31])
    config = qwen_config(text, vision, QWEN_7B_TOKEN_IDS)
    config.dtype = "bfloat16"
    return config
