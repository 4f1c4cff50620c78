"""The stages of scripts/gpu_check.py. Each returns a JSON-able dict with "status" (passed, failed or
skipped) and, when skipped, a "reason"; gpu_check.py runs each in its own process under a timeout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARITY_SAMPLES, PARITY_STEPS = 4, 8
# the CUDA fp32 reference must match the CPU one as tightly as two fp32 backends (exporter/registry.py)
FP32_ATOL, FP32_RTOL = 1e-4, 1e-4


def cuda_arch() -> str:
    """sm_XY of GPU 0: from torch, else nvidia-smi, else sm_90 (H200)."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return f"sm_{major}{minor}"
    except ImportError:
        pass
    if shutil.which("nvidia-smi"):
        proc = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                              capture_output=True, text=True)
        cap = proc.stdout.strip().splitlines()[0].strip() if proc.returncode == 0 and proc.stdout.strip() else ""
        if cap.replace(".", "").isdigit():
            return "sm_" + cap.replace(".", "")
    return "sm_90"


def kernels_stage(budget_s: float) -> dict:
    """Every case of engines/plugins/kernel_cases.py through the ctypes harness."""
    from engines.plugins.kernel_cases import all_cases, run_case
    from engines.plugins.kernel_harness import KernelHarness, build_harness

    arch = cuda_arch()
    with tempfile.TemporaryDirectory() as tmp:
        harness = KernelHarness(build_harness(tmp, arch))
        if harness.device_count() < 1:
            return {"status": "skipped", "reason": "CUDA runtime sees no GPU", "arch": arch}
        results = []
        for case in all_cases():
            start = time.perf_counter()
            results.append({**run_case(harness, case), "ms": round(1e3 * (time.perf_counter() - start), 1)})
    failed = [r for r in results if not r["passed"]]
    return {"status": "failed" if failed else "passed", "arch": arch, "cases": len(results),
            "failed": failed, "results": results}


def _greedy(backend, inputs, steps):
    from engines.generate import greedy_generate

    return greedy_generate(backend, inputs.input_ids, inputs.pixel_values, inputs.visual_start, steps)


def _compare_runs(ref, got, atol: float, rtol: float) -> dict:
    import numpy as np

    a, b = got.prefill_logits.astype(np.float64), ref.prefill_logits.astype(np.float64)
    return {"max_abs_logit_diff": float(np.max(np.abs(a - b))),
            "logits_within_tolerance": bool(np.all(np.abs(a - b) <= atol + rtol * np.abs(b))),
            "routing_identical": all(np.array_equal(x, y) for x, y in zip(got.selections, ref.selections)),
            "tokens_identical": got.generated == ref.generated,
            "first_token_identical": [g[:1] for g in got.generated] == [r[:1] for r in ref.generated]}


def parity_stage(budget_s: float) -> dict:
    """llava-tiny: the torch backend on CUDA (fp32, and fp16 for information) vs on CPU (fp32)."""
    import torch

    from engines.torch_runner import TorchBackend
    from engines.inputs import encode
    from exporter.inspect_model import make_schedule
    from exporter.models import load_model
    from exporter.samples import sample

    if not torch.cuda.is_available():
        return {"status": "skipped", "reason": "torch sees no CUDA device"}
    backends = {}
    for label, device, dtype in (("cpu-fp32", "cpu", torch.float32), ("cuda-fp32", "cuda", torch.float32),
                                 ("cuda-fp16", "cuda", torch.float16)):
        loaded = load_model("llava-tiny")  # TorchBackend moves the model: one copy per backend
        schedule = make_schedule(loaded.config, "reroute", 0.25)
        backends[label] = TorchBackend(loaded, schedule, dtype, device)
    inputs = [encode(loaded.processor, [p], [img], loaded.image_token_id, loaded.num_visual)
              for p, img in (sample(i) for i in range(PARITY_SAMPLES))]
    runs = {label: [_greedy(b, x, PARITY_STEPS) for x in inputs] for label, b in backends.items()}
    per_sample = {label: [_compare_runs(r, g, FP32_ATOL, FP32_RTOL) for r, g in zip(runs["cpu-fp32"], runs[label])]
                  for label in ("cuda-fp32", "cuda-fp16")}
    strict = per_sample["cuda-fp32"]
    passed = all(s["logits_within_tolerance"] and s["routing_identical"] and s["tokens_identical"] for s in strict)
    return {"status": "passed" if passed else "failed", "model": "llava-tiny", "method": "reroute", "ratio": 0.25,
            "samples": PARITY_SAMPLES, "steps": PARITY_STEPS, "tolerance": {"atol": FP32_ATOL, "rtol": FP32_RTOL},
            "rule": "cuda-fp32 must match cpu-fp32: logits within tolerance, identical routing and tokens; "
                    "cuda-fp16 is reported, not judged",
            "per_sample": per_sample}


def bench_stage(budget_s: float) -> dict:
    """scripts/gpu_bench.py on both shapes; the 7B shape gets the larger share of the budget."""
    import torch

    import gpu_bench

    if not torch.cuda.is_available():
        return {"status": "skipped", "reason": "torch sees no CUDA device"}
    shares = {"llava-bench": 0.3, "llava-1.5-7b": 0.6}
    shapes = [gpu_bench.bench_shape(name, share * budget_s) for name, share in shares.items()]
    return {"status": "passed", "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "shapes": shapes}


def tensorrt_stage(budget_s: float) -> dict:
    """The TensorRT GPU tests, only where ``import tensorrt`` works."""
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "not here"
        return {"status": "skipped", "reason": f"import tensorrt failed ({type(exc).__name__}: {exc})"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_tensorrt_gpu.py"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=0.9 * budget_s)
    print(proc.stdout[-4000:], proc.stderr[-2000:])
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    return {"status": pytest_status(proc.returncode, summary), "pytest_exit": proc.returncode, "summary": summary}


def pytest_status(exit_code: int, summary: str) -> str:
    """A run whose tests were all skipped (or none collected) is "skipped", never "passed"."""
    if exit_code == 5 or (exit_code == 0 and " passed" not in summary):
        return "skipped"
    return "passed" if exit_code == 0 else "failed"


STAGE_FUNCTIONS = {"kernels": kernels_stage, "parity": parity_stage, "bench": bench_stage,
                   "tensorrt": tensorrt_stage}
