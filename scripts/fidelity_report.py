"""Write docs/FIDELITY.md from its own run: accuracy of the routing methods on the grounding test split (issue 14).

Runs ``none``, ``fastv``, ``pdrop``, ``reroute-fastv`` and ``reroute`` at each ratio through the PyTorch
reference and, for each routed configuration, through an fp32 ONNX Runtime artifact exported here, with the
functions behind ``reroute eval``. The page holds accuracy with 95% Wilson intervals, the paired differences
(reroute - pdrop, reroute-fastv - fastv) with Newcombe intervals, whether the ONNX Runtime answers equal the
reference's item by item, and routing maps of items where rerouting recovered what deletion lost (and where
it did not). Nothing on the page is typed by hand: rerunning the script rewrites it from the new run.

    python scripts/make_grounding_data.py --out data/grounding --train 0 --val 0
    python scripts/fidelity_report.py --data data/grounding/test --out docs/FIDELITY.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.eval_cli import DEFAULT_METHODS, DEFAULT_RATIOS  # noqa: E402

PAIRS = (("reroute", "pdrop"), ("reroute-fastv", "fastv"))


def torch_results(model: str, data, methods, ratios, batch_size: int):
    from exporter.evaluation.runner import model_configs, run_eval

    return run_eval(model_configs(model, methods, ratios), data, batch_size)


def onnx_results(model: str, data, methods, ratios, batch_size: int, artifacts: Path):
    """Export each routed configuration once (fp32) and run it through ONNX Runtime."""
    from exporter.evaluation.runner import artifact_configs, run_eval
    from exporter.models import load_model
    from exporter.onnx_export import export_artifact

    loaded = load_model(model)
    paths = []
    for method in methods:
        for ratio in ([1.0] if method == "none" else ratios):
            target = artifacts / f"{method}-r{ratio:.4f}"
            if not target.exists():
                export_artifact(model, method, ratio, out=str(target), parity_samples=0, quiet=True,
                                max_batch=batch_size, loaded=loaded)
            paths.append(str(target))
    return run_eval(artifact_configs(paths, ["onnxruntime"]), data, batch_size)


def agreement_lines(torch_runs, onnx_runs) -> list[str]:
    """Per configuration: items whose ONNX Runtime answer equals the reference's answer."""
    reference = {(r.method, round(r.ratio, 4)): r for r in torch_runs}
    lines = []
    for run in onnx_runs:
        ref = reference.get((run.method, round(run.ratio, 4)))
        if ref is None:
            continue
        same = sum(a.answer == b.answer for a, b in zip(ref.items, run.items))
        lines.append(f"- {run.method} r={run.ratio:.4f}: {same}/{len(run.items)} answers identical "
                     f"({100 * same / max(1, len(run.items)):.1f}%)")
    return lines


def map_items(torch_runs, ratio: float, better: str, worse: str, count: int):
    """(recovered, not recovered): items ``better`` got right and ``worse`` wrong, and items both got wrong."""
    runs = {(r.method, round(r.ratio, 4)): r for r in torch_runs}
    a, b = runs.get((better, round(ratio, 4))), runs.get((worse, round(ratio, 4)))
    if a is None or b is None:
        return [], []
    recovered = [x.index for x, y in zip(a.items, b.items) if x.correct and not y.correct]
    lost = [x.index for x, y in zip(a.items, b.items) if not x.correct and not y.correct]
    return recovered[:count], lost[:count]


def routing_maps(model: str, data, torch_runs, ratio: float, out_dir: Path, count: int) -> list[str]:
    from engines.inputs import chat_prompt
    from exporter.models import load_model
    from exporter.routing_map import routing_map

    loaded = load_model(model)
    items = {it.index: it for it in data.items}
    lines = []
    for better, worse in PAIRS:
        recovered, lost = map_items(torch_runs, ratio, better, worse, count)
        for label, indices in (("recovered", recovered), ("not recovered", lost)):
            for index in indices:
                item = items[index]
                prompt = chat_prompt(loaded.processor, item.question)
                for method in (worse, better):
                    name = f"map-{index}-{method}.png"
                    routing_map(model, str(item.image), prompt, method, ratio, out_dir / name, loaded=loaded)
                    lines.append(f"- line {index} ({label}, {item.kind}: {item.question!r}) {method}: "
                                 f"![{method}]({out_dir.name}/{name})")
    return lines or ["- no item fits (no configuration pair got an item right that the other got wrong)"]


def page(report: dict, plot_name: str, agreement: list[str], maps: list[str], command: str) -> str:
    from exporter.evaluation.markdown import markdown

    body = markdown(report, plot_name).replace("# reroute eval", "# Fidelity: accuracy of routed models", 1)
    return "\n".join([
        body.rstrip(), "",
        f"Written by `{command}`; rerunning it rewrites this page.", "",
        "## ONNX Runtime (fp32) against the PyTorch reference", "", *agreement, "",
        "## Routing maps", "", *maps, "",
    ])


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llava-grounding")
    p.add_argument("--data", required=True, help="the test split folder (make_grounding_data.py)")
    p.add_argument("--out", default="docs/FIDELITY.md")
    p.add_argument("--artifacts", default="artifacts/fidelity", help="where the fp32 artifacts are exported")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--ratios", default="1/3,2/9,1/9")
    p.add_argument("--backends", default="torch,onnxruntime")
    p.add_argument("--limit", type=int, help="only the first N items (the issue asks for >= 500 per kind)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--maps", type=int, default=2, help="items per routing-map group")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from exporter.arg_types import ratio_list
    from exporter.evaluation.data import load_dataset
    from exporter.evaluation.markdown import atomic_write, plot_accuracy
    from exporter.evaluation.report import build_report

    args = parse_args(argv)
    methods, ratios = args.methods.split(","), ratio_list(args.ratios) or DEFAULT_RATIOS
    backends = args.backends.split(",")
    data = load_dataset(args.data, args.limit)
    torch_runs = torch_results(args.model, data, methods, ratios, args.batch_size) if "torch" in backends else []
    onnx_runs = (onnx_results(args.model, data, methods, ratios, args.batch_size, Path(args.artifacts))
                 if "onnxruntime" in backends else [])
    out = Path(args.out)
    maps_dir = out.parent / "fidelity"
    maps_dir.mkdir(parents=True, exist_ok=True)
    maps = routing_maps(args.model, data, torch_runs, min(ratios), maps_dir, args.maps)
    report = build_report(data, torch_runs + onnx_runs, {"model": args.model, "limit": args.limit})
    plot = out.with_suffix(".png")
    plot_accuracy(report, plot)
    command = "python scripts/fidelity_report.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = page(report, plot.name, agreement_lines(torch_runs, onnx_runs), maps, command)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
