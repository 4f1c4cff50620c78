"""Building blocks of docs/BENCHMARKS.md: rows in a stable order, profile lookup, number formats, tables."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .report import file_mode


METHOD_ORDER = ["none", "fastv", "pdrop", "reroute-fastv", "reroute"]


def _rows(report, backend=None, ratio=None):
    out = [r for r in report["results"] if (backend is None or r["backend"] == backend)
           and (ratio is None or abs(r["ratio"] - ratio) < 1e-9)]
    return sorted(out, key=lambda r: (r["ratio"], r["backend"], METHOD_ORDER.index(r["method"])
                                      if r["method"] in METHOD_ORDER else 99))


def _profile(report, method, ratio, graph, backend="onnxruntime"):
    for p in report.get("profiles", []):
        if (p["method"] == method and abs(p["ratio"] - ratio) < 1e-9 and p["graph"] == graph
                and p.get("backend", "onnxruntime") == backend):
            return p
    return None


def _fmt_ms(s):
    return f"{s * 1e3:.0f}" if s >= 0.1 else f"{s * 1e3:.1f}"


def _spread(stat, scale=1.0, digits=3):
    return (f"{stat['median'] * scale:.{digits}f} [{stat['min'] * scale:.{digits}f}-"
            f"{stat['max'] * scale:.{digits}f}]")


def _table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)
