"""``reroute eval``: the subcommand over :mod:`exporter.evaluation` (registered from ``exporter/cli.py``)."""

from __future__ import annotations

import json

from .arg_types import comma_list, ratio_list

DEFAULT_METHODS = ["none", "fastv", "pdrop", "reroute-fastv", "reroute"]
DEFAULT_RATIOS = [1 / 3, 2 / 9, 1 / 9]
ARTIFACT_BACKENDS = ("onnxruntime", "tensorrt", "torch")


def _configs(args):
    from engines.errors import RerouteError
    from .evaluation.runner import artifact_configs, model_configs

    if args.model:
        from graphs.schedule import METHODS

        methods = args.methods or DEFAULT_METHODS
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise RerouteError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        return model_configs(args.model, methods, args.ratios or DEFAULT_RATIOS)
    if args.methods or args.ratios:
        raise RerouteError("--methods and --ratios apply to --model; an artifact runs its own method and ratio")
    backends = args.backend or ["onnxruntime"]
    unknown = [b for b in backends if b not in ARTIFACT_BACKENDS]
    if unknown:
        raise RerouteError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(ARTIFACT_BACKENDS)}")
    return artifact_configs(args.artifact, backends)


def cmd_eval(args) -> int:
    from engines.errors import RerouteError
    from .evaluation.data import load_dataset
    from .evaluation.report import build_report, format_text
    from .evaluation.runner import run_eval
    from .generation import check_max_new_tokens

    if args.model and args.backend:
        raise RerouteError("--backend applies to --artifact; --model runs through the PyTorch reference")
    if args.limit is not None and args.limit < 1:
        raise RerouteError(f"--limit must be >= 1, got {args.limit}")
    check_max_new_tokens(args.max_new_tokens)
    data = load_dataset(args.data, args.limit)
    configs = _configs(args)
    results = run_eval(configs, data, args.batch_size, args.max_new_tokens, quiet=args.quiet)
    settings = {"model": args.model, "artifacts": args.artifact, "max_new_tokens": args.max_new_tokens,
                "batch_size": args.batch_size, "limit": args.limit}
    report = build_report(data, results, settings)
    if args.report:
        from .evaluation.markdown import write_markdown

        plot = write_markdown(report, args.report)
        report["report"], report["plot"] = args.report, str(plot)
    print(json.dumps(report, indent=1) if args.json else format_text(report))
    return 0


def register(sub, parser_class) -> None:
    """Add ``eval`` to ``reroute``'s subparsers."""
    p = sub.add_parser("eval", help="accuracy (VQA exact match, grounding IoU>=0.5) per method x ratio x backend")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="run --methods x --ratios through the PyTorch reference of this model")
    source.add_argument("--artifact", action="append", metavar="DIR",
                        help="exported folder, run with its own method and ratio (repeat for several)")
    p.add_argument("--backend", type=comma_list, metavar="NAMES",
                   help="with --artifact: onnxruntime (default), tensorrt or torch; comma-separated for several")
    p.add_argument("--data", required=True, help="folder with data.jsonl (or the .jsonl file)")
    p.add_argument("--methods", type=comma_list,
                   help="with --model: comma-separated (default none,fastv,pdrop,reroute-fastv,reroute)")
    p.add_argument("--ratios", type=ratio_list,
                   help="with --model: average visual ratios (default 1/3,2/9,1/9; none runs once at 1)")
    p.add_argument("--limit", type=int, help="only the first N usable items")
    p.add_argument("--batch-size", type=int, default=4,
                   help="items with equal prompt lengths run together (capped by an artifact's max batch)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="greedy tokens per answer (default 32)")
    p.add_argument("--json", action="store_true", help="print the JSON report, per-item answers included")
    p.add_argument("--report", metavar="OUT.md", help="also write a Markdown report and OUT.png (accuracy vs FLOPs)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=cmd_eval)
