#!/usr/bin/env python
"""Bounded load test of a ``reroute serve`` (Triton) server: N concurrent clients x M requests each.

By default it exports the tiny model to a temporary folder, starts
``reroute serve`` on a free loopback port, runs the load, stops the server and
cleans up. ``--artifact DIR`` serves an existing artifact instead;
``--url URL`` tests a server that is already running (loopback only unless
``--allow-remote``).

Prints the request and error counts, p50 / p99 latency and throughput; exits 1
if any request failed, timed out, or two answers for the same input differed.
Every loop is bounded: M requests per client, a per-request timeout, and an
overall --deadline after which no new request starts.

    python scripts/load_test.py                      # 4 clients x 25 requests
    python scripts/load_test.py --clients 2 --requests 3 --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import io
import json
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


def workload(count: int) -> list[tuple[str, bytes]]:
    """``count`` distinct (prompt, PNG bytes) inputs: the deterministic samples of exporter.samples."""
    from exporter.samples import sample

    return [(prompt, _png(image)) for prompt, image in (sample(i) for i in range(count))]


class Server:
    """``reroute serve`` in a child process on a free loopback port."""

    def __init__(self, artifact: str, log_dir: str, host: str = "127.0.0.1", startup_s: float = 180.0,
                 max_batch: int | None = None):
        self.host, self.port = host, free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.log = open(Path(log_dir) / "serve.log", "w+")
        command = [sys.executable, "-m", "exporter.cli", "serve", artifact, "--host", host, "--port", str(self.port)]
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
             timeout_s: float = 120.0, model: str = "reroute", inputs: int = 5) -> dict:
    """``clients`` threads, each with its own connection, send ``requests`` requests one after another."""
    from engines.serving.client import infer, make_client, server_message

    work = workload(inputs)
    latencies: list[float] = []
    errors: list[str] = []
    answers: dict[int, set] = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + deadline_s

    def client_loop(cid: int) -> None:
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
                    result = infer(client, prompt, image, max_new_tokens, model)
                except Exception as exc:  # count every failure, keep going
                    with lock:
                        errors.append(f"client {cid} request {r}: {server_message(exc)}")
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    answers.setdefault(which, set()).add(tuple(result["generated_token_ids"]))
        finally:
            client.close()

    threads = [threading.Thread(target=client_loop, args=(c,), daemon=True) for c in range(clients)]
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
    }


def format_report(r: dict) -> str:
    lat = r["latency_s"]
    lines = [
        f"load test {r['url']}: {r['clients']} clients x {r['requests_per_client']} requests "
        f"(max_new_tokens {r['max_new_tokens']})",
        f"  requests {r['sent']}  ok {r['ok']}  errors {r['errors']}  inconsistent answers {r['inconsistent_answers']}",
        f"  latency p50 {lat['p50']:.3f} s  p99 {lat['p99']:.3f} s  mean {lat['mean']:.3f} s  max {lat['max']:.3f} s",
        f"  throughput {r['throughput_rps']:.2f} req/s  (wall {r['wall_s']:.1f} s)",
    ]
    lines += [f"  error: {m}" for m in r["error_messages"]]
    return "\n".join(lines)


def _loopback_url(url: str) -> bool:
    from engines.serving.client import _endpoint
    from engines.serving.triton_serve import is_loopback

    host = _endpoint(url)[0].rsplit(":", 1)[0].strip("[]")
    return is_loopback(host)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help="test this running server instead of starting one")
    where.add_argument("--artifact", help="serve this artifact (default: export llava-tiny to a temp folder)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=25, help="requests per client")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--deadline", type=float, default=600.0, help="no new request after this many seconds")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout, seconds")
    p.add_argument("--max-batch", type=int, help="the server's --max-batch (when this script starts it)")
    p.add_argument("--allow-remote", action="store_true", help="allow a --url that is not on this machine")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    for name in ("clients", "requests", "max_new_tokens"):
        if not 1 <= getattr(args, name) <= 10_000:
            p.error(f"--{name.replace('_', '-')} must be in [1, 10000]")
    if args.deadline <= 0 or args.timeout <= 0:
        p.error("--deadline and --timeout must be > 0")
    if args.url and not args.allow_remote and not _loopback_url(args.url):
        p.error(f"--url {args.url} is not a loopback address (pass --allow-remote to test it anyway)")

    tmp = tempfile.mkdtemp(prefix="reroute-load-")
    server, server_status = None, 0
    try:
        url = args.url
        if url is None:
            artifact = args.artifact
            if artifact is None:
                from exporter.onnx_export import export_artifact

                artifact = str(Path(tmp) / "llava-tiny")
                print(f"exporting llava-tiny to {artifact} ...", file=sys.stderr, flush=True)
                export_artifact("llava-tiny", "reroute", 0.25, out=artifact, parity_samples=0, quiet=True)
            print("starting reroute serve ...", file=sys.stderr, flush=True)
            server = Server(artifact, tmp, max_batch=args.max_batch)
            url = server.url
        else:
            wait_ready(url, 30.0)
        report = run_load(url, args.clients, args.requests, args.max_new_tokens, args.deadline, args.timeout)
    except RuntimeError as exc:
        print(f"load_test: error: {exc}", file=sys.stderr)
        if server is not None:
            print(server.output()[-3000:], file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server_status = server.stop()
            if server_status != 0:
                print(f"load_test: the server exited with status {server_status} after SIGTERM:\n"
                      f"{server.output()[-3000:]}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 1 if report["errors"] or report["inconsistent_answers"] or server_status != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
