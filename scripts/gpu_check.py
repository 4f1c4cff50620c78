#!/usr/bin/env python3
"""One prepared device check for a CUDA machine without TensorRT (docs/GPU.md).

    python3 scripts/gpu_check.py --out DIR        # on the GPU machine: <= 8 minutes
    python3 scripts/gpu_check.py --dry-run --out DIR   # anywhere: plan, files, budget, CPU-side checks

Stages run one after another, each in its own process under its own timeout, so a failure or hang in
one is reported and the next still runs: kernels (pool kernels vs numpy, via nvcc + ctypes), parity
(torch backend on CUDA vs CPU, llava-tiny), bench (every method at ratio 1/4 vs unrouted, llava-bench
and the LLaVA-1.5-7B shape, random fp16 weights on the GPU), tensorrt (its GPU tests, when it imports).
Writes report.json, report.md and one log per stage under --out (default $OUT): at most 8 files.
Assumes python3 with numpy and torch (CUDA build), nvcc; transformers for the parity stage. CuPy is
not needed. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
for _path in (str(ROOT), str(SCRIPTS)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from gpu_report import output_files, write_report  # noqa: E402

# (name, seconds): each stage's own timeout; the sum stays within TOTAL_BUDGET_S
STAGES = (("kernels", 75), ("parity", 75), ("bench", 240), ("tensorrt", 60))
TOTAL_BUDGET_S = 480
STAGE_STARTUP_S = 5  # interpreter + imports per stage process, outside the stage's own work


def plan() -> dict:
    total = sum(budget for _, budget in STAGES) + STAGE_STARTUP_S * len(STAGES)
    if total > TOTAL_BUDGET_S:
        raise ValueError(f"stage budgets add up to {total} s, over the {TOTAL_BUDGET_S} s limit")
    return {"stages": dict(STAGES), "total_s": total, "limit_s": TOTAL_BUDGET_S,
            "files": output_files(name for name, _ in STAGES)}


def machine() -> str:
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
        return f"{platform.node()}, {gpu}, torch {torch.__version__}"
    except ImportError:
        return f"{platform.node()}, torch not importable"


def run_stage(name: str, budget_s: int, out: Path) -> dict:
    """Run one stage in a child process (this script with --stage); its output goes to <name>.log."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, open(out / f"{name}.log", "w") as log:
        result_file = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--result", str(result_file),
               "--budget-s", str(budget_s)]
        # own session: on timeout the whole group goes (nvcc, pytest children), not just the stage process
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=budget_s + STAGE_STARTUP_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            result = {"status": "timed_out", "error": f"killed after {budget_s + STAGE_STARTUP_S} s; see {name}.log"}
        else:
            if result_file.is_file():
                result = json.loads(result_file.read_text())
            else:
                result = {"status": "failed", "error": f"exit {proc.returncode} without a result; see {name}.log"}
    return {**result, "wall_s": round(time.monotonic() - start, 1), "budget_s": budget_s}


def run_all(out: Path, only=None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    report = {"dry_run": False, "machine": machine(), "budget_s": TOTAL_BUDGET_S, "plan": plan(), "stages": {}}
    for name, budget in STAGES:
        if only and name not in only:
            continue
        print(f"[gpu_check] {name} (<= {budget} s) ...", flush=True)
        report["stages"][name] = run_stage(name, budget, out)
        report["wall_s"] = round(time.monotonic() - start, 1)
        write_report(out, report)  # after every stage: a later kill still leaves a report
        print(f"[gpu_check] {name}: {report['stages'][name]['status']}", flush=True)
    return report


def stage_main(name: str, result_path: str, budget_s: float) -> int:
    """Child process: run one stage; any exception becomes a failed result with its message."""
    import traceback

    from gpu_stages import STAGE_FUNCTIONS

    try:
        result = STAGE_FUNCTIONS[name](budget_s)
    except Exception as exc:  # noqa: BLE001 - the orchestrator reports it and runs the next stage
        traceback.print_exc()
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:500]}
    Path(result_path).write_text(json.dumps(result, default=str))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="report folder (default $OUT)")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: plan, files, budget, CPU-side checks")
    parser.add_argument("--only", help="comma-separated stages to run (default all)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--budget-s", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:
        return stage_main(args.stage, args.result, args.budget_s)
    out = Path(args.out)
    if args.dry_run:
        from gpu_dry_run import dry_run

        report = dry_run(out, plan())
    else:
        report = run_all(out, set(args.only.split(",")) if args.only else None)
    print((out / "report.md").read_text())
    bad = [n for n, s in report["stages"].items() if s["status"] in ("failed", "timed_out")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
