"""The GPU check without a GPU: kernel cases and their comparison, the nvcc/ctypes harness build,
report writing, stage isolation and the dry run. The kernel run itself is `@pytest.mark.gpu` and
skips with a reason where no CUDA device is visible."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from engines.plugin_reference import pool_gather_ref, pool_scatter_ref, pool_scores_ref, pool_select_ref
from engines.plugins.build_kernels import find_nvcc
from engines.plugins.kernel_cases import ANYRES_VISUAL, all_cases, compare, copy_cases, run_case, select_cases

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import gpu_bench  # noqa: E402
import gpu_check  # noqa: E402
import gpu_report  # noqa: E402
import gpu_stages  # noqa: E402

needs_nvcc = pytest.mark.skipif(find_nvcc() is None, reason="nvcc not found (CUDA toolkit not installed)")


def _cuda_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch not installed"
    return None if torch.cuda.is_available() else "no CUDA device visible to torch"


class ReferenceHarness:
    """Stands in for KernelHarness on CPU: answers with the numpy reference (plus optional damage)."""

    def __init__(self, damage=None):
        self.damage = damage or (lambda out: out)

    def select(self, q, keys, v0, k, p, scale, pad_lengths=None):
        return self.damage(pool_select_ref(q, keys, v0, k, p, scale, 0 if pad_lengths is None else pad_lengths))

    def gather(self, x, selected, v0, p, misalign=0):
        return self.damage(pool_gather_ref(x, selected, v0, p))

    def scatter(self, x, compact, selected, v0, p, misalign=0, in_place=False):
        return self.damage(pool_scatter_ref(x, compact, selected, v0, p))


@pytest.fixture(scope="module")
def cases():
    return all_cases()


def test_cases_cover_the_adversarial_inputs(cases):
    selects = [c for c in cases if c.op == "select"]
    dtypes = {c.inputs["q"].dtype.name for c in selects}
    assert dtypes == {"float32", "float16"}
    ks = {(c.inputs["k"], c.inputs["num_candidates"]) for c in selects}
    assert any(k == 1 for k, _ in ks) and any(k == p for k, p in ks)
    assert any(p == ANYRES_VISUAL for _, p in ks)
    # batch > 1 with different scores per row (hence different selections)
    assert any(c.expected.shape[0] > 1 and not np.array_equal(c.expected[0], c.expected[1]) for c in selects)
    # GQA: more query heads than KV heads
    assert any(c.inputs["q"].shape[1] > c.inputs["keys"].shape[1] for c in selects)
    # left-padded mixed batches: per-sample starts for every op, and padding that changes the winners
    assert {c.op for c in cases if np.ndim(c.inputs["v0"]) == 1} == {"select", "gather", "scatter"}
    padded = [c for c in selects if c.inputs.get("pad_lengths") is not None]
    i = padded[0].inputs
    unpadded = pool_select_ref(i["q"], i["keys"], i["v0"], i["k"], i["num_candidates"], i["scale"])
    assert not np.array_equal(unpadded, padded[0].expected)


def test_tie_cases_cut_through_exact_ties(cases):
    """The k-th and (k+1)-th scores are exactly equal somewhere, and the lower index wins there."""
    cut = 0
    for c in (c for c in cases if "ties" in c.name or "equal" in c.name):
        i = c.inputs
        scores = pool_scores_ref(i["q"], i["keys"], i["v0"], i["num_candidates"], i["scale"])
        for row, chosen in zip(scores, c.expected):
            kth = np.sort(row)[::-1][i["k"] - 1]
            tied = np.flatnonzero(row == kth)
            if len(tied) > np.sum(row[chosen] == kth):  # some of the tie group lost
                cut += 1
                assert np.array_equal(chosen[row[chosen] == kth], tied[: np.sum(row[chosen] == kth)])
    assert cut >= 4


def test_random_cases_have_a_clear_boundary():
    for c in select_cases():
        if "random" in c.name or "anyres" in c.name and "ties" not in c.name:
            i = c.inputs
            from engines.plugins.kernel_cases import MIN_RELATIVE_GAP, boundary_gap

            assert boundary_gap(i["q"], i["keys"], i["v0"], i["k"], i["num_candidates"], i["scale"]) >= MIN_RELATIVE_GAP


def test_copy_cases_hit_every_copy_word_and_pointer_variant():
    cases = copy_cases()
    row_bytes = {c.inputs["x"].shape[2] * c.inputs["x"].itemsize for c in cases}
    widths = {next(w for w in (16, 8, 4, 2, 1) if b % w == 0) for b in row_bytes}
    assert widths == {16, 8, 4, 2, 1}
    assert {c.options.get("misalign") for c in cases} >= {1, 2, 4}
    assert any(c.options.get("in_place") for c in cases)
    assert any(np.isnan(c.inputs["x"]).any() for c in cases if c.inputs["x"].dtype == np.float32)


def test_reference_harness_passes_every_case(cases):
    results = [run_case(ReferenceHarness(), c) for c in cases]
    assert all(r["passed"] for r in results), [r for r in results if not r["passed"]][:3]


def test_compare_flags_a_single_wrong_index(cases):
    case = next(c for c in cases if c.name == "select-anyres-float16")
    actual = case.expected.copy()
    actual[1, 100] += 1
    result = compare(case, actual)
    assert not result["passed"] and result["mismatches"] == 1 and "[1, 100]" in result["detail"]


def test_compare_flags_a_one_ulp_change(cases):
    case = next(c for c in cases if c.op == "gather" and c.expected.dtype == np.float16)
    actual = case.expected.copy()
    actual[0, 3, 7] = np.nextafter(actual[0, 3, 7], np.float16(np.inf), dtype=np.float16)
    assert not compare(case, actual)["passed"]
    assert compare(case, case.expected.copy())["passed"]  # NaN payloads compare bitwise-equal


def test_compare_flags_wrong_shape_and_a_crashing_harness(cases):
    case = cases[0]
    assert "shape" in compare(case, case.expected[:, :-1])["detail"]

    def boom(out):
        raise RuntimeError("cudaErrorIllegalAddress")

    result = run_case(ReferenceHarness(boom), case)
    assert not result["passed"] and "IllegalAddress" in result["detail"]


@needs_nvcc
def test_harness_builds_and_its_entry_points_load(tmp_path):
    from engines.plugins.kernel_harness import HARNESS_SYMBOLS, HarnessError, KernelHarness, build_harness

    library = build_harness(tmp_path, "sm_90")
    harness = KernelHarness(library)  # ctypes signatures set for every entry point
    assert all(hasattr(harness.lib, s) for s in HARNESS_SYMBOLS)
    if _cuda_reason() is None:
        pytest.skip("a GPU is visible: the no-GPU error path cannot be checked here")
    with pytest.raises(HarnessError, match="CUDA runtime unavailable"):
        harness.device_count()
    q = np.zeros((1, 2, 8), np.float32)
    with pytest.raises(HarnessError, match=r"rr_pool_select: .*\(cudaError \d+\)"):
        harness.select(q, np.zeros((1, 2, 16, 8), np.float32), 0, 4, 8, 1.0)


@pytest.mark.gpu
def test_kernels_match_the_reference_on_gpu(tmp_path, cases):
    reason = _cuda_reason()
    if reason or find_nvcc() is None:
        pytest.skip(reason or "nvcc not found")
    from engines.plugins.kernel_harness import KernelHarness, build_harness

    harness = KernelHarness(build_harness(tmp_path, gpu_stages.cuda_arch()))
    failed = [r for r in (run_case(harness, c) for c in cases) if not r["passed"]]
    assert not failed, failed


def _full_report() -> dict:
    results = [{"name": "select-x", "op": "select", "passed": False, "mismatches": 1, "detail": "first mismatch"}]
    methods = {m: {"prefill_ms": 10.0, "decode_ms_per_token": 1.0, "prefill_ratio": 0.5, "decode_ratio": 0.9}
               for m in ("none", "reroute")}
    sample = {"max_abs_logit_diff": 1e-6, "logits_within_tolerance": True, "routing_identical": True,
              "tokens_identical": True, "first_token_identical": True}
    return {"machine": "test", "budget_s": 480, "wall_s": 12.0, "stages": {
        "kernels": {"status": "failed", "arch": "sm_90", "cases": 66, "failed": results, "results": results},
        "parity": {"status": "passed", "model": "llava-tiny", "rule": "r", "per_sample": {"cuda-fp32": [sample]}},
        "bench": {"status": "passed", "shapes": [
            {"shape": "llava-bench", "parameters": 4.4e8, "prompt_tokens": 640, "ratio": 0.25, "rounds": 5,
             "kv_tokens": {"none": 100, "reroute": 50}, "methods": methods},
            {"shape": "llava-1.5-7b", "skipped": "needs ~13 GiB"}]},
        "tensorrt": {"status": "skipped", "reason": "import tensorrt failed"}}}


def test_report_writer_writes_two_files_atomically(tmp_path):
    paths = gpu_report.write_report(tmp_path, _full_report())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"] == sorted(p.name for p in paths)
    md = (tmp_path / "report.md").read_text()
    assert "| kernels | failed |" in md and "FAILED select-x" in md
    assert "| reroute | 10.00 | 0.500 | 1.000 | 0.900 | 50 |" in md
    assert "llava-1.5-7b: skipped" in md and "| cuda-fp32 | 1e-06 | 1/1 | 1/1 | 1/1 |" in md
    assert json.loads((tmp_path / "report.json").read_text())["stages"]["tensorrt"]["status"] == "skipped"


def test_plan_fits_the_budget_and_the_file_limit():
    plan = gpu_check.plan()
    assert plan["total_s"] <= gpu_check.TOTAL_BUDGET_S == 480
    assert len(plan["files"]) <= gpu_report.MAX_FILES
    with pytest.raises(ValueError, match="at most 8"):
        gpu_report.output_files([f"s{i}" for i in range(7)])


def test_all_skipped_pytest_run_is_not_passed():
    assert gpu_stages.pytest_status(0, "5 skipped in 0.1s") == "skipped"
    assert gpu_stages.pytest_status(5, "no tests ran") == "skipped"
    assert gpu_stages.pytest_status(0, "3 passed, 2 skipped in 9s") == "passed"
    assert gpu_stages.pytest_status(1, "1 failed, 3 passed") == "failed"


def test_a_failing_stage_is_reported_and_the_next_runs(tmp_path, monkeypatch):
    """kernels is killed at its (tiny) timeout; tensorrt still runs (and skips without TensorRT)."""
    monkeypatch.setattr(gpu_check, "STAGES", (("kernels", 0), ("tensorrt", 30)))
    monkeypatch.setattr(gpu_check, "STAGE_STARTUP_S", 1)
    report = gpu_check.run_all(tmp_path)
    assert report["stages"]["kernels"]["status"] == "timed_out"
    assert report["stages"]["tensorrt"]["status"] in ("skipped", "passed", "failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kernels.log", "report.json", "report.md", "tensorrt.log"]


def test_stage_exception_becomes_a_failed_result(tmp_path, monkeypatch):
    def broken(budget_s):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setitem(gpu_stages.STAGE_FUNCTIONS, "bench", broken)
    assert gpu_check.stage_main("bench", str(tmp_path / "r.json"), 10) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result == {"status": "failed", "error": "RuntimeError: CUDA out of memory"}


def test_dry_run_end_to_end(tmp_path, capsys):
    code = gpu_check.main(["--dry-run", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "report.json").read_text())
    assert code == 0 and report["dry_run"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"]
    assert set(report["stages"]) == {"imports", "kernels", "bench", "tree"}
    assert report["stages"]["bench"]["status"] == "passed" and "12.3 GiB" in report["stages"]["bench"]["summary"]
    expected_kernels = "passed" if find_nvcc() else "skipped"
    assert report["stages"]["kernels"]["status"] == expected_kernels
    assert "dry run" in capsys.readouterr().out


def test_bench_shapes_match_the_presets():
    from exporter.presets import llava_15_7b_config, preset_config
    from exporter.registry import decoder_config, num_visual_tokens

    assert gpu_bench.SHAPES["llava-1.5-7b"] == decoder_config(llava_15_7b_config())
    assert gpu_bench.SHAPES["llava-bench"] == decoder_config(preset_config("llava-bench"))
    assert gpu_bench.NUM_VISUAL == num_visual_tokens(llava_15_7b_config())
    # 6.74 B in the HF model minus the 32064 x 4096 embedding table the bench does not need
    assert gpu_bench.parameter_count(gpu_bench.SHAPES["llava-1.5-7b"]) == pytest.approx(6.61e9, rel=0.01)


def test_routed_view_shares_weights_and_matches_a_fresh_model():
    import torch

    from graphs.config import DecoderConfig
    from graphs.routed import RoutedDecoder

    cfg = DecoderConfig(hidden_size=32, intermediate_size=48, num_layers=32, num_heads=4, num_kv_heads=2,
                        head_dim=8, vocab_size=40)
    plans = gpu_bench.schedules(cfg)
    base = gpu_bench.build_base(cfg, plans["none"], "cpu", torch.float32)
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in base.parameters())
    view = gpu_bench.routed_view(base, plans["reroute"])
    assert view.layers[5].mlp.up_proj.weight.data_ptr() == base.layers[5].mlp.up_proj.weight.data_ptr()
    fresh = RoutedDecoder(cfg, plans["reroute"])
    fresh.load_state_dict(base.state_dict())
    x = torch.randn(1, gpu_bench.prompt_tokens(), 32)
    with torch.inference_mode():
        a, b = view.prefill(x, gpu_bench.TEXT_BEFORE), fresh.prefill(x, gpu_bench.TEXT_BEFORE)
    assert torch.equal(a.logits, b.logits) and [s.tolist() for s in a.selections] == [s.tolist() for s in b.selections]


def test_summarize_reports_same_round_ratios():
    rounds = [{"none": (10.0, 2.0), "reroute": (5.0, 1.0)}, {"none": (20.0, 4.0), "reroute": (8.0, 4.0)},
              {"none": (10.0, 2.0), "reroute": (6.0, 2.0)}]
    out = gpu_bench.summarize(rounds)
    assert out["reroute"]["prefill_ratio"] == pytest.approx(0.5)  # median of 0.5, 0.4, 0.6
    assert out["reroute"]["decode_ratio"] == pytest.approx(1.0)
    assert out["none"]["prefill_ms"] == 10.0 and out["none"]["prefill_ratio"] == 1.0
