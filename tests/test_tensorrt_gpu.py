"""TensorRT on a GPU server: `pytest -m gpu` (needs an NVIDIA GPU, TensorRT and the plugin library).

Covers: engines built for vision/embed/prefill/decode with and without the
token-pool plugins; `reroute parity --backends torch,onnxruntime,tensorrt`
(logits, routing decisions, greedy tokens); plugin vs no-plugin engines;
`generate --backend tensorrt` equal to the torch reference.
"""

from __future__ import annotations

import json

import pytest

from exporter.cli import main
from exporter.onnx_export import export_artifact
from exporter.parity import format_report, run_parity


def _gpu_reason() -> str | None:
    try:
        import tensorrt as trt

        trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception as exc:  # noqa: BLE001
        return f"TensorRT with a GPU is not available here ({type(exc).__name__})"
    from engines.plugins import default_library_path

    if not default_library_path().is_file():
        return "plugin library not built (run engines/plugins/build.sh)"
    return None


REASON = _gpu_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny):
    path, _ = export_artifact("llava-tiny", "reroute", 0.25, out=str(tmp_path_factory.mktemp("gpu") / "art"),
                              parity_samples=0, quiet=True, loaded=tiny)
    assert main(["build", str(path), "--plugins"]) == 0
    assert main(["build", str(path), "--no-plugins"]) == 0
    return path


def test_engines_recorded_in_manifest(built):
    manifest = json.loads((built / "manifest.json").read_text())
    for form in ("plugins", "no-plugins"):
        meta = manifest["engines"][form]
        assert meta["tensorrt"] and set(meta["graphs"]) == {"vision", "embed", "prefill", "decode"}


def test_parity_tensorrt_plugins_and_no_plugins(built, tiny):
    report = run_parity(built, ["torch", "onnxruntime", "tensorrt", "tensorrt-no-plugins"], samples=10,
                        steps=32, loaded=tiny)
    assert report["passed"], format_report(report)


def test_generate_tensorrt_matches_torch(capsys, built, image_files):
    common = ["--image", image_files[0], "--prompt", "USER: <image>\nWhat is it? ASSISTANT:",
              "--max-new-tokens", "8", "--ignore-eos", "--json"]
    assert main(["generate", "--artifact", str(built), "--backend", "tensorrt", *common]) == 0
    trt_out = json.loads(capsys.readouterr().out)
    assert main(["generate", "--model", "llava-tiny", "--ratio", "0.25", *common]) == 0
    assert trt_out["generated_token_ids"] == json.loads(capsys.readouterr().out)["generated_token_ids"]
