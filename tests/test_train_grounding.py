"""scripts/train_grounding.py: the training data it builds, its reproducibility, and the preset's loading."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from engines.errors import RerouteError
from engines.inputs import chat_prompt
from exporter import presets
from exporter.evaluation.data import Item
from exporter.evaluation.scoring import score_answer

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture(scope="module")
def train():
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location("train_grounding", SCRIPTS / "train_grounding.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def processor():
    return presets.build_processor(presets.PRESETS["llava-grounding"]["text"]["vocab_size"])


def test_first_turn_is_the_eval_prompt_and_labels_cover_answers_only(train, processor):
    config = presets.preset_config("llava-grounding")
    image, shapes, _ = train.grounding.scene(0, "train", 3)
    qa = train.conversation(np.random.default_rng(1), shapes, 3)
    ids, labels = train.encode_conversation(processor.tokenizer, config.image_token_id, 576, qa)
    prompt = chat_prompt(processor, qa[0][0])
    reference = processor(images=[image], text=[prompt], return_tensors="np")["input_ids"][0].tolist()
    assert ids[: len(reference)] == reference  # what eval feeds the model, token for token
    assert len(ids) == len(labels)
    answers = [t for t in labels if t != train.IGNORE]
    expected = "".join(f" {a}</s>" for _, a in qa)
    assert processor.tokenizer.decode(answers) == expected
    assert ids.count(config.image_token_id) == 576


def test_compact_box_answers_score_right(train):
    _, shapes, _ = train.grounding.scene(0, "test", 0)
    for s in shapes:
        answer = train.compact_box(s)
        item = Item(1, Path("x.png"), "q", answer, "grounding", tuple(s.normalised(4)))
        assert score_answer(item, answer).correct, answer


def test_conversations_open_with_both_kinds(train):
    firsts = set()
    for i in range(40):
        _, shapes, _ = train.grounding.scene(0, "train", i)
        qa = train.conversation(np.random.default_rng(i), shapes, 2)
        assert len(qa) == 2 and qa[0] != qa[1]
        firsts.add(qa[0][1].startswith("["))
    assert firsts == {True, False}


def test_patch_targets_mark_the_patches_inside_each_box(train):
    _, shapes, _ = train.grounding.scene(0, "train", 5)
    colour, kind, box = train.patch_targets(shapes)
    inside = colour > 0
    assert ((kind > 0) == inside).all()
    centres = np.arange(24) * 14 + 7
    expected = 0
    for s in shapes:
        x0, y0, x1, y1 = s.box
        n = int(((centres >= x0) & (centres < x1)).sum() * ((centres >= y0) & (centres < y1)).sum())
        expected += n
        row, col = (y0 + y1) // 2 // 14, (x0 + x1) // 2 // 14
        if x0 <= col * 14 + 7 < x1 and y0 <= row * 14 + 7 < y1:
            np.testing.assert_allclose(box[row * 24 + col], np.asarray(s.box) / 336, rtol=1e-6)
    assert inside.sum() == expected


def test_two_runs_write_identical_weights(train, tmp_path):
    args = ["--vision-steps", "1", "--vision-batch", "1", "--steps", "1", "--batch", "1", "--turns", "1",
            "--val-pictures", "1", "--eval-every", "1"]
    for name in ("a", "b"):
        assert train.main(["--out", str(tmp_path / name), *args]) == 0
    a, b = (tmp_path / n / "model.safetensors" for n in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
    log = (tmp_path / "a" / "train_log.jsonl").read_text()
    assert '"val_token_acc"' in log and '"phase": "done"' in log


def test_missing_trained_weights_is_one_clear_error(monkeypatch, tmp_path):
    spec = dict(presets.PRESETS["llava-grounding"], weights=str(tmp_path / "absent.safetensors"))
    monkeypatch.setitem(presets.PRESETS, "llava-grounding", spec)
    with pytest.raises(RerouteError, match="train_grounding.py"):
        presets.build_preset("llava-grounding")


def test_trained_weights_load_into_the_preset(train, tmp_path, monkeypatch):
    model = train.build_untrained(3)
    train.save_weights(model, tmp_path)
    spec = dict(presets.PRESETS["llava-grounding"], weights=str(tmp_path / "model.safetensors"))
    monkeypatch.setitem(presets.PRESETS, "llava-grounding", spec)
    loaded, _ = presets.build_preset("llava-grounding")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert (a == b).all(), name
    assert not loaded.training
