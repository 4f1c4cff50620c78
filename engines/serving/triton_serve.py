"""``reroute serve``: an artifact on a real Triton Inference Server (PyTriton).

PyTriton (``nvidia-pytriton`` on PyPI) bundles ``tritonserver`` and its Python
backend; the model ``reroute`` it serves is a Python callable in this process
that runs :class:`engines.ort_runner.OrtBackend` (ONNX Runtime, CPU) through
:func:`engines.generate.greedy_generate`, so a served request returns exactly
the tokens ``reroute generate --backend onnxruntime`` computes.

Model ``reroute`` (``max_batch_size: 0``, one request per Triton call):
inputs ``prompt`` (BYTES [1], UTF-8, exactly one ``<image>``), ``image``
(BYTES [1], an encoded image file), ``max_new_tokens`` (INT32 [1]); outputs
``text`` (BYTES [1]) and ``token_ids`` (INT64 [-1]).

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
from .pipeline import InferHandler, MicroBatcher, Pipeline

MODEL_NAME = "reroute"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
STARTUP_ATTEMPTS = 3
# A model instance of PyTriton's proxy that could not reach the first instance's handshake server in its 1 s
# (a timeout, or a refused connection while that server starts): a busy machine; starting again helps.
HANDSHAKE_FAILURES = ("get_config_from_handshake_server", "Timeout occurred while waiting for config file")
INSTALL_HINT = "pip install 'reroute[serve]' (nvidia-pytriton, tritonclient[http,grpc])"


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


def serve(artifact_dir: str | os.PathLike, options: ServeOptions | None = None, log=None,
          stop: threading.Event | None = None) -> int:
    """Serve an artifact until SIGINT / SIGTERM (or ``stop`` is set); returns 0 after a clean shutdown.

    Signal handlers are installed only when called from the main thread.
    """
    options = options or ServeOptions()
    host, port, backend, model_name = options.host, options.port, options.backend, options.model_name
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    check_port_free(host, port)
    if not is_loopback(host):
        log(f"reroute serve: warning: listening on {host}, reachable beyond this machine")
    try:
        from pytriton.model_config import ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig
    except ImportError as exc:
        raise RerouteError(f"reroute serve needs PyTriton ({exc}); {INSTALL_HINT}") from None

    pipeline = Pipeline(artifact_dir, backend, options.max_batch, options.threads, options.plugins)
    batcher = MicroBatcher(pipeline.run, pipeline.max_batch)
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
    config = TritonConfig(http_address=host, http_port=port, allow_grpc=False, allow_metrics=False,
                          exit_timeout_secs=5, log_verbose=0, log_file=triton_log)
    handlers = [InferHandler(pipeline, batcher) for _ in range(pipeline.max_batch)]
    triton, folders = None, set()
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
                config=ModelConfig(batching=False),
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
        log(f"reroute serve: model '{model_name}' ({pipeline.artifact.root}, {backend}, batch <= "
            f"{pipeline.max_batch}) on http://{host}:{port}; Ctrl-C or SIGTERM stops it")
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
            batcher.close()
            pipeline.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            shutil.rmtree(workspace, ignore_errors=True)
    log("reroute serve: stopped")
    return 0
