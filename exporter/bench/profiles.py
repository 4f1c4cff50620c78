"""Profiles: ONNX Runtime's per-node profiler and torch.profiler over one prefill / decode step per config."""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from engines.artifact import open_artifact

from .common import BASELINE, ratio_label

def _profile_options(prefix: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.enable_profiling = True
    opts.profile_file_prefix = prefix
    return opts


_LAYER = re.compile(r"^/layers\.(\d+)/")


def _node_kind(name: str, op: str) -> str:
    """weight GEMMs (projections, MLP, lm_head), attention matmuls (q.k^T, p.v), softmax, the rest."""
    if op in ("MatMul", "Gemm", "FusedMatMul"):
        return "weight_gemm" if ("_proj/" in name or "lm_head" in name) else "attention_matmul"
    if op == "Softmax":
        return "softmax"
    if op in ("Concat",):
        return "concat"
    if op in ("Transpose",):
        return "transpose"
    return "other"


def _fastest_run(events: list, indices: list[int]) -> int:
    """Of the ``model_run`` events at ``indices``, the index of the shortest."""
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    return min(indices, key=lambda i: runs[i]["dur"])


def summarize_profile(events: list, num_layers: int, run_index: int = -1) -> dict:
    """Per-op-type, per-layer and per-part node time (ms) of one ``model_run`` of an ORT profile.

    Parts: ``layers`` (nodes scoped /layers.N/), ``lm_head+norm``, ``rotary`` (cos/sin tables),
    ``routing`` (everything else: the scoring row at each decision layer and the inlined
    PoolSelect/PoolGather/PoolScatter bodies, whose nodes ONNX Runtime names without scope).
    """
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    if not runs:
        return {}
    run = runs[run_index]
    lo, hi = run["ts"], run["ts"] + run["dur"]
    by_op, by_layer, parts, nodes, kinds = {}, [0.0] * num_layers, {}, [], {}
    for e in events:
        if e.get("cat") != "Node" or not (lo <= e["ts"] <= hi) or not e["name"].endswith("_kernel_time"):
            continue
        ms = e["dur"] / 1e3
        name = e["name"][: -len("_kernel_time")]
        op = e.get("args", {}).get("op_name", "?")
        by_op[op] = by_op.get(op, 0.0) + ms
        m = _LAYER.match(name)
        if m and int(m.group(1)) < num_layers:
            by_layer[int(m.group(1))] += ms
            part = "layers"
        elif name.startswith(("/lm_head", "/norm")):
            part = "lm_head+norm"
        elif name.startswith("/rotary"):
            part = "rotary"
        else:
            part = "routing"
        parts[part] = parts.get(part, 0.0) + ms
        nodes.append((ms, name, op, part))
        kind = _node_kind(name, op)
        kinds[kind] = kinds.get(kind, 0.0) + ms
    total = sum(by_op.values())
    nodes.sort(reverse=True)
    return {
        "wall_ms": run["dur"] / 1e3, "node_ms": total,
        "by_op": [{"op": k, "ms": v, "share": v / total if total else 0.0}
                  for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])],
        "by_part": {k: v for k, v in sorted(parts.items(), key=lambda kv: -kv[1])},
        "by_kind": {k: v for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "by_layer_ms": by_layer,
        "top_nodes": [{"name": n, "op": o, "ms": ms} for ms, n, o, _ in nodes[:15]],
        "top_routing_nodes": [{"name": n, "op": o, "ms": ms} for ms, n, o, p in nodes if p == "routing"][:10],
    }


class _quiet_stderr:
    def __enter__(self):
        import sys

        sys.stderr.flush()
        self.saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)
        return False


def profile_torch_prefill(loaded, schedule, embeds, v0) -> dict:
    """torch.profiler over one prefill (after one warm call): self CPU time per aten op, ms."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from engines.torch_runner import TorchBackend

    runner = TorchBackend(loaded, schedule)
    runner.prefill(embeds, v0)
    with _quiet_stderr():  # kineto writes start/stop lines straight to fd 2
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            runner.prefill(embeds, v0)
        wall = (time.perf_counter() - t0) * 1e3
    rows = [(e.self_cpu_time_total / 1e3, e.key, e.count) for e in prof.key_averages()]
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    del prof, runner
    return {"wall_ms": wall, "self_ms": total, "threads": torch.get_num_threads(),
            "by_op": [{"op": k, "ms": ms, "count": c, "share": ms / total if total else 0.0}
                      for ms, k, c in rows[:15]]}


def _profile_group(ratio, configs, paths, embeds, v0, seq_len, table, cfg, group, root, loaded=None) -> list[dict]:
    """Per config: the fastest of 2 profiled prefills (after a warm one) and the fastest of 3 profiled decode
    steps over its cache (after a first one); with ``loaded``, also the faster of 2 torch.profiler prefills.
    Taking the fastest keeps contention from other work out of the breakdown as far as possible."""
    from engines.ort_runner import OrtBackend

    out = []
    if loaded is not None:
        for s in configs:
            best = min((profile_torch_prefill(loaded, s, embeds, v0) for _ in range(2)), key=lambda p: p["wall_ms"])
            out.append({"method": s.method, "ratio": ratio, "ratio_label": ratio_label(ratio), "graph": "prefill",
                        "backend": "torch", **best})
            gc.collect()
    tmp = Path(tempfile.mkdtemp(prefix="profile-", dir=root))
    try:
        caches = {}
        for s in configs:
            pre = OrtBackend(open_artifact(paths[s.method], verify=False), graphs=("prefill",),
                             options=_profile_options(str(tmp / f"prefill-{s.method}")))
            for _ in range(3):
                prefill = pre.prefill(embeds, v0)
            caches[s.method] = (int(np.argmax(prefill.logits[0])), prefill.cache)
            del prefill
            events = json.loads(Path(pre.sessions["prefill"].end_profiling()).read_text())
            out.append({"method": s.method, "ratio": ratio, "ratio_label": ratio_label(ratio), "graph": "prefill",
                        "backend": "onnxruntime",
                        "tokens_per_layer": list(group[(s.method, "onnxruntime")]["kv_lengths"]),
                        **summarize_profile(events, cfg.num_layers, _fastest_run(events, [1, 2]))})
            pre.close()
            del pre
            gc.collect()
        dec = OrtBackend(open_artifact(paths[BASELINE], verify=False), graphs=("decode",),
                         options=_profile_options(str(tmp / "decode")))
        steps = 4
        for s in configs:  # four decode steps per config; the fastest of the last three is summarized
            token, cache = caches.pop(s.method)
            for step in range(steps):
                emb = table[token][None, None].copy()
                logits, cache = dec.decode(emb, np.array([[seq_len + step]], dtype=np.int64), cache)
                token = int(np.argmax(logits[0]))
            del cache
        events = json.loads(Path(dec.sessions["decode"].end_profiling()).read_text())
        for c, s in enumerate(configs):
            run = _fastest_run(events, [c * steps + i for i in range(1, steps)])
            out.append({"method": s.method, "ratio": ratio, "ratio_label": ratio_label(ratio), "graph": "decode",
                        "backend": "onnxruntime", **summarize_profile(events, cfg.num_layers, run_index=run)})
        dec.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
