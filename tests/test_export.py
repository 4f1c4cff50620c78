"""ONNX export of routed LLaVA, the ONNX Runtime backend and `reroute parity` (issue 3)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from engines.artifact import open_artifact
from engines.errors import RerouteError
from exporter.cli import main
from exporter.onnx_export import export_artifact
from exporter.parity import format_report, run_parity

METHODS = ["none", "fastv", "pdrop", "reroute-fastv", "reroute"]


def _export(tmp_path_factory, loaded, method, ratio, **kw):
    out = tmp_path_factory.mktemp("art") / f"{method}-{ratio:.3f}"
    path, _ = export_artifact(loaded.spec, method, ratio, out=str(out), parity_samples=0, quiet=True,
                              loaded=loaded, **kw)
    return path


@pytest.fixture(scope="module")
def reroute_artifact(tmp_path_factory, tiny):
    return _export(tmp_path_factory, tiny, "reroute", 0.25)


@pytest.mark.parametrize("ratio", [0.25, 1 / 9], ids=["1/4", "1/9"])
@pytest.mark.parametrize("method", METHODS)
def test_parity_every_method_tiny(tmp_path_factory, tiny, method, ratio):
    if method == "none" and ratio != 0.25:
        pytest.skip("the unrouted model has no ratio")
    path = _export(tmp_path_factory, tiny, method, ratio)
    report = run_parity(path, ["torch", "onnxruntime"], samples=10, steps=32, loaded=tiny)
    assert report["passed"], format_report(report)
    prefill = report["graphs"]["prefill"]["onnxruntime"]
    assert prefill["logits"]["max_abs"] <= 1e-4
    assert report["graphs"]["decode"]["onnxruntime"]["logits"]["max_abs"] <= 1e-4
    for layer in report["routing"]["onnxruntime"].values():
        assert layer["agree"] == layer["of"] == 10
    assert report["tokens"]["onnxruntime"]["identical"] == 10


@pytest.mark.parametrize("method", ["pdrop", "reroute"])
def test_parity_gqa_checkpoint_dir(tmp_path_factory, gqa, method):
    path = _export(tmp_path_factory, gqa, method, 0.25)
    report = run_parity(path, ["torch", "onnxruntime"], samples=10, steps=32, loaded=gqa)
    assert report["passed"], format_report(report)
    assert report["tokens"]["onnxruntime"]["identical"] == 10


def test_fp16_export_meets_stated_tolerance(tmp_path):
    path, report = export_artifact("llava-tiny", "reroute", 0.25, out=str(tmp_path / "fp16"), dtype="fp16",
                                   parity_samples=4, quiet=True)
    assert report["dtype"] == "float16" and report["passed"], format_report(report)
    assert report["tolerance"]["atol"] == 0.25
    model = onnx.load(str(path / "prefill.onnx"), load_external_data=False)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_graph_rules(reroute_artifact):
    art = open_artifact(reroute_artifact)
    prefill = onnx.load(str(art.graph_path("prefill")), load_external_data=False)
    assert any(o.domain == "" and o.version >= 17 for o in prefill.opset_import)
    custom = [n for n in prefill.graph.node if n.domain == "reroute"]
    assert {n.op_type for n in custom} == {"PoolSelect", "PoolGather", "PoolScatter"}
    assert {f.name for f in prefill.functions} == {"PoolSelect", "PoolGather", "PoolScatter"}
    assert sum(n.op_type == "PoolSelect" for n in custom) == 4  # one per decision layer
    for fn in prefill.functions:
        for node in fn.node:
            if node.op_type == "TopK":
                assert {a.name: a.i for a in node.attribute}["sorted"] == 1
    ks = [next(a.i for a in n.attribute if a.name == "k") for n in custom if n.op_type == "PoolSelect"]
    assert ks == list(art.schedule.k) and max(ks) <= 3840
    outputs = [o.name for o in prefill.graph.output]
    assert outputs[0] == "logits" and "present.31.value" in outputs and "routing.3.indices" in outputs
    decode = onnx.load(str(art.graph_path("decode")), load_external_data=False)
    assert "past_key_values.0.key" in [i.name for i in decode.graph.input]
    for name in ("vision", "embed", "prefill", "decode"):
        onnx.checker.check_model(str(art.graph_path(name)), full_check=True)


def test_manifest_and_real_kv_shapes(reroute_artifact, tiny):
    art = open_artifact(reroute_artifact)
    m = art.manifest
    assert m["schedule"]["k"] == [179, 179, 89, 44] and m["opset"] >= 17
    assert set(m["files"]) >= {"prefill.onnx", "decoder.onnx.data", "processor/tokenizer.json"}
    assert m["graphs"]["prefill"]["inputs"][0] == {"name": "inputs_embeds", "dtype": "float32",
                                                   "shape": ["batch", "sequence", 64]}
    assert m["kv"][2] == {"layer": 2, "visual_tokens": 179, "present_len": "sequence - 397"}
    # mixed-length (left-padded) batches: per-sample starts, positions and mask in; cache padding for decode
    prefill_inputs = {t["name"]: (t["dtype"], t["shape"]) for t in m["graphs"]["prefill"]["inputs"]}
    assert prefill_inputs["visual_start"] == ("int64", ["batch"])
    assert prefill_inputs["position_ids"] == prefill_inputs["attention_mask"] == ("int64", ["batch", "sequence"])
    decode_inputs = {t["name"]: (t["dtype"], t["shape"]) for t in m["graphs"]["decode"]["inputs"]}
    assert decode_inputs["pad_lengths"] == ("int64", ["batch"])
    assert m["graphs"]["prefill"]["shape_inputs"] == [] and m["format_version"] == 2
    from engines.ort_runner import OrtBackend
    from engines.inputs import encode
    from exporter.samples import sample

    prompt, image = sample(0)
    x = encode(art.processor(), [prompt], [image], tiny.image_token_id, 576)
    backend = OrtBackend(art)
    pre = backend.prefill(backend.embed(x.input_ids, backend.vision(x.pixel_values)), x.visual_start)
    text = x.input_ids.shape[1] - 576
    assert [k.shape[2] for k, _ in pre.cache] == [text + e["visual_tokens"] for e in m["kv"]]


def test_prefill_and_decode_share_one_weights_file(reroute_artifact):
    """The decoder is stored once: every external tensor of both graphs points into decoder.onnx.data,
    decode adds no tensor of its own, and the file holds each distinct tensor once."""
    from exporter.shared_weights import SHARED_DATA, external_tensors

    def refs(name):  # {(location, offset, length)} of the graph's external tensors
        model = onnx.load(str(open_artifact(reroute_artifact).graph_path(name)), load_external_data=False)
        info = [{e.key: e.value for e in t.external_data} for t in external_tensors(model)]
        return {(i["location"], int(i["offset"]), int(i["length"])) for i in info}

    prefill, decode = refs("prefill"), refs("decode")
    assert {loc for loc, _, _ in prefill | decode} == {SHARED_DATA}
    assert decode <= prefill and len(decode) > 32 * 7  # every decode weight is one of prefill's
    assert not list(reroute_artifact.glob("prefill.onnx.data")) + list(reroute_artifact.glob("decode.onnx.data"))
    assert (reroute_artifact / SHARED_DATA).stat().st_size == max(off + n for _, off, n in prefill)


def test_generate_onnxruntime_matches_torch(capsys, reroute_artifact, image_files):
    prompt = "USER: <image>\nWhat is it? ASSISTANT:"
    common = ["--image", image_files[3], "--prompt", prompt, "--max-new-tokens", "12", "--ignore-eos", "--json"]
    assert main(["generate", "--artifact", str(reroute_artifact), "--backend", "onnxruntime", *common]) == 0
    ort = json.loads(capsys.readouterr().out)
    assert main(["generate", "--model", "llava-tiny", "--ratio", "0.25", *common]) == 0
    ref = json.loads(capsys.readouterr().out)
    assert ort["generated_token_ids"] == ref["generated_token_ids"]
    assert ort["prompt_token_ids"] == ref["prompt_token_ids"] and ort["text"] == ref["text"]


def test_cli_export_and_parity_exit_codes(capsys, tmp_path):
    out = tmp_path / "cli"
    assert main(["export", "--model", "llava-tiny", "--method", "fastv", "--ratio", "1/3", "--out", str(out),
                 "--parity-samples", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "PASS" in printed and (out / "parity.json").is_file()
    assert main(["parity", str(out), "--samples", "2", "--steps", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True
    # an existing --out is refused without --force, and replaced with it
    assert main(["export", "--model", "llava-tiny", "--out", str(out), "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export", "--model", "llava-tiny", "--ratio", "0.25", "--out", str(out), "--force",
                 "--parity-samples", "0", "--quiet"]) == 0
    assert open_artifact(out).manifest["method"] == "reroute"


def test_parity_failure_exits_1(capsys, tmp_path, reroute_artifact):
    """Perturb the decoder weights (and re-seal the manifest): parity must fail with exit 1."""
    from engines.artifact import MANIFEST, sha256_file

    broken = tmp_path / "broken"
    shutil.copytree(reroute_artifact, broken)
    data = broken / "decoder.onnx.data"
    raw = bytearray(data.read_bytes())
    weights = np.frombuffer(raw, dtype=np.float32)
    weights[:] = weights * 1.01  # a 1% change in every weight
    data.write_bytes(weights.tobytes())
    manifest = json.loads((broken / MANIFEST).read_text())
    manifest["files"]["decoder.onnx.data"] = sha256_file(data)
    (broken / MANIFEST).write_text(json.dumps(manifest))
    assert main(["parity", str(broken), "--samples", "1", "--steps", "2"]) == 1
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("damage,needle", [
    ("missing", "is missing"), ("truncated", "sha256"), ("modified", "sha256"), ("newer", "newer"),
    ("older", "re-export it"), ("no-manifest", "manifest.json is missing"),
])
def test_bad_artifacts_one_line_exit_2(capsys, tmp_path, reroute_artifact, image_files, damage, needle):
    broken = tmp_path / damage
    shutil.copytree(reroute_artifact, broken)
    if damage == "missing":
        (broken / "decode.onnx").unlink()
    elif damage == "truncated":
        data = broken / "decoder.onnx.data"
        data.write_bytes(data.read_bytes()[:1000])
    elif damage == "modified":
        graph = broken / "vision.onnx"
        graph.write_bytes(graph.read_bytes() + b"\0")
    elif damage in ("newer", "older"):  # older: format 1, graphs without the mixed-batch inputs
        manifest = json.loads((broken / "manifest.json").read_text())
        manifest["format_version"] = 99 if damage == "newer" else 1
        (broken / "manifest.json").write_text(json.dumps(manifest))
    else:
        (broken / "manifest.json").unlink()
    for argv in (["parity", str(broken)],
                 ["generate", "--artifact", str(broken), "--backend", "onnxruntime", "--image", image_files[0],
                  "--prompt", "USER: <image>\nhi ASSISTANT:"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1


def test_capacity_limits(capsys, tmp_path_factory, tiny, image_files):
    path = _export(tmp_path_factory, tiny, "reroute", 0.25, max_batch=1, max_sequence=600)
    art = open_artifact(path)
    with pytest.raises(RerouteError, match="max batch 1"):
        art.check_request(2, 590, 1)
    code = main(["generate", "--artifact", str(path), "--backend", "onnxruntime", "--image", image_files[0],
                 "--prompt", "USER: <image>\n" + "a long question " * 4 + "ASSISTANT:", "--max-new-tokens", "8"])
    err = capsys.readouterr().err
    assert code == 2 and "exceeds the exported capacity of 600 tokens" in err


def test_failed_export_leaves_nothing(tmp_path, tiny, monkeypatch):
    import exporter.onnx_export as ex

    real = ex._export_one

    def interrupted(name, *args, **kwargs):  # Ctrl-C while the second graph is being written
        if name == "embed":
            raise KeyboardInterrupt
        return real(name, *args, **kwargs)

    monkeypatch.setattr(ex, "_export_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_artifact("llava-tiny", "reroute", 0.25, out=str(tmp_path / "art"), parity_samples=0, quiet=True,
                        loaded=tiny)
    assert list(tmp_path.iterdir()) == []
