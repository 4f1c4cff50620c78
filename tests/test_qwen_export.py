"""One exported Qwen2.5-VL artifact answers images of different sizes (different N_v) through ONNX Runtime.

Parity (fp32 1e-4, 100% routing agreement, identical greedy sequences over 32 steps on 10 samples),
``generate --backend onnxruntime`` equal to the torch reference, ``reroute check`` accepting the
shape-derived TopK K, and one-line errors (exit 2) for bad input.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from exporter.cli import main
from exporter.onnx_export import export_artifact
from exporter.samples import synthetic_image

SIZES = {144: (336, 336), 176: (448, 308)}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py; qwen_tiny comes from there too


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, qwen_tiny):
    out = tmp_path_factory.mktemp("qwen-art") / "reroute"
    path, _ = export_artifact("qwen2.5-vl-tiny", "reroute", 0.25, out=str(out), parity_samples=0, max_batch=2,
                              quiet=True, loaded=qwen_tiny)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen-images")
    paths = {}
    for n, size in SIZES.items():
        paths[n] = folder / f"{n}.png"
        synthetic_image(n, size).save(paths[n])
    return paths


def test_manifest_states_positions_capacity_and_family(artifact):
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["model"]["family"] == "qwen2_5_vl"
    assert manifest["model"]["positions"]["input"] == "position_ids"
    assert manifest["model"]["positions"]["shape"] == [3, "batch", "sequence"]
    assert manifest["capacity"]["max_pixels"] == 451584 and manifest["capacity"]["max_visual_tokens"] == 576
    assert manifest["custom_domain"]["ops"] == ["PoolSelectDynamic", "PoolGatherDynamic", "PoolScatterDynamic"]
    prefill = {t["name"]: t["shape"] for t in manifest["graphs"]["prefill"]["inputs"]}
    assert prefill["visual_span"] == ["N_v"] and prefill["position_ids"] == [3, "batch", "sequence"]


def test_parity_ten_samples_of_several_sizes(artifact, qwen_tiny):
    from engines.artifact import open_artifact
    from exporter.parity import _encode_samples, run_parity

    opened = open_artifact(artifact)
    counts = {x.num_visual for x in _encode_samples(opened, opened.processor(), 10)}
    assert len(counts) >= 2  # the samples' images give different N_v
    report = run_parity(artifact, ["torch", "onnxruntime"], samples=10, steps=32, loaded=qwen_tiny)
    assert report["passed"], report
    ort = report["tokens"]["onnxruntime"]
    assert ort["identical"] == ort["of"] == 10
    assert all(r["agree"] == r["of"] for r in report["routing"]["onnxruntime"].values())
    assert report["graphs"]["prefill"]["onnxruntime"]["logits"]["max_abs"] <= 1e-4


def _generate(capsys, *args):
    assert main(["generate", *args, "--prompt", "What is shown?", "--chat", "--max-new-tokens", "16",
                 "--ignore-eos", "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_generate_onnxruntime_equals_torch_on_two_sizes(capsys, artifact, images):
    for n, path in images.items():
        ort = _generate(capsys, "--artifact", str(artifact), "--backend", "onnxruntime", "--image", str(path))
        ref = _generate(capsys, "--model", "qwen2.5-vl-tiny", "--method", "reroute", "--ratio", "0.25",
                        "--image", str(path))
        assert ort["generated_token_ids"] == ref["generated_token_ids"]
        assert ort["selected_indices"] == ref["selected_indices"]
        assert ort["kv_tokens_per_layer"] == ref["kv_tokens_per_layer"]
        assert len(ort["selected_indices"][0]) == max(1, int(n * json.loads(
            (artifact / "manifest.json").read_text())["schedule"]["keep_ratios"][0] + 1e-9))


def test_check_tensorrt_accepts_the_bounded_shape_derived_k(capsys, artifact, tmp_path):
    from engines.trt_check import check_artifact

    assert not [p for p in check_artifact(artifact) if "TopK" in p.reason]
    # without the manifest's bound, the same graphs are refused: K is then unbounded
    copy = tmp_path / "unbounded"
    shutil.copytree(artifact, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["capacity"]["max_visual_tokens"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    reasons = [p.reason for p in check_artifact(copy) if "TopK" in p.reason]
    assert reasons and all("proven bound" in r for r in reasons)


def test_image_over_capacity_is_one_line_exit_2(capsys, artifact, images, tmp_path):
    copy = tmp_path / "small"
    shutil.copytree(artifact, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["capacity"].update(max_visual_tokens=150, max_pixels=150 * 28 * 28)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert main(["generate", "--artifact", str(copy), "--backend", "onnxruntime", "--image", str(images[176]),
                 "--prompt", "Hi", "--chat"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "176 visual tokens" in err and "capacity of 150" in err


def test_batch_mixing_visual_token_counts_is_refused(artifact, images):
    from engines.artifact import open_artifact
    from engines.errors import RerouteError
    from engines.inputs import chat_prompt, load_image
    from exporter.generation import ArtifactEncoder

    opened = open_artifact(artifact)
    processor = opened.processor()
    encoder = ArtifactEncoder.of(opened, processor)
    prompt = chat_prompt(processor, "Hi", encoder.family.placeholder)
    with pytest.raises(RerouteError, match="same number of visual tokens"):
        encoder.encode([prompt, prompt], [load_image(images[144]), load_image(images[176])])
    assert np.array_equal(encoder.encode([prompt], [load_image(images[144])]).image_grid_thw, [[1, 24, 24]])


def test_serving_pipeline_batches_by_visual_tokens_and_matches_generate(capsys, artifact, images):
    """The request side of ``reroute serve``: Qwen prompts are checked with the family's rules, jobs batch
    only with equal N_v, and the tokens are generate's."""
    from engines.serving.pipeline import BadRequest, Pipeline

    pipeline = Pipeline(artifact, max_batch=2, threads=1)
    try:
        prompt = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is shown?<|im_end|>\n"
                  "<|im_start|>assistant\n")
        jobs = {n: pipeline.prepare(prompt.encode(), path.read_bytes(), 8) for n, path in images.items()}
        assert jobs[144].key != jobs[176].key  # same length and position, different N_v: never one batch
        for n, path in images.items():
            (tokens, _), = pipeline.run([jobs[n]])
            assert main(["generate", "--artifact", str(artifact), "--backend", "onnxruntime", "--image", str(path),
                         "--prompt", prompt, "--max-new-tokens", "8", "--json"]) == 0
            want = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
            assert tokens == want["generated_token_ids"]
        with pytest.raises(BadRequest, match="exactly one <\\|image_pad\\|>"):
            pipeline.prepare(b"USER: <image> what?", images[144].read_bytes(), 4)
    finally:
        pipeline.close()


def test_served_tokens_match_generate(capsys, artifact, images, tmp_path):
    pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed (pip install 'reroute[serve]')")
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    from engines.serving.client import client_generate
    from tests.test_triton import _Server

    prompt = "<|vision_start|><|image_pad|><|vision_end|>Describe it."
    server = _Server(str(artifact), tmp_path / "serve.log")
    try:
        assert server.wait_ready(), server.output()[-3000:]
        for path in images.values():
            got = client_generate(server.url, str(path), prompt, 8)
            assert main(["generate", "--artifact", str(artifact), "--backend", "onnxruntime", "--image", str(path),
                         "--prompt", prompt, "--max-new-tokens", "8", "--json"]) == 0
            want = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
            assert got["generated_token_ids"] == want["generated_token_ids"]
    finally:
        server.stop()


def test_plugin_form_lints_and_build_profiles_cover_every_input(artifact):
    """The plugin form keeps the dynamic pool ops as functions (TensorRT inlines them; no CUDA plugin for
    them yet) and lints clean; the default profiles name every graph input with its rank, N_v up to capacity."""
    from engines.artifact import GRAPHS, open_artifact
    from engines.trt_build import default_profiles
    from engines.trt_check import check_artifact

    assert check_artifact(artifact, plugins=True) == [] and check_artifact(artifact) == []
    opened = open_artifact(artifact)
    for graph in GRAPHS:
        profile = default_profiles(opened, graph)
        inputs = {t["name"]: t["shape"] for t in opened.manifest["graphs"][graph]["inputs"]}
        assert set(profile) == set(inputs), graph
        for name, triple in profile.items():
            if name == "visual_start":  # a shape input: the triple holds values
                continue
            assert all(len(shape) == len(inputs[name]) for shape in triple), name
            assert all(lo <= hi for lo, hi in zip(triple[0], triple[2])), name
    assert default_profiles(opened, "prefill")["visual_span"][2] == (576,)


def test_routing_map_on_the_images_own_grid(qwen_tiny, images, tmp_path):
    from PIL import Image

    from exporter.routing_map import routing_map

    prompt = "<|vision_start|><|image_pad|><|vision_end|>What is it?"
    for n, (w, h) in SIZES.items():
        out = tmp_path / f"map{n}.png"
        summary = routing_map("qwen2.5-vl-tiny", str(images[n]), prompt, "reroute", 0.25, out, loaded=qwen_tiny)
        assert summary["num_visual"] == n
        for layer in summary["per_layer"]:
            assert layer["active"] + layer["re-entered"] + layer["deferred"] == n
        assert Image.open(out).size[0] > 0


def test_bench_runs_on_qwen_with_exact_kv_bytes(qwen_tiny):
    """``reroute bench`` on a Qwen2.5-VL model: the bench image's own N_v (144), both backends, KV bytes
    measured equal to the prediction, routed prefill and decode timed against the unrouted model."""
    from exporter.bench.options import BenchOptions
    from exporter.bench.run import run_bench

    report = run_bench(BenchOptions(model="qwen2.5-vl-tiny", methods=["reroute"], ratios=[0.25], runs=1, warmup=0,
                                    decode_steps=2, min_cpu_share=0.0, quiet=True), loaded=qwen_tiny)
    assert report["num_visual"] == 144
    rows = {(r["method"], r["backend"]): r for r in report["results"]}
    assert set(rows) == {(m, b) for m in ("none", "reroute") for b in ("torch", "onnxruntime")}
    for row in rows.values():
        assert row["kv_bytes"]["match"], row["kv_bytes"]
    assert rows[("reroute", "onnxruntime")]["schedule"]["k"] == [43, 43, 21, 10]  # floor(144 r_s)
    assert rows[("reroute", "torch")]["first_token"] == rows[("reroute", "onnxruntime")]["first_token"]


def test_streamed_preset_checkpoint_equals_the_seeded_qwen_preset(qwen_tiny, tmp_path):
    """The streamed export writes the preset's weights tensor by tensor: the same seeded values the loaded
    preset has (Qwen's Conv3d patch embedding included)."""
    from exporter.checkpoint_io import CheckpointReader
    from exporter.skeleton import write_preset_checkpoint

    write_preset_checkpoint(qwen_tiny.config, 0, tmp_path / "model.safetensors")
    reader = CheckpointReader(tmp_path)
    state = qwen_tiny.hf_model.state_dict()
    assert set(reader.entries) == set(state) and "model.visual.patch_embed.proj.weight" in state
    for key, value in state.items():
        np.testing.assert_array_equal(reader.read(key), value.numpy(), err_msg=key)
