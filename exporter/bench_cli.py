"""``reroute bench``: the subcommand over :mod:`exporter.bench` (registered from ``exporter/cli.py``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .arg_types import comma_list, ratio_list


def cmd_bench(args) -> int:
    from engines.errors import RerouteError

    from .bench import BenchOptions, format_bench, run_bench, write_json
    from .devices import torch_options

    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise RerouteError(f"--out must be a folder, {out} is a file")
    report = run_bench(BenchOptions(
        args.model, args.methods, args.ratios, args.backends, runs=args.runs, warmup=args.warmup,
        decode_steps=args.decode_steps, text_tokens=args.text_tokens, fidelity=args.fidelity,
        fidelity_samples=args.fidelity_samples, fidelity_steps=args.fidelity_steps, artifacts=args.artifacts,
        profile_ratios=args.profile or (), quiet=args.quiet or args.json, min_cpu_share=args.min_cpu_share,
        torch_options=torch_options(args)))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(report, out / "bench_results.json")
    print(json.dumps(report, indent=1) if args.json else format_bench(report))
    return 0


def register(sub, parser_class) -> None:
    """Add ``bench`` to ``reroute``'s subparsers."""
    from .bench import BACKENDS, DEFAULT_METHODS
    from .devices import add_device_args

    p = sub.add_parser("bench", help="latency, memory, KV bytes and FLOPs per method x ratio x backend")
    p.add_argument("--model", required=True, help="llava, a preset (llava-tiny, llava-bench), HF id or directory")
    p.add_argument("--methods", type=comma_list, default=list(DEFAULT_METHODS),
                   help="comma-separated (default all); none is always measured as the baseline")
    p.add_argument("--ratios", type=ratio_list, default=[1 / 3, 2 / 9, 1 / 9, 0.25],
                   help="comma-separated average visual ratios (default 1/3,2/9,1/9,0.25)")
    p.add_argument("--backends", type=comma_list, default=list(BACKENDS), help="torch,onnxruntime (default both)")
    add_device_args(p)
    p.add_argument("--runs", type=int, default=3, help="timed runs per config (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs per config (default 1)")
    p.add_argument("--min-cpu-share", type=float, default=0.9,
                   help="repeat timed rounds in which a call got less than this share of the cores "
                        "(other work took them; default 0.9, 0 disables)")
    p.add_argument("--decode-steps", type=int, default=8, help="greedy decode steps timed per run (default 8)")
    p.add_argument("--text-tokens", type=int, default=40,
                   help="text tokens of the prompt besides the image (default 40: 616 tokens like the paper)")
    p.add_argument("--fidelity", action="store_true",
                   help="also compare routed to unrouted outputs (top-1, KL, greedy agreement)")
    p.add_argument("--fidelity-samples", type=int, default=4, help="images/prompts for --fidelity (default 4)")
    p.add_argument("--fidelity-steps", type=int, default=8, help="greedy steps compared by --fidelity (default 8)")
    p.add_argument("--profile", type=ratio_list, metavar="RATIOS",
                   help="also profile ONNX Runtime (per op / layer) at these ratios")
    p.add_argument("--artifacts", help="keep and reuse exported artifacts in this folder (default: temporary)")
    p.add_argument("--out", help="folder for bench_results.json")
    p.add_argument("--json", action="store_true", help="print the JSON report (implies --quiet)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=cmd_bench)
