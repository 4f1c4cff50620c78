"""``reroute parity``: every backend against the PyTorch reference, routing decisions included.

Step 1 runs the graphs through Polygraphy's ``Comparator`` (our CPU torch
runner beside ``OnnxrtRunner`` and, on GPU servers, Polygraphy's ``TrtRunner``)
on feeds made from synthetic images and prompts; the RunResults can be saved as
JSON (``--save-run-results``). Step 2 compares them per output with the
family's per-dtype tolerance, ``|a - b| <= atol + rtol * |b|`` (routing indices
exactly), then checks greedy-token agreement over a number of decode steps.
(Polygraphy's own ``compare_accuracy`` computes quantiles and formats arrays
per output: 20 s for 10 samples of a 32-layer graph, so step 2 is ours.)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from engines.artifact import GRAPHS, Artifact, open_artifact
from engines.backends import open_backend
from engines.errors import ParityFailure, RerouteError
from engines.generate import finish_generation, start_inputs
from engines.inputs import IMAGE_PLACEHOLDER, encode, stack_inputs

from .preflight import parity_preflight
from .registry import FAMILIES
from .samples import sample


def tolerances(artifact: Artifact) -> dict:
    family = FAMILIES[artifact.manifest["model"]["family"]]
    return family.tolerances[artifact.dtype]


def _reference_model(artifact: Artifact, loaded):
    from .models import load_model

    if loaded is not None:
        return loaded
    spec = artifact.manifest["model"]
    source = spec["spec"] if spec["source"].startswith("preset:") else spec["source"]
    import torch

    return load_model(source, dtype=getattr(torch, artifact.dtype))


def make_backend(name: str, artifact: Artifact, loaded=None, plugins: bool = True, device="cpu"):
    """``device`` places the torch reference (cpu or cuda); the other backends ignore it."""
    model = _reference_model(artifact, loaded) if name == "torch" else None
    # low memory: prefill and decode never hold their (shared) weights at the same time
    return open_backend(name, artifact, model, plugins, device=device, low_memory=True)


def _encode_samples(artifact: Artifact, processor, count: int):
    """Synthetic samples; their images differ in size, so a dynamic-resolution family sees several N_v
    (encoded with the checkpoint config the artifact saved: no weights needed)."""
    model = artifact.manifest["model"]
    family = FAMILIES[model["family"]]
    if family.dynamic_visual_tokens:
        config = artifact.hf_config()
        return [family.encode(processor, config, [p.replace(IMAGE_PLACEHOLDER, family.placeholder)], [img])
                for p, img in (sample(i) for i in range(count))]
    return [encode(processor, [p], [img], model["image_token_id"], model["num_visual"])
            for p, img in (sample(i) for i in range(count))]


def _graph_feeds(reference, inputs_list, vision_config=None) -> dict[str, list[dict]]:
    """Feeds for each graph, made by the torch reference so every backend sees identical inputs.

    Dynamic-resolution samples (``image_grid_thw`` set) also feed the vision index tensors, the M-RoPE
    positions, ``visual_span`` (whose length is N_v) and 3-D decode positions."""
    from engines.generate import decode_positions
    from engines.qwen_vision_inputs import vision_index_inputs
    from engines.session_backend import prefill_feeds

    feeds = {g: [] for g in GRAPHS}
    for x in inputs_list:
        grid = x.image_grid_thw
        feats = reference.vision(x.pixel_values) if grid is None else reference.vision(x.pixel_values, grid)
        embeds = reference.embed(x.input_ids, feats)
        vision = {"pixel_values": x.pixel_values}
        if grid is None:
            pre = reference.prefill(embeds, x.visual_start)
            prefill = prefill_feeds(embeds, x.visual_start)  # one per sample, positions, mask (no padding)
        else:
            pre = reference.prefill(embeds, x.visual_start, x.position_ids, num_visual=x.num_visual)
            vision.update(image_grid_thw=grid, **vision_index_inputs(grid, vision_config))
            prefill = {"inputs_embeds": embeds, "visual_start": np.array([x.visual_start], dtype=np.int64),
                       "position_ids": x.position_ids,
                       "visual_span": np.arange(x.visual_start, x.visual_start + x.num_visual, dtype=np.int64)}
        token = np.argmax(pre.logits, -1)[:, None].astype(np.int64)
        step = reference.embed(token, feats[:, :0])
        feeds["vision"].append(vision)
        feeds["embed"].append({"input_ids": x.input_ids, "image_features": feats})
        feeds["prefill"].append(prefill)
        positions = decode_positions(x.input_ids.shape[1], 0, x.input_ids.shape[0], x.rope_delta)
        decode = {"inputs_embeds": step, "position_ids": positions}
        if grid is None:  # fixed-resolution decode takes each sample's cache padding
            decode["pad_lengths"] = np.zeros(x.input_ids.shape[0], dtype=np.int64)
        for i, (k, v) in enumerate(reference.cache_arrays(pre.cache)):
            decode[f"past_key_values.{i}.key"], decode[f"past_key_values.{i}.value"] = k, v
        feeds["decode"].append(decode)
    return feeds


def _stats(a: np.ndarray, b: np.ndarray) -> tuple[float, float, bool]:
    """(max abs error, max rel error, shapes equal) of output ``a`` against reference ``b``."""
    if a.shape != b.shape:
        return float("inf"), float("inf"), False
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    diff = np.abs(a64 - b64)
    rel = diff / np.maximum(np.abs(b64), 1e-6)
    return float(diff.max(initial=0.0)), float(rel.max(initial=0.0)), True


def _within(a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> bool:
    """Elementwise |a - b| <= atol + rtol * |b| (numpy.allclose's rule); routing indices use atol = rtol = 0."""
    return a.shape == b.shape and bool(np.allclose(a.astype(np.float64), b.astype(np.float64), rtol=rtol, atol=atol))


def _routing_equal(runs, ref_runs) -> list[bool]:
    """Per feed: did this backend pick exactly the reference's index sets at every decision layer?"""
    keys = [k for k in ref_runs[0].keys() if k.startswith("routing.")] if ref_runs else []
    return [all(np.array_equal(r[k], ref[k]) for k in keys) for r, ref in zip(runs, ref_runs)]


def _routing_dependent(name: str, first_decision: int | None) -> bool:
    """present.{i}.* of layers from the first decision layer on hold the tokens routing chose."""
    if first_decision is None or not name.startswith("present."):
        return False
    return int(name.split(".")[1]) >= first_decision


def compare_graph(run_results, tol: dict, names: list[str], first_decision: int | None = None) -> dict:
    """Step 2 on Polygraphy RunResults: per backend and output, max abs / rel error over the feeds and
    pass/fail against the dtype's tolerance. Routing index outputs are checked by overlap (see
    :func:`_routing_agreement`); KV outputs of routed layers are compared on the feeds where both
    backends chose the same tokens (elsewhere they hold different tokens by construction).
    ``names``: backends, the torch reference first."""
    (_, ref_runs), *others = list(run_results.items())
    result = {}
    for name, (_, runs) in zip(names[1:], others):
        same_routing = _routing_equal(runs, ref_runs)
        for out in ref_runs[0].keys():
            if out.startswith("routing."):
                continue
            pairs = [(r[out], ref[out]) for r, ref, same in zip(runs, ref_runs, same_routing)
                     if same or not _routing_dependent(out, first_decision)]
            stats = [_stats(a, b) for a, b in pairs]
            result.setdefault(name, {})[out] = {
                "max_abs": max((s[0] for s in stats), default=0.0),
                "max_rel": max((s[1] for s in stats), default=0.0),
                "compared": len(pairs),
                "passed": all(_within(a, b, tol["atol"], tol["rtol"]) for a, b in pairs),
            }
    return result


def run_parity(path, backends=("torch", "onnxruntime"), samples: int = 10, steps: int = 32, loaded=None,
               save_run_results: str | None = None, plugins: bool = True, device="cpu") -> dict:
    """Backends run one after another, never two holding weights at once: the torch reference first (its
    outputs and greedy tokens kept), freed, then each other backend, compared with the saved outputs.
    ``device`` places the torch reference (cpu or cuda)."""
    from polygraphy.logger import G_LOGGER

    backends = ["torch", *[b for b in dict.fromkeys(backends) if b != "torch"]]  # the reference runs first
    if len(backends) < 2:
        raise RerouteError("parity needs at least one backend besides torch")
    if samples < 1 or steps < 1:
        raise RerouteError("--samples and --steps must be >= 1")
    artifact = open_artifact(path)
    if loaded is None:  # export's closing parity checked this already, with the model in hand
        parity_preflight(artifact.root, _weight_bytes(artifact), artifact.dtype, backends)
    G_LOGGER.module_severity = G_LOGGER.ERROR
    tol = tolerances(artifact)
    inputs_list = _encode_samples(artifact, artifact.processor(), samples)
    feeds, all_results, expected, torch_device = _run_reference(artifact, loaded, inputs_list, steps, device)
    tokens = {}
    for name in backends[1:]:
        backend = make_backend(name, artifact, None, plugins)
        try:
            for graph in GRAPHS:
                all_results[graph].extend(_comparator_run([backend.comparator_runner(graph)], feeds[graph]))
            tokens[name] = _token_agreement(backend, expected, inputs_list, steps, artifact.capacity["max_batch"])
        finally:
            if hasattr(backend, "close"):
                backend.close()
    if save_run_results:
        _save_run_results(all_results, save_run_results)
    first = artifact.schedule.layers[0] if artifact.schedule.layers else None
    graphs_report = {g: compare_graph(r, tol, backends, first) for g, r in all_results.items()}
    routing = _routing_agreement(all_results["prefill"], artifact, backends)
    passed = (all(o["passed"] for g in graphs_report.values() for b in g.values() for o in b.values())
              and all(r["overlap"] >= tol["routing_overlap"] for b in routing.values() for r in b.values())
              and all(t["identical"] >= tol["token_match"] * t["of"] for t in tokens.values())
              and all(t["first_token_identical"] >= tol["first_token_match"] * t["of"] for t in tokens.values()))
    return {
        "artifact": str(Path(path).resolve()), "dtype": artifact.dtype, "method": artifact.manifest["method"],
        "ratio": artifact.manifest["ratio"], "backends": backends, "samples": samples, "steps": steps,
        "torch_device": torch_device,
        "tolerance": {**tol, "rule": "|a - b| <= atol + rtol * |b| per element; routing_overlap: min fraction of "
                      "selected indices shared with the reference per decision layer; token_match: min fraction "
                      "of samples with identical greedy sequences"},
        "graphs": graphs_report, "routing": routing, "tokens": tokens, "passed": passed,
    }


def _weight_bytes(artifact: Artifact) -> int:
    """Bytes of every external-data file of the artifact (the weights, stored once)."""
    return sum(p.stat().st_size for p in Path(artifact.root).glob("*.data"))


def _comparator_run(runners, feeds):  # Polygraphy, imported lazily
    from polygraphy.comparator import Comparator

    return Comparator.run(runners, data_loader=feeds)


def _run_reference(artifact: Artifact, loaded, inputs_list, steps: int, device="cpu"):
    """(feeds, {graph: RunResults with the torch runner}, greedy tokens); the reference is freed after."""
    import gc

    from engines.runners import TorchGraphRunner

    from engines.graph_modules import build_graph_modules

    loaded = _reference_model(artifact, loaded)
    reference = make_backend("torch", artifact, loaded, device=device)
    vision = artifact.manifest["model"].get("vision")  # dynamic resolution: the settings its preprocessing reads
    feeds = _graph_feeds(reference, inputs_list, None if vision is None else SimpleNamespace(**vision))
    modules = {g: m.to(reference.device) for g, m in build_graph_modules(loaded, artifact.schedule,
                                                                          reference.dtype).items()}
    results = {}
    for graph in GRAPHS:
        spec = artifact.manifest["graphs"][graph]["inputs"]
        results[graph] = _comparator_run([TorchGraphRunner(modules[graph], spec, name=f"torch-{graph}",
                                                          device=reference.device)],
                                        feeds[graph])
    expected = _greedy_all(reference, inputs_list, steps, artifact.capacity["max_batch"])
    torch_device = str(reference.device)
    del reference, modules, loaded
    gc.collect()  # the reference's weights go before the next backend loads its own
    return feeds, results, expected, torch_device


def _save_run_results(results: dict, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    for graph, run_results in results.items():
        run_results.save(os.path.join(directory, f"{graph}.json"))


def _routing_agreement(run_results, artifact: Artifact, names: list[str]) -> dict:
    """Per backend and decision layer: samples with identical index sets, and the overall index overlap."""
    (_, ref_runs), *others = list(run_results.items())
    report = {}
    for name, (_, runs) in zip(names[1:], others):
        per_layer = {}
        for s, layer in enumerate(artifact.schedule.layers):
            key = f"routing.{s}.indices"
            pairs = [(r[key], ref[key]) for r, ref in zip(runs, ref_runs)]
            shared = sum(len(np.intersect1d(a[b_], b[b_])) for a, b in pairs for b_ in range(b.shape[0]))
            total = sum(b.size for _, b in pairs)
            per_layer[f"layer {layer}"] = {"agree": int(sum(np.array_equal(a, b) for a, b in pairs)),
                                           "of": len(pairs), "overlap": shared / total if total else 1.0}
        report[name] = per_layer
    return report


def _batches(inputs_list, max_batch: int):
    """Group samples of equal prompt length, image position and N_v into batches (each still routes alone)."""
    groups: dict[tuple, list[int]] = {}
    for i, x in enumerate(inputs_list):
        groups.setdefault((x.input_ids.shape[1], x.visual_start, x.num_visual), []).append(i)
    for members in groups.values():
        for start in range(0, len(members), max_batch):
            chunk = members[start : start + max_batch]
            yield chunk, stack_inputs([inputs_list[i] for i in chunk])


def _greedy_all(backend, inputs_list, steps: int, max_batch: int) -> list[list[int]]:
    """Every batch prefilled before any decodes: a low-memory backend opens prefill and decode once each."""
    out: list[list[int]] = [[] for _ in inputs_list]
    started = [(chunk, start_inputs(backend, batch)) for chunk, batch in _batches(inputs_list, max_batch)]
    for chunk, batch in started:
        for i, tokens in zip(chunk, finish_generation(backend, batch, steps).generated):
            out[i] = tokens
    return out


def _token_agreement(backend, expected: list[list[int]], inputs_list, steps: int, max_batch: int) -> dict:
    got_all = _greedy_all(backend, inputs_list, steps, max_batch)
    same = sum(g == w for g, w in zip(got_all, expected))
    first = sum(g[:1] == w[:1] for g, w in zip(got_all, expected))
    first_mismatch = [next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), None)
                      for g, w in zip(got_all, expected)]
    prefix = [steps if m is None else m for m in first_mismatch]
    return {"identical": int(same), "of": len(inputs_list), "first_token_identical": int(first),
            "mean_agreeing_prefix": sum(prefix) / len(prefix), "first_mismatch_step": first_mismatch}


def write_report(report: dict, path) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, path)


def format_report(report: dict) -> str:
    tol = report["tolerance"]
    lines = [f"parity {report['artifact']}  ({report['method']}, ratio {report['ratio']:.4g}, {report['dtype']}; "
             f"{report['samples']} samples, {report['steps']} steps)",
             f"  tolerance: atol {tol['atol']:g} rtol {tol['rtol']:g}, routing overlap >= {tol['routing_overlap']:.0%}, "
             f"identical sequences >= {tol['token_match']:.0%}, first token >= {tol['first_token_match']:.0%}"]
    for graph, per_backend in report["graphs"].items():
        for backend, outputs in per_backend.items():
            worst = max(outputs.values(), key=lambda o: o["max_abs"])
            logits = outputs.get("logits", worst)
            bad = [n for n, o in outputs.items() if not o["passed"]]
            lines.append(f"  {graph:8s} {backend:12s} max abs {worst['max_abs']:.2e}"
                         + (f"  logits {logits['max_abs']:.2e}" if "logits" in outputs else "")
                         + (f"  FAILED: {', '.join(bad[:4])}" if bad else "  ok"))
    for backend, layers in report["routing"].items():
        cells = "  ".join(f"{k}: {v['agree']}/{v['of']} ({v['overlap']:.1%})" for k, v in layers.items())
        lines.append(f"  routing  {backend:12s} {cells or 'unrouted'}")
    for backend, t in report["tokens"].items():
        lines.append(f"  tokens   {backend:12s} {t['identical']}/{t['of']} identical over {report['steps']} steps, "
                     f"first token {t['first_token_identical']}/{t['of']}, "
                     f"mean agreeing prefix {t['mean_agreeing_prefix']:.1f}")
    lines.append("PASS: all backends match the PyTorch reference" if report["passed"] else "FAIL: parity check failed")
    return "\n".join(lines)


def parity_or_raise(report: dict) -> None:
    if not report["passed"]:
        raise ParityFailure("parity check failed (see the report above)")
