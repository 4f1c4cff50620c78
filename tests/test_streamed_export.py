"""Streamed export (issue 10): stand-in tracing + weight binding give today's graphs; bounded memory; errors."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from exporter.checkpoint_io import CheckpointReader
from exporter.onnx_export import ExportOptions, build_graph_modules, export_artifact
from exporter.presets import build_preset, preset_config
from exporter.skeleton import write_preset_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_preset_checkpoint_streams_the_seeded_weights(tmp_path):
    write_preset_checkpoint(preset_config("llava-tiny"), 0, tmp_path / "model.safetensors")
    reader = CheckpointReader(tmp_path)
    model, _ = build_preset("llava-tiny")
    state = model.state_dict()
    assert set(reader.entries) == set(state)
    for key, value in state.items():
        np.testing.assert_array_equal(reader.read(key), value.numpy(), err_msg=key)


def test_a_trained_preset_exports_the_weights_it_ships(tmp_path):
    """llava-grounding's export and ``reroute verify`` read its trained file, not seeded weights (they did:
    the exported model then answered nothing like the preset)."""
    from exporter.skeleton import preset_checkpoint
    from exporter.weight_source import open_source

    model, _ = build_preset("llava-grounding")
    source = open_source("llava-grounding", "fp32", tmp_path)
    try:
        for name, p in model.named_parameters():
            assert np.array_equal(source.read(name), p.detach().numpy()), name
    finally:
        source.close()
    folder = preset_checkpoint("llava-grounding", model.config, 0, tmp_path / "unused")
    assert (folder / "model.safetensors").samefile(Path(__file__).resolve().parents[1] / "assets" /
                                                   "llava-grounding" / "model.safetensors")
    assert not (tmp_path / "unused").exists()


def test_reader_resolves_llava_hf_key_names(tmp_path):
    from exporter.checkpoint_io import StreamingWriter

    writer = StreamingWriter(tmp_path / "model.safetensors",
                             {"language_model.model.norm.weight": ((4,), torch.float16),
                              "language_model.lm_head.weight": ((2, 4), torch.float16)})
    writer.write("language_model.model.norm.weight", torch.arange(4, dtype=torch.float16))
    writer.write("language_model.lm_head.weight", torch.ones(2, 4, dtype=torch.float16))
    writer.close()
    reader = CheckpointReader(tmp_path)
    assert reader.resolve("model.language_model.norm.weight") == "language_model.model.norm.weight"
    assert reader.resolve("lm_head.weight") == "language_model.lm_head.weight"
    np.testing.assert_array_equal(reader.read("language_model.model.norm.weight", torch.float32), np.arange(4))


def _reference_export(loaded, module_name, dtype, path):
    """The graph as the exporter wrote it before streaming: real weights, torch's constant folding."""
    import onnx

    from engines.onnx_functions import OPSET, attach_pool_functions
    from exporter.inspect_model import make_schedule
    from exporter.onnx_export import _dynamic_axes, _example_inputs

    schedule = make_schedule(loaded.config, "reroute", 0.25, None, None)
    modules = build_graph_modules(loaded, schedule, dtype)
    args = _example_inputs(loaded, modules, dtype)[module_name]
    module = modules[module_name]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET,
                          input_names=module.input_names(), output_names=module.output_names(),
                          dynamic_axes=_dynamic_axes(module_name, module, loaded.decoder_config.num_layers),
                          do_constant_folding=True)
    model = attach_pool_functions(onnx.load(str(path)))
    onnx.save(model, str(path))
    return model


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_streamed_graphs_equal_the_constant_folded_ones(tmp_path, dtype):
    """Same ops (torch's exporter merged equal-valued weights behind Identity nodes; we store each weight
    by name), same initializer shapes, same outputs from ONNX Runtime."""
    import onnx
    import onnxruntime as ort

    from exporter.models import load_model

    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    loaded = load_model("llava-tiny")
    path, _ = export_artifact(ExportOptions("llava-tiny", out=str(tmp_path / "art"), dtype=dtype,
                                            parity_samples=0, quiet=True))
    ours = onnx.load(str(path / "prefill.onnx"), load_external_data=False)
    ref = _reference_export(loaded, "prefill", torch_dtype, tmp_path / "ref.onnx")
    ops = lambda m: collections.Counter(n.op_type for n in m.graph.node if n.op_type != "Identity")  # noqa: E731
    assert ops(ours) == ops(ref)
    shapes = lambda m: {(tuple(t.dims), t.data_type) for t in m.graph.initializer}  # noqa: E731
    assert shapes(ours) == shapes(ref)
    assert [i.name for i in ours.graph.input] == [i.name for i in ref.graph.input]
    np_dtype = np.float16 if dtype == "fp16" else np.float32
    feeds = {"inputs_embeds": np.random.default_rng(0).standard_normal((1, 600, 64)).astype(np_dtype),
             "visual_start": np.array([5], dtype=np.int64),
             "position_ids": np.arange(600, dtype=np.int64)[None],  # [1, 600], no padding
             "attention_mask": np.ones((1, 600), dtype=np.int64)}
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)  # noqa: E731
    for a, b in zip(run(path / "prefill.onnx"), run(tmp_path / "ref.onnx")):
        np.testing.assert_array_equal(a, b)


def test_weights_at_their_offsets_match_the_checkpoint(tmp_path, gqa_dir):
    from exporter.verify_weights import verify_weights

    path, _ = export_artifact(ExportOptions(gqa_dir, out=str(tmp_path / "art"), parity_samples=0, quiet=True))
    result = verify_weights(path, gqa_dir)
    assert result["checked"] > 100 and result["mismatched"] == [] and result["unverified"] == []
    data = path / "decoder.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[result["first_offset"]] ^= 0xFF  # one flipped byte is found
    data.write_bytes(bytes(raw))
    assert verify_weights(path, gqa_dir)["mismatched"]


def test_fp16_decision_at_layer_0_passes_parity(tmp_path):
    path, report = export_artifact(ExportOptions("llava-tiny", out=str(tmp_path / "art"), dtype="fp16",
                                                 layers=[0, 1, 2, 3], keep_ratios=[0.36, 0.36, 0.18, 0.09],
                                                 parity_samples=2, quiet=True))
    assert report["passed"], report
    assert report["routing"]["onnxruntime"]["layer 0"]["overlap"] >= 0.95


def _cli(*args, env=None, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "exporter.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def test_preflight_refuses_what_cannot_fit(tmp_path):
    out = tmp_path / "art"
    proc = _cli("export", "--model", "llava-bench", "--out", str(out), env={"REROUTE_MEMORY_BUDGET": "300MiB"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs about" in lines[0] and "0.3 GiB is available" in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_internal_error_names_its_stage_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    import exporter.onnx_export as ex
    from exporter.cli import main

    def broken(*args, **kwargs):
        raise IndexError("list index out of range")

    monkeypatch.setattr(ex, "bind_weights", broken)
    assert main(["export", "--model", "llava-tiny", "--out", str(tmp_path / "art"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["reroute: error: export failed while exporting vision.onnx, streaming its weights: IndexError: "
                   "list index out of range (internal error; rerun with --debug for the traceback)"]
    assert list(tmp_path.iterdir()) == []
    assert main(["export", "--model", "llava-tiny", "--out", str(tmp_path / "art"), "--quiet", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_llava_without_weights_keeps_its_one_line_error(tmp_path):
    proc = _cli("export", "--model", "llava", "--out", str(tmp_path / "art"),
                env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "reroute: error: LLaVA-1.5-7B weights (llava-hf/llava-1.5-7b-hf) are not in the local HF cache and the hub "
        "is unreachable; use --model llava-tiny, or a local directory written by save_pretrained"]


def test_llava_bench_export_peak_rss_within_its_weight_bytes(tmp_path):
    """Streamed export holds one weight at a time: peak RSS <= 1.0x the weight bytes (fp32), fresh process."""
    from exporter.preflight import weight_sizes

    total, _ = weight_sizes("llava-bench", preset_config("llava-bench"), "fp32")
    script = ("import resource, sys; from exporter.cli import main; rc = main(sys.argv[1:]); "
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024); sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script, "export", "--model", "llava-bench", "--out",
                           str(tmp_path / "art"), "--parity-samples", "0", "--quiet"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr
    peak = int(proc.stdout.strip().splitlines()[-1])
    assert peak <= 1.0 * total, f"peak RSS {peak / 2**30:.2f} GiB > weights {total / 2**30:.2f} GiB"
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["dtype"] == "float32"


def test_layer_structure_compares_per_layer(tmp_path, gqa_dir):
    from exporter.verify_weights import compare_layer_structure

    def export(model, name, **kw):
        return export_artifact(ExportOptions(model, out=str(tmp_path / name), parity_samples=0, quiet=True, **kw))[0]

    full = export("llava-tiny", "full")
    cut = export("llava-tiny", "cut", layers=[1, 2, 3, 4], keep_ratios=[0.36, 0.36, 0.18, 0.09])
    assert compare_layer_structure(full, cut) == {"prefill": [], "decode": []}
    other = export(gqa_dir, "gqa")  # other widths: no layer matches
    assert compare_layer_structure(full, other)["decode"] == list(range(32))


def test_verify_command_checks_a_preset_artifact_byte_for_byte(tmp_path, capsys):
    from exporter.cli import main

    path, _ = export_artifact(ExportOptions("llava-tiny", out=str(tmp_path / "art"), parity_samples=0, quiet=True))
    assert main(["verify", str(path)]) == 0
    assert capsys.readouterr().out.startswith("OK: ")
    data = path / "decoder.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert main(["verify", str(path)]) == 1
    assert capsys.readouterr().out.startswith("FAIL: ")
    assert main(["verify", str(path), "--against", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.startswith("reroute: error: ")
