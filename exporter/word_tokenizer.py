"""The ``llava-grounding`` preset's tokenizer: the presets' byte-fallback BPE plus merges for the task's words.

The character-level tokenizer spends ~100 tokens on the grounding prompt and 4 tokens on every coordinate,
which the CPU-trained decoder (issue 14) cannot afford. This one keeps the same Llama style (``<s>``
prefix, ``▁`` for spaces, byte fallback, no pre-tokenizer) and adds BPE merges so that

- every word of the task's templates (with its leading ``▁``) is one token, and
- every REC coordinate ``0.00`` .. ``1.00`` is one token (101 of them), as are ``▁[`` and ``,▁``,

so a box ``[0.12, 0.34, 0.56, 0.78]`` is 9 tokens and every REC prompt has the same length. Any other text
still tokenizes (characters, then bytes), and decoding is exact: the merges only join characters.

Each word is built by a chain of merges (prefix, next character); merges are ranked by the length of what
they produce, so all words grow in step and no merge can cut a word in the middle.
"""

from __future__ import annotations

from .presets import build_tokenizer

# Words of scripts/make_grounding_data.py's templates and answers and of the LLaVA-1.5 chat template
# (the tests check that every word of generated items is one token).
_PLAIN = ("USER:", "Please", "What")  # words that follow a newline or a special token: no leading space
_SPACED = ("ASSISTANT:", "provide", "the", "bounding", "box", "coordinate", "of", "region", "this", "sentence",
           "describes:", "colour", "is", "shape", "left", "right", "above", "below",
           "red", "green", "blue", "yellow", "purple", "circle", "square", "triangle", "diamond")
_SYMBOLS = ("▁[", ",▁")


def coordinate_tokens() -> list[str]:
    """``0.00`` .. ``1.00``: the REC box values at two decimals."""
    return [f"{i / 100:.2f}" for i in range(101)]


def word_tokens() -> list[str]:
    return [*_PLAIN, *("▁" + w for w in _SPACED), *_SYMBOLS, *coordinate_tokens()]


def merges_for(tokens: list[str]) -> list[tuple[str, str]]:
    """(prefix, next character) chains that build each token, ordered by the length of their result."""
    seen: dict[tuple[str, str], int] = {}
    for token in tokens:
        for end in range(2, len(token) + 1):
            seen.setdefault((token[: end - 1], token[end - 1]), end)
    return sorted(seen, key=lambda pair: (seen[pair], pair))


def build_word_tokenizer(vocab_size: int):
    """The presets' tokenizer with the task's merges; their results take ids after ``<image>``/``<pad>``."""
    from tokenizers import models

    base = build_tokenizer(vocab_size)
    core = base.backend_tokenizer
    vocab = {tok: i for tok, i in core.get_vocab().items() if not tok.startswith("<extra_")}
    merges = merges_for(word_tokens())
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    if len(vocab) > vocab_size:
        raise ValueError(f"the word tokenizer needs {len(vocab)} ids, more than vocab_size={vocab_size}")
    while len(vocab) < vocab_size:
        vocab[f"<extra_{len(vocab)}>"] = len(vocab)
    # the model is swapped in place so the normalizer, decoder and post-processor stay the presets' own
    core.model = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    return base
