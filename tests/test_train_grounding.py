"""scripts/train_grounding.py: the training data it builds, its reproducibility, and the preset's loading."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

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
    return presets.preset_processor("llava-grounding")


def test_first_turn_is_the_eval_prompt_and_labels_cover_answers_only(train, processor):
    dialogue = train.dialogue
    config = presets.preset_config("llava-grounding")
    image, shapes, _ = train.grounding.scene(0, "train", 3)
    qa = dialogue.conversation(np.random.default_rng(1), shapes, 3)
    ids, labels = dialogue.encode_conversation(processor.tokenizer, config.image_token_id, qa)
    prompt = chat_prompt(processor, qa[0][0])
    reference = processor(images=[image], text=[prompt], return_tensors="np")["input_ids"][0].tolist()
    assert ids[: len(reference)] == reference  # what eval feeds the model, token for token
    assert reference == dialogue.first_prompt(processor.tokenizer, config.image_token_id, qa[0][0])
    # the whole conversation is what the chat template writes for it, token for token
    messages = []
    for turn, (question, answer) in enumerate(qa):
        content = [{"type": "image"}] * (turn == 0) + [{"type": "text", "text": question}]
        messages += [{"role": "user", "content": content},
                     {"role": "assistant", "content": [{"type": "text", "text": f" {answer}"}]}]
    text = processor.apply_chat_template(messages).replace(" ASSISTANT:  ", " ASSISTANT: ")
    templated = processor(images=[image], text=[text], return_tensors="np")["input_ids"][0].tolist()
    assert ids == templated
    assert len(ids) == len(labels)
    answers = [t for t in labels if t != train.IGNORE]
    expected = "".join(f" {a}</s>" for _, a in qa)
    assert processor.tokenizer.decode(answers) == expected
    assert ids.count(config.image_token_id) == 576


def test_conversations_hold_every_grounding_and_open_with_both_kinds(train):
    firsts = set()
    for i in range(40):
        _, shapes, _ = train.grounding.scene(0, "train", i)
        qa = train.dialogue.conversation(np.random.default_rng(i), shapes, 4)
        boxes = [a for _, a in qa if a.startswith("[")]
        assert sorted(boxes) == sorted(train.dialogue.rec_box(s) for s in shapes)
        assert len(qa) - len(boxes) <= 4 and len(set(qa)) == len(qa)
        firsts.add(qa[0][1].startswith("["))
    assert firsts == {True, False}


def test_rec_answers_are_the_data_scripts_and_score_right(train):
    _, shapes, rng = train.grounding.scene(0, "test", 0)
    item = train.grounding.make_items(rng, "x.png", shapes)[0]
    assert item["answer"] in [train.dialogue.rec_box(s) for s in shapes]
    for s in shapes:
        answer = train.dialogue.rec_box(s)
        scored = Item(1, Path("x.png"), "q", answer, "grounding", tuple(s.normalised(4)))
        assert score_answer(scored, answer).correct, answer


def test_patch_targets_mark_the_patches_inside_each_box(train):
    _, shapes, _ = train.grounding.scene(0, "train", 5)
    colour, kind, box = train.dialogue.patch_targets(shapes)
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
            # coordinate bins are the REC answer's two-decimal values x 100
            assert [f"{v / 100:.2f}" for v in box[row * 24 + col]] == [f"{v:.2f}" for v in s.normalised(2)]
    assert inside.sum() == expected


def test_tower_features_are_what_llava_projects(train):
    model = train.build_untrained(1).eval()
    pixels = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.model.multi_modal_projector(train.tower_features(model, pixels))
        theirs = torch.stack(model.model.get_image_features(pixels).pooler_output)
    torch.testing.assert_close(ours, theirs)


def test_two_runs_write_identical_weights(train, tmp_path):
    args = ["--vision-steps", "2", "--vision-batch", "1", "--steps", "2", "--batch", "1", "--questions", "1",
            "--val-pictures", "1", "--val-items", "2", "--eval-every", "2"]
    for name in ("a", "b"):
        assert train.main(["--out", str(tmp_path / name), *args]) == 0
    a, b = (tmp_path / n / "model.safetensors" for n in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
    log = (tmp_path / "a" / "train_log.jsonl").read_text()
    assert '"val_token_acc"' in log and '"val_grounding_acc"' in log and '"phase": "done"' in log


def test_missing_trained_weights_is_one_clear_error(monkeypatch, tmp_path):
    spec = dict(presets.PRESETS["llava-grounding"], weights=str(tmp_path / "absent.safetensors"))
    monkeypatch.setitem(presets.PRESETS, "llava-grounding", spec)
    with pytest.raises(RerouteError, match="train_grounding.py"):
        presets.build_preset("llava-grounding")


def test_trained_weights_load_into_the_preset(train, tmp_path, monkeypatch):
    model = train.build_untrained(3)
    train.dialogue.save_weights(model, tmp_path, train.PRESET)
    spec = dict(presets.PRESETS["llava-grounding"], weights=str(tmp_path / "model.safetensors"))
    monkeypatch.setitem(presets.PRESETS, "llava-grounding", spec)
    loaded, _ = presets.build_preset("llava-grounding")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert (a == b).all(), name
    assert not loaded.training
