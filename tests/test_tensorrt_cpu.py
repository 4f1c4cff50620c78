"""Everything about the TensorRT path that can be checked without a GPU (issue 4)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from engines.artifact import open_artifact
from engines.batching import left_pad
from engines.errors import RerouteError
from engines.inputs import encode
from engines.ort_runner import OrtBackend
from engines.plugin_graph import is_plugin_node, to_plugin_form, write_plugin_form
from engines.plugin_reference import reference_session
from engines.session_backend import prefill_feeds
from engines.trt_build import default_profiles, parse_shapes
from engines.trt_check import lint_model
from exporter.cli import main
from exporter.onnx_export import export_artifact
from exporter.samples import sample

METHODS = ["none", "fastv", "pdrop", "reroute-fastv", "reroute"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("trt")
    return {m: export_artifact("llava-tiny", m, 0.25, out=str(root / m), parity_samples=0, quiet=True,
                               loaded=tiny)[0] for m in METHODS}


@pytest.mark.parametrize("method", METHODS)
def test_plugin_form_matches_onnxruntime(artifacts, tiny, method):
    """The exact graph TensorRT parses, run by onnx.reference with numpy plugin ops, against ORT."""
    art = open_artifact(artifacts[method])
    model = to_plugin_form(onnx.load(str(art.graph_path("prefill"))))
    assert not model.functions
    assert all(is_plugin_node(n) for n in model.graph.node if n.domain == "reroute")
    session = reference_session(model)
    backend = OrtBackend(art)
    names = [o.name for o in model.graph.output]
    embeds, starts = [], []
    for i, prefix in enumerate(["", "Here is a picture taken on a long walk. "]):  # lengths and spans differ
        prompt, image = sample(i)
        x = encode(art.processor(), [prompt.replace("USER: ", "USER: " + prefix)], [image], tiny.image_token_id, 576)
        embeds.append(backend.embed(x.input_ids, backend.vision(x.pixel_values)))
        starts.append(x.visual_start)
    batch = left_pad(embeds, starts)  # one left-padded batch: per-sample starts and padding in every plugin
    assert batch.pad.max() > 0
    feeds = prefill_feeds(batch.embeds, batch.visual_start, batch.positions, batch.attention_mask)
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in model.graph.input}}
    got = dict(zip(names, session.run(None, feeds)))
    want = backend.run("prefill", feeds)
    for name in names:
        if name.startswith("routing."):
            assert np.array_equal(got[name], want[name]), name
        else:
            assert np.abs(got[name] - want[name]).max() <= 1e-5, name
    backend.close()


def test_plugin_form_file_keeps_external_weights(artifacts, tmp_path):
    import shutil

    copy = tmp_path / "art"
    shutil.copytree(artifacts["reroute"], copy)
    out = write_plugin_form(copy / "prefill.onnx")
    assert out.name == "prefill.plugins.onnx"
    model = onnx.load(str(out))  # the weights resolve from decoder.onnx.data beside it
    # per decision layer: 1 select, 4 gathers (sequence, positions, normed rows, k_proj rows); 3 scatters back
    assert sum(is_plugin_node(n) for n in model.graph.node) == 4 + 4 * 4 + 3


@pytest.mark.parametrize("method", METHODS)
def test_check_passes_on_exported_artifacts(capsys, artifacts, method):
    for form in ([], ["--plugins"]):
        assert main(["check", str(artifacts[method]), *form]) == 0
        assert "ok:" in capsys.readouterr().out


def _prefill(artifacts):
    return onnx.load(str(open_artifact(artifacts["reroute"]).graph_path("prefill")), load_external_data=False)


def test_check_names_an_unsupported_op(artifacts):
    model = _prefill(artifacts)
    model.graph.node.append(helper.make_node("Unique", ["logits"], ["u"], name="my_unique"))
    problems = lint_model(model, "prefill", ["visual_start"])
    assert any(p.node == "my_unique" and "no TensorRT ONNX importer" in p.reason for p in problems)


def test_check_names_topk_over_limit(artifacts):
    model = _prefill(artifacts)
    select = next(n for n in model.graph.node if n.op_type == "PoolSelect")
    next(a for a in select.attribute if a.name == "k").i = 5000
    problems = lint_model(model, "prefill", ["visual_start"])
    assert any(select.name in p.node and "K=5000 exceeds" in p.reason for p in problems)


def test_check_names_unsorted_topk(artifacts):
    model = _prefill(artifacts)
    topk = next(n for f in model.functions for n in f.node if n.op_type == "TopK")
    next(a for a in topk.attribute if a.name == "sorted").i = 0
    problems = lint_model(model, "prefill", ["visual_start"])
    assert any("sorted=0" in p.reason for p in problems)


def test_check_flags_undeclared_shape_input_and_mixed_precision(artifacts):
    # per-sample starts: visual_start is an ordinary tensor now (a GatherElements index), no shape input
    assert not any("visual_start" in p.reason for p in lint_model(_prefill(artifacts), "prefill", []))
    shaped = helper.make_model(helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape")], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [6]),
         helper.make_tensor_value_info("s", onnx.TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])]), opset_imports=[helper.make_opsetid("", 18)])
    assert any(p.node == "reshape" and "input 's' feeds a shape computation" in p.reason
               for p in lint_model(shaped, "toy", []))
    mixed = helper.make_model(helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"], name="mix")], "g",
        [helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT16, [2]),
         helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [2])]), opset_imports=[helper.make_opsetid("", 18)])
    assert any(p.node == "mix" and "strongly typed" in p.reason for p in lint_model(mixed, "toy"))


def test_check_cli_fails_with_exit_1_naming_the_node(capsys, artifacts, tmp_path):
    import shutil

    from engines.artifact import MANIFEST, sha256_file

    broken = tmp_path / "broken"
    shutil.copytree(artifacts["reroute"], broken)
    model = onnx.load(str(broken / "prefill.onnx"), load_external_data=False)
    next(n for f in model.functions for n in f.node if n.op_type == "TopK").attribute[-1].i = 0
    onnx.save(model, str(broken / "prefill.onnx"))
    manifest = json.loads((broken / MANIFEST).read_text())
    manifest["files"]["prefill.onnx"] = sha256_file(broken / "prefill.onnx")
    (broken / MANIFEST).write_text(json.dumps(manifest))
    assert main(["check", str(broken)]) == 1
    out, err = capsys.readouterr()
    assert "prefill: node" in out and "sorted=0" in out and "problem(s)" in err
    assert main(["build", str(broken), "--no-plugins"]) == 1  # build runs the check first


def test_build_without_tensorrt_says_so(capsys, artifacts):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here; tests/test_tensorrt_gpu.py covers the build")
    except ImportError:
        pass
    assert main(["build", str(artifacts["reroute"]), "--no-plugins"]) == 2
    err = capsys.readouterr().err
    assert "TensorRT is not installed" in err and "`reroute check` passed" in err
    assert len(err.strip().splitlines()) == 1


def test_default_profiles_follow_the_manifest(artifacts):
    art = open_artifact(artifacts["reroute"])
    prefill = default_profiles(art, "prefill")
    assert prefill["inputs_embeds"] == ((1, 577, 64), (1, 640, 64), (4, 2048, 64))
    assert prefill["visual_start"] == ((1,), (1,), (4,))  # one start per sample
    assert prefill["attention_mask"] == prefill["position_ids"] == ((1, 577), (1, 640), (4, 2048))
    decode = default_profiles(art, "decode")
    assert decode["pad_lengths"] == ((1,), (1,), (4,))
    assert decode["past_key_values.2.key"] == ((1, 4, 180, 16), (1, 4, 64 + 179, 16), (4, 4, 2048 - 576 + 179 - 1, 16))
    assert "visual_start" not in default_profiles(open_artifact(artifacts["none"]), "prefill")
    assert parse_shapes("a:1x2,b.c:3") == {"a": (1, 2), "b.c": (3,)}
    with pytest.raises(RerouteError):
        parse_shapes("a:1y2")


@pytest.mark.parametrize("form", [[], ["--plugins"]])
def test_check_lints_a_bare_onnx_file(capsys, artifacts, form):
    """Any graph, as `polygraphy check lint` takes it; the artifact-only checks are skipped with a note."""
    path = open_artifact(artifacts["reroute"]).graph_path("prefill")
    assert main(["check", str(path), "--target", "tensorrt", *form]) == 0
    out = capsys.readouterr().out
    assert "note: a bare .onnx file" in out and "skipped" in out and f"ok: {path}" in out


def test_check_bare_file_names_problems_and_refuses_non_onnx(capsys, artifacts, tmp_path):
    import shutil

    model = _prefill(artifacts)
    next(n for f in model.functions for n in f.node if n.op_type == "TopK").attribute[-1].i = 0
    folder = tmp_path / "art"
    shutil.copytree(artifacts["reroute"], folder)
    onnx.save(model, str(folder / "broken.onnx"))  # beside the weights file it points at
    assert main(["check", str(folder / "broken.onnx")]) == 1
    out, err = capsys.readouterr()
    assert "broken: node" in out and "sorted=0" in out and "problem(s)" in err
    (folder / "decoder.onnx.data").unlink()
    assert main(["check", str(folder / "broken.onnx")]) == 1
    assert "ONNX checker" in capsys.readouterr().out
    invalid = helper.make_model(helper.make_graph(
        [helper.make_node("Add", ["a"], ["c"], name="one_input_add")], "g",
        [helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [2])]), opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(invalid, str(tmp_path / "invalid.onnx"))
    assert main(["check", str(tmp_path / "invalid.onnx")]) == 1
    assert "ONNX checker" in capsys.readouterr().out
    (tmp_path / "text.onnx").write_text("not a protobuf")
    assert main(["check", str(tmp_path / "text.onnx")]) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and len(err.strip().splitlines()) == 1
