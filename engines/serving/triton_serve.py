"""``reroute serve``: an artifact on a real Triton Inference Server (PyTriton).

PyTriton (``nvidia-pytriton`` on PyPI) bundles ``tritonserver`` and its Python
backend; the model ``reroute`` it serves is a Python callable in this process
that runs :class:`engines.ort_runner.OrtBackend` (ONNX Runtime, CPU) through
:func:`engines.generate.greedy_generate`, so a served request returns exactly
the tokens ``reroute generate --backend onnxruntime`` computes.

Model ``reroute`` (``max_batch_size: 1``, one request per Triton call):
inputs ``prompt`` (BYTES [1, 1], UTF-8, exactly one ``<image>``), ``image``
(BYTES [1, 1], an encoded image file), ``max_new_tokens`` (INT32 [1, 1]);
outputs ``text`` (BYTES [1, 1]) and ``token_ids`` (INT64 [1, -1]). The batch
dimension of 1 is there because only a model with ``max_batch_size >= 1`` may
have Triton's dynamic batcher, whose queue policy bounds the queue
(``--max-queue``: beyond it Triton answers "Exceeds maximum queue size" at
once, which ``reroute client`` reports as "server busy") and drops requests
that waited past ``--timeout``. Generation batches are formed by
:mod:`engines.serving.pipeline` (continuous batching, engines/serving/continuous.py), not by Triton.

Readiness: Triton's ``/v2/health/ready`` says only that tritonserver is up
(PyTriton loads the model after that); probe ``/v2/models/<name>/ready``.
``reroute serve`` prints its "ready" line only after a real request through
HTTP has been answered. Metrics: Triton's on ``--metrics-port``, ours
(queue length, batch sizes, latencies; :mod:`engines.serving.stats`) on
``--stats-port``.

PyTriton quirks handled here: its Python-backend stub needs this interpreter's
libpython (LD_LIBRARY_PATH), tensors go base64 over its sockets
(``PYTRITON_NO_TENSORSTORE``: no shared-memory manager process to start slowly
or outlive the server), a start whose model instances miss PyTriton's 1 s
handshake on a busy machine is retried (3 tries), and what tritonserver's
always non-graceful exit leaves (an orphaned stub, its shared memory, its
model folder) is cleaned up.

Requests are validated, batched and run by :mod:`engines.serving.pipeline`;
``reroute client`` is :mod:`engines.serving.client`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import signal
import socket
import sys
import sysconfig
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import RerouteError
from .pipeline import InferHandler, Pipeline
from .protocol import INSTALL_HINT, MODEL_NAME
from .stats import ServeStats, start_stats_server

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_QUEUE = 32
STARTUP_ATTEMPTS = 3
# A model instance of PyTriton's proxy that could not reach the first instance's handshake server in its 1 s
# (a timeout, or a refused connection while that server starts): a busy machine; starting again helps.
HANDSHAKE_FAILURES = ("get_config_from_handshake_server", "Timeout occurred while waiting for config file")


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on (try to bind it ourselves first)."""
    if not 1 <= port <= 65535:
        raise RerouteError(f"--port must be in [1, 65535], got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise RerouteError(f"cannot resolve --host {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no obstacle
        try:
            probe.bind(address)
        except OSError as exc:
            reason = "already in use" if exc.errno in (98, 48) else (exc.strerror or str(exc))
            raise RerouteError(f"cannot serve on {host}:{port}: port {reason}") from None


def is_loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM))
    except (socket.gaierror, ValueError):
        return False


def _python_backend_env() -> None:
    """Let tritonserver's Python-backend stub load this interpreter's libpython.

    The stub links ``libpython3.X.so.1.0`` by name; on machines where the system
    one differs from the running interpreter (pyenv, conda), it would pair the
    system library with this interpreter's standard library and fail at start
    (e.g. ``'_thread.RLock' object has no attribute '_recursion_count'``).
    """
    libdir, library = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if not (libdir and library and sysconfig.get_config_var("Py_ENABLE_SHARED")):
        return
    if not (Path(libdir) / library).exists():
        return
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir not in current.split(os.pathsep):
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, current) if p)


def _quiet_pytriton_logs() -> None:
    """PyTriton logs a traceback for every refused request; the client already gets the message."""
    for name in ("pytriton", "pytriton.proxy", "pytriton.proxy.inference", "pytriton.proxy.communication"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _processes_from(workspace: str) -> dict[int, list[str]]:
    """pid -> argv of live processes whose executable lies in ``workspace``: this server's tritonserver and
    its Python-backend stubs (PyTriton copies both there). Empty where /proc is not available."""
    found: dict[int, list[str]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    prefix = os.path.join(workspace, "")
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
            zombie = "\nState:\tZ" in (entry / "status").read_text()
        except OSError:
            continue
        if argv and argv[0].startswith(prefix) and not zombie:
            found[int(entry.name)] = argv
    return found


def _stub_model_folders(processes: dict[int, list[str]]) -> set[Path]:
    """The /tmp/folderXXXXXX copies tritonserver made of the model (a stub's first argument is its model.py)."""
    folders = set()
    for argv in processes.values():
        if len(argv) > 1 and argv[1].endswith("/model.py"):
            folder = Path(argv[1]).parent.parent
            if folder.parent == Path("/tmp") and folder.name.startswith("folder"):
                folders.add(folder)
    return folders


def _clean_up_after_triton(workspace: str, folders: set[Path], grace_s: float = 5.0) -> None:
    """What a stopped tritonserver can leave behind: PyTriton's exit is never graceful (its proxy models
    outlive tritonserver's exit timeout), and now and then a Python-backend stub survives it, orphaned,
    with its shared-memory region and tritonserver's model folder. End this server's leftovers only."""
    import time

    for _ in range(3):  # again, in case a tritonserver still starting up spawned a stub meanwhile
        left = _processes_from(workspace)
        if not left:
            break
        folders = folders | _stub_model_folders(left)
        for pid in left:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = {pid: argv for pid, argv in _processes_from(workspace).items() if pid in left}
        for pid in left:  # the stubs ignore SIGTERM when stuck
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    shm = Path("/dev/shm")
    if shm.is_dir():
        for region in shm.glob(f"pytrtion{os.getpid()}-*"):  # PyTriton names them after this process
            try:
                region.unlink()
            except OSError:
                pass


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "(no tritonserver log)"
    return "tritonserver log (last lines):\n" + "\n".join(tail)


@dataclass
class ServeOptions:
    """What ``reroute serve`` fills from its flags. ``max_batch``: largest batch of requests run together
    (None: the artifact's capacity); ``threads``: ONNX Runtime intra-op threads (None: its default);
    ``plugins``: TensorRT with the plugin engines."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    backend: str = "onnxruntime"
    max_batch: int | None = None
    model_name: str = MODEL_NAME
    threads: int | None = None
    plugins: bool = True
    max_queue: int = DEFAULT_MAX_QUEUE
    timeout: float | None = None  # seconds per request; None: no deadline
    metrics_port: int | None = None  # None: port + 2 (Triton's own convention, 8000 / 8002)
    stats_port: int | None = None  # None: metrics port + 1

    def ports(self) -> tuple[int, int, int]:
        """(HTTP, Triton metrics, our stats) ports, checked to be distinct."""
        metrics = self.port + 2 if self.metrics_port is None else self.metrics_port
        stats = metrics + 1 if self.stats_port is None else self.stats_port
        if len({self.port, metrics, stats}) != 3:
            raise RerouteError(f"--port, --metrics-port and --stats-port must differ, got {self.port}, {metrics}, "
                               f"{stats}")
        return self.port, metrics, stats

    def check(self) -> None:
        if not 1 <= self.max_queue <= 100_000:
            raise RerouteError(f"--max-queue must be in [1, 100000], got {self.max_queue}")
        if self.timeout is not None and not 0 < self.timeout <= 86_400:
            raise RerouteError(f"--timeout must be in (0, 86400] seconds, got {self.timeout}")


def _model_config(options: ServeOptions):
    """Triton's model config: max_batch_size 1 and a dynamic batcher, for its queue policy only."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, TimeoutAction

    timeout_us = 0 if options.timeout is None else max(1, int(options.timeout * 1e6))
    policy = QueuePolicy(timeout_action=TimeoutAction.REJECT, default_timeout_microseconds=timeout_us,
                         allow_timeout_override=False, max_queue_size=options.max_queue)
    return ModelConfig(batching=True, max_batch_size=1,
                       batcher=DynamicBatcher(max_queue_delay_microseconds=0, default_queue_policy=policy))


def _answer_once(host: str, port: int, model_name: str, prompt: str, timeout: float = 120.0) -> None:
    """One real request through HTTP (a synthetic image, one new token): the model answers, or RerouteError."""
    import io

    from .protocol import infer, make_client, server_message

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 80, 40)).save(buf, format="PNG")
    address = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    client = make_client(f"http://{address}:{port}" if ":" not in address else f"http://[{address}]:{port}", timeout)
    try:
        infer(client, prompt, buf.getvalue(), 1, model_name)
    except Exception as exc:
        raise RerouteError(f"the model did not answer its first request: {server_message(exc)}") from None
    finally:
        client.close()


def serve(artifact_dir: str | os.PathLike, options: ServeOptions | None = None, log=None,
          stop: threading.Event | None = None) -> int:
    """Serve an artifact until SIGINT / SIGTERM (or ``stop`` is set); returns 0 after a clean shutdown.

    Signal handlers are installed only when called from the main thread.
    """
    options = options or ServeOptions()
    host, backend, model_name = options.host, options.backend, options.model_name
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    options.check()
    port, metrics_port, stats_port = options.ports()
    for p in (port, metrics_port, stats_port):
        check_port_free(host, p)
    if not is_loopback(host):
        log(f"reroute serve: warning: listening on {host}, reachable beyond this machine")
    try:
        from pytriton.model_config import Tensor
        from pytriton.triton import Triton, TritonConfig
    except ImportError as exc:
        raise RerouteError(f"reroute serve needs PyTriton ({exc}); {INSTALL_HINT}") from None

    pipeline = Pipeline(artifact_dir, backend, options.max_batch, options.threads, options.plugins)
    stats = ServeStats()
    batcher = pipeline.make_batcher(stats)
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    _python_backend_env()
    # Tensors travel base64-encoded over PyTriton's sockets instead of its shared-memory tensor store: our
    # requests are small, and the store's manager process makes the first model instance so slow to start
    # on a busy machine that the others miss PyTriton's 1 s handshake (and it can outlive the server).
    os.environ.setdefault("PYTRITON_NO_TENSORSTORE", "1")
    _quiet_pytriton_logs()
    workspace = tempfile.mkdtemp(prefix="reroute-triton-")
    triton_log = Path(workspace) / "tritonserver.log"
    config = TritonConfig(http_address=host, http_port=port, allow_grpc=False, allow_metrics=True,
                          allow_cpu_metrics=True, allow_gpu_metrics=False,
                          metrics_port=metrics_port, exit_timeout_secs=5, log_verbose=0,
                          log_file=triton_log)
    handlers = [InferHandler(pipeline, batcher, options.timeout) for _ in range(pipeline.max_batch)]
    triton, folders, stats_server = None, set(), None
    try:
        for attempt in range(1, STARTUP_ATTEMPTS + 1):
            if stop.is_set():
                return 0
            triton = Triton(config=config, workspace=os.path.join(workspace, f"pytriton-{attempt}"))
            triton.bind(
                model_name=model_name,
                infer_func=handlers,
                inputs=[Tensor(name="prompt", dtype=bytes, shape=(1,)),
                        Tensor(name="image", dtype=bytes, shape=(1,)),
                        Tensor(name="max_new_tokens", dtype=np.int32, shape=(1,))],
                outputs=[Tensor(name="text", dtype=bytes, shape=(1,)),
                         Tensor(name="token_ids", dtype=np.int64, shape=(-1,))],
                config=_model_config(options),
                strict=True,
            )
            try:
                triton.run()
                break
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                try:
                    triton.stop()
                finally:
                    _clean_up_after_triton(workspace, set())
                triton = None
                if not any(m in reason for m in HANDSHAKE_FAILURES) or attempt == STARTUP_ATTEMPTS:
                    log(_log_tail(triton_log))
                    raise RerouteError(f"Triton did not start on {host}:{port}: {reason}") from None
                # PyTriton's model instances wait only 1 s for each other's handshake: a busy machine misses it.
                log(f"reroute serve: Triton's model instances missed PyTriton's 1 s handshake (a busy CPU?); "
                    f"starting again ({attempt + 1}/{STARTUP_ATTEMPTS})")
        folders = _stub_model_folders(_processes_from(workspace))
        stats_server = start_stats_server(stats, host, stats_port)
        # "ready" means a request is answered, not only that Triton is up
        _answer_once(host, port, model_name, pipeline.probe_prompt)
        log(f"reroute serve: ready: model '{model_name}' ({pipeline.artifact.root}, {backend}, batch <= "
            f"{pipeline.max_batch}, queue <= {options.max_queue}, timeout "
            f"{'none' if options.timeout is None else f'{options.timeout:g} s'}) on http://{host}:{port}; "
            f"probe /v2/models/{model_name}/ready; metrics http://{host}:{metrics_port}/metrics, "
            f"http://{host}:{stats_port}/metrics; Ctrl-C or SIGTERM stops it")
        while not stop.wait(0.5):
            if not triton.is_alive() and not stop.is_set():  # (a terminal's Ctrl-C reaches tritonserver too)
                log(_log_tail(triton_log))
                raise RerouteError("Triton Inference Server stopped unexpectedly")
        log("reroute serve: stopping")
    finally:
        try:
            if triton is not None:
                triton.stop()
        finally:
            _clean_up_after_triton(workspace, folders)
            if stats_server is not None:
                stats_server.shutdown()
            batcher.close()
            pipeline.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            shutil.rmtree(workspace, ignore_errors=True)
    log("reroute serve: stopped")
    return 0
