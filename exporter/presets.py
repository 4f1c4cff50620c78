"""Built-in models that need no download: LLaVA-1.5's structure with seeded random weights.

Both presets keep what the routing depends on: CLIP at 336 px with 14 px
patches (576 visual tokens) and a 32-layer Llama decoder, so the paper's
schedules apply unchanged. They ship an offline byte-fallback tokenizer and a
CLIP image processor, so ``--prompt`` text and ``--image`` files work.
"""

from __future__ import annotations

import string

import torch

LLAVA_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %} {% elif m['role'] == 'assistant' %}ASSISTANT: "
    "{% for c in m['content'] %}{{ c['text'] }}{% endfor %}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

PRESETS = {
    "llava-tiny": {
        "text": dict(hidden_size=64, intermediate_size=160, num_hidden_layers=32, num_attention_heads=4,
                     num_key_value_heads=4, vocab_size=512),
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        "seed": 0,
        "description": "LLaVA-1.5 structure, tiny widths, for tests (seconds to build)",
    },
    "llava-bench": {
        "text": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=32, num_attention_heads=16,
                     num_key_value_heads=16, vocab_size=32000),
        "vision": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4),
        "seed": 0,
        "description": "LLaVA-1.5 structure, 1024-wide decoder, for benchmarks",
    },
    "llava-grounding": {
        "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=32, num_attention_heads=4,
                     num_key_value_heads=4, vocab_size=640),
        "vision": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4),
        "seed": 0,
        # one token per task word and per coordinate (exporter/word_tokenizer.py): short sequences to train on
        "tokenizer": "words",
        # trained by scripts/train_grounding.py (issue 14); small enough fp32 to ship in the repo
        "weights": "assets/llava-grounding/model.safetensors",
        "description": "LLaVA-1.5 structure trained here on the synthetic grounding task (scripts/train_grounding.py)",
    },
}


def llava_config(text: dict, vision: dict, image_token_id: int, pad_token_id: int, **extra):
    """A LlavaConfig with LLaVA-1.5's structure: CLIP 336/14, layer -2 features, Llama text model."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision_config = CLIPVisionConfig(image_size=336, patch_size=14, projection_dim=vision["hidden_size"], **vision)
    text_config = LlamaConfig(
        max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=pad_token_id,
        bos_token_id=1, eos_token_id=2, **text,
    )
    return LlavaConfig(
        vision_config=vision_config.to_dict(), text_config=text_config.to_dict(),
        image_token_id=image_token_id, projector_hidden_act="gelu", vision_feature_layer=-2,
        vision_feature_select_strategy="default", **extra,
    )


def build_tokenizer(vocab_size: int, image_token_id: int | None = None):
    """An offline byte-fallback BPE tokenizer in Llama's style (``<s>`` prefix, ``▁`` for spaces).

    ``image_token_id`` places ``<image>`` (and ``<pad>`` right after it) at a fixed id, as LLaVA-1.5 has
    them after Llama's 32000 tokens; by default they follow the byte and character tokens.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for ch in string.printable[:95]:
        vocab.setdefault("▁" if ch == " " else ch, len(vocab))
    _fill_unused(vocab, image_token_id or len(vocab))
    for special in ("<image>", "<pad>"):
        vocab[special] = len(vocab)
    _fill_unused(vocab, vocab_size)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    core.normalizer = normalizers.Replace(" ", "▁")
    core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.chat_template = LLAVA_CHAT_TEMPLATE
    return tokenizer


def _fill_unused(vocab: dict, size: int) -> None:
    """Unused ids up to ``size``, so special tokens land where the model expects and the vocabulary matches
    the model's lm_head."""
    while len(vocab) < size:
        vocab[f"<extra_{len(vocab)}>"] = len(vocab)


def preset_tokenizer(name: str):
    """A preset's tokenizer: the character-level one, or the task-word one where the preset asks for it."""
    spec = PRESETS[name]
    if spec.get("tokenizer") == "words":
        from .word_tokenizer import build_word_tokenizer

        return build_word_tokenizer(build_tokenizer(spec["text"]["vocab_size"]), spec["text"]["vocab_size"])
    return build_tokenizer(spec["text"]["vocab_size"])


def preset_processor(name: str):
    return build_processor(PRESETS[name]["text"]["vocab_size"], tokenizer=preset_tokenizer(name))


def build_processor(vocab_size: int, image_token_id: int | None = None, tokenizer=None):
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
        do_center_crop=True, do_resize=True, do_normalize=True,
    )
    if tokenizer is None:
        tokenizer = build_tokenizer(vocab_size, image_token_id)
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def seeded_init(model: torch.nn.Module, seed: int) -> None:
    """Deterministic random weights scaled so attention is peaked (routing has real choices to make).

    Linear/conv weights ~ N(0, 1/fan_in), embeddings ~ N(0, 1); norms stay at 1/0.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in sorted(model.named_modules(), key=lambda kv: kv[0]):
            # Conv3d: Qwen2.5-VL's patch embedding (left out, it kept torch's unseeded init: every load differed)
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / fan_in**0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.02)
            elif isinstance(module, torch.nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen))
        for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("class_embedding"):
                param.copy_(torch.randn(param.shape, generator=gen))


def preset_config(name: str):
    spec = PRESETS[name]
    tok = preset_tokenizer(name)
    return llava_config(spec["text"], spec["vision"], image_token_id=tok.convert_tokens_to_ids("<image>"),
                        pad_token_id=tok.pad_token_id)


def build_preset(name: str):
    """(model, processor) for a preset, fp32, eval mode, deterministic weights."""
    from transformers import LlavaForConditionalGeneration

    spec = PRESETS[name]
    config = preset_config(name)
    model = LlavaForConditionalGeneration(config)
    if "weights" in spec:
        _load_trained(model, name)
    else:
        seeded_init(model, spec["seed"])
    return model.eval(), preset_processor(name)


def trained_weights(name: str):
    """The safetensors file a training script wrote for preset ``name`` (None for seeded presets)."""
    from pathlib import Path

    from engines.errors import RerouteError

    relative = PRESETS.get(name, {}).get("weights")
    if relative is None:
        return None
    path = Path(__file__).resolve().parent.parent / relative
    if not path.is_file():
        raise RerouteError(f"preset {name!r} needs its trained weights at {path}: run "
                           f"scripts/train_grounding.py --out {path.parent}")
    return path


def _load_trained(model: torch.nn.Module, name: str) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(trained_weights(name))), strict=True)


def llava_15_7b_config():
    """LLaVA-1.5-7B's config (llava-hf/llava-1.5-7b-hf), built in so inspect works offline."""
    text = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32064)
    vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)
    config = llava_config(text, vision, image_token_id=32000, pad_token_id=32001)
    config.vision_config.projection_dim = 768
    config.dtype = "float16"
    return config
