"""``reroute serve`` under real traffic: truthful readiness, a bounded queue ("server busy"), per-request
deadlines, Triton's metrics and our own counters. Real servers on loopback, each bounded in time."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed (pip install 'reroute[serve]')")
pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed (pip install 'reroute[serve]')")

from exporter.cli import main  # noqa: E402
from tests.test_triton import PROMPT, _free_port, _png, _Server  # noqa: E402

RESTARTS = 20
LONG = 96  # new tokens of a request that keeps the single generation slot busy for a while


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from exporter.onnx_export import export_artifact

    out = tmp_path_factory.mktemp("traffic") / "tiny"
    export_artifact("llava-tiny", "reroute", 0.25, out=str(out), parity_samples=0, quiet=True)
    return str(out)


def _get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def _infer(url: str, max_new_tokens: int, image: bytes | None = None) -> dict:
    from engines.serving.client import infer, make_client

    client = make_client(url, timeout=120.0)
    try:
        return infer(client, PROMPT, image if image is not None else _png(1), max_new_tokens)
    finally:
        client.close()


def _burst(url: str, count: int, max_new_tokens: int) -> list[tuple[str, object]]:
    """``count`` requests released at once: ("ok", tokens) or ("error", the server's line) each."""
    from engines.serving.client import server_message

    gate, results, lock = threading.Barrier(count), [], threading.Lock()
    image = _png(1)

    def one():
        gate.wait(30)
        try:
            outcome = ("ok", _infer(url, max_new_tokens, image)["generated_token_ids"])
        except Exception as exc:
            outcome = ("error", server_message(exc))
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(results) == count, "some requests of the burst never returned"
    return results


def _start(artifact, tmp_path, name, *flags) -> _Server:
    server = _Server(artifact, tmp_path / f"{name}.log", *flags)
    if not server.wait_ready():
        output = server.output()
        server.stop()
        pytest.fail(f"reroute serve exited early:\n{output[-3000:]}")
    return server


def _metric(text: str, name: str) -> float:
    """The value of one Prometheus sample line ``name value``, ``name`` with its labels."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in the metrics:\n{text}")


def test_request_fired_the_moment_the_model_is_ready_succeeds(artifact, tmp_path):
    """Poll /v2/models/reroute/ready as fast as a client would and fire at the first yes; 20 restarts."""
    answers = set()
    for restart in range(RESTARTS):
        server = _Server(artifact, tmp_path / f"ready-{restart}.log", "--max-batch", "1")
        try:
            deadline = time.monotonic() + 180
            while _get(f"{server.url}/v2/models/reroute/ready", 1.0)[0] != 200:
                assert server.proc.poll() is None, server.output()[-3000:]
                assert time.monotonic() < deadline, server.output()[-3000:]
                time.sleep(0.01)
            answers.add(tuple(_infer(server.url, 4)["generated_token_ids"]))  # must not raise
            deadline = time.monotonic() + 60
            while "reroute serve: ready:" not in server.output():  # our own line follows its warm-up request
                assert time.monotonic() < deadline and server.proc.poll() is None, server.output()[-3000:]
                time.sleep(0.05)
        finally:
            server.stop()
        assert server.proc.returncode == 0, server.output()[-3000:]
    assert len(answers) == 1  # the same greedy tokens after every restart


def test_burst_beyond_max_queue_gets_server_busy_then_serves(artifact, tmp_path):
    from engines.serving.client import BUSY_MESSAGE

    server = _start(artifact, tmp_path, "busy", "--max-batch", "1", "--max-queue", "2")
    try:
        results = _burst(server.url, 12, LONG)
        errors = [message for kind, message in results if kind == "error"]
        tokens = {tuple(t) for kind, t in results if kind == "ok"}
        assert errors and set(errors) == {BUSY_MESSAGE}, errors
        # Admitted: what Triton's queue policy holds (2) and at most the one request generating meanwhile.
        assert 2 <= len(results) - len(errors) <= 3
        solo = tuple(_infer(server.url, LONG)["generated_token_ids"])  # the server still answers normally
        assert tokens == {solo}
        triton = _get(f"http://127.0.0.1:{server.metrics_port}/metrics")[1]
        # (Triton 2.5x does not count the queue policy's rejections under any failure reason.)
        assert _metric(triton, 'nv_inference_request_success{model="reroute",version="1"}') \
            == len(results) - len(errors) + 2
        ours = _get(f"http://127.0.0.1:{server.stats_port}/metrics")[1]
        # the burst's successes, the solo request and the warm-up request
        assert _metric(ours, 'reroute_requests_total{outcome="ok"}') == len(results) - len(errors) + 2
        assert _metric(ours, 'reroute_batches_total{size="1"}') == len(results) - len(errors) + 2
        assert _metric(ours, "reroute_queue_length") == 0
        assert _metric(ours, 'reroute_request_latency_seconds{quantile="0.99"}') > 0
    finally:
        server.stop()


def test_requests_past_the_timeout_fail_with_one_line_and_the_next_succeeds(artifact, tmp_path):
    server = _start(artifact, tmp_path, "timeout", "--max-batch", "1", "--timeout", "1.5")
    try:
        results = _burst(server.url, 6, 4 * LONG)
        errors = [message for kind, message in results if kind == "error"]
        assert errors and all(m.startswith("timed out") and "\n" not in m for m in errors), errors
        # A batch already generating when its deadline passes runs to its end (its answer is dropped), so
        # the server is busy a while longer; then it answers short requests again.
        deadline = time.monotonic() + 120
        while True:
            try:
                assert _infer(server.url, 2)["generated_token_ids"]
                break
            except Exception as exc:
                assert time.monotonic() < deadline, f"no answer after the burst: {exc}"
                time.sleep(1.0)
    finally:
        server.stop()


@pytest.mark.parametrize("flags, needle", [
    (["--max-queue", "0"], "--max-queue must be in [1, 100000], got 0"),
    (["--timeout", "-1"], "--timeout must be in (0, 86400] seconds, got -1.0"),
    (["--metrics-port", "{port}"], "--port, --metrics-port and --stats-port must differ"),
])
def test_serve_refuses_bad_traffic_options(artifact, capsys, flags, needle):
    port = _free_port()
    code = main(["serve", artifact, "--port", str(port), *[f.format(port=port) for f in flags]])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_batcher_drops_jobs_whose_deadline_passed_while_waiting():
    """In-process: a job that expires behind a running batch is never run; its waiter gets DeadlineExceeded."""
    import numpy as np

    from engines.serving.pipeline import DeadlineExceeded, Job, MicroBatcher

    gate, ran = threading.Event(), []

    def run(jobs):
        ran.append([j.max_new_tokens for j in jobs])
        assert gate.wait(30)
        return [([1], "x") for _ in jobs]

    def job(n, deadline=None):
        return Job(np.zeros((1, 4), np.int64), np.zeros((1, 3, 2, 2), np.float32), 1, n, deadline=deadline)

    batcher = MicroBatcher(run, 4)
    try:
        first = batcher.submit(job(1))
        while not ran:
            time.sleep(0.01)
        late = batcher.submit(job(2, deadline=time.monotonic() + 0.05))
        fine = batcher.submit(job(3, deadline=time.monotonic() + 60))
        time.sleep(0.2)  # the first deadline passes while job 1 runs
        gate.set()
        assert first.result(30) == ([1], "x") and fine.result(30) == ([1], "x")
        with pytest.raises(DeadlineExceeded):
            late.result(30)
        assert ran == [[1], [3]] and batcher.batches == [1, 1]
        assert batcher.stats.batch_sizes == {1: 2} and batcher.stats.queue_length == 0
    finally:
        gate.set()
        batcher.close()


def test_stats_prometheus_text():
    from engines.serving.stats import ServeStats

    stats = ServeStats()
    for latency in (0.1, 0.2, 0.3, 0.4):
        stats.record_outcome("ok", latency)
    stats.record_outcome("timed_out")
    stats.record_batch(3)
    stats.record_batch(3)
    stats.record_batch(1)
    stats.set_queue_length(5)
    text = stats.prometheus_text()
    assert _metric(text, 'reroute_requests_total{outcome="ok"}') == 4
    assert _metric(text, 'reroute_requests_total{outcome="timed_out"}') == 1
    assert _metric(text, 'reroute_batches_total{size="3"}') == 2 and _metric(text, 'reroute_batches_total{size="1"}') == 1
    assert _metric(text, "reroute_queue_length") == 5
    assert _metric(text, 'reroute_request_latency_seconds{quantile="0.5"}') == pytest.approx(0.25)
    assert _metric(text, "reroute_request_latency_seconds_count") == 4
    assert _metric(text, "reroute_request_latency_seconds_sum") == pytest.approx(1.0)


def test_stats_count_decode_steps_by_running_batch_size():
    from engines.serving.stats import ServeStats

    stats = ServeStats()
    assert "reroute_decode_steps_total" not in stats.prometheus_text()  # MicroBatcher servers have none
    for size in (1, 3, 3):
        stats.record_decode_step(size)
    text = stats.prometheus_text()
    assert _metric(text, 'reroute_decode_steps_total{size="3"}') == 2
    assert _metric(text, 'reroute_decode_steps_total{size="1"}') == 1
