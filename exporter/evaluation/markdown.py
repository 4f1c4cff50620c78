"""``--report OUT.md``: the tables as Markdown plus OUT.png, accuracy against the FLOPs ratio (written atomically)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from engines.errors import RerouteError
from .report import data_line, pair_lines, table_rows


def atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` fills a temp file beside ``path``; it replaces ``path`` only when complete."""
    fd, tmp = tempfile.mkstemp(suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def plot_accuracy(report: dict, path: Path) -> None:
    """One line per method and backend: accuracy (all kinds) with its 95% interval against the FLOPs ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series: dict[tuple[str, str], list[dict]] = {}
    for c in report["configs"]:
        series.setdefault((c["method"], c["backend"]), []).append(c)
    for (method, backend), configs in sorted(series.items()):
        if method == "none":  # the unrouted model: a reference line (and its interval) across the routed range
            acc = configs[0]["accuracy"]["all"]
            ax.axhline(100 * acc["accuracy"], ls="--", color="grey", label=f"none ({backend}), unrouted")
            ax.axhspan(100 * acc["ci"][0], 100 * acc["ci"][1], color="grey", alpha=0.12)
            continue
        configs.sort(key=lambda c: c["flops_ratio"])
        xs = [c["flops_ratio"] for c in configs]
        ys = [100 * c["accuracy"]["all"]["accuracy"] for c in configs]
        low = [max(0.0, y - 100 * c["accuracy"]["all"]["ci"][0]) for y, c in zip(ys, configs)]  # float noise
        high = [max(0.0, 100 * c["accuracy"]["all"]["ci"][1] - y) for y, c in zip(ys, configs)]
        ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label=f"{method} ({backend})")
    ax.set_xlabel("decoder FLOPs relative to the unrouted model (visual tokens)")
    ax.set_ylabel("accuracy (%), 95% Wilson interval")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def markdown(report: dict, plot_name: str | None) -> str:
    rows = table_rows(report)
    lines = ["# reroute eval", "", data_line(report), "",
             "Accuracy with its 95% Wilson interval; FLOPs ratio and KV bytes in the visual-token convention "
             "(`reroute inspect`).", "",
             "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    if report["pairs"]:
        lines += ["", "## Paired differences (95% Newcombe interval)", ""]
        lines += [f"- {line}" for line in pair_lines(report)]
    if plot_name:
        lines += ["", f"![accuracy against FLOPs]({plot_name})"]
    if report["malformed"] or report["missing"]:
        lines += ["", "## Skipped lines", ""]
        lines += [f"- line {m['line']}: {m['why']}" for m in report["malformed"]]
        lines += [f"- line {m['line']}: image missing or unreadable: {m['image']}" for m in report["missing"]]
    return "\n".join(lines) + "\n"


def write_markdown(report: dict, out: str) -> Path:
    """Write OUT.md and, beside it, OUT.png; returns the plot's path."""
    path = Path(out)
    if not path.parent.is_dir():
        raise RerouteError(f"cannot write {out}: directory {path.parent} does not exist")
    plot = path.with_suffix(".png")
    try:
        plot_accuracy(report, plot)
    except ImportError:
        raise RerouteError("--report draws a plot with matplotlib: pip install 'reroute[bench]'") from None
    atomic_write(path, lambda tmp: Path(tmp).write_text(markdown(report, plot.name)))
    return plot
