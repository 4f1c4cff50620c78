"""Names and small helpers every part of the bench shares: methods, ratios, labels, summaries, the prompt."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from engines.errors import RerouteError

BACKENDS = ("torch", "onnxruntime")


BASELINE = "none"


DEFAULT_METHODS = ("none", "fastv", "pdrop", "reroute-fastv", "reroute")


# (routing method, the deletion it augments): target (b) compares each pair's prefill
ROUTING_VS_DELETION = (("reroute", "pdrop"), ("reroute-fastv", "fastv"))


DEFAULT_RATIOS = (1 / 3, 2 / 9, 1 / 9, 0.25)


SCHEMA_VERSION = 1


QUESTION = ("Describe the objects in this picture, their colours and where each of them is placed relative to "
            "the others, and say whether any text is visible anywhere in the image. ")


def ratio_label(ratio: float) -> str:
    """1/3 -> '1/3', 0.25 -> '1/4', 0.3 -> '3/10'; falls back to the decimal."""
    frac = Fraction(ratio).limit_denominator(100)
    if abs(float(frac) - ratio) < 1e-9:
        return str(frac.numerator) if frac.denominator == 1 else f"{frac.numerator}/{frac.denominator}"
    return f"{ratio:.4g}"


def summarize(values) -> dict:
    """median, quartiles (linear interpolation), min, max and the raw values."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return {"median": None, "q1": None, "q3": None, "min": None, "max": None, "n": 0, "values": []}
    q1, med, q3 = np.percentile(arr, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "min": float(arr.min()),
            "max": float(arr.max()), "n": int(arr.size), "values": [float(v) for v in arr]}


def _paired(values, base) -> dict:
    return summarize([v / b for v, b in zip(values, base)])


def bench_prompt(processor, text_tokens: int, placeholder: str = "<image>") -> str:
    """A ``USER: <image>\\n... ASSISTANT:`` prompt whose non-image tokens number exactly ``text_tokens``.

    The paper measures at 616 tokens (576 visual + 40 text). The question is a
    prefix of a fixed sentence, grown one character at a time until the
    tokenizer (BOS included) gives ``text_tokens`` tokens besides the one image token of ``placeholder``
    (Qwen2.5-VL's ``<|vision_start|><|image_pad|><|vision_end|>``: its start and end count as text).
    """
    tok = processor.tokenizer

    def count(question: str) -> int:
        prompt = f"USER: {placeholder}\n{question} ASSISTANT:"
        return len(tok(prompt)["input_ids"]) - 1, prompt

    shortest, prompt = count("")
    if text_tokens < shortest:
        raise RerouteError(f"--text-tokens must be >= {shortest} (the chat template alone has {shortest} tokens)")
    source = QUESTION * (1 + text_tokens // 8)
    for end in range(0, len(source) + 1):
        for suffix in ("", "?", "."):  # a space + letter can add two tokens; punctuation fills the gap
            n, prompt = count(source[:end].rstrip() + suffix)
            if n == text_tokens:
                return prompt
        if n > text_tokens + 2:
            break
    raise RerouteError(f"cannot build a prompt of exactly {text_tokens} text tokens with this tokenizer")
