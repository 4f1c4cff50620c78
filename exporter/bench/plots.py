"""The plots of docs/BENCHMARKS.md (matplotlib, imported when drawing), written atomically as PNG."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .analysis import _layer_gflops, layer_fit
from .common import BASELINE, ratio_label
from .report import file_mode
from .tables import METHOD_ORDER, _profile, _rows


COLORS = {"none": "#444444", "fastv": "#1f77b4", "pdrop": "#2ca02c", "reroute-fastv": "#ff7f0e",
          "reroute": "#d62728"}
BACKEND_STYLE = {"onnxruntime": ("-", "o"), "torch": ("--", "s")}


def _savefig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)
    plt.close(fig)


def plot_latency_vs_ratio(report, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    methods = [m for m in METHOD_ORDER if m != BASELINE and m in report["settings"]["methods"]]
    for ax, stat, title in ((axes[0], "prefill", "prefill latency / unrouted (same run)"),
                            (axes[1], "decode_per_token", "decode latency per token / unrouted (same run)")):
        for m in methods:
            for backend, (ls, marker) in BACKEND_STYLE.items():
                rows = [r for r in _rows(report, backend) if r["method"] == m]
                if not rows:
                    continue
                xs = [r["ratio"] for r in rows]
                ys = [r["vs_unrouted_best"][stat] for r in rows]
                lo = [max(0.0, y - r["vs_unrouted"][stat]["min"]) for y, r in zip(ys, rows)]
                hi = [max(0.0, r["vs_unrouted"][stat]["max"] - y) for y, r in zip(ys, rows)]
                ax.errorbar(xs, ys, yerr=[lo, hi], color=COLORS.get(m), ls=ls, marker=marker, ms=4, capsize=2,
                            label=f"{m} ({'ORT' if backend == 'onnxruntime' else 'torch'})")
            if stat == "prefill":
                rows = [r for r in _rows(report, "onnxruntime") if r["method"] == m] or \
                       [r for r in _rows(report) if r["method"] == m]
                ax.plot([r["ratio"] for r in rows], [r["tflops"]["all_tokens"]["ratio"] for r in rows],
                        color=COLORS.get(m), ls=":", lw=1)
        ax.axhline(1.0, color="#888", lw=0.8)
        ax.set_xlabel("ratio (average fraction of visual tokens per layer)")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("x unrouted (best times; bars: min-max of paired runs)")
    axes[0].text(0.02, 0.97, "dotted: theoretical FLOPs ratio (all tokens + scoring)", transform=axes[0].transAxes,
                 fontsize=7, va="top")
    axes[1].legend(fontsize=7, ncol=2, loc="lower right")
    _savefig(fig, path)


def plot_speedup_vs_flops(report, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    top = 0.0
    for r in report["results"]:
        if r["method"] == BASELINE:
            continue
        x = r["tflops"]["all_tokens"]["ratio"]
        y = r["vs_unrouted_best"]["prefill"]
        top = max(top, x, y)
        ls, marker = BACKEND_STYLE[r["backend"]]
        ax.scatter([x], [y], color=COLORS.get(r["method"]), marker=marker, s=30,
                   facecolors="none" if r["backend"] == "torch" else COLORS.get(r["method"]))
    line = [0, top * 1.1]
    ax.plot(line, line, color="#888", lw=0.8, label="time = FLOPs")
    ax.plot(line, [1.1 * v for v in line], color="#888", lw=0.8, ls="--", label="1.10 x FLOPs (target a)")
    for m in METHOD_ORDER[1:]:
        ax.scatter([], [], color=COLORS[m], label=m)
    ax.scatter([], [], color="k", marker="o", label="ONNX Runtime (filled)")
    ax.scatter([], [], color="k", marker="s", facecolors="none", label="torch (open)")
    ax.set_xlabel("theoretical FLOPs / unrouted (all tokens incl. text, + scoring)")
    ax.set_ylabel("measured prefill time / unrouted (best times, same runs)")
    ax.set_xlim(0, top * 1.1)
    ax.set_ylim(0, top * 1.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("measured prefill speed-up vs FLOPs reduction", fontsize=10)
    _savefig(fig, path)


def plot_kv(report, path: Path) -> None:
    import matplotlib.pyplot as plt

    backend = "onnxruntime" if _rows(report, "onnxruntime") else "torch"
    rows = _rows(report, backend)
    ratios = sorted({r["ratio"] for r in rows})
    methods = [m for m in METHOD_ORDER if m != BASELINE and any(r["method"] == m for r in rows)]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(methods))
    full = next(r["kv_bytes"]["measured"] for r in rows if r["method"] == BASELINE) / 2**20
    for j, m in enumerate(methods):
        xs, ys, preds = [], [], []
        for i, ratio in enumerate(ratios):
            r = next((r for r in rows if r["method"] == m and r["ratio"] == ratio), None)
            if r:
                xs.append(i + (j - (len(methods) - 1) / 2) * width)
                ys.append(r["kv_bytes"]["measured"] / 2**20)
                preds.append(r["kv_bytes"]["predicted"] / 2**20)
        ax.bar(xs, ys, width=width * 0.9, color=COLORS.get(m), label=m)
        ax.scatter(xs, preds, color="k", marker="_", s=120, zorder=3)
    ax.axhline(full, color=COLORS["none"], ls="--", lw=1, label=f"unrouted ({full:.0f} MiB)")
    ax.scatter([], [], color="k", marker="_", s=120, label="schedule prediction")
    ax.set_xticks(range(len(ratios)), [ratio_label(r) for r in ratios])
    ax.set_xlabel("ratio")
    ax.set_ylabel("KV cache after prefill (MiB, fp32)")
    ax.set_title(f"KV bytes of the real present tensors ({backend})", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, axis="y")
    _savefig(fig, path)


def plot_layer_profile(report, ratio, path: Path) -> bool:
    import matplotlib.pyplot as plt

    profs = [(m, _profile(report, m, ratio, "prefill")) for m in METHOD_ORDER]
    profs = [(m, p) for m, p in profs if p and p.get("tokens_per_layer")]
    if not profs:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m, p in profs:
        axes[0].plot(range(len(p["by_layer_ms"])), p["by_layer_ms"], color=COLORS.get(m), marker=".", label=m)
        axes[1].scatter(p["tokens_per_layer"], p["by_layer_ms"], color=COLORS.get(m), s=12, label=m)
    fit = layer_fit(report, ratio)
    if fit:
        top = max(max(p["tokens_per_layer"]) for _, p in profs)
        xs = list(range(0, top + 1, max(1, top // 50)))
        axes[1].plot(xs, [fit["a_ms"] + fit["b_ms_per_gflop"] * _layer_gflops(report, x) for x in xs],
                     color="#888", lw=0.8, label=f"fit a + b*FLOPs (a = {fit['a_ms']:.1f} ms)")
    axes[0].set_xlabel("decoder layer")
    axes[0].set_ylabel("ONNX Runtime node time (ms)")
    axes[0].set_title(f"prefill time per layer at ratio {ratio_label(ratio)}", fontsize=10)
    axes[1].set_xlabel("tokens the layer processes")
    axes[1].set_title("layer time vs tokens (all methods)", fontsize=10)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _savefig(fig, path)
    return True
