#!/usr/bin/env python
"""Run ``reroute bench`` and write docs/BENCHMARKS.md, docs/img/*.png and docs/bench_results.json.

Everything in the report (tables, plots, target verdicts, the profiling
breakdowns that explain a miss) is computed from this run's own results.

    python scripts/bench_report.py                       # llava-bench, ONNX Runtime + torch (~35 min on 2 idle cores)
    python scripts/bench_report.py --from-json docs/bench_results.json   # re-render only
    python scripts/bench_report.py --add-model-json OUT/bench_results.json  # add another model's `reroute bench
                                                         # --out OUT` run (e.g. qwen2.5-vl-bench), re-render
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.bench import BenchOptions, run_bench, write_json  # noqa: E402
from exporter.bench.markdown import readme_headline, render, update_readme  # noqa: E402
from exporter.bench.markdown_models import add_model  # noqa: E402
from exporter.bench.tables import atomic_write_text  # noqa: E402


def _ratios(text: str) -> list[float]:
    return [float(Fraction(x)) for x in text.split(",") if x.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llava-bench")
    p.add_argument("--methods", default="none,fastv,pdrop,reroute-fastv,reroute")
    p.add_argument("--ratios", type=_ratios, default=[1 / 3, 2 / 9, 1 / 9, 0.25])
    p.add_argument("--backends", default="onnxruntime,torch")
    p.add_argument("--torch-ratios", type=_ratios, help="measure torch only at these ratios (default: all)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--min-cpu-share", type=float, default=0.9,
                   help="repeat timed rounds in which a call got less than this share of the cores (0: off)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--decode-steps", type=int, default=8)
    p.add_argument("--text-tokens", type=int, default=40)
    p.add_argument("--target-ratio", type=lambda t: float(Fraction(t)), default=0.25)
    p.add_argument("--no-fidelity", action="store_true")
    p.add_argument("--fidelity-samples", type=int, default=3)
    p.add_argument("--fidelity-steps", type=int, default=8)
    p.add_argument("--artifacts", help="keep/reuse exported artifacts here (default: temporary, deleted)")
    p.add_argument("--docs", default=str(ROOT / "docs"))
    p.add_argument("--from-json", help="render the report from an existing results file, without running")
    p.add_argument("--add-model-json", help="a `reroute bench --out` result of another model: merged into "
                                            "docs/bench_results.json as a further section, then re-rendered")
    p.add_argument("--fidelity-json", default=str(ROOT / "docs" / "fidelity_results.json"),
                   help="accuracy shown beside latency (scripts/fidelity_report.py writes it; '' for none)")
    p.add_argument("--readme", default=str(ROOT / "README.md"),
                   help="README whose bench-headline block is rewritten ('' to leave it alone)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    if args.add_model_json:
        report = add_model(json.loads((docs / "bench_results.json").read_text()),
                           json.loads(Path(args.add_model_json).read_text()))
        write_json(report, docs / "bench_results.json")
    elif args.from_json:
        report = json.loads(Path(args.from_json).read_text())
    else:
        command = "python scripts/bench_report.py " + " ".join(argv if argv is not None else sys.argv[1:])
        report = run_bench(BenchOptions(
            args.model, args.methods.split(","), args.ratios, args.backends.split(","), runs=args.runs,
            warmup=args.warmup, decode_steps=args.decode_steps, text_tokens=args.text_tokens,
            fidelity=not args.no_fidelity, fidelity_samples=args.fidelity_samples,
            fidelity_steps=args.fidelity_steps, artifacts=args.artifacts, profile_ratios=[args.target_ratio],
            torch_ratios=args.torch_ratios, quiet=args.quiet, min_cpu_share=args.min_cpu_share))
        report["command"] = command.strip()
        report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json(report, docs / "bench_results.json")
    fidelity = Path(args.fidelity_json) if args.fidelity_json else None
    accuracy = json.loads(fidelity.read_text()) if fidelity and fidelity.is_file() else None
    atomic_write_text(docs / "BENCHMARKS.md", render(report, docs, args.target_ratio, accuracy=accuracy))
    print(f"wrote {docs / 'BENCHMARKS.md'}, {docs / 'img'}, {docs / 'bench_results.json'}")
    if args.readme:
        if update_readme(Path(args.readme), readme_headline(report, args.target_ratio)):
            print(f"updated the benchmark headline in {args.readme}")
        else:
            print(f"{args.readme} has no bench-headline markers: left alone", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
