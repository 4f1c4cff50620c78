"""`reroute bench`, --fidelity and routing maps on llava-tiny (issue 5), with tiny settings."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from engines.errors import RerouteError
from exporter.bench import (BenchOptions, bench_prompt, evaluate_targets, format_bench, ratio_label, run_bench,
                            run_fidelity, same_round_ratio, timing_order)
from exporter.cli import main
from exporter.inspect_model import make_schedule
from exporter.routing_map import ACTIVE, DEFERRED, REENTERED, classify_patches, figure_size_px, routing_map
from graphs.flops import flops, kv_bytes, tokens_per_layer

PROMPT = "USER: <image>\nWhere is the red ball? ASSISTANT:"


@pytest.fixture(scope="module")
def ort_report(tiny):
    """Both backends, one routed method, profiled, with fidelity: the one bench that exports artifacts."""
    return run_bench(BenchOptions("llava-tiny", methods=["reroute"], ratios=[0.25],
                                  backends=["torch", "onnxruntime"], runs=2, warmup=0, decode_steps=2, fidelity=True,
                                  fidelity_samples=2, fidelity_steps=3, profile_ratios=[0.25], quiet=True),
                     loaded=tiny)


@pytest.fixture(scope="module")
def torch_report(tiny):
    return run_bench(BenchOptions("llava-tiny", methods=["fastv", "reroute"], ratios=[1 / 3], backends=["torch"],
                                  runs=2, warmup=1, decode_steps=2, quiet=True), loaded=tiny)


def _rows(report):
    return {(r["method"], r["backend"]): r for r in report["results"]}


def test_json_structure(ort_report):
    report = json.loads(json.dumps(ort_report))  # JSON-able
    assert set(report) >= {"model", "decoder", "prompt", "settings", "machine", "packages", "results",
                           "ort_vs_torch", "profiles", "fidelity"}
    assert report["prompt"]["tokens"] == 616 and report["prompt"]["text_tokens"] == 40
    assert report["settings"]["methods"] == ["none", "reroute"] and report["settings"]["runs"] == 2
    assert "default" in report["settings"]["onnxruntime_threads"]
    assert report["machine"]["cpu"] and report["machine"]["usable_cores"] >= 1
    assert {(r["method"], r["backend"]) for r in report["results"]} == {
        (m, b) for m in ("none", "reroute") for b in ("torch", "onnxruntime")}
    for r in report["results"]:
        for key in ("prefill_s", "decode_per_token_s"):
            s = r[key]
            assert s["n"] == 2 and s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"] and s["min"] > 0
        assert set(r["vs_unrouted"]) == {"prefill", "decode_per_token"}
        assert r["rounds"]["clean"] + r["rounds"]["contended_used"] == 2
        peak = r["peak_rss_growth_mib"]["prefill_first_call"]
        assert peak is None or peak >= 0
    assert "ratio" in format_bench(ort_report)


def test_ratios_are_paired_with_the_same_run_baseline(torch_report):
    rows = _rows(torch_report)
    base = rows[("none", "torch")]
    assert base["vs_unrouted"]["prefill"]["values"] == [1.0, 1.0]
    for method in ("fastv", "reroute"):
        r = rows[(method, "torch")]
        for key, stat in (("prefill_s", "prefill"), ("decode_per_token_s", "decode_per_token")):
            expected = [v / b for v, b in zip(r[key]["values"], base[key]["values"])]
            assert r["vs_unrouted"][stat]["values"] == pytest.approx(expected)
            assert r["vs_unrouted"][stat]["median"] == pytest.approx(float(np.median(expected)))
            assert r["vs_unrouted_best"][stat] == pytest.approx(min(r[key]["values"]) / min(base[key]["values"]))
        assert 0 < r["cpu_share"]["prefill"]["median"] <= 1.5  # CPU time / (wall x cores)
    assert torch_report["settings"]["warmup"] == 1 and base["prefill_s"]["n"] == 2


def test_call_order_rotates_by_one_config_per_round(tiny, monkeypatch):
    from engines.torch_runner import TorchBackend

    calls = []
    original = TorchBackend.__init__

    def recording_init(self, loaded, schedule, *args):
        original(self, loaded, schedule, *args)
        prefill = self.prefill
        self.prefill = lambda embeds, v0: (calls.append(schedule.method), prefill(embeds, v0))[1]

    monkeypatch.setattr(TorchBackend, "__init__", recording_init)
    run_bench(BenchOptions("llava-tiny", methods=["fastv", "reroute"], ratios=[1 / 3], backends=["torch"], runs=3,
                           warmup=1, decode_steps=1, quiet=True, min_cpu_share=0), loaded=tiny)
    rounds = [calls[i:i + 3] for i in range(0, len(calls), 3)]
    assert rounds == [["none", "fastv", "reroute"], ["fastv", "reroute", "none"], ["reroute", "none", "fastv"],
                      ["none", "fastv", "reroute"]]  # warm-up, then 3 timed rounds


def test_routing_methods_are_timed_right_after_the_deletion_they_augment():
    def order(*methods):
        return [c.method for c in timing_order([SimpleNamespace(method=m) for m in methods])]

    assert order("none", "fastv", "pdrop", "reroute-fastv", "reroute") == [
        "none", "fastv", "reroute-fastv", "pdrop", "reroute"]
    assert order("none", "reroute", "fastv") == ["none", "reroute", "fastv"]  # no pdrop: stays where it was
    assert order("none", "reroute", "pdrop") == ["none", "pdrop", "reroute"]


def test_deletion_comparison_is_paired_within_each_round(torch_report):
    report = json.loads(json.dumps(torch_report))
    fastv = next(r for r in report["results"] if r["method"] == "fastv")
    twin = json.loads(json.dumps(fastv))
    twin["method"] = "reroute-fastv"
    # 1.02x fastv in round 1, 1.06x in round 2: the same-round median is 1.04 whatever the baseline did
    twin["prefill_s"]["values"] = [v * f for v, f in zip(fastv["prefill_s"]["values"], (1.02, 1.06))]
    report["results"].append(twin)
    report["settings"]["methods"].append("reroute-fastv")
    assert same_round_ratio(twin, fastv) == pytest.approx(1.04)
    (b,) = [t for t in evaluate_targets(report, 1 / 3, backend="torch") if t["target"] == "b"]
    assert b["subject"] == "reroute-fastv vs fastv" and b["value"] == pytest.approx(1.04) and not b["passed"]
    with pytest.raises(ValueError, match="same-round"):
        same_round_ratio({"prefill_s": {"values": [1.0]}}, fastv)


def test_kv_bytes_from_real_tensors_equal_the_schedule(ort_report, tiny):
    cfg = tiny.decoder_config
    for r in ort_report["results"]:
        schedule = make_schedule(tiny.config, r["method"], 0.25)
        predicted = kv_bytes(cfg, tokens_per_layer(schedule, 40), 4)
        assert r["kv_bytes"]["measured"] == r["kv_bytes"]["predicted"] == predicted and r["kv_bytes"]["match"]
        assert r["kv_bytes"]["tokens_per_layer_measured"] == tokens_per_layer(schedule, 40)
    rows = _rows(ort_report)
    kv = {m: rows[(m, "onnxruntime")]["kv_bytes"]["measured"] for m in ("none", "reroute")}
    assert kv["reroute"] < kv["none"]


def test_tflops_match_flops(torch_report, tiny):
    cfg = tiny.decoder_config
    for r in torch_report["results"]:
        schedule = make_schedule(tiny.config, r["method"], 1 / 3)
        for conv, text in (("visual", 0), ("all_tokens", 40)):
            ref = flops(cfg, schedule, text)
            t = r["tflops"][conv]
            assert t["full"] == pytest.approx(ref.full / 1e12)
            assert t["routed"] == pytest.approx(ref.routed / 1e12)
            assert t["scoring_overhead"] == pytest.approx(ref.scoring / 1e12)
            assert t["ratio"] == pytest.approx((ref.routed + ref.scoring) / ref.full)
            reused = sum((text + k) * cfg.hidden_size * cfg.num_kv_heads * cfg.head_dim for k in schedule.k)
            assert t["executed_ratio"] == pytest.approx((ref.routed + ref.scoring - reused) / ref.full)
            assert (t["executed_ratio"] < t["ratio"]) == bool(schedule.layers)
    assert _rows(torch_report)[("none", "torch")]["tflops"]["all_tokens"]["ratio"] == 1.0


def test_ort_vs_torch_profiles_and_targets(ort_report):
    (row,) = [x for x in ort_report["ort_vs_torch"] if x["method"] == "reroute"]
    assert row["prefill_ort_over_torch"]["median"] > 0 and row["prefill_ort_over_torch"]["n"] == 2
    ort = [p for p in ort_report["profiles"] if p["backend"] == "onnxruntime"]
    assert {(p["method"], p["graph"]) for p in ort} == {(m, g) for m in ("none", "reroute")
                                                        for g in ("prefill", "decode")}
    for p in ort:
        assert len(p["by_layer_ms"]) == 32 and p["node_ms"] > 0 and p["by_op"]
    torch_profiles = [p for p in ort_report["profiles"] if p["backend"] == "torch"]
    assert {p["method"] for p in torch_profiles} == {"none", "reroute"} and all(p["by_op"] for p in torch_profiles)
    routed = next(p for p in ort if p["method"] == "reroute" and p["graph"] == "prefill")
    assert routed["by_part"].get("routing", 0) > 0  # the inlined pool ops
    for stat in ("best", "median"):
        targets = evaluate_targets(ort_report, 0.25, stat=stat)
        assert {t["target"] for t in targets} == {"a", "c", "d"}  # (b) needs pdrop / fastv too
        assert all(isinstance(t["passed"], bool) and t["detail"] and t["stat"] == stat for t in targets)
    (d,) = [t for t in evaluate_targets(ort_report, 0.25) if t["target"] == "d"]  # default: paired medians
    assert d["stat"] == "median" and d["value"] == pytest.approx(row["prefill_ort_over_torch"]["median"])
    (d_best,) = [t for t in evaluate_targets(ort_report, 0.25, stat="best") if t["target"] == "d"]
    assert d_best["value"] == pytest.approx(row["best"]["prefill"])


def test_fidelity_fields(ort_report):
    fid = ort_report["fidelity"]
    assert fid["random_weights"] and "NOTHING about accuracy" in fid["note"]
    (row,) = fid["rows"]
    assert row["method"] == "reroute" and row["ratio_label"] == "1/4"
    assert 0 <= row["top1_agreement"] <= 1 and 0 <= row["greedy_token_agreement"] <= 1
    assert row["kl_unrouted_routed"] >= 0 and 0 <= row["greedy_common_prefix"] <= 3
    assert "NOTHING about accuracy" in format_bench(ort_report)


def test_fidelity_of_identity_routing_is_perfect(tiny):
    fid = run_fidelity(tiny, ["reroute", "pdrop"], [1.0], samples=1, steps=3)
    for row in fid["rows"]:
        assert row["top1_agreement"] == 1.0 and row["greedy_token_agreement"] == 1.0
        assert row["kl_unrouted_routed"] < 1e-6


def test_bench_prompt_has_exact_text_tokens(tiny):
    for n in (25, 40, 41):
        prompt = bench_prompt(tiny.processor, n)
        assert len(tiny.processor.tokenizer(prompt)["input_ids"]) - 1 == n
    with pytest.raises(RerouteError, match="text-tokens"):
        bench_prompt(tiny.processor, 3)
    assert [ratio_label(r) for r in (1 / 3, 2 / 9, 0.25, 0.3)] == ["1/3", "2/9", "1/4", "3/10"]


def test_classify_patches_hand_made():
    states = classify_patches([np.array([0, 1, 2, 3]), np.array([2, 3, 4, 5]), np.array([0, 4])], 9)
    assert states[0].tolist() == [ACTIVE] * 4 + [DEFERRED] * 5
    assert states[1].tolist() == [DEFERRED, DEFERRED, ACTIVE, ACTIVE, REENTERED, REENTERED, DEFERRED, DEFERRED,
                                  DEFERRED]
    # 0 was deferred at the previous decision (re-enters), 4 stays active
    assert states[2].tolist() == [REENTERED, DEFERRED, DEFERRED, DEFERRED, ACTIVE] + [DEFERRED] * 4
    deletion = classify_patches([np.array([1, 3, 5, 7]), np.array([3, 7])], 9)  # survivors only
    assert not (deletion == REENTERED).any()
    for bad in ([np.array([0, 9])], [np.array([1, 1])], [np.array([[0, 1]])]):
        with pytest.raises(ValueError):
            classify_patches(bad, 9)


@pytest.mark.parametrize("method,decisions", [("reroute", 4), ("fastv", 1)])
def test_routing_map_png(tiny, tmp_path, image_files, method, decisions):
    out = tmp_path / f"{method}.png"
    summary = routing_map("llava-tiny", image_files[0], PROMPT, method, 0.25, out, loaded=tiny)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == figure_size_px(decisions)
    schedule = make_schedule(tiny.config, method, 0.25)
    assert [p["layer"] for p in summary["per_layer"]] == list(schedule.layers)
    for p, k in zip(summary["per_layer"], schedule.k):
        assert p["active"] + p["re-entered"] == k and p["deferred"] == 576 - k
    assert summary["per_layer"][0]["re-entered"] == 0
    if method == "fastv":
        assert all(p["re-entered"] == 0 for p in summary["per_layer"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_cli_routing_map_and_errors(capsys, tmp_path, image_files):
    out = tmp_path / "map.png"
    base = ["inspect", "--model", "llava-tiny", "--ratio", "0.25"]
    assert main([*base, "--image", image_files[1], "--prompt", PROMPT, "--routing-map", str(out)]) == 0
    assert out.is_file() and "routing map written" in capsys.readouterr().out
    cases = [
        ([*base, "--routing-map", str(out)], "needs --image and --prompt"),
        ([*base, "--image", image_files[1], "--prompt", PROMPT], "--routing-map"),
        ([*base, "--image", str(tmp_path / "nope.png"), "--prompt", PROMPT, "--routing-map", str(out)],
         "image not found"),
        ([*base, "--image", image_files[1], "--prompt", "no placeholder", "--routing-map", str(out)], "<image>"),
        ([*base, "--image", image_files[1], "--prompt", PROMPT, "--routing-map", str(tmp_path / "x" / "m.png")],
         "does not exist"),
        ([*base, "--image", image_files[1], "--prompt", PROMPT, "--routing-map", str(tmp_path / "m.jpg")], ".png"),
        ([*base, "--method", "none", "--image", image_files[1], "--prompt", PROMPT, "--routing-map", str(out)],
         "no routing decisions"),
    ]
    for argv, needle in cases:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_cli_bench_json_out_and_errors(capsys, tmp_path):
    code = main(["bench", "--model", "llava-tiny", "--methods", "fastv", "--ratios", "1/3", "--backends", "torch",
                 "--runs", "1", "--warmup", "0", "--decode-steps", "1", "--json", "--out", str(tmp_path)])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["settings"]["ratio_labels"] == ["1/3"]
    assert json.loads((tmp_path / "bench_results.json").read_text())["results"] == data["results"]
    base = ["bench", "--model", "llava-tiny", "--backends", "torch", "--quiet"]
    for argv, needle in [
        ([*base, "--methods", "fastv,nope"], "unknown method"),
        ([*base, "--methods", "none"], "at least one routed method"),
        ([*base, "--ratios", "0"], "(0, 1]"),
        ([*base, "--ratios", "1.5"], "(0, 1]"),
        (["bench", "--model", "llava-tiny", "--backends", "tensorrt"], "unknown backend"),
        ([*base, "--runs", "0"], "--runs"),
        ([*base, "--decode-steps", "0"], "--decode-steps"),
        ([*base, "--methods", "fastv", "--ratios", "0.05"], "infeasible"),
        ([*base, "--methods", "fastv", "--text-tokens", "3", "--runs", "1"], "--text-tokens"),
        (["bench", "--model", "nope"], "unknown model"),
        ([*base, "--out", str(tmp_path / "bench_results.json")], "must be a folder"),
    ]:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (argv, err)
    with pytest.raises(SystemExit) as exc:
        main([*base, "--ratios", "a/b"])
    assert exc.value.code == 2 and "expected ratios" in capsys.readouterr().err


def test_report_renders_and_rewrites_the_readme_block(ort_report, tmp_path):
    """The renderer scripts/bench_report.py runs writes BENCHMARKS.md and replaces only the README's block."""
    from exporter.bench import markdown as report_mod

    text = report_mod.render(ort_report, tmp_path, 0.25)
    assert "## Targets at ratio 1/4" in text and (tmp_path / "img" / "latency_vs_ratio.png").is_file()
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report_mod.README_START}\nstale\n{report_mod.README_END}\noutro\n")
    block = report_mod.readme_headline(ort_report, 0.25)
    assert report_mod.update_readme(readme, block)
    new = readme.read_text()
    assert "stale" not in new and new.startswith("intro\n") and new.endswith("outro\n")
    (row,) = [r for r in ort_report["results"] if r["method"] == "reroute" and r["backend"] == "onnxruntime"]
    flops, paired = row["tflops"]["all_tokens"]["ratio"], row["vs_unrouted"]["prefill"]["median"]
    assert f"| `reroute` | {flops:.3f} | {paired:.3f}" in new
    passed = [t for t in evaluate_targets(ort_report, 0.25) if t["passed"]]
    if passed:
        close = min(passed, key=lambda t: t["limit"] / t["value"])
        assert f"Closest to its limit: ({close['target']}) `{close['subject']}` at {close['value']:.3f}" in new
    else:
        assert "Closest to its limit" not in new
    readme.write_text("no markers\n")
    assert not report_mod.update_readme(readme, block) and readme.read_text() == "no markers\n"
