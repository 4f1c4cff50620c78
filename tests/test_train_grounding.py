"""scripts/train_grounding.py: the training data it builds, its reproducibility, and the preset's loading."""

from __future__ import annotations

import importlib.util
import json
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
    ids, labels, focus = dialogue.encode_conversation(processor.tokenizer, config.image_token_id, qa)
    prompt = chat_prompt(processor, qa[0][0])
    reference = processor(images=[image], text=[prompt], return_tensors="np")["input_ids"][0].tolist()
    assert ids[: len(reference)] == reference  # what eval feeds the model, token for token
    assert reference == dialogue.first_prompt(processor.tokenizer, config.image_token_id, qa[0][0])
    # the whole conversation is what the chat template writes for it, token for token
    messages = []
    for turn, (question, answer, _) in enumerate(qa):
        content = [{"type": "image"}] * (turn == 0) + [{"type": "text", "text": question}]
        messages += [{"role": "user", "content": content},
                     {"role": "assistant", "content": [{"type": "text", "text": f" {answer}"}]}]
    text = processor.apply_chat_template(messages).replace(" ASSISTANT:  ", " ASSISTANT: ")
    templated = processor(images=[image], text=[text], return_tensors="np")["input_ids"][0].tolist()
    assert ids == templated
    assert len(ids) == len(labels) == len(focus)
    answers = [t for t in labels if t != train.IGNORE]
    expected = "".join(f" {a}</s>" for _, a, _ in qa)
    # each answer token's focus is its turn's object; nothing else has one
    assert [f for f, t in zip(focus, labels) if t != train.IGNORE] == [
        target for _, a, target in qa for _ in range(len(processor.tokenizer(f" {a}", add_special_tokens=False)
                                                         ["input_ids"]) + 1)]
    assert all(f == -1 for f, t in zip(focus, labels) if t == train.IGNORE)
    assert processor.tokenizer.decode(answers) == expected
    assert ids.count(config.image_token_id) == 576


def test_conversations_hold_every_grounding_and_open_with_both_kinds(train):
    firsts = set()
    for i in range(40):
        _, shapes, _ = train.grounding.scene(0, "train", i)
        qa = train.dialogue.conversation(np.random.default_rng(i), shapes, 4)
        boxes = [a for _, a, _ in qa if a.startswith("[")]
        assert sorted(boxes) == sorted(train.dialogue.rec_box(s) for s in shapes)
        for _, answer, target in qa:  # the turn's object is the one the answer is about
            assert answer in (train.dialogue.rec_box(shapes[target]), shapes[target].colour, shapes[target].shape)
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


def test_patch_targets_mark_the_patches_each_object_paints(train):
    _, shapes, _ = train.grounding.scene(0, "train", 5)
    colour, kind, box = train.dialogue.patch_targets(shapes)
    assert ((kind > 0) == (colour > 0)).all()
    for n, s in enumerate(shapes):
        painted = train.grounding.painted_mask(s)  # [336, 336]
        share = painted.reshape(24, 14, 24, 14).mean(axis=(1, 3)).ravel()
        mine = share >= train.dialogue.COVERAGE
        assert mine.any() and (colour[mine] == list(train.grounding.COLOURS).index(s.colour) + 1).all()
        assert (kind[mine] == list(train.grounding.SHAPES).index(s.shape) + 1).all()
        # coordinate bins are the REC answer's two-decimal values x 100
        assert all([f"{v / 100:.2f}" for v in b] == [f"{v:.2f}" for v in s.normalised(2)] for b in box[mine])
        assert (train.dialogue.object_patches(shapes)[n] == mine).all()
    everyone = np.logical_or.reduce(train.dialogue.object_patches(shapes))
    assert ((colour > 0) == everyone).all()


def test_tower_features_are_what_llava_projects(train):
    model = train.build_untrained(1).eval()
    pixels = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.model.multi_modal_projector(train.tower_features(model, pixels))
        theirs = torch.stack(model.model.get_image_features(pixels).pooler_output)
    torch.testing.assert_close(ours, theirs)


def test_two_runs_write_identical_weights(train, tmp_path):
    args = ["--pictures", "3", "--vision-steps", "2", "--vision-batch", "2", "--shallow-steps", "2", "--steps", "2",
            "--batch", "2", "--questions", "1", "--val-pictures", "1", "--val-items", "2", "--eval-every", "2",
            "--threads", "1"]
    for name in ("a", "b"):
        assert train.main(["--out", str(tmp_path / name), *args]) == 0
    a, b = (tmp_path / n / "model.safetensors" for n in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
    log = (tmp_path / "a" / "train_log.jsonl").read_text()
    assert '"val_token_acc"' in log and '"val_grounding_acc"' in log and '"phase": "done"' in log
    assert '"phase": "shallow"' in log and '"phase": "grown"' in log and '"focus"' in log


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


def test_growth_keeps_what_the_shallow_decoder_computes(train):
    model = train.build_untrained(2).eval()
    ids = torch.randint(3, 500, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), train.shallow(model, 4):
        assert len(model.model.language_model.layers) == 4
        before = model(input_ids=ids).logits
    train.grow(model, 4)
    layers = model.model.language_model.layers
    assert len(layers) == 32 and [layer.self_attn.layer_idx for layer in layers] == list(range(32))
    assert layers[9].self_attn.q_proj.weight.equal(layers[8].self_attn.q_proj.weight)  # copies keep the maps
    assert not layers[9].self_attn.o_proj.weight.any() and layers[8].self_attn.o_proj.weight.any()
    with torch.no_grad():
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_focus_probe_reads_the_heads_attention(train):
    """The probe's log-probabilities are the layer's own attention weights (eager attention as reference)."""
    model = train.build_untrained(4).eval()
    model.config.text_config._attn_implementation = "eager"
    ids = torch.randint(3, 500, (2, 30), generator=torch.Generator().manual_seed(1))
    probe = train.FocusProbe(model.model.language_model.layers[1].self_attn, head=2)
    rows, cols = torch.tensor([0, 1, 1]), torch.tensor([29, 5, 17])
    probe.rows, probe.cols = rows, cols
    with torch.no_grad():
        weights = model.model.language_model(input_ids=ids, output_attentions=True).attentions[1]  # [B, H, T, T]
    torch.testing.assert_close(probe.logp.exp(), weights[rows, 2, cols], rtol=0, atol=1e-6)
    target = torch.zeros(3, 30, dtype=torch.bool)
    target[0, :4] = target[1, 2] = True
    expected = -torch.stack([weights[0, 2, 29, :4].sum().log(), weights[1, 2, 5, 2].log()]).mean()
    torch.testing.assert_close(train.focus_loss(probe, target), expected, rtol=1e-5, atol=1e-6)


def test_grounding_analysis_counts_the_eval_misses(train, tmp_path):
    spec = importlib.util.spec_from_file_location("grounding_analysis", SCRIPTS / "grounding_analysis.py")
    analysis = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(analysis)
    items = [{"kind": "grounding", "correct": True, "iou": 0.8}, {"kind": "grounding", "correct": False, "iou": 0.0},
             {"kind": "grounding", "correct": False, "iou": 0.3}, {"kind": "grounding", "correct": False, "iou": None},
             {"kind": "vqa", "correct": False}]
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"configs": [{"items": items, "unparseable_boxes": 1}]}))
    assert analysis.eval_misses(report) == {"grounding": 4, "misses": 3, "misses_iou_0": 1, "misses_loose": 1,
                                            "unparseable": 1, "median_iou": 0.3}
    norms = analysis.layer_norms(train.build_untrained(0))
    assert len(norms) == 32 and all(n["o_proj"] > 0 for n in norms)
