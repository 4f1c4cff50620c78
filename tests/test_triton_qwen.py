"""``reroute deploy`` of a Qwen2.5-VL artifact: the model repository, and its BLS pipeline model run against
ONNX Runtime through a stand-in ``triton_python_backend_utils`` (tests/test_triton.py's), which must give
``reroute generate --backend onnxruntime``'s exact tokens on two image sizes (two N_v) and refuse bad requests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc.model_config_pb2",
                    reason="tritonclient[grpc] is not installed (pip install 'reroute[serve]')")

from exporter.cli import main  # noqa: E402
from tests.test_qwen_export import SIZES, images  # noqa: E402,F401 - images: a fixture
from tests.test_triton import _parse, load_pipeline_model, real_tritonserver  # noqa: E402

PROMPT = "<|vision_start|><|image_pad|><|vision_end|>What is shown?"
STEPS = 8

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, qwen_tiny):
    from exporter.onnx_export import export_artifact

    out = tmp_path_factory.mktemp("qwen-triton") / "reroute"
    path, _ = export_artifact("qwen2.5-vl-tiny", "reroute", 0.25, out=str(out), parity_samples=0, quiet=True,
                              loaded=qwen_tiny)
    return str(path)


@pytest.fixture(scope="module")
def repo(artifact, tmp_path_factory):
    from engines.serving.deploy import write_triton_repo

    return write_triton_repo(artifact, tmp_path_factory.mktemp("qwen-repo") / "repo")


def _generate_json(capsys, artifact, image) -> dict:
    """What ``reroute generate --backend onnxruntime --json`` prints for the artifact."""
    capsys.readouterr()
    assert main(["generate", "--artifact", artifact, "--backend", "onnxruntime", "--image", str(image),
                 "--prompt", PROMPT, "--max-new-tokens", str(STEPS), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_repository_holds_the_qwen_pipeline_and_its_helpers(artifact, repo):
    from engines.serving.deploy import GRAPHS, PIPELINE_MODEL, graph_model_name

    version = repo / PIPELINE_MODEL / "1"
    source = Path(__file__).resolve().parent.parent / "engines" / "serving" / "triton_qwen.py"
    assert (version / "model.py").read_text() == source.read_text()
    for helper in ("triton_pipeline.py", "qwen_processor.py", "qwen_vision_inputs.py", "qwen_rope.py"):
        assert (version / helper).is_file(), helper
    settings = json.loads((version / "pipeline.json").read_text())
    assert settings["family"] == "qwen2_5_vl" and settings["max_visual_tokens"] == 576
    assert settings["vision"]["spatial_merge_size"] == 2
    assert (version / "processor" / "config.json").is_file()  # the M-RoPE preprocessing reads it
    configs = {g: _parse(repo / graph_model_name(g) / "config.pbtxt") for g in GRAPHS}
    vision = {t.name: list(t.dims) for t in configs["vision"].input}
    assert vision["window_index"] == [-1] and vision["rotary_pos"] == [-1, 2] and vision["image_grid_thw"] == [-1, 3]
    prefill = {t.name: list(t.dims) for t in configs["prefill"].input}
    assert prefill["position_ids"] == [3, -1, -1] and prefill["visual_span"] == [-1]
    assert {t.name: list(t.dims) for t in configs["decode"].input}["position_ids"] == [3, -1, 1]
    readme = (repo / "README.md").read_text()
    assert "<|vision_start|><|image_pad|><|vision_end|>" in readme and "torch" in readme


def _request(pb, image: Path, prompt: str = PROMPT, steps: int = STEPS):
    return pb.Request([pb.Tensor("prompt", np.array([prompt.encode()], dtype=np.object_)),
                       pb.Tensor("image", np.array([image.read_bytes()], dtype=np.object_)),
                       pb.Tensor("max_new_tokens", np.array([steps], dtype=np.int32))])


def test_pipeline_model_gives_generates_tokens_on_two_image_sizes(artifact, repo, images, capsys, monkeypatch):
    pb, model = load_pipeline_model(repo, monkeypatch)
    responses = model.execute([_request(pb, images[n]) for n in SIZES])
    for n, response in zip(SIZES, responses):
        assert not response.has_error(), response.error().message()
        want = _generate_json(capsys, artifact, images[n])
        got = pb.get_output_tensor_by_name(response, "token_ids").as_numpy().tolist()
        assert got == want["generated_token_ids"], n
        assert pb.get_output_tensor_by_name(response, "text").as_numpy()[0].decode() == want["text"]
    assert pb.calls[:3] == ["reroute_vision", "reroute_embed", "reroute_prefill"]
    assert pb.calls.count("reroute_vision") == 2


def test_pipeline_model_refuses_bad_qwen_requests(repo, images, monkeypatch):
    pb, model = load_pipeline_model(repo, monkeypatch)
    image = images[176]
    pad = "<|vision_start|><|image_pad|><|vision_end|>"
    cases = {
        "What is shown?": "exactly one <|image_pad|>",
        f"{pad}{pad}Compare.": "exactly one <|image_pad|>",
        f"{pad}<|vision_start|><|video_pad|><|vision_end|>Why?": "videos are not supported",
        pad: "at least one text token after the image",
        "<|image_pad|>Where?": "between <|vision_start|> and <|vision_end|>",
    }
    responses = model.execute([_request(pb, image, prompt) for prompt in cases])
    for (prompt, message), response in zip(cases.items(), responses):
        assert response.has_error() and message in response.error().message(), (prompt, response.error())
    model.cfg["max_visual_tokens"] = 150  # as if exported for smaller images: 176 tokens are over it
    over, = model.execute([_request(pb, image)])
    assert "gives 176 visual tokens, over the artifact's capacity of 150" in over.error().message()
    assert "reroute_prefill" not in pb.calls  # every refusal happens before the graphs run


def test_deployed_qwen_repository_on_real_tritonserver(artifact, images, capsys, tmp_path):
    """The repository on PyTriton's bundled tritonserver (model.py, its helper modules and the BLS calls as
    written; graph models are ONNX Runtime stand-ins): both image sizes give generate's exact tokens."""
    from engines.errors import RerouteError
    from engines.serving.client import client_generate
    from engines.serving.deploy import PIPELINE_MODEL

    wants = {n: _generate_json(capsys, artifact, images[n]) for n in SIZES}
    with real_tritonserver(artifact, tmp_path) as url:
        for n in SIZES:
            got = client_generate(url, str(images[n]), PROMPT, STEPS, model=PIPELINE_MODEL)
            assert got["generated_token_ids"] == wants[n]["generated_token_ids"], n
            assert got["text"] == wants[n]["text"]
        with pytest.raises(RerouteError, match="at least one text token after the image"):
            client_generate(url, str(images[144]), "<|vision_start|><|image_pad|><|vision_end|>", STEPS,
                            model=PIPELINE_MODEL)


def test_tensorrt_repository_takes_the_plugin_engines(artifact, tmp_path):
    """`reroute deploy --backend tensorrt` of a Qwen artifact: the engines `reroute build --plugins` writes (here
    stand-in files), the same Qwen pipeline model and helpers, and the plugin library preloaded by launch.sh."""
    import shutil

    from engines.serving.deploy import GRAPHS, PIPELINE_MODEL, graph_model_name, write_triton_repo

    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    (art / "engines" / "plugins").mkdir(parents=True)
    for graph in GRAPHS:
        (art / "engines" / "plugins" / f"{graph}.plan").write_bytes(f"plan:{graph}".encode())
    (art / "engines" / "libreroute_plugins.so").write_bytes(b"\x7fELF")
    repo = write_triton_repo(art, tmp_path / "repo", backend="tensorrt", plugins=True)
    for graph in GRAPHS:
        config = _parse(repo / graph_model_name(graph) / "config.pbtxt")
        assert config.platform == "tensorrt_plan"
        assert (repo / graph_model_name(graph) / "1" / "model.plan").read_bytes() == f"plan:{graph}".encode()
    inputs = {t.name for t in _parse(repo / graph_model_name("vision") / "config.pbtxt").input}
    assert {"window_slots", "patch_slots", "image_grid_thw"} <= inputs
    version = repo / PIPELINE_MODEL / "1"
    assert "qwen_vision_inputs" in (version / "model.py").read_text() and (version / "qwen_rope.py").is_file()
    assert "LD_PRELOAD" in (repo / "launch.sh").read_text() and (repo / "plugins" / "libreroute_plugins.so").is_file()
