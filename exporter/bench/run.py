"""``reroute bench``: latency, memory, KV bytes and theoretical FLOPs of every method, measured interleaved.

For each ratio, the unrouted model (method ``none``) and every routed method run
round-robin: for each run index and backend, every config once, each routing
method right after the deletion it augments, the order rotated by one config
per round (so no method always follows the long unrouted call). Absolute
times drift (other work on the machine, thermal state), so every timing is
also given as a ratio to the unrouted model of the SAME run index, and the
median / min / max of those paired ratios is reported.

What is measured, per (method, ratio, backend):
- prefill: one call of the prefill graph (inputs_embeds -> logits + per-layer
  KV), the vision tower and embedding excluded (they are the same for every
  method and computed once);
- decode: ``decode_steps`` greedy steps from that prefill's cache, one decode
  graph call each; reported per token;
- peak memory: growth of the process's peak RSS (``VmHWM``, reset through
  ``/proc/self/clear_refs`` after ``malloc_trim``) during the FIRST prefill
  call of the config, which for ONNX Runtime includes its arena growing to
  the working size plus the returned KV cache;
- KV bytes: the sum of ``nbytes`` of the real ``present`` tensors the prefill
  returned, checked against ``kv_bytes(cfg, tokens_per_layer(schedule, text), bytes)``;
- TFLOPs (SPEC section 6) in both conventions: visual tokens only, and all
  tokens (text included), with the routing's scoring overhead separately.

ONNX Runtime sessions use its defaults (``intra_op_num_threads = 0``: one
thread per physical core) with ``ORT_ENABLE_ALL``. ONNX Runtime's decode graph
does not depend on the schedule (only the cache lengths do), so one decode
session from the unrouted artifact serves every method's cache: the bench
checks that every exported decode graph has the same nodes first.
"""

from __future__ import annotations

import gc
import math
import shutil
import tempfile
import time
from pathlib import Path

from engines.artifact import open_artifact
from engines.errors import RerouteError

from ..progress import Progress
from .artifacts import _ensure_artifact, _graph_signature
from .common import BACKENDS, BASELINE, SCHEMA_VERSION, bench_prompt, ratio_label
from .fidelity import run_fidelity
from .options import BenchOptions
from .machine import MEMORY_METHOD, _load_average, _Memory, machine_info, package_versions
from .measure import INTERLEAVING, _run_group
from .profiles import _profile_group
from .results import _ort_vs_torch, _result_row, theory

def _check_args(methods, ratios, backends, runs, warmup, decode_steps, text_tokens):
    from graphs.schedule import METHODS

    if not methods:
        raise RerouteError("--methods is empty")
    for m in methods:
        if m not in METHODS:
            raise RerouteError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    if not ratios:
        raise RerouteError("--ratios is empty")
    for r in ratios:
        if not (isinstance(r, (int, float)) and math.isfinite(r) and 0 < r <= 1):
            raise RerouteError(f"every ratio must be in (0, 1], got {r}")
    if not backends:
        raise RerouteError("--backends is empty")
    for b in backends:
        if b not in BACKENDS:
            raise RerouteError(f"unknown backend {b!r}; bench runs {', '.join(BACKENDS)}")
    if runs < 1:
        raise RerouteError(f"--runs must be >= 1, got {runs}")
    if warmup < 0:
        raise RerouteError(f"--warmup must be >= 0, got {warmup}")
    if decode_steps < 1:
        raise RerouteError(f"--decode-steps must be >= 1, got {decode_steps}")
    if text_tokens < 1:
        raise RerouteError(f"--text-tokens must be >= 1, got {text_tokens}")


def _dedupe(items):
    out = []
    for x in items:
        if x not in out:
            out.append(x)
    return out


def run_bench(options: BenchOptions, loaded=None) -> dict:
    """Run the benchmark; returns a JSON-able dict (see ``docs/BENCHMARKS.md`` for the fields).
    ``loaded``: an already loaded ``options.model`` (tests share one)."""
    import torch

    from engines.inputs import encode
    from engines.ort_runner import OrtBackend
    from graphs.schedule import solve_schedule

    from ..inspect_model import make_schedule
    from ..models import load_config, load_model
    from ..samples import synthetic_image
    from .dynamic import BoundPrompt, per_image

    o = options
    methods = _dedupe([m.strip() for m in o.methods])
    ratios = _dedupe([float(r) for r in o.ratios])
    backends = _dedupe([b.strip() for b in o.backends])
    _check_args(methods, ratios, backends, o.runs, o.warmup, o.decode_steps, o.text_tokens)
    if not 0.0 <= o.min_cpu_share <= 1.0:
        raise RerouteError(f"--min-cpu-share must be in [0, 1], got {o.min_cpu_share}")
    routed_methods = [m for m in methods if m != BASELINE]
    profile_ratios = [float(r) for r in o.profile_ratios or ()]

    if not routed_methods:
        raise RerouteError("--methods needs at least one routed method (none is always measured as the baseline)")
    config = loaded.config if loaded is not None else load_config(o.model)

    # schedules: infeasible combinations are skipped with a note, not fatal
    groups, skipped = [], []
    for ratio in ratios:
        scheds = []
        for m in routed_methods:
            try:
                scheds.append(make_schedule(config, m, ratio))
            except RerouteError as exc:
                skipped.append({"method": m, "ratio": ratio, "reason": str(exc)})
        if scheds:
            groups.append((ratio, scheds))
    if not groups:
        raise RerouteError("no feasible (method, ratio) combination: " + "; ".join(s["reason"] for s in skipped))

    total_steps = 1 + len(groups) * (o.warmup + o.runs) + (1 if o.fidelity else 0)
    if "onnxruntime" in backends:
        total_steps += len(groups) + 1 + sum(1 for r, _ in groups if r in profile_ratios)
    progress = Progress(total_steps, o.quiet)
    with progress(f"loading {o.model}"):
        loaded = loaded or load_model(o.model)
    cfg = loaded.decoder_config
    num_visual = loaded.num_visual
    baseline = solve_schedule(BASELINE, 1.0, cfg.num_layers, num_visual)

    # one prompt of exactly text_tokens text tokens + the image: the same inputs for every config
    dynamic = loaded.family.dynamic_visual_tokens
    prompt = bench_prompt(loaded.processor, o.text_tokens, loaded.family.placeholder)
    image = synthetic_image(0, size=(336, 336))
    if dynamic:  # the image's own N_v (336x336: 144 for patch 14); artifacts keep their capacity
        inputs = loaded.encode([prompt], [image])
        num_visual = inputs.num_visual
    else:
        inputs = encode(loaded.processor, [prompt], [image], loaded.image_token_id, num_visual)
    wrap = (lambda backend: BoundPrompt(backend, inputs)) if dynamic else (lambda backend: backend)
    image_n = num_visual if dynamic else None
    seq_len = int(inputs.input_ids.shape[1])
    text = seq_len - num_visual
    if text != o.text_tokens:
        raise RerouteError(f"the bench prompt has {text} text tokens, not {o.text_tokens}")  # pragma: no cover
    v0 = inputs.visual_start
    from engines.torch_runner import TorchBackend

    ref = TorchBackend(loaded, baseline)
    features = ref.vision(inputs.pixel_values, inputs.image_grid_thw) if dynamic else ref.vision(inputs.pixel_values)
    embeds = ref.embed(inputs.input_ids, features)  # [1, T, d] float32
    table = loaded.hf_model.get_input_embeddings().weight.detach().float().numpy()  # decode-step embeddings
    del ref

    own_root = o.artifacts is None
    root = Path(tempfile.mkdtemp(prefix="reroute-bench-")) if own_root else Path(o.artifacts)
    root.mkdir(parents=True, exist_ok=True)
    load_before = _load_average()
    started = time.time()
    results, profiles, notes = [], [], []
    mem = _Memory()
    try:
        decode_ort = None
        baseline_path = None
        if "onnxruntime" in backends:
            with progress("export/reuse the unrouted artifact and open the shared ONNX Runtime decode session"):
                baseline_path = _ensure_artifact(root, loaded, baseline)
                decode_ort = wrap(OrtBackend(open_artifact(baseline_path, verify=False), graphs=("decode",)))
        for ratio, scheds in groups:
            configs = [baseline, *scheds]
            paths = {}
            if "onnxruntime" in backends:
                with progress(f"ratio {ratio_label(ratio)}: export/reuse {len(scheds)} routed artifact(s)"):
                    paths[BASELINE] = baseline_path
                    base_sig = _graph_signature(baseline_path / "decode.onnx")
                    for s in scheds:
                        paths[s.method] = _ensure_artifact(root, loaded, s)
                        if _graph_signature(paths[s.method] / "decode.onnx") != base_sig:
                            raise RerouteError(f"the decode graph of {s.method} differs from the unrouted one; "
                                               "the shared decode session cannot stand in for it")
            here = [b for b in backends if b != "torch" or o.torch_ratios is None
                    or any(abs(ratio - r) < 1e-9 for r in o.torch_ratios)]
            group = _run_group(ratio, configs, here, loaded, paths, decode_ort, embeds, v0, seq_len, table,
                               o, progress, mem, wrap)
            for s in configs:
                th = theory(cfg, per_image(s, image_n), text)
                for b in here:
                    results.append(_result_row(per_image(s, image_n), ratio, b, group, th, cfg))
            if "onnxruntime" in backends and ratio in profile_ratios and not dynamic:
                with progress(f"ratio {ratio_label(ratio)}: profiles (ONNX Runtime prefill + decode step, "
                              "torch prefill)"):
                    profiles.extend(_profile_group(ratio, configs, paths, embeds, v0, seq_len, table, cfg,
                                                   group, root, loaded if "torch" in here else None))
            group.clear()
            gc.collect()
            if own_root or not o.keep_artifacts:  # routed artifacts of this group are no longer needed
                for s in scheds:
                    if s.method in paths:
                        shutil.rmtree(paths[s.method], ignore_errors=True)
        if decode_ort is not None:
            decode_ort.close()
        decode_ort = None
        fid = None
        if o.fidelity:
            with progress(f"fidelity: {o.fidelity_samples} samples x {o.fidelity_steps} greedy steps (torch)"):
                fid = run_fidelity(loaded, routed_methods, [r for r, _ in groups], o.fidelity_samples,
                                   o.fidelity_steps)
    finally:
        if own_root:
            shutil.rmtree(root, ignore_errors=True)

    if dynamic:
        notes.append(f"dynamic resolution: the 336x336 bench image gives {num_visual} visual tokens; every k_s, "
                     f"FLOPs and KV figure is for that N_v; the artifacts accept up to {loaded.num_visual} "
                     f"(k_s computed in the graph); --profile is not run for this family yet")
    if "onnxruntime" in backends:
        notes.append("ONNX Runtime: one InferenceSession per routed prefill graph, default options "
                     "(ORT_ENABLE_ALL, intra_op_num_threads=0 = one thread per physical core); one decode session "
                     "(from the unrouted artifact: every artifact's decode graph has identical nodes) serves all "
                     "methods' caches")
    notes.append("decode tokens are greedy; their embeddings are rows of the embedding table (no embed graph "
                 "call inside the timed region)")
    return {
        "schema": SCHEMA_VERSION,
        "model": loaded.spec,
        "source": loaded.source,
        "decoder": cfg.to_dict(),
        "num_visual": num_visual,
        "prompt": {"text": prompt, "tokens": seq_len, "text_tokens": text, "visual_start": v0},
        "settings": {
            "methods": [BASELINE, *routed_methods], "ratios": [r for r, _ in groups],
            "ratio_labels": [ratio_label(r) for r, _ in groups], "backends": backends, "runs": o.runs,
            "warmup": o.warmup, "decode_steps": o.decode_steps, "text_tokens": text,
            "interleaving": INTERLEAVING,
            "contention_guard": f"a round in which any call got < {o.min_cpu_share} of the usable cores (process CPU "
                                "time / (wall x cores), less the share of CPU time the hypervisor stole during the "
                                "round) is set aside and repeated (at most 2 x runs extra rounds)"
                                if o.min_cpu_share > 0 else "off",
            "onnxruntime_threads": "default (intra_op_num_threads=0: one per physical core)",
            "torch_ratios": None if o.torch_ratios is None else [float(r) for r in o.torch_ratios],
            "profile_ratios": profile_ratios,
            "torch_threads": torch.get_num_threads(),
            "memory_method": MEMORY_METHOD,
            "timer": "time.perf_counter around the graph call (prefill: inputs_embeds -> logits + KV)",
        },
        "machine": {**machine_info(), "load_average_before": load_before, "load_average_after": _load_average()},
        "packages": package_versions(),
        "elapsed_s": time.time() - started,
        "skipped": skipped,
        "notes": notes,
        "results": results,
        "ort_vs_torch": _ort_vs_torch(results),
        "profiles": profiles,
        "fidelity": fid,
    }
