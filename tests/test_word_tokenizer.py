"""exporter/word_tokenizer.py: the llava-grounding preset's task-word tokenizer."""

from __future__ import annotations

import importlib.util
import random
import string
import sys
from pathlib import Path

import pytest

from exporter import presets
from exporter.word_tokenizer import coordinate_tokens

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture(scope="module")
def tok():
    return presets.preset_tokenizer("llava-grounding")


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("make_grounding_data_t", SCRIPTS / "make_grounding_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _tokens(tok, text):
    return tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])


def test_round_trip_is_exact(tok):
    rng = random.Random(0)
    alphabet = string.printable + "éü€日本"  # not "▁": it stands for a space, as in Llama's tokenizer
    texts = ["", " ", "  the  the ", "USER: <image>\nPlease provide", "[0.12, 0.34, 1.00, 0.00]", "0.123 1.001 10.5",
             "ASSISTANT:ASSISTANT:", "redgreen blue.", "\t\n\r"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40))) for _ in range(200)]
    for text in texts:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids[1:]) == text, text


def test_items_words_and_coordinates_are_single_tokens(tok, gen):
    rec_lengths, seen_words = set(), set()
    for i in range(40):
        _, shapes, rng = gen.scene(0, "test", i)
        for item in gen.make_items(rng, "x.png", shapes):
            for word in item["question"].rstrip(".?").split(" ")[1:]:
                assert _tokens(tok, " " + word) == ["▁" + word], word
                seen_words.add(word)
            if item["kind"] == "grounding":
                rec_lengths.add(len(tok(item["question"])["input_ids"]))
                pieces = _tokens(tok, " " + item["answer"])
                assert len(pieces) == 9 and pieces[0] == "▁[" and pieces[-1] == "]", pieces
                assert pieces[1::2][:4] == item["answer"].strip("[]").split(", ")
            else:
                assert _tokens(tok, " " + item["answer"]) == ["▁" + item["answer"]]
    assert len(rec_lengths) == 1  # every REC prompt is as long as every other: the eval batches them together
    assert {"left", "right", "above", "below", "describes:"} <= seen_words
    for value in coordinate_tokens():
        assert _tokens(tok, value) == [value]
    assert len(coordinate_tokens()) == 101


def test_special_ids_and_size_match_the_model(tok):
    config = presets.preset_config("llava-grounding")
    assert len(tok) == config.text_config.vocab_size
    assert tok.convert_tokens_to_ids("<image>") == config.image_token_id
    assert tok.pad_token_id == config.text_config.pad_token_id
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)


def test_other_presets_keep_the_character_tokenizer():
    text = "USER: <image>\nPlease provide the box [0.12, 0.34] ASSISTANT:"
    for name in ("llava-tiny", "llava-bench"):
        ours = presets.preset_tokenizer(name)
        plain = presets.build_tokenizer(presets.PRESETS[name]["text"]["vocab_size"])
        assert ours.get_vocab() == plain.get_vocab()
        assert ours(text)["input_ids"] == plain(text)["input_ids"]
        assert len(ours(text)["input_ids"]) == len(text) - len("<image>") + 2  # characters, <image>, <s>
