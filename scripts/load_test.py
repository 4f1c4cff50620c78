#!/usr/bin/env python
"""Bounded load test of a ``reroute serve`` (Triton) server: N concurrent clients x M requests each.

By default it exports the tiny model to a temporary folder, starts
``reroute serve`` on a free loopback port, runs the load, stops the server and
cleans up. ``--artifact DIR`` serves an existing artifact instead;
``--url URL`` tests a server that is already running (loopback only unless
``--allow-remote``).

The load: prompts of different lengths with the image at different positions
(text before it or not), images of different sizes, clients arriving evenly over
``--arrival`` seconds. ``--compare-max-batch-1`` then serves the same artifact
with ``--max-batch 1`` and runs the same load again (one after the other, never
both at once), and prints the throughput ratio in tokens/s.

Prints the request and error counts, p50 / p99 latency and throughput; exits 1
if any request failed, timed out, or two answers for the same input differed.
Every loop is bounded: M requests per client, a per-request timeout, and an
overall --deadline after which no new request starts.

    python scripts/load_test.py --compare-max-batch-1  # 8 clients x 50 requests, 32 new tokens, twice
    python scripts/load_test.py --clients 2 --requests 3 --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# Text before the image and questions of different lengths: prompts differ in token count and image position.
PREFIXES = ["", "Look at this. ", "Here is a photo I took on a long walk yesterday afternoon. "]
QUESTIONS = ["What is it?", "Where is the red ball?", "Describe the left part of the picture in a few words.",
             "Is there any text, and if there is, what does it say?", "Count the dogs."]


def workload(count: int) -> list[tuple[str, bytes]]:
    """``count`` distinct (prompt, PNG bytes) inputs: mixed prompt lengths and image positions, the
    deterministic synthetic images of exporter.samples (sizes differ)."""
    from exporter.samples import synthetic_image

    out = []
    for i in range(count):
        prefix, question = PREFIXES[i % len(PREFIXES)], QUESTIONS[(i // len(PREFIXES)) % len(QUESTIONS)]
        image = synthetic_image(i, size=(300 + 10 * (i % 7), 260 + 7 * (i % 5)))
        out.append((f"USER: {prefix}<image>\n{question} ASSISTANT:", _png(image)))
    return out


class Server:
    """``reroute serve`` in a child process on a free loopback port."""

    def __init__(self, artifact: str, log_dir: str, host: str = "127.0.0.1", startup_s: float = 180.0,
                 max_batch: int | None = None):
        self.host, self.port = host, free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.log = open(Path(log_dir) / "serve.log", "w+")
        command = [sys.executable, "-m", "exporter.cli", "serve", artifact, "--host", host, "--port", str(self.port),
                   "--metrics-port", str(free_port(host)), "--stats-port", str(free_port(host))]
        if max_batch is not None:
            command += ["--max-batch", str(max_batch)]
        self.proc = subprocess.Popen(command, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_ready(self.url, startup_s, self.proc)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}; its output:\n{self.output()[-3000:]}") from None
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text(errors="replace")


def wait_ready(url: str, timeout: float, proc=None, model: str = "reroute") -> None:
    """Poll the server until the model is ready; RuntimeError on timeout or if ``proc`` exits first."""
    from engines.serving.client import make_client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before it was ready")
        client = make_client(url, timeout=5.0)
        try:
            if client.is_server_ready() and client.is_model_ready(model):
                return
        except Exception:
            pass
        finally:
            client.close()
        time.sleep(0.5)
    raise RuntimeError(f"the server at {url} was not ready after {timeout:.0f} s")


def run_load(url: str, clients: int, requests: int, max_new_tokens: int = 8, deadline_s: float = 600.0,
             timeout_s: float = 120.0, model: str = "reroute", inputs: int = 15, arrival_s: float = 0.0) -> dict:
    """``clients`` threads, each with its own connection, send ``requests`` requests one after another;
    client c starts ``c * arrival_s / clients`` seconds after the first (clients arrive over time)."""
    from engines.serving.client import batched_model, infer, make_client, server_message

    probe = make_client(url, timeout=timeout_s)
    try:
        batched = batched_model(probe, model)  # reroute serve: [1, 1] tensors; a deploy repository: [1]
    finally:
        probe.close()
    work = workload(inputs)
    latencies: list[float] = []
    errors: list[str] = []
    answers: dict[int, set] = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + deadline_s

    tokens = [0]

    def client_loop(cid: int) -> None:
        time.sleep(cid * arrival_s / clients)
        client = make_client(url, timeout=timeout_s)
        try:
            for r in range(requests):
                if time.monotonic() > stop_at:
                    with lock:
                        errors.append(f"client {cid}: deadline of {deadline_s:.0f} s reached; "
                                      f"{requests - r} requests not sent")
                    return
                which = (cid * requests + r) % len(work)
                prompt, image = work[which]
                t0 = time.perf_counter()
                try:
                    result = infer(client, prompt, image, max_new_tokens, model, batched)
                except Exception as exc:  # count every failure, keep going
                    with lock:
                        errors.append(f"client {cid} request {r}: {server_message(exc)}")
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    tokens[0] += len(result["generated_token_ids"])
                    answers.setdefault(which, set()).add(tuple(result["generated_token_ids"]))
        finally:
            client.close()

    threads = [threading.Thread(target=client_loop, args=(c,), daemon=True) for c in range(clients)]
    load_before = os.getloadavg()  # the machine may be shared: say how busy it was
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, stop_at - time.monotonic()) + timeout_s + 5)
    wall = time.perf_counter() - started
    if any(t.is_alive() for t in threads):
        errors.append("some clients did not finish in time")
    inconsistent = sum(1 for seen in answers.values() if len(seen) > 1)
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "url": url, "clients": clients, "requests_per_client": requests, "max_new_tokens": max_new_tokens,
        "sent": clients * requests, "ok": len(latencies), "errors": len(errors), "error_messages": errors[:10],
        "inconsistent_answers": inconsistent,
        "latency_s": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                      "mean": float(np.mean(lat)), "max": float(np.max(lat))},
        "wall_s": wall, "throughput_rps": len(latencies) / wall if wall > 0 else 0.0,
        "tokens": tokens[0], "throughput_tps": tokens[0] / wall if wall > 0 else 0.0, "arrival_s": arrival_s,
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
    }


def format_report(r: dict) -> str:
    lat = r["latency_s"]
    lines = [
        f"load test {r['url']} (server --max-batch {r.get('server_max_batch') or 'capacity'}): "
        f"{r['clients']} clients x {r['requests_per_client']} requests (max_new_tokens {r['max_new_tokens']})",
        f"  requests {r['sent']}  ok {r['ok']}  errors {r['errors']}  inconsistent answers {r['inconsistent_answers']}",
        f"  latency p50 {lat['p50']:.3f} s  p99 {lat['p99']:.3f} s  mean {lat['mean']:.3f} s  max {lat['max']:.3f} s",
        f"  throughput {r['throughput_rps']:.2f} req/s, {r['throughput_tps']:.1f} tokens/s  (wall {r['wall_s']:.1f} s, "
        f"clients arriving over {r['arrival_s']:g} s)",
        f"  machine: {r['cpu_count']} cores, load average {r['loadavg_before']} before, {r['loadavg_after']} after",
    ]
    lines += [f"  error: {m}" for m in r["error_messages"]]
    return "\n".join(lines)


def _loopback_url(url: str) -> bool:
    from engines.serving.client import _endpoint
    from engines.serving.triton_serve import is_loopback

    host = _endpoint(url)[0].rsplit(":", 1)[0].strip("[]")
    return is_loopback(host)


def _served_load(artifact: str, tmp: str, max_batch: int | None, args) -> tuple[dict, int]:
    """Start ``reroute serve`` (``--max-batch max_batch``), run the load, stop it: (report, its exit status)."""
    print(f"starting reroute serve (--max-batch {max_batch or 'the artifact capacity'}) ...", file=sys.stderr,
          flush=True)
    log_dir = tempfile.mkdtemp(dir=tmp)
    server = Server(artifact, log_dir, max_batch=max_batch)
    status = 0
    try:
        report = run_load(server.url, args.clients, args.requests, args.max_new_tokens, args.deadline, args.timeout,
                          arrival_s=args.arrival)
        report["server_max_batch"] = max_batch
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{server.output()[-3000:]}") from None
    finally:
        status = server.stop()
        if status != 0:
            print(f"load_test: the server exited with status {status} after SIGTERM:\n{server.output()[-3000:]}",
                  file=sys.stderr)
    return report, status


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help="test this running server instead of starting one")
    where.add_argument("--artifact", help="serve this artifact (default: export llava-tiny to a temp folder)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=50, help="requests per client")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--arrival", type=float, default=5.0,
                   help="clients arrive evenly over this many seconds (default 5; 0: all at once)")
    p.add_argument("--deadline", type=float, default=900.0, help="no new request after this many seconds")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout, seconds")
    p.add_argument("--max-batch", type=int, help="the server's --max-batch (when this script starts it)")
    p.add_argument("--compare-max-batch-1", action="store_true",
                   help="then run the same load on the same artifact served with --max-batch 1, and compare")
    p.add_argument("--allow-remote", action="store_true", help="allow a --url that is not on this machine")
    p.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    for name in ("clients", "requests", "max_new_tokens"):
        if not 1 <= getattr(args, name) <= 10_000:
            p.error(f"--{name.replace('_', '-')} must be in [1, 10000]")
    if args.deadline <= 0 or args.timeout <= 0 or not 0 <= args.arrival <= 3600:
        p.error("--deadline and --timeout must be > 0, --arrival in [0, 3600]")
    if args.url and not args.allow_remote and not _loopback_url(args.url):
        p.error(f"--url {args.url} is not a loopback address (pass --allow-remote to test it anyway)")
    if args.url and args.compare_max_batch_1:
        p.error("--compare-max-batch-1 starts its own servers; it cannot be used with --url")

    tmp = tempfile.mkdtemp(prefix="reroute-load-")
    statuses, reports = [], []
    try:
        if args.url:
            wait_ready(args.url, 30.0)
            reports.append(run_load(args.url, args.clients, args.requests, args.max_new_tokens, args.deadline,
                                    args.timeout, arrival_s=args.arrival))
        else:
            artifact = args.artifact
            if artifact is None:
                from exporter.onnx_export import export_artifact

                artifact = str(Path(tmp) / "llava-tiny")
                print(f"exporting llava-tiny to {artifact} ...", file=sys.stderr, flush=True)
                export_artifact("llava-tiny", "reroute", 0.25, out=artifact, parity_samples=0, quiet=True)
            for max_batch in [args.max_batch] + ([1] if args.compare_max_batch_1 else []):
                report, status = _served_load(artifact, tmp, max_batch, args)
                reports.append(report)
                statuses.append(status)
    except RuntimeError as exc:
        print(f"load_test: error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = reports[0] if len(reports) == 1 else {
        "runs": reports, "throughput_ratio_tokens": reports[0]["throughput_tps"] / max(reports[1]["throughput_tps"],
                                                                                       1e-9)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(format_report(r) for r in reports))
        if len(reports) > 1:
            print(f"throughput ratio (tokens/s), batched / --max-batch 1: {result['throughput_ratio_tokens']:.2f}")
    failed = any(r["errors"] or r["inconsistent_answers"] for r in reports) or any(statuses)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
