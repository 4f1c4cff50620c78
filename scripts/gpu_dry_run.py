"""``gpu_check.py --dry-run``: everything about the device check that can be validated without a GPU.

Checks the plan (stage budgets within the limit, at most 8 output files), the imports each stage needs,
the kernel harness (nvcc build for sm_90, its extern "C" entry points, the test cases and their numpy
expectations), the bench's schedules and GPU memory estimate, and the size of the working tree that
travels to the GPU machine. Writes report.json and report.md with ``dry_run: true``.
"""

from __future__ import annotations

import ctypes
import importlib.util
import subprocess
import tempfile
import time
from pathlib import Path

from gpu_report import write_report

ROOT = Path(__file__).resolve().parent.parent
H200_MEMORY_BYTES = 141 * 10**9
TREE_LIMIT_BYTES = 64 * 2**20
DRY_ARCH = "sm_90"  # H200


def _passed(note: str, **extra) -> dict:
    return {"status": "passed", "summary": note, **extra}


def check_imports() -> dict:
    have = {name: importlib.util.find_spec(name) is not None
            for name in ("numpy", "torch", "transformers", "onnx", "cupy", "tensorrt")}
    missing = [n for n in ("numpy", "torch") if not have[n]]
    if missing:
        return {"status": "failed", "error": f"required: {', '.join(missing)} not importable", "modules": have}
    import engines.plugins.kernel_cases  # noqa: F401 - the stage modules must import without a GPU
    import gpu_bench  # noqa: F401
    import gpu_stages  # noqa: F401

    note = "numpy, torch ok; " + ", ".join(f"{n} {'yes' if have[n] else 'no'}"
                                          for n in ("transformers", "cupy", "tensorrt"))
    return _passed(note + " (parity needs transformers; cupy unused; tensorrt optional)", modules=have)


def check_kernels() -> dict:
    from engines.plugins.build_kernels import find_nvcc
    from engines.plugins.kernel_cases import all_cases
    from engines.plugins.kernel_harness import HARNESS_SYMBOLS, build_harness

    start = time.monotonic()
    cases = all_cases()
    counts = {op: sum(c.op == op for c in cases) for op in ("select", "gather", "scatter")}
    if find_nvcc() is None:
        return {"status": "skipped", "reason": f"nvcc not found; {len(cases)} cases generated {counts}"}
    with tempfile.TemporaryDirectory() as tmp:
        library = build_harness(tmp, DRY_ARCH)
        lib = ctypes.CDLL(str(library))  # loads without a driver: cudart is linked statically
        missing = [s for s in HARNESS_SYMBOLS if not hasattr(lib, s)]
    if missing:
        return {"status": "failed", "error": f"harness lacks {missing}"}
    return _passed(f"harness built for {DRY_ARCH} with entry points {', '.join(HARNESS_SYMBOLS)}; {len(cases)} cases "
                   f"{counts} generated with numpy expectations in {time.monotonic() - start:.1f} s", cases=len(cases))


def check_bench() -> dict:
    import gpu_bench

    notes = []
    for name, cfg in gpu_bench.SHAPES.items():
        plans = gpu_bench.schedules(cfg)
        mem = gpu_bench.memory_estimate(cfg)
        if mem["total"] * 1.2 > H200_MEMORY_BYTES:
            return {"status": "failed", "error": f"{name} needs {mem['total'] / 2**30:.1f} GiB, over an H200"}
        ks = {m: list(s.k) for m, s in plans.items() if m != gpu_bench.BASELINE}
        notes.append(f"{name}: {gpu_bench.parameter_count(cfg) / 1e9:.2f} B params, fp16 weights "
                     f"{mem['weights'] / 2**30:.1f} GiB + KV {mem['kv_cache'] / 2**30:.2f} GiB + activations "
                     f"{mem['activations'] / 2**30:.2f} GiB; k per stage {ks}")
    return _passed("; ".join(notes))


def tree_bytes() -> int:
    """Bytes of the files that travel to the GPU machine (tracked + untracked, not ignored)."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.split(b"\0")
    return sum((ROOT / n.decode()).stat().st_size for n in names if n and (ROOT / n.decode()).is_file())


def check_tree() -> dict:
    size = tree_bytes()
    if size > TREE_LIMIT_BYTES:
        return {"status": "failed", "error": f"working tree is {size / 2**20:.1f} MiB, over 64 MiB"}
    return _passed(f"working tree {size / 2**20:.1f} MiB of 64 MiB")


CHECKS = {"imports": check_imports, "kernels": check_kernels, "bench": check_bench, "tree": check_tree}


def dry_run(out: Path, plan: dict) -> dict:
    start = time.monotonic()
    stages = {}
    for name, check in CHECKS.items():
        t = time.monotonic()
        try:
            stages[name] = check()
        except Exception as exc:  # noqa: BLE001 - every check is reported, the rest still run
            stages[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:500]}
        stages[name]["wall_s"] = round(time.monotonic() - t, 1)
    plan_note = (f"plan: {', '.join(f'{n} {s} s' for n, s in plan['stages'].items())}; {plan['total_s']} s with "
                 f"process start-up, limit {plan['limit_s']} s; files under --out: {', '.join(plan['files'])}")
    report = {"dry_run": True, "machine": "dry run (no GPU used)", "budget_s": plan["limit_s"], "plan": plan,
              "stages": stages, "checks": [plan_note], "wall_s": round(time.monotonic() - start, 1)}
    write_report(out, report)
    return report
