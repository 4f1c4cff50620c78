"""The bench report as text (``reroute bench``) and as JSON, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from engines.errors import RerouteError

from .common import ratio_label

def format_bench(report: dict) -> str:
    st = report["settings"]
    lines = [f"reroute bench: {report['model']} ({report['prompt']['tokens']} tokens: {report['num_visual']} visual + "
             f"{report['prompt']['text_tokens']} text); {st['runs']} runs after {st['warmup']} warm-up, "
             f"{st['decode_steps']} decode steps, interleaved",
             f"machine: {report['machine']['cpu']}, {report['machine']['usable_cores']} cores; ONNX Runtime threads "
             f"{st['onnxruntime_threads']}; torch threads {st['torch_threads']}",
             "times: median [min-max]; 'x none': median of per-run ratios to the unrouted model of the same run / "
             "ratio of best (min) times; cpu: share of the usable cores this process got during the calls",
             ""]
    head = (f"{'ratio':>5} {'method':<14}{'backend':<12}{'prefill s':>22}{'x none':>14}{'decode ms/tok':>22}"
            f"{'x none':>14}{'cpu':>5}{'KV MiB':>9}{'KV ok':>6}{'TF all':>8}{'FLOPs x':>8}{'peak MiB':>9}")
    lines.append(head)
    for r in report["results"]:
        p, d = r["prefill_s"], r["decode_per_token_s"]
        peak = r["peak_rss_growth_mib"]["prefill_first_call"]
        best = r["vs_unrouted_best"]
        lines.append(
            f"{r['ratio_label']:>5} {r['method']:<14}{r['backend']:<12}"
            f"{p['median']:>9.3f} [{p['min']:.3f}-{p['max']:.3f}]"
            f"{r['vs_unrouted']['prefill']['median']:>8.3f}/{best['prefill']:.3f}"
            f"{d['median'] * 1e3:>9.1f} [{d['min'] * 1e3:.1f}-{d['max'] * 1e3:.1f}]"
            f"{r['vs_unrouted']['decode_per_token']['median']:>8.3f}/{best['decode_per_token']:.3f}"
            f"{r['cpu_share']['prefill']['median']:>5.2f}"
            f"{r['kv_bytes']['measured'] / 2**20:>9.2f}{'yes' if r['kv_bytes']['match'] else 'NO':>6}"
            f"{r['tflops']['all_tokens']['routed_plus_scoring']:>8.4f}{r['tflops']['all_tokens']['ratio']:>8.3f}"
            f"{peak if peak is None else round(peak, 1)!s:>9}")
    if report.get("ort_vs_torch"):
        lines.append("")
        lines.append("ONNX Runtime prefill / torch prefill (same routed model; median of paired runs / best times):")
        for row in report["ort_vs_torch"]:
            lines.append(f"  {row['ratio_label']:>5} {row['method']:<14} {row['prefill_ort_over_torch']['median']:.3f}x"
                         f" / {row['best']['prefill']:.3f}x")
    fid = report.get("fidelity")
    if fid:
        lines += ["", f"fidelity vs unrouted ({fid['samples']} samples, {fid['steps']} greedy steps, "
                      f"{fid['backend']}):", f"  NOTE: {fid['note']}"]
        for row in fid["rows"]:
            lines.append(f"  {row['ratio_label']:>5} {row['method']:<14} top-1 {row['top1_agreement']:.2f}  "
                         f"KL {row['kl_unrouted_routed']:.4f}  greedy agreement {row['greedy_token_agreement']:.2f}"
                         f"  common prefix {row['greedy_common_prefix']:.1f}")
    for s in report.get("skipped", []):
        lines.append(f"skipped {s['method']} at {ratio_label(s['ratio'])}: {s['reason']}")
    return "\n".join(lines)


def file_mode() -> int:
    """0o666 less the umask: what an ordinary open() would give (mkstemp makes files private)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_json(report: dict, path) -> Path:
    """Write ``report`` as JSON atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise RerouteError(f"cannot write {path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(report, f, indent=1)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
