"""Time and peak memory of `reroute export` for a model, in a fresh process (rerun to reproduce).

Usage: python scripts/measure_export.py [--model llava-tiny] [--method reroute] [--ratio 0.25] [--runs 3]
Prints a Markdown table row per run; peak memory is the child's max RSS (getrusage).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time


def measure(model: str, method: str, ratio: str, parity_samples: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "exporter.cli", "export", "--model", model, "--method", method,
               "--ratio", ratio, "--out", os.path.join(tmp, "art"), "--quiet",
               "--parity-samples", str(parity_samples)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if peak_kib < before:  # pragma: no cover - ru_maxrss is a running maximum over children
            peak_kib = before
        return wall, peak_kib / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llava-tiny")
    ap.add_argument("--method", default="reroute")
    ap.add_argument("--ratio", default="0.25")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--parity-samples", type=int, default=2, help="as in a default export")
    args = ap.parse_args()
    print(f"# reroute export --model {args.model} --method {args.method} --ratio {args.ratio} "
          f"(parity on {args.parity_samples} samples), {os.cpu_count()} cores")
    print("| run | wall time (s) | peak RSS (GiB) |\n|---|---|---|")
    for run in range(1, args.runs + 1):
        wall, peak = measure(args.model, args.method, args.ratio, args.parity_samples)
        print(f"| {run} | {wall:.1f} | {peak:.2f} |", flush=True)


if __name__ == "__main__":
    main()
