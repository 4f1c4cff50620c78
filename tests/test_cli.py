"""The CLI: JSON outputs, and one-line errors with exit status 2 for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from exporter.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_json(capsys):
    code, out, _ = run_cli(capsys, "inspect", "--model", "llava", "--ratio", "1/3", "--json")
    data = json.loads(out)
    assert code == 0
    assert set(data) >= {"schedule", "avg_visual_tokens", "tflops", "kv_bytes"}
    assert set(data["schedule"]) >= {"layers", "keep_ratios", "k"}
    assert data["tflops"]["full"] == pytest.approx(3.817, abs=0.005)
    assert data["kv_bytes"]["routed"] < data["kv_bytes"]["full"]


@pytest.mark.parametrize("argv,needle", [
    (["inspect", "--model", "nope"], "unknown model"),
    (["inspect", "--model", "llava", "--ratio", "0"], "(0, 1]"),
    (["inspect", "--model", "llava", "--ratio", "1.2"], "(0, 1]"),
    (["inspect", "--model", "llava", "--method", "fastv", "--ratio", "0.05"], "infeasible"),
])
def test_bad_input_one_line_exit_2(capsys, argv, needle):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_generate_json_and_logits(capsys, image_files, tmp_path):
    dump = tmp_path / "logits.npy"
    code, out, _ = run_cli(capsys, "generate", "--model", "llava-tiny", "--image", image_files[0],
                           "--prompt", "USER: <image>\nWhat is it? ASSISTANT:", "--ratio", "0.25",
                           "--max-new-tokens", "5", "--ignore-eos", "--json", "--dump-logits", str(dump))
    data = json.loads(out)
    assert code == 0
    assert set(data) >= {"prompt_token_ids", "generated_token_ids", "text"}
    assert len(data["generated_token_ids"]) == 5
    logits = np.load(dump)
    assert logits.shape == (1, 512)
    assert int(np.argmax(logits[0])) == data["generated_token_ids"][0]


def test_generate_chat_wraps_question(capsys, image_files):
    code, out, _ = run_cli(capsys, "generate", "--model", "llava-tiny", "--image", image_files[1], "--chat",
                           "--prompt", "What is it?", "--max-new-tokens", "2", "--json")
    assert code == 0 and len(json.loads(out)["prompt_token_ids"]) > 576


@pytest.mark.parametrize("prompt,image,needle", [
    ("USER: hello ASSISTANT:", None, "exactly one <image>"),
    ("<image> and <image>", None, "exactly one <image>"),
    ("USER: <image>\nhi ASSISTANT:", "missing.png", "image not found"),
    ("USER: <image>\nhi ASSISTANT:", "garbage", "cannot read image"),
])
def test_generate_bad_input(capsys, image_files, tmp_path, prompt, image, needle):
    if image == "garbage":
        path = tmp_path / "garbage.png"
        path.write_bytes(b"not an image at all")
        image = str(path)
    elif image == "missing.png":
        image = str(tmp_path / "missing.png")
    else:
        image = image_files[0]
    code, _, err = run_cli(capsys, "generate", "--model", "llava-tiny", "--image", image, "--prompt", prompt)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_console_errors_have_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "exporter.cli", "inspect", "--model", "llava", "--ratio", "7"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_llava_weights_offline_error_names_tiny(capsys, image_files, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    code, _, err = run_cli(capsys, "generate", "--model", "llava", "--image", image_files[0],
                           "--prompt", "USER: <image>\nhi ASSISTANT:")
    assert code == 2 and "llava-tiny" in err and "save_pretrained" in err
