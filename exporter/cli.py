"""The ``reroute`` command: a thin layer over library functions the tests call."""

from __future__ import annotations

import argparse
import json
import os
import sys
from fractions import Fraction

from engines.errors import RerouteError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def ratio_arg(text: str) -> float:
    """Accept 0.25 as well as fractions such as 1/3 or 2/9."""
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"invalid ratio {text!r} (use a number such as 0.25 or 1/3)") from None


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(Fraction(x)) for x in text.split(",") if x.strip()]
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _schedule_args(p: argparse.ArgumentParser) -> None:
    from graphs.schedule import DEFAULT_METHOD, METHODS

    p.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS), help="routing method (default reroute)")
    p.add_argument("--ratio", type=ratio_arg, default=0.25, help="average fraction of visual tokens per layer")
    p.add_argument("--layers", type=_int_list, help="explicit decision layers, e.g. 2,7,15,23")
    p.add_argument("--keep-ratios", type=_float_list, help="explicit keep ratios, one per decision layer")


def _device_args(p: argparse.ArgumentParser, dtype: bool = True) -> None:
    from .devices import add_device_args

    add_device_args(p, dtype)


def cmd_inspect(args) -> int:
    from .inspect_model import format_report, inspect_report

    # a dynamic-resolution model takes N_v from --image alone; otherwise --image belongs to --routing-map
    sizes_only = bool(args.image) and not args.routing_map and not args.prompt and _dynamic(args.model)
    report = inspect_report(args.model, args.method, args.ratio, args.layers, args.keep_ratios,
                            args.text_tokens, args.kv_dtype, args.visual_tokens, args.image if sizes_only else None)
    if (args.routing_map or args.image or args.prompt) and not sizes_only:
        from .routing_map import format_summary, routing_map_for_cli

        report["routing_map"] = routing_map_for_cli(args)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if report.get("routing_map") and not args.json:
        print(format_summary(report["routing_map"]))
    return 0


def _dynamic(model: str) -> bool:
    from .models import load_config
    from .registry import family_of

    return family_of(load_config(model)).dynamic_visual_tokens


def cmd_generate(args) -> int:
    from .devices import torch_options
    from .generation import ArtifactEncoder, run_generate, save_logits, torch_backend

    loaded = None
    if args.backend != "torch" and (args.device != "cpu" or args.torch_dtype):
        raise RerouteError("--device / --torch-dtype apply to --backend torch only")
    if args.backend != "torch":
        from engines.backends import artifact_backend

        if not args.artifact:
            raise RerouteError(f"--backend {args.backend} needs --artifact DIR (an exported folder)")
        processor, image_token_id, num_visual, backend, eos, artifact = artifact_backend(args.artifact, args.backend)
        loaded = ArtifactEncoder.of(artifact, processor)
    else:
        if not args.model:
            raise RerouteError("--backend torch needs --model (or give --artifact with --backend onnxruntime)")
        options = torch_options(args)  # checks --device before the model loads
        loaded, backend = torch_backend(args.model, args.method, args.ratio, args.layers, args.keep_ratios, **options)
        processor, image_token_id, num_visual = loaded.processor, loaded.image_token_id, loaded.num_visual
        eos, artifact = processor.tokenizer.eos_token_id, None
    try:
        result, gen = run_generate(backend, processor, image_token_id, num_visual, args.image, args.prompt,
                                   args.chat, args.max_new_tokens, None if args.ignore_eos else eos, artifact,
                                   loaded=loaded)
    finally:
        if hasattr(backend, "close"):
            backend.close()
    if args.dump_logits:
        save_logits(args.dump_logits, gen.prefill_logits)
    if args.json:
        print(json.dumps(result))
    else:
        print(result["text"])
    return 0


def cmd_export(args) -> int:
    from .onnx_export import ExportOptions, ExportStageError, export_artifact
    from .parity import format_report

    options = ExportOptions(args.model, args.method, args.ratio, args.out, args.dtype, args.force, args.layers,
                            args.keep_ratios, args.max_batch, args.max_sequence, args.parity_samples, args.quiet)
    try:
        path, report = export_artifact(options)
    except ExportStageError as exc:
        if args.debug:  # the one-line error stays; the internal traceback behind it is shown on request
            import traceback

            traceback.print_exception(exc.__cause__, file=sys.stderr)
        raise
    print(f"exported {path}")
    if report is not None:
        print(format_report(report))
        return 0 if report["passed"] else 1
    return 0


def cmd_parity(args) -> int:
    from .parity import format_report, run_parity, write_report

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    from .devices import torch_device

    report = run_parity(args.artifact, backends, args.samples, args.steps, save_run_results=args.save_run_results,
                        plugins=not args.no_plugins, device=torch_device(args.device))
    if args.report:
        write_report(report, args.report)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["passed"] else 1


def cmd_check(args) -> int:
    from engines.trt_check import BARE_FILE_NOTE, check_artifact, check_onnx_file

    from engines.errors import CheckFailure

    bare_file = os.path.isfile(args.artifact)  # any .onnx graph, linted as polygraphy would
    if bare_file:
        print(BARE_FILE_NOTE)
        problems = check_onnx_file(args.artifact, plugins=args.plugins)
    else:
        problems = check_artifact(args.artifact, plugins=args.plugins)
    for problem in problems:
        print(problem)
    form = "plugin form" if args.plugins else "exported form"
    if problems:
        raise CheckFailure(f"{len(problems)} problem(s) TensorRT would reject in {args.artifact} ({form})")
    what = args.artifact if bare_file else f"every graph of {args.artifact}"
    print(f"ok: {what} ({form}) passes the TensorRT checks")
    return 0


def cmd_build(args) -> int:
    from engines.trt_build import build_engines

    meta = build_engines(args.artifact, plugins=args.plugins, min_shapes=args.min, opt_shapes=args.opt,
                         max_shapes=args.max, plugin_library=args.plugin_library)
    print(json.dumps(meta, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="reroute", description="Export, compile, validate and deploy routed VLMs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("inspect", help="schedule, FLOPs and KV bytes of a routed model")
    p.add_argument("--model", required=True,
                   help="llava, qwen2.5-vl, a preset (llava-tiny, llava-bench, qwen2.5-vl-tiny, qwen2.5-vl-bench), "
                        "HF id or directory")
    _schedule_args(p)
    p.add_argument("--text-tokens", type=int, default=0,
                   help="count this many text tokens too (default 0: the visual-token convention)")
    p.add_argument("--kv-dtype", choices=["float32", "float16", "bfloat16"], help="KV dtype (default: model's)")
    p.add_argument("--visual-tokens", type=int, metavar="N",
                   help="visual tokens of the image (dynamic-resolution models; default: the most one image gives)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--routing-map", metavar="OUT.png",
                   help="draw active/deferred/re-entered patches per decision layer")
    p.add_argument("--image", help="image for --routing-map (qwen2.5-vl alone: its N_v sets the schedule)")
    p.add_argument("--prompt", help="prompt for --routing-map (one <image>)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("generate", help="greedy generation for one image and prompt")
    p.add_argument("--model", help="model spec (torch backend)")
    p.add_argument("--artifact", help="exported folder (onnxruntime / tensorrt backends)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "tensorrt"])
    p.add_argument("--image", required=True)
    p.add_argument("--prompt", required=True, help="used verbatim; must contain one <image> (or use --chat)")
    p.add_argument("--chat", action="store_true", help="wrap a plain question in the model's chat template")
    _schedule_args(p)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--ignore-eos", action="store_true", help="always generate --max-new-tokens tokens")
    p.add_argument("--json", action="store_true")
    p.add_argument("--dump-logits", metavar="FILE.npy", help="save the prefill's last-position logits")
    _device_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("export", help="export ONNX graphs (vision, embed, prefill, decode) + manifest")
    p.add_argument("--model", required=True)
    _schedule_args(p)
    p.add_argument("--out", help="output folder (default artifacts/<model>-<method>-r<ratio>)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16"],
                   help="auto (default): fp16 for llava and fp16 checkpoints, fp32 for presets")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    p.add_argument("--max-batch", type=int, default=4, help="largest batch the artifact accepts")
    p.add_argument("--max-sequence", type=int, help="prompt + generated tokens capacity (default min(2048, model))")
    p.add_argument("--parity-samples", type=int, default=2, help="samples for the closing parity report (0: skip)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("check", help="static lint of what TensorRT would reject")
    p.add_argument("artifact", help="an artifact folder, or any .onnx file (linted alone)")
    p.add_argument("--target", default="tensorrt", choices=["tensorrt"])
    p.add_argument("--plugins", action="store_true", help="lint the plugin form (pool ops as TensorRT plugins)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("build", help="TensorRT engines (vision, embed, prefill, decode); runs check first")
    p.add_argument("artifact")
    p.add_argument("--plugins", dest="plugins", action="store_true", default=True,
                   help="pool ops as TensorRT plugins (default)")
    p.add_argument("--no-plugins", dest="plugins", action="store_false", help="pool ops inlined as standard ops")
    p.add_argument("--min", help="profile minimum shapes, e.g. inputs_embeds:1x577x4096")
    p.add_argument("--opt", help="profile optimum shapes")
    p.add_argument("--max", help="profile maximum shapes")
    p.add_argument("--plugin-library", help="libreroute_plugins.so (default: engines/plugins/build/)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("parity", help="compare backends against the PyTorch reference")
    p.add_argument("artifact")
    p.add_argument("--backends", default="torch,onnxruntime")
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--steps", type=int, default=32, help="greedy decode steps compared")
    p.add_argument("--json", action="store_true")
    p.add_argument("--report", help="also write the JSON report to this file")
    p.add_argument("--save-run-results", metavar="DIR", help="save Polygraphy RunResults JSON per graph")
    p.add_argument("--no-plugins", action="store_true", help="TensorRT: use the no-plugin engines")
    _device_args(p, dtype=False)  # the reference keeps the artifact's dtype
    p.set_defaults(func=cmd_parity)
    from .serving_cli import register as _register_serving; _register_serving(sub, _Parser)
    from .bench_cli import register as _register_bench; _register_bench(sub, _Parser)
    from .eval_cli import register as _register_eval; _register_eval(sub, _Parser)
    from .verify_cli import register as _register_verify; _register_verify(sub, _Parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RerouteError as exc:
        sys.stderr.write(f"reroute: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("reroute: interrupted\n")
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly, no traceback
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
