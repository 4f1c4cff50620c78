"""Write docs/FIDELITY.md from its own run: accuracy of the routing methods on the grounding test split (issue 14).

Runs ``none``, ``fastv``, ``pdrop``, ``reroute-fastv`` and ``reroute`` at each ratio through the PyTorch
reference and through fp32 ONNX Runtime artifacts exported here (each configuration once), with the
functions behind ``reroute eval``. The page holds accuracy with 95% Wilson intervals beside the FLOPs ratio
and KV bytes, the paired differences (reroute - pdrop, reroute-fastv - fastv) with Newcombe intervals, whether
ONNX Runtime's answers equal the reference's item by item, routing maps chosen by a stated rule, and the
seconds each configuration took. Nothing on the page is typed by hand: rerunning the script rewrites it,
docs/fidelity_results.json, and docs/BENCHMARKS.md's accuracy section.

    python scripts/make_grounding_data.py --out data/grounding --train 0 --val 0
    python scripts/fidelity_report.py --data data/grounding/test
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.eval_cli import DEFAULT_METHODS  # noqa: E402

ANSWER_SLACK = 4  # new tokens allowed beyond the longest reference answer (+ EOS)


def weights_identity(model: str) -> dict:
    """Which weights ran: the trained file's sha256 for presets that ship one, else how they were made."""
    from engines.artifact import sha256_file
    from exporter.presets import PRESETS

    spec = PRESETS.get(model)
    if spec is None:
        files = sorted(Path(model).glob("*.safetensors")) if Path(model).is_dir() else []
        return {"model": model, "files": {str(f): sha256_file(f) for f in files}}
    if "weights" not in spec:
        return {"model": model, "files": {}, "note": f"seeded random weights (preset seed {spec['seed']})"}
    return {"model": model, "files": {spec["weights"]: sha256_file(ROOT / spec["weights"])}}


def answer_budget(loaded, data) -> int:
    """max_new_tokens: the longest reference answer in tokens, + EOS, + ANSWER_SLACK. An answer still going
    after that is longer than every reference; it is cut there and scored as it stands."""
    tokenizer = loaded.processor.tokenizer

    def reference(item) -> str:
        return item.answer or "[" + ", ".join(f"{v:.2f}" for v in item.bbox) + "]"

    longest = max(len(tokenizer(reference(it), add_special_tokens=False)["input_ids"]) for it in data.items)
    return longest + 1 + ANSWER_SLACK


def export_configs(model: str, loaded, pairs, batch_size: int, root: Path) -> tuple[list[str], dict]:
    """One fp32 artifact per (method, ratio) under ``root`` (one folder per weights and max batch),
    reused when it is already there."""
    from exporter.onnx_export import export_artifact

    paths, seconds = [], {}
    for method, ratio in pairs:
        target = root / f"{method}-r{ratio:.4f}"
        if not (target / "manifest.json").is_file():
            t0 = time.perf_counter()
            export_artifact(model, method, ratio, out=str(target), dtype="fp32", parity_samples=0, quiet=True,
                            max_batch=batch_size, loaded=loaded)
            seconds[f"{method} r={ratio:.4f}"] = round(time.perf_counter() - t0, 1)
        paths.append(str(target))
    return paths, seconds


# Seconds per 32 items on this machine under load, a + b x FLOPs ratio, from this script's own per-config
# timings (llava-grounding, unrouted and ratio 1/9): used only to split configs between the two processes.
COST_MODEL = {"torch": (3.0, 60.0), "onnxruntime": (4.5, 24.0)}


def build_configs(args, loaded) -> tuple[list, dict]:
    """Every config, methods x ratios on each backend; the ONNX ones' artifacts exported first (or reused)."""
    from exporter.evaluation.runner import artifact_configs, model_configs

    methods, ratios = args.method_list, args.ratio_values
    configs, export_s = [], {}
    if "torch" in args.backend_list:
        configs += model_configs(args.model, args.torch_methods or methods, args.torch_ratio_values or ratios)
    if "onnxruntime" in args.backend_list:
        pairs = [(m, r) for m in methods for r in ([1.0] if m == "none" else ratios)]
        weights_key = hashlib.sha256(f"{json.dumps(args.weights, sort_keys=True)} {args.batch_size}".encode())
        paths, export_s = export_configs(args.model, loaded, pairs, args.batch_size,
                                         Path(args.artifacts) / weights_key.hexdigest()[:16])
        configs += artifact_configs(paths, ["onnxruntime"], threads=args.threads)
    return configs, export_s


def split_configs(configs, jobs: int) -> list[set[str]]:
    """Config labels per process, longest first onto the least loaded process (by :data:`COST_MODEL`)."""
    def cost(config) -> float:
        a, b = COST_MODEL.get(config.backend_name, (1.0, 1.0))
        return a + b * config.costs()["flops_ratio"]

    loads, parts = [0.0] * jobs, [set() for _ in range(jobs)]
    for config in sorted(configs, key=cost, reverse=True):
        i = loads.index(min(loads))
        parts[i].add(config.label)
        loads[i] += cost(config)
    return parts


def run_configs(args, loaded, data, max_new_tokens: int, key: str) -> tuple[list, dict]:
    """All configs. With ``--jobs 2`` a second process of this script runs part of them (split by expected
    time): two single-threaded processes, no thread waiting on another. Results meet in the store."""
    from engines.errors import RerouteError
    from exporter.evaluation.fidelity import ResultStore
    from exporter.evaluation.runner import run_eval

    store = ResultStore(Path(args.artifacts) / "results", key)
    configs, export_s = build_configs(args, loaded)
    if args.results_only:  # the worker: the labels the parent left it
        mine = set(store.load_extra("worker"))
        run_eval([c for c in configs if c.label in mine], data, args.batch_size, max_new_tokens,
                 on_result=store.save)
        return [], {}
    finished = store.finished([c.label for c in configs]) if args.resume else {}
    todo = [c for c in configs if c.label not in finished]
    worker = None
    if args.jobs > 1 and len(todo) > 1:
        own, theirs = split_configs(todo, 2)
        store.save_extra("worker", sorted(theirs))
        worker = subprocess.Popen([sys.executable, __file__, *args.argv, "--results-only"])
        mine = [c for c in configs if c.label in own or c.label in finished]
    else:
        mine = configs
    try:
        results = run_eval(mine, data, args.batch_size, max_new_tokens, finished=finished, on_result=store.save)
    finally:
        code = worker.wait() if worker else 0
    if code != 0:
        raise RerouteError(f"the worker process failed (exit status {code}; its error is above)")
    if worker:
        done = {r.label: r for r in results} | store.finished([c.label for c in configs if c.label in theirs])
        results = [done[c.label] for c in configs]
    return results, {"export_s": export_s, "reused_from_earlier_run": sorted(finished)}


def draw_maps(args, loaded, data, results, out_dir: Path) -> list[dict]:
    """Routing maps of the items :func:`map_choices` picks (the rule is stated on the page)."""
    from engines.inputs import chat_prompt
    from exporter.evaluation.fidelity import map_choices
    from exporter.routing_map import routing_map

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("map-*.png"):  # maps of an earlier run's choices
        old.unlink()
    items = {it.index: it for it in data.items}
    maps = map_choices(results, min(args.ratio_values), args.maps)
    for m in maps:
        item = items[m["line"]]
        m["question"], m["reference"] = item.question, item.answer or list(item.bbox)
        prompt = chat_prompt(loaded.processor, item.question)
        m["files"], m["summaries"] = {}, {}
        for method in (m["deletion"], m["routed"]):
            name = f"map-{m['line']}-{method}-r{m['ratio']:.4f}.png"
            m["summaries"][method] = routing_map(args.model, str(item.image), prompt, method, m["ratio"],
                                                 out_dir / name, loaded=loaded)
            m["summaries"][method].pop("file")
            m["files"][method] = name
    return maps


def run_info(args, started: float, load_before) -> dict:
    return {"methods": args.method_list, "backends": args.backend_list, "maps": args.maps,
            "torch_methods": args.torch_methods, "torch_ratios": args.torch_ratios,
            "ratio_labels": [str(Fraction(r).limit_denominator(100)) for r in args.ratio_values],
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "wall_s": round(time.perf_counter() - started, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()]}


def run_key(args, weights: dict, data_sha: str, max_new_tokens: int) -> str:
    """Everything a config's answers depend on, hashed: a resumed run or reused artifact never mixes inputs."""
    parts = [json.dumps(weights, sort_keys=True), data_sha, str(args.limit), str(max_new_tokens), str(args.batch_size)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def parse_args(argv):
    from exporter.arg_types import ratio_list

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llava-grounding")
    p.add_argument("--data", required=True, help="the test split folder (make_grounding_data.py)")
    p.add_argument("--out", default=str(ROOT / "docs" / "FIDELITY.md"),
                   help="the page; fidelity_results.json, the plot and fidelity/ maps go beside it")
    p.add_argument("--artifacts", default=str(ROOT / "artifacts" / "fidelity"),
                   help="fp32 artifacts (one folder per run inputs) and per-config results for --resume")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--ratios", default="1/3,2/9,1/9")
    p.add_argument("--backends", default="torch,onnxruntime")
    p.add_argument("--torch-methods", help="torch runs only these methods (default: --methods); the page says so")
    p.add_argument("--torch-ratios", help="torch runs only these ratios (default: --ratios); the page says so")
    p.add_argument("--limit", type=int, help="only the first N items (the issue asks for >= 500 per kind)")
    p.add_argument("--batch-size", type=int, default=16, help="items per batch (equal prompt lengths)")
    p.add_argument("--maps", type=int, default=2, help="items per routing-map group")
    p.add_argument("--max-new-tokens", type=int,
                   help=f"greedy tokens per answer (default: the longest reference answer + EOS + {ANSWER_SLACK})")
    p.add_argument("--threads", type=int, default=1,
                   help="torch and ONNX Runtime intra-op threads (default 1: on shared cores, tiny ops on two "
                        "threads wait for each other; measured 2-4x slower under load)")
    p.add_argument("--bench-json", default=str(ROOT / "docs" / "bench_results.json"),
                   help="re-render BENCHMARKS.md beside it with the accuracy section ('' to leave it alone)")
    p.add_argument("--resume", action="store_true",
                   help="reuse the configs an interrupted run with identical inputs finished (the page says which)")
    p.add_argument("--jobs", type=int, default=2, help="2: a second single-threaded process runs part of the configs")
    p.add_argument("--results-only", action="store_true", help=argparse.SUPPRESS)  # the --jobs 2 worker
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    args.method_list, args.backend_list = args.methods.split(","), args.backends.split(",")
    args.ratio_values = ratio_list(args.ratios)
    args.torch_methods = args.torch_methods.split(",") if args.torch_methods else None
    args.torch_ratio_values = ratio_list(args.torch_ratios) if args.torch_ratios else None
    return args


def main(argv=None) -> int:
    from engines.artifact import sha256_file
    from exporter.evaluation.data import DATA_FILE, load_dataset
    from exporter.evaluation.fidelity import agreement, compact_items
    from exporter.evaluation.fidelity_page import render, summary_json
    from exporter.evaluation.markdown import atomic_write, plot_accuracy
    from exporter.evaluation.report import build_report
    from exporter.models import load_model

    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    started, load_before = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    data = load_dataset(args.data, args.limit)
    loaded = load_model(args.model)
    weights = args.weights = weights_identity(args.model)
    max_new_tokens = args.max_new_tokens or answer_budget(loaded, data)
    data_sha = sha256_file(Path(args.data) / DATA_FILE if Path(args.data).is_dir() else Path(args.data))
    key = run_key(args, weights, data_sha, max_new_tokens)
    results, timings = run_configs(args, loaded, data, max_new_tokens, key)
    if args.results_only:
        return 0

    out = Path(args.out)
    command = "python scripts/fidelity_report.py " + " ".join(args.argv)
    settings = {"model": args.model, "weights": weights, "data_sha256": data_sha, "limit": args.limit,
                "batch_size": args.batch_size, "max_new_tokens": max_new_tokens,
                "answer_slack": None if args.max_new_tokens else ANSWER_SLACK,
                "threads": args.threads, "num_layers": loaded.decoder_config.num_layers,
                "num_visual": loaded.num_visual,
                "command": command.strip(), **timings}
    report = build_report(data, results, settings)
    maps = draw_maps(args, loaded, data, results, out.parent / "fidelity")
    plot = out.with_suffix(".png")
    plot_accuracy(report, plot)
    rows = agreement(results)
    run = run_info(args, started, load_before)
    atomic_write(out, lambda tmp: Path(tmp).write_text(render(report, run, rows, maps, plot.name)))
    results_json = out.parent / "fidelity_results.json"
    text = json.dumps(summary_json(report, run, rows, maps, compact_items(results)), indent=1) + "\n"
    atomic_write(results_json, lambda tmp: Path(tmp).write_text(text))
    written = [out, results_json, plot]
    if args.bench_json and Path(args.bench_json).is_file():
        written.append(rerender_benchmarks(Path(args.bench_json), results_json))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def rerender_benchmarks(bench_json: Path, fidelity_json: Path) -> Path:
    """BENCHMARKS.md beside ``bench_json``, re-rendered so its accuracy section shows this run."""
    from exporter.bench.markdown import render as render_bench
    from exporter.bench.tables import atomic_write_text

    docs = bench_json.parent
    report = json.loads(bench_json.read_text())
    target = (report["settings"].get("profile_ratios") or [0.25])[0]  # bench_report.py's --target-ratio
    text = render_bench(report, docs, target, accuracy=json.loads(fidelity_json.read_text()))
    atomic_write_text(docs / "BENCHMARKS.md", text)
    return docs / "BENCHMARKS.md"


if __name__ == "__main__":
    sys.exit(main())
