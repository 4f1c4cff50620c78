"""Qwen2.5-VL through the CLI and the schedule solver: offline inspect, per-image N_v, release configs,
generate, and one-line errors (exit 2) for bad input."""

from __future__ import annotations

import json

import pytest

from exporter.cli import main
from engines.errors import RerouteError
from exporter.samples import synthetic_image
from graphs.schedule import solve_schedule

RELEASE_AVG128 = dict(layers=[2, 6, 13, 20], keep_ratios=[0.2655, 0.2655, 0.1328, 0.0664])  # ours_vs_pdrop
CHAT = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n"


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def qwen_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen-images")
    paths = {}
    for n, size in ((144, (336, 336)), (176, (448, 308))):
        paths[n] = str(root / f"img{n}.png")
        synthetic_image(n, size).save(paths[n])
    return paths


@pytest.mark.parametrize("method,layers", [("fastv", [3]), ("pdrop", [2, 6, 13, 20]),
                                           ("reroute-fastv", [3, 6, 13, 20]), ("reroute", [2, 6, 13, 20])])
def test_inspect_qwen_7b_offline(capsys, method, layers):
    code, out, _ = run_cli(capsys, "inspect", "--model", "qwen2.5-vl", "--method", method, "--ratio", "2/9", "--json")
    data = json.loads(out)
    assert code == 0 and data["num_layers"] == 28 and data["num_visual"] == 576
    assert data["schedule"]["layers"] == layers
    # the ratio is solved for the model's own depth: continuous keep ratios average exactly 2/9 over 28 layers
    bounds = layers + [28]
    avg = (layers[0] + sum((bounds[s + 1] - bounds[s]) * r for s, r in enumerate(data["schedule"]["keep_ratios"]))) / 28
    assert avg == pytest.approx(2 / 9, abs=1e-5)
    # KV bytes: 2 * 4 kv heads * 128 * tokens * 2 bytes (bf16) per layer
    assert data["kv_bytes"]["full"] == 2 * 4 * 128 * 576 * 2 * 28


def test_reroute_closed_form_for_28_layers():
    # (2 + 4a + 7a + 7a/2 + 8a/4) / 28 = ratio
    s = solve_schedule("reroute", 2 / 9, 28, 576)
    assert s.value == pytest.approx((28 * 2 / 9 - 2) / 16.5, abs=1e-9)


@pytest.mark.parametrize("num_visual,k", [(576, [152, 152, 76, 38]), (144, [38, 38, 19, 9]), (176, [46, 46, 23, 11])])
def test_release_config_reproduced(capsys, num_visual, k):
    code, out, _ = run_cli(capsys, "inspect", "--model", "qwen2.5-vl", "--method", "reroute", "--json",
                           "--layers", "2,6,13,20", "--keep-ratios", "0.2655,0.2655,0.1328,0.0664",
                           "--visual-tokens", str(num_visual))
    data = json.loads(out)
    assert code == 0 and data["num_visual"] == num_visual
    assert data["schedule"]["layers"] == RELEASE_AVG128["layers"]
    assert data["schedule"]["keep_ratios"] == RELEASE_AVG128["keep_ratios"]
    assert data["schedule"]["k"] == k


def test_k_is_at_least_one_per_image():
    s = solve_schedule("pdrop", 1 / 9, 28, 576, at_least_one=True).for_num_visual(4)
    assert min(s.k) == 1 and all(b <= a for a, b in zip(s.k, s.k[1:]))


def test_inspect_image_sets_visual_tokens(capsys, qwen_images):
    for n, path in qwen_images.items():
        code, out, _ = run_cli(capsys, "inspect", "--model", "qwen2.5-vl-tiny", "--image", path, "--json")
        assert code == 0 and json.loads(out)["num_visual"] == n


def test_generate_qwen_tiny(capsys, qwen_images):
    code, out, _ = run_cli(capsys, "generate", "--model", "qwen2.5-vl-tiny", "--image", qwen_images[176], "--chat",
                           "--prompt", "What is it?", "--method", "reroute", "--ratio", "0.25",
                           "--max-new-tokens", "3", "--ignore-eos", "--json")
    data = json.loads(out)
    assert code == 0 and len(data["generated_token_ids"]) == 3
    k = list(solve_schedule("reroute", 0.25, 28, 576).for_num_visual(176).k)
    assert [len(s) for s in data["selected_indices"]] == k
    assert all(0 <= i < 176 for s in data["selected_indices"] for i in s)


@pytest.mark.parametrize("prompt,image,needle", [
    (CHAT.format("two <|vision_start|><|image_pad|><|vision_end|>"), "png", "exactly one <|image_pad|>"),
    (CHAT.format("hi").replace("<|image_pad|>", "<|video_pad|>"), "png", "videos are not supported"),
    (CHAT.format("hi"), "clip.mp4", "videos are not supported"),
    ("<|vision_start|><|image_pad|><|vision_end|>", "png", "at least one text token after the image"),
    ("<|vision_start|><|image_pad|>hi", "png", "between <|vision_start|> and <|vision_end|>"),
])
def test_generate_bad_input(capsys, qwen_images, tmp_path, prompt, image, needle):
    if image == "clip.mp4":
        image = str(tmp_path / image)
        (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    else:
        image = qwen_images[144]
    code, _, err = run_cli(capsys, "generate", "--model", "qwen2.5-vl-tiny", "--image", image, "--prompt", prompt)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_batch_mixing_visual_token_counts_is_refused():
    from exporter.models import load_model

    loaded = load_model("qwen2.5-vl-tiny")
    prompt = CHAT.format("hi")
    with pytest.raises(RerouteError, match="same number of visual tokens") as info:
        loaded.encode([prompt, prompt], [synthetic_image(0, (336, 336)), synthetic_image(1, (448, 308))])
    assert info.value.exit_code == 2 and "\n" not in str(info.value)


def test_qwen_weights_offline_error_names_tiny(capsys, qwen_images, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    code, _, err = run_cli(capsys, "generate", "--model", "qwen2.5-vl", "--image", qwen_images[144],
                           "--prompt", CHAT.format("hi"))
    assert code == 2 and "qwen2.5-vl-tiny" in err and len(err.strip().splitlines()) == 1, err
