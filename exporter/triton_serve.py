"""``reroute serve`` and ``reroute client``: an artifact on a real Triton Inference Server (PyTriton).

PyTriton (``nvidia-pytriton`` on PyPI) bundles ``tritonserver`` and its Python
backend; the model ``reroute`` it serves is a Python callable in this process
that runs :class:`engines.ort_runner.OrtBackend` (ONNX Runtime, CPU) through
:func:`engines.generate.greedy_generate`, so a served request returns exactly
the tokens ``reroute generate --backend onnxruntime`` computes.

Model ``reroute`` (``max_batch_size: 0``, one request per Triton call):
inputs ``prompt`` (BYTES [1], UTF-8, exactly one ``<image>``), ``image``
(BYTES [1], an encoded image file), ``max_new_tokens`` (INT32 [1]); outputs
``text`` (BYTES [1]) and ``token_ids`` (INT64 [-1]).

Batching. PyTriton can only fail a whole Triton batch at once, so Triton's
own dynamic batcher would let one malformed request fail its neighbours.
Instead Triton runs ``max_batch`` model instances, each handling one request:
it validates and preprocesses the request on its own thread (errors go back
to that client only), then hands it to one generation worker. The worker takes
every waiting request with the same prompt length and image position (the
graphs need one ``visual_start`` and equal lengths), up to the artifact's
``capacity.max_batch``, and runs them as one batch; ``max_new_tokens`` may
differ (the batch runs to the largest and each answer is cut to its own).
Batched and single runs give the same tokens on the tiny model (tests check
it); ``--max-batch 1`` turns batching off.

PyTriton quirks handled here: its Python-backend stub needs this interpreter's
libpython (LD_LIBRARY_PATH), tensors go base64 over its sockets
(``PYTRITON_NO_TENSORSTORE``: no shared-memory manager process to start slowly
or outlive the server), a start whose model instances miss PyTriton's 1 s
handshake on a busy machine is retried (3 tries), and what tritonserver's
always non-graceful exit leaves (an orphaned stub, its shared memory, its
model folder) is cleaned up.
"""

from __future__ import annotations

import io
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
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from .errors import RerouteError
from .inputs import IMAGE_PLACEHOLDER, ImageError, decode_image, visual_span_start

MODEL_NAME = "reroute"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
MAX_NEW_TOKENS_LIMIT = 4096  # the same limit as exporter.generation.check_max_new_tokens
SERVE_BACKENDS = ("onnxruntime", "tensorrt")
STARTUP_ATTEMPTS = 3
# A model instance of PyTriton's proxy that could not reach the first instance's handshake server in its 1 s
# (a timeout, or a refused connection while that server starts): a busy machine; starting again helps.
HANDSHAKE_FAILURES = ("get_config_from_handshake_server", "Timeout occurred while waiting for config file")
INSTALL_HINT = "pip install 'reroute[serve]' (nvidia-pytriton, tritonclient[http,grpc])"


class BadRequest(ValueError):
    """A request the server refuses; the message goes back to that client."""


class RequestRefused(Exception):
    """What the inference callable raises for a bad request: an ordinary error, so the model keeps serving.

    PyTriton sends the client ``traceback.format_exception`` of the error; with
    no traceback that is one line, ``exporter.triton_serve.RequestRefused:
    <message>``, instead of a stack of this server's source paths.
    """

    @property
    def __traceback__(self):
        return None

    @__traceback__.setter
    def __traceback__(self, value):
        pass


# -- the generation side ------------------------------------------------------------------------------


@dataclass
class Job:
    input_ids: np.ndarray  # [1, T] int64
    pixel_values: np.ndarray  # [1, 3, H, W] float32
    visual_start: int
    max_new_tokens: int
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> tuple[int, int]:
        return self.input_ids.shape[1], self.visual_start


class Pipeline:
    """Validation + preprocessing of one request, and batched greedy generation over an artifact."""

    def __init__(self, artifact_dir: str | os.PathLike, backend: str = "onnxruntime", max_batch: int | None = None,
                 threads: int | None = None, plugins: bool = True):
        from .artifact import open_artifact

        if backend not in SERVE_BACKENDS:
            raise RerouteError(f"unknown serve backend {backend!r}; choose from {', '.join(SERVE_BACKENDS)}")
        self.artifact = open_artifact(artifact_dir)
        model = self.artifact.manifest["model"]
        self.image_token_id, self.num_visual = model["image_token_id"], model["num_visual"]
        self.eos_token_id = model["eos_token_id"]
        self.capacity = self.artifact.capacity
        limit = self.capacity["max_batch"]
        self.max_batch = limit if max_batch is None else max_batch
        if not 1 <= self.max_batch <= limit:
            raise RerouteError(f"--max-batch must be in [1, {limit}] (the artifact's capacity), got {self.max_batch}")
        self.processor = self.artifact.processor()
        self.backend = _make_backend(self.artifact, backend, threads, plugins)
        self._prep_lock = threading.Lock()  # the fast tokenizer is not safe to call from threads at once

    def prepare(self, prompt: bytes, image: bytes, max_new_tokens: int) -> Job:
        """Check one request and turn it into model inputs; BadRequest names the problem."""
        try:
            text = prompt.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("input 'prompt' is not valid UTF-8") from None
        count = text.count(IMAGE_PLACEHOLDER)
        if count != 1:
            raise BadRequest(f"input 'prompt' must contain exactly one {IMAGE_PLACEHOLDER} placeholder, found {count}")
        if not 1 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise BadRequest(f"input 'max_new_tokens' must be in [1, {MAX_NEW_TOKENS_LIMIT}], got {max_new_tokens}")
        if not image:
            raise BadRequest("input 'image' is empty (expected the bytes of an encoded image)")
        # A cheap bound before tokenizing: no token of a real vocabulary spans 64 characters.
        if len(text) > 64 * self.capacity["max_sequence"]:
            raise BadRequest(f"input 'prompt' is far beyond the exported capacity of "
                             f"{self.capacity['max_sequence']} tokens ({len(text)} characters)")
        try:
            picture = decode_image(io.BytesIO(image), "input 'image'")
        except ImageError as exc:  # unreadable, truncated or over the pixel limit: this request only
            raise BadRequest(str(exc)) from None
        with self._prep_lock:
            batch = self.processor(images=[picture], text=[text], return_tensors="np")
        input_ids = np.asarray(batch["input_ids"], dtype=np.int64)
        try:
            start = visual_span_start(input_ids, self.image_token_id, self.num_visual)
        except RerouteError as exc:
            raise BadRequest(f"input 'prompt': {exc}") from None
        total = input_ids.shape[1] + max_new_tokens
        if total > self.capacity["max_sequence"]:
            raise BadRequest(f"input 'prompt' is {input_ids.shape[1]} tokens; with max_new_tokens {max_new_tokens} "
                             f"that exceeds the exported capacity of {self.capacity['max_sequence']} tokens")
        return Job(input_ids, np.asarray(batch["pixel_values"], dtype=np.float32), start, max_new_tokens)

    def run(self, jobs: list[Job]) -> list[tuple[list[int], str]]:
        """Generate for jobs that share a key, as one batch: (token ids, text) per job."""
        from engines.generate import greedy_generate

        input_ids = np.concatenate([j.input_ids for j in jobs])
        pixels = np.concatenate([j.pixel_values for j in jobs])
        steps = max(j.max_new_tokens for j in jobs)
        gen = greedy_generate(self.backend, input_ids, pixels, jobs[0].visual_start, steps, self.eos_token_id)
        out = []
        for job, tokens in zip(jobs, gen.generated):
            tokens = [int(t) for t in tokens[: job.max_new_tokens]]
            out.append((tokens, self.processor.tokenizer.decode(tokens, skip_special_tokens=True)))
        return out

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


def _make_backend(artifact, backend: str, threads: int | None, plugins: bool = True):
    if backend == "onnxruntime":
        from engines.ort_runner import OrtBackend

        return OrtBackend(artifact, threads=threads)
    from engines.trt_runner import TrtBackend  # one-line RerouteErrors for missing TensorRT or engines

    return TrtBackend(artifact, plugins=plugins)


class MicroBatcher:
    """One worker thread runs jobs; waiting jobs with the same key go together, up to max_batch."""

    def __init__(self, run, max_batch: int):
        self._run, self._max_batch = run, max_batch
        self._pending: list[Job] = []
        self._cv = threading.Condition()
        self._closed = False
        self.batches: list[int] = []  # sizes of the batches run (for tests and logs)
        self._thread = threading.Thread(target=self._loop, name="reroute-generate", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Future:
        with self._cv:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._pending.append(job)
            self._cv.notify()
        return job.future

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if not self._pending:
                    return
                key = self._pending[0].key
                group = [j for j in self._pending if j.key == key][: self._max_batch]
                self._pending = [j for j in self._pending if not any(j is g for g in group)]
            self.batches.append(len(group))
            try:
                results = self._run(group)
            except Exception as exc:  # a failing run fails its own jobs, not the server
                for job in group:
                    job.future.set_exception(exc)
            else:
                for job, result in zip(group, results):
                    job.future.set_result(result)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            for job in self._pending:
                job.future.set_exception(RuntimeError("the server is shutting down"))
            self._pending = []
            self._cv.notify_all()
        self._thread.join(timeout=30)


# -- the Triton side ----------------------------------------------------------------------------------


def _scalar(request, name: str, kind: str):
    """One element of input ``name``; BadRequest for a missing input or a wrong dtype / shape."""
    try:
        value = request[name]
    except KeyError:
        raise BadRequest(f"missing input '{name}'") from None
    value = np.asarray(value)
    if value.size != 1:
        raise BadRequest(f"input '{name}' must have shape [1], got {list(value.shape)}")
    item = value.reshape(-1)[0]
    if kind == "bytes":
        if value.dtype.kind not in "OSU" or not isinstance(item, (bytes, str)):
            raise BadRequest(f"input '{name}' must be BYTES, got {value.dtype}")
        return item.encode("utf-8") if isinstance(item, str) else bytes(item)
    if value.dtype.kind not in "iu":
        raise BadRequest(f"input '{name}' must be INT32, got {value.dtype}")
    return int(item)


class InferHandler:
    """The PyTriton inference callable (one per Triton model instance; they share the batcher)."""

    def __init__(self, pipeline: Pipeline, batcher: MicroBatcher):
        self.pipeline, self.batcher = pipeline, batcher

    def __call__(self, requests):
        responses = []
        for request in requests:
            try:
                job = self.pipeline.prepare(_scalar(request, "prompt", "bytes"), _scalar(request, "image", "bytes"),
                                            _scalar(request, "max_new_tokens", "int"))
            except BadRequest as exc:
                # Not PyTritonUnrecoverableError: that would stop the model; this fails one request only.
                raise RequestRefused(str(exc)) from None
            tokens, text = self.batcher.submit(job).result()
            responses.append({"text": np.array([text.encode("utf-8")], dtype=np.object_),
                              "token_ids": np.asarray(tokens, dtype=np.int64)})
        return responses


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


def serve(artifact_dir: str | os.PathLike, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          backend: str = "onnxruntime", max_batch: int | None = None, model_name: str = MODEL_NAME,
          threads: int | None = None, log=None, stop: threading.Event | None = None, plugins: bool = True) -> int:
    """Serve an artifact until SIGINT / SIGTERM (or ``stop`` is set); returns 0 after a clean shutdown.

    Signal handlers are installed only when called from the main thread.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    check_port_free(host, port)
    if not is_loopback(host):
        log(f"reroute serve: warning: listening on {host}, reachable beyond this machine")
    try:
        from pytriton.model_config import ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig
    except ImportError as exc:
        raise RerouteError(f"reroute serve needs PyTriton ({exc}); {INSTALL_HINT}") from None

    pipeline = Pipeline(artifact_dir, backend, max_batch, threads, plugins)
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


# -- the client ---------------------------------------------------------------------------------------


def _endpoint(url: str) -> tuple[str, bool]:
    """'http://host:port' (or 'host:port') -> ('host:port', ssl)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https"):
        raise RerouteError(f"--url must be http://HOST:PORT, got {url!r}")
    if not parts.hostname:
        raise RerouteError(f"--url has no host: {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise RerouteError(f"--url has an invalid port: {url!r}") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}", parts.scheme == "https"


def make_client(url: str, timeout: float = 600.0):
    try:
        import tritonclient.http as httpclient
    except ImportError as exc:
        raise RerouteError(f"reroute client needs tritonclient ({exc}); {INSTALL_HINT}") from None
    endpoint, ssl = _endpoint(url)
    return httpclient.InferenceServerClient(endpoint, ssl=ssl, connection_timeout=min(timeout, 60.0),
                                            network_timeout=timeout)


def infer(client, prompt: str | bytes, image: bytes, max_new_tokens: int, model: str = MODEL_NAME) -> dict:
    """One request on an open client: {'text', 'generated_token_ids'}; server errors raise as they come."""
    import tritonclient.http as httpclient

    prompt = prompt.encode("utf-8") if isinstance(prompt, str) else prompt
    inputs = [httpclient.InferInput("prompt", [1], "BYTES"), httpclient.InferInput("image", [1], "BYTES"),
              httpclient.InferInput("max_new_tokens", [1], "INT32")]
    inputs[0].set_data_from_numpy(np.array([prompt], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.array([image], dtype=np.object_))
    inputs[2].set_data_from_numpy(np.array([max_new_tokens], dtype=np.int32))
    outputs = [httpclient.InferRequestedOutput("text"), httpclient.InferRequestedOutput("token_ids")]
    result = client.infer(model, inputs, outputs=outputs)
    text = result.as_numpy("text").reshape(-1)[0]
    return {"text": text.decode("utf-8") if isinstance(text, bytes) else str(text),
            "generated_token_ids": [int(t) for t in result.as_numpy("token_ids").reshape(-1)]}


def client_generate(url: str, image_path: str, prompt: str, max_new_tokens: int = 32, model: str = MODEL_NAME,
                    timeout: float = 600.0) -> dict:
    """``reroute client``: read the image file, send one request, return the answer (RerouteError on failure)."""
    from tritonclient.utils import InferenceServerException

    try:
        image = Path(image_path).read_bytes()
    except FileNotFoundError:
        raise RerouteError(f"image not found: {image_path}") from None
    except OSError as exc:
        raise RerouteError(f"cannot read image {image_path}: {exc.strerror}") from None
    client = make_client(url, timeout)
    try:
        return infer(client, prompt, image, max_new_tokens, model)
    except InferenceServerException as exc:
        raise RerouteError(f"server refused the request: {server_message(exc)}") from None
    except OSError as exc:
        raise RerouteError(f"cannot reach Triton at {url}: {exc.strerror or exc}") from None
    finally:
        client.close()


def server_message(exc) -> str:
    """The useful line of a Triton error (PyTriton sends a traceback whose last line names the problem)."""
    message = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    for line in reversed(lines):
        for marker in ("RequestRefused: ", "Model execute error: "):
            if marker in line:
                return line.split(marker, 1)[1]
    return " ".join(lines[-1:]) if lines else str(exc)
