"""Timing: interleaved rounds over every (backend, config), with the contention guard.

Each config runs on the backends ``generate`` and ``parity`` use: ``engines.torch_runner.TorchBackend``,
and ``engines.ort_runner.OrtBackend`` over the config's prefill graph beside one decode session (from the
unrouted artifact) shared by every method. Timed per call: one prefill graph call, and each decode step.
"""

from __future__ import annotations

import gc
import os
import time

import numpy as np

from engines.artifact import open_artifact

from .common import ROUTING_VS_DELETION, ratio_label
from .machine import _mib, _steal_ticks, _usable_cores

INTERLEAVING = ("per ratio group: for each run index, for each backend, every config once, each routing method "
                "right after the deletion it augments, the order rotated by one config per round; ratios are "
                "paired by run index")


def timing_order(configs: list) -> list:
    """The configs (anything with ``.method``) in the order a round times them: as given, except that each
    routing method moves right after the deletion it augments, so the pair target (b) compares runs back
    to back (the machine's speed drifts over seconds)."""
    partner = dict(ROUTING_VS_DELETION)
    present = {c.method for c in configs}
    order = []
    for c in configs:
        if partner.get(c.method) in present:
            continue  # placed after its deletion
        order.append(c)
        order.extend(r for r in configs if partner.get(r.method) == c.method)
    return order


def kv_nbytes(cache) -> int:
    """Bytes of a per-layer [(key, value)] cache, numpy arrays or torch tensors."""
    return int(sum(t.nbytes for kv in cache for t in kv))


def _run_group(ratio, configs, backends, loaded, paths, decode_ort, embeds, v0, seq_len, table, options,
               progress, mem, wrap=lambda backend: backend) -> dict:
    """Interleaved timing of one ratio group. Returns {(method, backend): measurements}.

    A round is one call sequence over every (backend, config). With ``min_cpu_share > 0`` a round in
    which any call got less than that share of the usable cores (process CPU time / (wall x cores): other
    work took them) is set aside and repeated, up to ``2 * runs`` extra rounds; if too few rounds are
    clean, the least contended of the set-aside ones fill up (and are counted as such).
    ``wrap``: binds a dynamic-resolution prompt's positions and N_v to each backend (bench/dynamic.py).
    """
    from engines.ort_runner import OrtBackend
    from engines.torch_runner import TorchBackend

    runs, warmup, decode_steps = options.runs, options.warmup, options.decode_steps
    pause_s, min_cpu_share = options.pause_s, options.min_cpu_share
    runners, data = {}, {}  # (method, backend) -> (prefill backend, decode backend)
    for b in backends:
        for s in configs:
            if b == "torch":
                torch_backend = wrap(TorchBackend(loaded, s, **(options.torch_options or {})))
                runners[(s.method, b)] = (torch_backend, torch_backend)
                data[(s.method, b)] = {"session_mib": 0.0}
            else:
                mem.start()
                pre = wrap(OrtBackend(open_artifact(paths[s.method], verify=False), graphs=("prefill",)))
                runners[(s.method, b)] = (pre, decode_ort)
                data[(s.method, b)] = {"session_mib": _mib(mem.peak_growth())}
            data[(s.method, b)].update(prefill=[], decode=[], peak_prefill=None, peak_decode=None, prefill_cpu=[],
                                       decode_cpu=[])
    cores = _usable_cores()
    order = timing_order(configs)

    def one_round(index: int) -> dict:
        record = {}
        # Round `index` starts at config `index mod len(order)`: over len(order) rounds every config
        # runs once in every position, so a slot that is systematically faster or slower (the call after
        # the long unrouted one, say) is not always the same method's.
        start = index % len(order)
        for b in backends:
            for s in order[start:] + order[:start]:
                key = (s.method, b)
                d, (prefiller, decoder) = data[key], runners[key]
                first = d["peak_prefill"] is None
                if first:
                    mem.start()
                time.sleep(pause_s)
                c0, t0 = time.process_time(), time.perf_counter()
                out = prefiller.prefill(embeds, v0)
                t_pre = time.perf_counter() - t0
                cpu_pre = (time.process_time() - c0) / (t_pre * cores)
                logits, cache = out.logits, out.cache
                del out
                if first:
                    d["peak_prefill"] = _mib(mem.peak_growth())
                    d["kv_measured"] = kv_nbytes(cache)
                    d["kv_lengths"] = prefiller.cache_lengths(cache)
                    d["first_token"] = int(np.argmax(logits[0]))
                    mem.start()
                token = int(np.argmax(logits[0]))
                steps = cpu = 0.0
                for step in range(decode_steps):
                    emb = table[token][None, None].copy()
                    pos = np.array([[seq_len + step]], dtype=np.int64)
                    c0, t0 = time.process_time(), time.perf_counter()
                    logits, cache = decoder.decode(emb, pos, cache)
                    steps += time.perf_counter() - t0
                    cpu += time.process_time() - c0
                    token = int(np.argmax(logits[0]))
                if first:
                    d["peak_decode"] = _mib(mem.peak_growth()) if b == "torch" else None
                record[key] = (t_pre, steps / decode_steps, cpu_pre, cpu / (steps * cores))
                del cache, logits
        return record

    def share(timed) -> float:
        """The least CPU share any call of the round got, less the share of all CPUs stolen meanwhile."""
        calls, steal = timed
        return min(min(v[2], v[3]) for v in calls.values()) - steal

    clean, aside = [], []
    try:
        for it in range(warmup):
            with progress(f"ratio {ratio_label(ratio)}: warm-up {it + 1}/{warmup} ({len(configs)} configs x "
                          f"{len(backends)} backend(s), interleaved)"):
                one_round(it)
        attempt = 0
        while len(clean) < runs and attempt < 3 * runs:
            attempt += 1
            with progress(f"ratio {ratio_label(ratio)}: run {len(clean) + 1}/{runs} ({len(configs)} configs x "
                          f"{len(backends)} backend(s), interleaved)"):
                steal0, wall0 = _steal_ticks(), time.perf_counter()
                calls = one_round(warmup + attempt - 1)
                steal1, steal = _steal_ticks(), 0.0
                if steal0 is not None and steal1 is not None:
                    ticks = (time.perf_counter() - wall0) * os.sysconf("SC_CLK_TCK") * os.cpu_count()
                    steal = (steal1 - steal0) / max(ticks, 1e-9)
                timed = (calls, steal)
                if min_cpu_share <= 0 or share(timed) >= min_cpu_share:
                    clean.append(timed)
                else:
                    aside.append(timed)
                    progress.total += 1
                    if not progress.quiet:
                        progress.stream.write(f" set aside (CPU share {share(timed):.2f} < {min_cpu_share}: "
                                              "other work took the cores), repeating ...")
        aside.sort(key=share, reverse=True)
        used = clean + aside[: runs - len(clean)]
        for calls, _ in used:
            for key, (t_pre, t_dec, c_pre, c_dec) in calls.items():
                d = data[key]
                d["prefill"].append(t_pre)
                d["decode"].append(t_dec)
                d["prefill_cpu"].append(c_pre)
                d["decode_cpu"].append(c_dec)
        rounds = {"clean": len(clean), "set_aside": len(aside), "contended_used": len(used) - len(clean),
                  "min_cpu_share": min_cpu_share, "steal_share": [round(steal, 4) for _, steal in used]}
        for d in data.values():
            d["rounds"] = rounds
    finally:
        for prefiller, _ in runners.values():
            close = getattr(prefiller, "close", None)  # the shared decode backend outlives the group
            if close is not None:
                close()
        runners.clear()
        gc.collect()
    return data
