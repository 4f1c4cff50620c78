"""scripts/make_checkpoint.py: offline fp16 checkpoints that transformers and `--model DIR` load exactly."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_checkpoint.py"


@pytest.fixture(scope="module")
def mc():
    spec = importlib.util.spec_from_file_location("make_checkpoint", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the script's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_ckpt(mc, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    # Small shards so the index and multi-file path are exercised on a model of a few hundred KB.
    mc.write_checkpoint(out, "llava-tiny", layers=2, seed=3, quiet=True, shard_bytes=100_000)
    return out


def test_transformers_loads_it_with_no_missing_keys_and_the_seeded_values(mc, tiny_ckpt):
    from transformers import LlavaForConditionalGeneration

    shards = sorted(tiny_ckpt.glob("model-*.safetensors"))
    assert len(shards) > 1
    index = json.loads((tiny_ckpt / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    model, info = LlavaForConditionalGeneration.from_pretrained(
        tiny_ckpt, dtype=torch.float16, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.text_config.num_hidden_layers == 2
    specs = {s.name: s for s in mc.tensor_specs(model.config)}
    state = model.state_dict()
    assert len(specs) == len(state)
    for name, value in state.items():
        expected = mc.expected_tensor(specs[mc.saved_name(name)], seed=3)
        assert value.dtype == torch.float16 and torch.equal(value, expected), name
    # The init rules are the ones documented: norms at 1, linear weights scaled by fan-in.
    assert torch.all(state["model.language_model.norm.weight"] == 1)
    q = state["model.language_model.layers.0.self_attn.q_proj.weight"].float()
    assert 0.5 < q.std().item() * q.shape[1] ** 0.5 < 1.5


def test_reroute_loads_it_and_runs_a_finite_fp16_forward(tiny_ckpt):
    from exporter.models import load_model
    from exporter.samples import synthetic_image

    loaded = load_model(str(tiny_ckpt), dtype=torch.float16)
    inputs = loaded.processor(images=[synthetic_image(0, (64, 48))], text=["USER: <image>\nHi ASSISTANT:"],
                              return_tensors="pt")
    assert int((inputs["input_ids"] == loaded.image_token_id).sum()) == loaded.num_visual
    with torch.no_grad():
        logits = loaded.hf_model(**inputs).logits
    assert torch.isfinite(logits).all()


def test_7b_plan_has_llava_15_7b_names_shapes_and_token_ids(mc):
    config, processor = mc.checkpoint_config("llava-1.5-7b", None)
    specs = mc.tensor_specs(config)
    params = sum(mc._numel(s.shape) for s in specs)
    assert 7.0e9 < params < 7.1e9  # LLaVA-1.5-7B: 7.06 B
    names = {s.name: s.shape for s in specs}
    assert names["language_model.model.embed_tokens.weight"] == (32064, 4096)
    assert names["language_model.model.layers.31.mlp.down_proj.weight"] == (4096, 11008)
    assert names["multi_modal_projector.linear_1.weight"] == (4096, 1024)
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids("<image>") == config.image_token_id == 32000
    assert tok.pad_token_id == config.text_config.pad_token_id == 32001
    assert len(tok) == 32064
    shards = mc.plan_shards(specs)
    assert all(sum(s.nbytes for s in shard) <= mc.SHARD_BYTES for shard in shards) and len(shards) == 8
    cut, _ = mc.checkpoint_config("llava-1.5-7b", 4)
    assert cut.text_config.num_hidden_layers == 4 and cut.text_config.hidden_size == 4096


@pytest.mark.parametrize("case", ["exists", "under_a_file", "bad_layers", "bad_like"])
def test_bad_requests_fail_in_one_line_with_exit_2_and_leave_nothing(mc, tmp_path, capsys, case):
    out = tmp_path / "out"
    args = ["--like", "llava-tiny", "--layers", "1", "--quiet", "--out", str(out)]
    if case == "exists":
        out.mkdir()
    elif case == "under_a_file":
        (tmp_path / "file").write_text("x")
        args[-1] = str(tmp_path / "file" / "out")
    elif case == "bad_layers":
        args[3] = "99"
    else:
        args[1] = "gpt-9"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert mc.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("make_checkpoint: error:") and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
