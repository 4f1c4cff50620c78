"""Wall time, peak RSS, artifact size and parity verdict of `reroute export`, one fresh process per run.

Usage:
  python scripts/measure_export.py [--cases tiny,bench-fp32,bench-fp16] [--depth-cut DIR] [--full DIR]
      [--runs 1] [--parity-samples 2] [--out-root DIR]

Cases: llava-tiny (fp32), llava-bench (fp32, fp16), and when given, a depth-cut 7B-width checkpoint
(--depth-cut, fp16, with parity) and the full 7B-shaped checkpoint (--full, fp16; parity cannot run on
this CPU machine at that size, so its weights are verified byte for byte against the checkpoint instead).
Peak RSS is the export process's own ru_maxrss. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_RUN = ("import resource, sys; from exporter.cli import main; rc = main(sys.argv[1:]); "
        "sys.stderr.write('MAXRSS %d\\n' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
_VERIFY = ("import json, sys; from exporter.verify_weights import verify_weights; "
           "r = verify_weights(sys.argv[1], sys.argv[2]); print(json.dumps(r))")


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT)


def measure(model: str, dtype: str, parity_samples: int, out: Path) -> dict:
    cmd = ["export", "--model", model, "--dtype", dtype, "--out", str(out), "--quiet", "--force",
           "--parity-samples", str(parity_samples)]
    start = time.perf_counter()
    proc = _python(_RUN, *cmd)
    wall = time.perf_counter() - start
    rss = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("MAXRSS ")]
    row = {"model": model, "dtype": dtype, "wall_s": wall, "peak_rss_gib": rss[-1] / 2**20 if rss else float("nan"),
           "rc": proc.returncode}
    if proc.returncode not in (0, 1):
        row["verdict"] = "export failed: " + (proc.stderr.strip().splitlines() or ["?"])[0][:120]
        return row
    row["size_gib"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**30
    report = out / "parity.json"
    if report.is_file():
        row["verdict"] = "PASS" if json.loads(report.read_text())["passed"] else "FAIL"
    else:
        row["verdict"] = "not run"
    return row


def verify(out: Path, weights: str) -> str:
    proc = _python(_VERIFY, str(out), weights)
    if proc.returncode != 0:
        return "verify failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:120]
    r = json.loads(proc.stdout)
    ok = not r["mismatched"] and not r["unverified"]
    return f"weights {'verified' if ok else 'MISMATCH'} ({r['checked']} tensors vs safetensors)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="tiny,bench-fp32,bench-fp16")
    ap.add_argument("--depth-cut", help="a full-width checkpoint cut to a few layers (fp16)")
    ap.add_argument("--full", help="the full 7B-shaped checkpoint (fp16)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--parity-samples", type=int, default=2)
    ap.add_argument("--out-root", help="where artifacts go (default: a temp folder, removed)")
    args = ap.parse_args()
    cases = {"tiny": ("llava-tiny", "fp32", args.parity_samples, None),
             "bench-fp32": ("llava-bench", "fp32", args.parity_samples, None),
             "bench-fp16": ("llava-bench", "fp16", args.parity_samples, None)}
    plan = []  # the 7B-width checkpoints first: the slowest rows, and the ones the issue is about
    if args.full:
        plan.append((args.full, "fp16", 0, args.full))
    if args.depth_cut:
        plan.append((args.depth_cut, "fp16", args.parity_samples, None))
    plan += [cases[c] for c in args.cases.split(",") if c]
    root = Path(args.out_root or tempfile.mkdtemp(prefix="measure-export-"))
    print(f"# reroute export, {os.cpu_count()} cores, parity on {args.parity_samples} samples where it runs")
    print("| model | dtype | run | wall time (s) | peak RSS (GiB) | artifact (GiB) | parity |\n|---|---|---|---|---|---|---|")
    try:
        for model, dtype, samples, weights in plan:
            for run in range(1, args.runs + 1):
                out = root / f"{Path(model).name}-{dtype}"
                row = measure(model, dtype, samples, out)
                if weights and row["rc"] == 0:
                    row["verdict"] = f"not runnable here (ORT CPU fp16 7B); {verify(out, weights)}"
                print(f"| {Path(model).name} | {dtype} | {run} | {row['wall_s']:.1f} | {row['peak_rss_gib']:.2f} | "
                      f"{row.get('size_gib', float('nan')):.2f} | {row['verdict']} |", flush=True)
                if not args.out_root:
                    shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.out_root:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
