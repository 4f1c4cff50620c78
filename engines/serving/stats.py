"""``reroute serve``'s own counters, beside Triton's metrics: queue length, batch sizes, latencies.

Triton's metrics endpoint (``--metrics-port``) counts requests, queue time and
executions per model; it cannot see how this server groups requests into
generation batches (each Triton execution is one request), so the batch sizes,
the length of the generation queue and the end-to-end latencies are counted
here and served in Prometheus text format at ``http://HOST:STATS_PORT/metrics``.
"""

from __future__ import annotations

import threading
from collections import Counter, deque

import numpy as np

# Outcomes a request can have; each is a counter of its own.
OUTCOMES = ("ok", "refused", "timed_out", "failed")
LATENCY_WINDOW = 10_000  # the quantiles cover the latest requests only, so memory stays bounded


class ServeStats:
    """Thread-safe counters; ``prometheus_text`` renders them."""

    def __init__(self):
        self._lock = threading.Lock()
        self.outcomes: Counter = Counter()
        self.batch_sizes: Counter = Counter()
        self.decode_sizes: Counter = Counter()  # continuous batching: running-batch size at each decode step
        self.latencies: deque = deque(maxlen=LATENCY_WINDOW)
        self.queue_length = 0

    def record_outcome(self, outcome: str, latency_s: float | None = None) -> None:
        with self._lock:
            self.outcomes[outcome] += 1
            if latency_s is not None:
                self.latencies.append(latency_s)

    def record_batch(self, size: int) -> None:
        with self._lock:
            self.batch_sizes[size] += 1

    def record_decode_step(self, size: int) -> None:
        with self._lock:
            self.decode_sizes[size] += 1

    def set_queue_length(self, length: int) -> None:
        with self._lock:
            self.queue_length = length

    def latency_quantiles(self) -> dict[str, float]:
        with self._lock:
            values = np.array(self.latencies) if self.latencies else None
        if values is None:
            return {}
        return {q: float(np.quantile(values, float(q))) for q in ("0.5", "0.9", "0.99")}

    def prometheus_text(self) -> str:
        quantiles = self.latency_quantiles()
        with self._lock:
            outcomes, batches, queue = dict(self.outcomes), dict(self.batch_sizes), self.queue_length
            steps = dict(self.decode_sizes)
            count, total = len(self.latencies), float(sum(self.latencies))
        lines = ["# HELP reroute_requests_total requests answered, by outcome",
                 "# TYPE reroute_requests_total counter"]
        lines += [f'reroute_requests_total{{outcome="{o}"}} {outcomes.get(o, 0)}' for o in OUTCOMES]
        lines += ["# HELP reroute_queue_length requests waiting for the generation worker",
                  "# TYPE reroute_queue_length gauge", f"reroute_queue_length {queue}",
                  "# HELP reroute_batches_total generation batches started (prefilled together), by batch size",
                  "# TYPE reroute_batches_total counter"]
        lines += [f'reroute_batches_total{{size="{s}"}} {n}' for s, n in sorted(batches.items())]
        if steps:  # continuous batching: how full the running batch was
            lines += ["# HELP reroute_decode_steps_total decode steps run, by running-batch size",
                      "# TYPE reroute_decode_steps_total counter"]
            lines += [f'reroute_decode_steps_total{{size="{s}"}} {n}' for s, n in sorted(steps.items())]
        lines += ["# HELP reroute_request_latency_seconds end-to-end latency of answered requests "
                  f"(quantiles over the latest {LATENCY_WINDOW})",
                  "# TYPE reroute_request_latency_seconds summary"]
        lines += [f'reroute_request_latency_seconds{{quantile="{q}"}} {v:.6f}' for q, v in quantiles.items()]
        lines += [f"reroute_request_latency_seconds_count {count}", f"reroute_request_latency_seconds_sum {total:.6f}"]
        return "\n".join(lines) + "\n"


def start_stats_server(stats: ServeStats, host: str, port: int):
    """Serve ``stats`` at http://host:port/metrics on a daemon thread; returns the server (``shutdown()`` it)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            body = stats.prometheus_text().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # scrapes are not worth a log line each
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="reroute-stats", daemon=True).start()
    return server
