"""Triton deployment: model repository configs, the BLS pipeline model, ``reroute serve`` / ``client``, load test.

The server tests start ``reroute serve`` (PyTriton's bundled tritonserver, CPU)
on a free loopback port in a child process and stop it with SIGINT at the end.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed (pip install 'reroute[serve]')")
pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed (pip install 'reroute[serve]')")
pytest.importorskip("tritonclient.grpc.model_config_pb2",
                    reason="tritonclient[grpc] is not installed (pip install 'reroute[serve]')")

from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from engines.errors import RerouteError  # noqa: E402
from exporter.cli import main  # noqa: E402
from exporter.samples import synthetic_image  # noqa: E402
from tests.test_reliability import png_header, truncated_png  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PROMPT = "USER: <image>\nWhat is it? ASSISTANT:"
OTHER_PROMPT = "USER: <image>\nDescribe the left part of the picture. ASSISTANT:"
STEPS = 6


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    synthetic_image(seed, size=(300 + 10 * seed, 260 + 7 * seed)).save(buf, format="PNG")
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from exporter.onnx_export import export_artifact

    out = tmp_path_factory.mktemp("triton") / "tiny"
    export_artifact("llava-tiny", "reroute", 0.25, out=str(out), parity_samples=0, quiet=True)
    return str(out)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("triton-images")
    paths = []
    for seed in range(5):
        path = root / f"img{seed}.png"
        path.write_bytes(_png(seed))
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def reference(artifact):
    """Token ids as ``reroute generate --backend onnxruntime`` computes them (the library function)."""
    from engines.backends import artifact_backend
    from exporter.generation import run_generate

    processor, image_token_id, num_visual, backend, eos, art = artifact_backend(artifact, "onnxruntime")
    cache = {}

    def generate(image: str, prompt: str = PROMPT, steps: int = STEPS) -> list[int]:
        key = (image, prompt, steps)
        if key not in cache:
            result, _ = run_generate(backend, processor, image_token_id, num_visual, image, prompt, False, steps,
                                     eos, art)
            cache[key] = result
        return cache[key]

    yield generate
    backend.close()


class _Server:
    def __init__(self, artifact: str, log: Path, *flags: str):
        self.port, self.metrics_port, self.stats_port = _free_port(), _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "exporter.cli", "serve", artifact, "--port", str(self.port),
                                      "--metrics-port", str(self.metrics_port), "--stats-port", str(self.stats_port),
                                      *flags], cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> bool:
        """True once the model is ready; False if the server exited first (its output says why)."""
        import tritonclient.http as httpclient

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            client = httpclient.InferenceServerClient(f"127.0.0.1:{self.port}", connection_timeout=5.0)
            try:
                if client.is_server_ready() and client.is_model_ready("reroute"):
                    return True
            except Exception:
                pass
            finally:
                client.close()
            time.sleep(0.3)
        pytest.fail(f"reroute serve not ready after {timeout} s:\n{self.output()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM (so the server cleans up after tritonserver), SIGKILL only if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.log.close()


@pytest.fixture(scope="module")
def server(artifact, tmp_path_factory):
    logs = tmp_path_factory.mktemp("serve")
    srv = _Server(artifact, logs / "serve.log")
    try:
        if not srv.wait_ready():  # e.g. another process took the free port first: one more try
            first = srv.output()
            srv.stop()
            srv = _Server(artifact, logs / "serve-2.log")
            if not srv.wait_ready():
                pytest.fail(f"reroute serve exited early (twice):\n{first[-2000:]}\n---\n{srv.output()[-2000:]}")
            warnings.warn(f"reroute serve exited early once, started on a second try:\n{first[-2000:]}")
        yield srv
    finally:
        srv.stop()


@pytest.fixture()
def client(server):
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=120.0)
    yield c
    c.close()


def _inputs(prompt=PROMPT.encode(), image=None, max_new_tokens=STEPS, drop=None, overrides=None):
    """tritonclient inputs for one request; ``overrides`` maps a name to (numpy array, Triton dtype)."""
    import tritonclient.http as httpclient

    values = {"prompt": (np.array([prompt], dtype=np.object_), "BYTES"),
              "image": (np.array([image if image is not None else _png(0)], dtype=np.object_), "BYTES"),
              "max_new_tokens": (np.array([max_new_tokens], dtype=np.int32), "INT32")}
    values.update(overrides or {})
    out = []
    for name, (array, dtype) in values.items():
        if name == drop:
            continue
        array = array.reshape(1, *array.shape)  # reroute serve's model has max_batch_size 1: a batch of one
        tensor = httpclient.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out


# -- (c) the model repository ---------------------------------------------------------------------------


def _parse(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_deploy_onnxruntime_configs_parse(artifact, tmp_path):
    from engines.artifact import open_artifact
    from engines.serving.deploy import GRAPHS, PIPELINE_MODEL, graph_model_name, write_triton_repo

    manifest = open_artifact(artifact).manifest
    repo = write_triton_repo(artifact, tmp_path / "repo")
    for graph in GRAPHS:
        model_dir = repo / graph_model_name(graph)
        config = _parse(model_dir / "config.pbtxt")
        spec = manifest["graphs"][graph]
        assert config.name == graph_model_name(graph)
        assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 0
        assert [t.name for t in config.input] == [t["name"] for t in spec["inputs"]]
        assert [t.name for t in config.output] == [t["name"] for t in spec["outputs"]]
        for tensor, want in zip([*config.input, *config.output], [*spec["inputs"], *spec["outputs"]]):
            assert list(tensor.dims) == [d if isinstance(d, int) else -1 for d in want["shape"]]
            expected = {"float32": model_config_pb2.TYPE_FP32, "int64": model_config_pb2.TYPE_INT64}[want["dtype"]]
            assert tensor.data_type == expected
        assert (model_dir / "1" / "model.onnx").is_file()
        assert (model_dir / "1" / spec["data"]).is_file()  # external weights beside model.onnx, by their name
    config = _parse(repo / PIPELINE_MODEL / "config.pbtxt")
    assert config.backend == "python" and config.platform == ""
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("prompt", model_config_pb2.TYPE_STRING, [1]), ("image", model_config_pb2.TYPE_STRING, [1]),
        ("max_new_tokens", model_config_pb2.TYPE_INT32, [1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        ("text", model_config_pb2.TYPE_STRING, [1]), ("token_ids", model_config_pb2.TYPE_INT64, [-1])]
    version = repo / PIPELINE_MODEL / "1"
    assert (version / "model.py").is_file() and (version / "processor" / "tokenizer.json").is_file()
    assert json.loads((version / "pipeline.json").read_text())["models"]["prefill"] == "reroute_prefill"
    launch = (repo / "launch.sh").read_text()
    assert "tritonserver --model-repository" in launch and os.access(repo / "launch.sh", os.X_OK)
    assert "--disable-auto-complete-config" in launch
    assert "tritonserver --model-repository" in (repo / "README.md").read_text()
    assert not list(tmp_path.glob(".repo*")), "the temporary folder was left behind"


def test_deploy_refuses_existing_out_and_missing_engines(artifact, tmp_path, capsys):
    out = tmp_path / "repo"
    out.mkdir()
    assert main(["deploy", artifact, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and len(err.strip().splitlines()) == 1
    assert main(["deploy", artifact, "--out", str(out), "--force"]) == 0
    assert (out / "reroute_pipeline" / "config.pbtxt").is_file()
    capsys.readouterr()
    assert main(["deploy", artifact, "--out", str(tmp_path / "trt"), "--backend", "tensorrt"]) == 2
    err = capsys.readouterr().err
    assert "reroute build" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "trt").exists()


@pytest.mark.parametrize("plugins", [True, False], ids=["plugins", "no-plugins"])
def test_deploy_tensorrt_configs(artifact, tmp_path, plugins):
    """Engines where `reroute build` puts them (engines/<plugins|no-plugins>/NAME.plan)."""
    from engines.serving.deploy import GRAPHS, graph_model_name, write_triton_repo

    art = tmp_path / "art"
    shutil.copytree(artifact, art)
    form = "plugins" if plugins else "no-plugins"
    (art / "engines" / form).mkdir(parents=True)
    for graph in GRAPHS:
        (art / "engines" / form / f"{graph}.plan").write_bytes(f"{form}:{graph}".encode())
    (art / "engines" / "libreroute_plugins.so").write_bytes(b"\x7fELF")
    other = "--no-plugins" if plugins else "--plugins"
    with pytest.raises(RerouteError, match=f"reroute build .* {other}"):
        write_triton_repo(art, tmp_path / "other", backend="tensorrt", plugins=not plugins)
    repo = write_triton_repo(art, tmp_path / "repo", backend="tensorrt", plugins=plugins)
    for graph in GRAPHS:
        config = _parse(repo / graph_model_name(graph) / "config.pbtxt")
        assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
        assert config.max_batch_size == 0 and config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        assert (repo / graph_model_name(graph) / "1" / "model.plan").read_bytes() == f"{form}:{graph}".encode()
        assert not list((repo / graph_model_name(graph) / "1").glob("*.onnx*"))
    assert _parse(repo / "reroute_pipeline" / "config.pbtxt").backend == "python"
    launch = (repo / "launch.sh").read_text()
    assert "tritonserver --model-repository" in launch and "--disable-auto-complete-config" in launch
    assert ("LD_PRELOAD=" in launch and "libreroute_plugins.so" in launch) == plugins
    assert (repo / "plugins" / "libreroute_plugins.so").is_file() == plugins


# -- the BLS pipeline model, run with a stand-in for triton_python_backend_utils ----------------------------


def _stand_in_pb_utils(repo: Path):
    """Just enough of triton_python_backend_utils: BLS calls run the repository's model.onnx files in ORT."""
    from engines.ort_runner import make_session

    sessions = {}
    pb = types.ModuleType("triton_python_backend_utils")
    pb.TRITONSERVER_MEMORY_CPU = 0
    pb.calls = []

    class Tensor:
        def __init__(self, name, array):
            self._name, self._array = name, np.asarray(array)

        def name(self):
            return self._name

        def as_numpy(self):
            return self._array

    class TritonError:
        def __init__(self, message):
            self._message = message

        def message(self):
            return self._message

    class InferenceResponse:
        def __init__(self, output_tensors=None, error=None):
            self._outputs, self._error = output_tensors or [], error

        def has_error(self):
            return self._error is not None

        def error(self):
            return self._error

        def output_tensors(self):
            return self._outputs

    class InferenceRequest:
        def __init__(self, model_name, requested_output_names, inputs, preferred_memory=None):
            self.model, self.outputs, self.inputs = model_name, requested_output_names, inputs

        def exec(self):
            pb.calls.append(self.model)
            if self.model not in sessions:
                sessions[self.model] = make_session(repo / self.model / "1" / "model.onnx")
            values = sessions[self.model].run(self.outputs, {t.name(): t.as_numpy() for t in self.inputs})
            return InferenceResponse([Tensor(n, v) for n, v in zip(self.outputs, values)])

    class Request:  # what Triton hands to execute()
        def __init__(self, tensors):
            self.tensors = tensors

    def by_name(holder, name):
        tensors = holder.tensors if isinstance(holder, Request) else holder.output_tensors()
        return next((t for t in tensors if t.name() == name), None)

    pb.Tensor, pb.TritonError, pb.InferenceResponse, pb.InferenceRequest = Tensor, TritonError, InferenceResponse, \
        InferenceRequest
    pb.PreferredMemory = lambda kind, device: (kind, device)
    pb.get_input_tensor_by_name = pb.get_output_tensor_by_name = by_name
    pb.Request = Request
    return pb


def load_pipeline_model(repo: Path, monkeypatch):
    """(stand-in pb_utils, the repository's reroute_pipeline model.py initialised against it)."""
    from engines.serving.deploy import PIPELINE_MODEL

    pb = _stand_in_pb_utils(repo)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    spec = importlib.util.spec_from_file_location("reroute_pipeline_model", repo / PIPELINE_MODEL / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_name": PIPELINE_MODEL, "model_version": "1"})
    return pb, model


def test_pipeline_model_matches_generate(artifact, images, reference, tmp_path, monkeypatch):
    from engines.serving.deploy import write_triton_repo

    repo = write_triton_repo(artifact, tmp_path / "repo")
    pb, model = load_pipeline_model(repo, monkeypatch)

    def request(prompt=PROMPT.encode(), image=Path(images[1]).read_bytes(), steps=STEPS):
        return pb.Request([pb.Tensor("prompt", np.array([prompt], dtype=np.object_)),
                           pb.Tensor("image", np.array([image], dtype=np.object_)),
                           pb.Tensor("max_new_tokens", np.array([steps], dtype=np.int32))])

    good, bad_image, bad_prompt, bomb, truncated = model.execute([
        request(), request(image=b"not an image"), request(prompt=b"no placeholder"),
        request(image=png_header(30000, 30000)), request(image=truncated_png())])
    want = reference(images[1])
    assert not good.has_error()
    assert pb.get_output_tensor_by_name(good, "token_ids").as_numpy().tolist() == want["generated_token_ids"]
    assert pb.get_output_tensor_by_name(good, "text").as_numpy()[0].decode() == want["text"]
    assert "input 'image' is not a readable image" in bad_image.error().message()
    assert "exactly one <image>" in bad_prompt.error().message()
    assert "input 'image' is too large" in bomb.error().message()
    assert "input 'image' is not a readable image" in truncated.error().message()
    assert pb.calls[:3] == ["reroute_vision", "reroute_embed", "reroute_prefill"]
    assert pb.calls.count("reroute_decode") == len(want["generated_token_ids"]) - 1


STAND_IN_GRAPH_MODEL = """
import json, os
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:  # stands in for Triton's onnxruntime backend, which PyTriton does not bundle
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(os.path.join(folder, "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.outputs = [o["name"] for o in json.loads(args["model_config"])["output"]]
        self.inputs = [i.name for i in self.session.get_inputs()]

    def execute(self, requests):
        responses = []
        for request in requests:
            feeds = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs}
            wanted = list(request.requested_output_names()) or self.outputs
            values = self.session.run(wanted, feeds)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, v) for n, v in zip(wanted, values)]))
        return responses
"""


def test_deployed_repository_on_real_tritonserver(artifact, images, reference, tmp_path):
    """The repository on PyTriton's bundled tritonserver: reroute_pipeline (model.py, BLS, KV cache) as written;
    the four graph models swapped for Python-backend stand-ins that run the same model.onnx files (the bundle
    has no onnxruntime backend)."""
    from engines.serving.client import client_generate
    from engines.serving.deploy import PIPELINE_MODEL

    with real_tritonserver(artifact, tmp_path) as url:
        got = client_generate(url, images[4], PROMPT, STEPS, model=PIPELINE_MODEL)
        assert got["generated_token_ids"] == reference(images[4])["generated_token_ids"]
        assert got["text"] == reference(images[4])["text"]
        with pytest.raises(RerouteError, match="input 'max_new_tokens' must be in"):
            client_generate(url, images[4], PROMPT, 0, model=PIPELINE_MODEL)


@contextlib.contextmanager
def real_tritonserver(artifact, tmp_path: Path):
    """``reroute deploy`` of ``artifact`` served by PyTriton's bundled tritonserver (graph models swapped for
    ONNX Runtime stand-ins, see above); yields its HTTP URL once reroute_pipeline is ready."""
    import sysconfig

    import pytriton

    from engines.artifact import GRAPHS, open_artifact
    from engines.serving.deploy import PIPELINE_MODEL, graph_config, graph_model_name, to_pbtxt, write_triton_repo

    bundle = Path(pytriton.__file__).parent / "tritonserver"
    binary = bundle / "bin" / "tritonserver"
    stub = bundle / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" / \
        "triton_python_backend_stub"
    libs = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
    if not (binary.is_file() and stub.is_file() and (bundle / "backends" / "python").is_dir()):
        pytest.skip(f"PyTriton's bundled tritonserver layout not found under {bundle}")
    backends = tmp_path / "backends"
    shutil.copytree(bundle / "backends", backends)
    shutil.copy(stub, backends / "python" / "triton_python_backend_stub")

    repo = write_triton_repo(artifact, tmp_path / "repo")
    art = open_artifact(artifact)
    for graph in GRAPHS:
        config = graph_config(art, graph, "onnxruntime")
        del config["platform"], config["default_model_filename"]
        config.update(backend="python", instance_group=[{"count": 1, "kind": "KIND_CPU"}])
        (repo / graph_model_name(graph) / "config.pbtxt").write_text(to_pbtxt(config))
        (repo / graph_model_name(graph) / "1" / "model.py").write_text(STAND_IN_GRAPH_MODEL)

    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (sysconfig.get_config_var("LIBDIR"), str(libs),
                                                         env.get("LD_LIBRARY_PATH")) if p)
    # The Python-backend stub embeds an interpreter that ignores PYTHONPATH and takes its prefix (and so its
    # site-packages) from the first `python3` on PATH: put this interpreter's (the venv's) first.
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH")) if p)
    port = _free_port()
    shm_prefix = f"reroute_test_{os.getpid()}_{port}_"
    log = open(tmp_path / "tritonserver.log", "w")
    proc = subprocess.Popen([str(binary), "--model-repository", str(repo), "--backend-directory", str(backends),
                             "--disable-auto-complete-config", "--http-address", "127.0.0.1", "--http-port",
                             str(port), "--allow-grpc", "false", "--allow-metrics", "false",
                             f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
                             "--exit-timeout-secs", "20"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        import tritonclient.http as httpclient

        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "tritonserver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "tritonserver.log").read_text()[-3000:]
            client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=5.0)
            try:
                if client.is_server_ready() and client.is_model_ready(PIPELINE_MODEL):
                    break
            except Exception:
                pass
            finally:
                client.close()
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        from engines.serving.triton_serve import _clean_up_after_triton

        _clean_up_after_triton(str(backends), set())  # stubs that outlived it, if any (their binary is ours)
        for region in Path("/dev/shm").glob(f"{shm_prefix}*"):
            region.unlink()


# -- batching inside the server process ------------------------------------------------------------------


def test_batcher_groups_equal_lengths_and_matches_single_runs(artifact):
    from engines.serving.pipeline import MicroBatcher, Pipeline

    pipeline = Pipeline(artifact)
    try:
        entered, gate, sizes = threading.Event(), threading.Event(), []

        def run(jobs):
            sizes.append(len(jobs))
            entered.set()
            assert gate.wait(60)
            return pipeline.run(jobs)

        batcher = MicroBatcher(run, pipeline.max_batch)
        specs = [(PROMPT, 0, 5), (PROMPT, 1, 5), (OTHER_PROMPT, 2, 4), (PROMPT, 3, 2), (PROMPT, 4, 5)]
        jobs = [pipeline.prepare(p.encode(), _png(seed), n) for p, seed, n in specs]
        futures = [batcher.submit(jobs[0])]
        assert entered.wait(60)  # the worker holds job 0; the rest queue up behind it
        futures += [batcher.submit(job) for job in jobs[1:]]
        gate.set()
        batched = [f.result(timeout=120) for f in futures]
        batcher.close()
        assert sizes == [1, 3, 1]  # PROMPT jobs 1, 3, 4 together (max_new_tokens may differ), then OTHER_PROMPT
        singles = [pipeline.run([pipeline.prepare(p.encode(), _png(seed), n)])[0] for p, seed, n in specs]
        assert batched == singles
        assert len(batched[3][0]) <= 2
    finally:
        pipeline.close()


# -- (a) served tokens = reroute generate's ----------------------------------------------------------------


def test_served_tokens_match_generate(server, images, reference, capsys):
    from engines.serving.client import client_generate

    for image, prompt in ((images[0], PROMPT), (images[2], OTHER_PROMPT)):
        want = reference(image, prompt)
        got = client_generate(server.url, image, prompt, STEPS)
        assert got["generated_token_ids"] == want["generated_token_ids"]
        assert got["text"] == want["text"]
    # the CLI: reroute client ... --json
    code = main(["client", "--url", server.url, "--image", images[0], "--prompt", PROMPT,
                 "--max-new-tokens", str(STEPS), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    assert json.loads(out)["generated_token_ids"] == reference(images[0])["generated_token_ids"]


# -- (b) malformed requests: an error naming the problem, then the next good request still works --------------

MALFORMED = {
    "missing input": (dict(drop="max_new_tokens"), "max_new_tokens"),
    "wrong dtype": (dict(overrides={"max_new_tokens": (np.array([4.0], dtype=np.float32), "FP32")}),
                    "data-type is 'FP32'"),
    "wrong shape": (dict(overrides={"prompt": (np.array([b"<image>", b"<image>"], dtype=np.object_), "BYTES")}),
                    "unexpected shape for input 'prompt'"),
    "not an image": (dict(image=b"GIF89a but not really an image"), "cannot read image input 'image'"),
    "decompression bomb": (dict(image=png_header(30000, 30000)), "input 'image' is too large"),
    "truncated image": (dict(image=truncated_png()), "input 'image': truncated"),
    "beyond capacity": (dict(prompt=b"USER: <image>\n" + b"many words " * 1200 + b"ASSISTANT:"),
                        "exceeds the exported capacity of 2048 tokens"),
    "max_new_tokens 0": (dict(max_new_tokens=0), "input 'max_new_tokens' must be in [1, 4096], got 0"),
    "max_new_tokens -3": (dict(max_new_tokens=-3), "input 'max_new_tokens' must be in [1, 4096], got -3"),
    "max_new_tokens huge": (dict(max_new_tokens=5000), "input 'max_new_tokens' must be in [1, 4096], got 5000"),
    "no <image>": (dict(prompt=b"USER: What is it? ASSISTANT:"), "exactly one <image> placeholder, found 0"),
    "two <image>": (dict(prompt=b"USER: <image><image> ASSISTANT:"), "exactly one <image> placeholder, found 2"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_then_good_request(case, client, images, reference):
    from tritonclient.utils import InferenceServerException

    from engines.serving.client import server_message

    kwargs, needle = MALFORMED[case]
    with pytest.raises(InferenceServerException) as info:
        client.infer("reroute", _inputs(**kwargs))
    assert needle in server_message(info.value), server_message(info.value)
    result = client.infer("reroute", _inputs(image=Path(images[3]).read_bytes()))
    assert result.as_numpy("token_ids").reshape(-1).tolist() == reference(images[3])["generated_token_ids"]


def test_client_cli_errors(server, images, capsys):
    code = main(["client", "--url", server.url, "--image", images[0], "--prompt", "no placeholder"])
    err = capsys.readouterr().err
    assert code == 2 and "exactly one <image>" in err and len(err.strip().splitlines()) == 1
    code = main(["client", "--url", f"http://127.0.0.1:{_free_port()}", "--image", images[0], "--prompt", PROMPT])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach Triton" in err and len(err.strip().splitlines()) == 1


# -- (d) a port already in use ---------------------------------------------------------------------------------


def test_serve_refuses_port_in_use(server, artifact):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        for port in (busy.getsockname()[1], server.port):
            done = subprocess.run([sys.executable, "-m", "exporter.cli", "serve", artifact, "--port", str(port)],
                                  cwd=REPO, capture_output=True, text=True, timeout=120)
            assert done.returncode == 2
            assert f"cannot serve on 127.0.0.1:{port}: port already in use" in done.stderr
            assert len(done.stderr.strip().splitlines()) == 1


# -- the load test script ----------------------------------------------------------------------------------


def test_load_test_script_small(artifact):
    """2 clients x 3 requests, arriving over 1 s, against servers the script starts (and stops with SIGTERM)
    itself: batched, then --max-batch 1."""
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "load_test.py"), "--artifact", artifact,
                           "--clients", "2", "--requests", "3", "--max-new-tokens", "4", "--deadline", "120",
                           "--arrival", "1", "--compare-max-batch-1", "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert [r["server_max_batch"] for r in result["runs"]] == [None, 1]
    for report in result["runs"]:
        assert report["sent"] == 6 and report["ok"] == 6 and report["errors"] == 0
        assert report["latency_s"]["p99"] >= report["latency_s"]["p50"] > 0 and report["throughput_rps"] > 0
        assert 0 < report["tokens"] <= 6 * 4 and report["inconsistent_answers"] == 0
    assert result["throughput_ratio_tokens"] == result["runs"][0]["throughput_tps"] / result["runs"][1]["throughput_tps"]


# -- shutdown (last: it stops the module's server) ---------------------------------------------------------------


def test_sigint_stops_server_cleanly(server):
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(60) == 0, server.output()[-3000:]
    assert "reroute serve: stopped" in server.output()
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", server.port))


def test_serve_tensorrt_without_engines_is_one_line_error(artifact, capsys):
    code = main(["serve", artifact, "--backend", "tensorrt", "--port", str(_free_port())])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "TensorRT" in err or "reroute build" in err


def test_limits_agree_with_generate():
    from engines.serving import deploy, pipeline
    from exporter import generation

    assert deploy.MAX_NEW_TOKENS_LIMIT == pipeline.MAX_NEW_TOKENS_LIMIT == generation.MAX_NEW_TOKENS_LIMIT


def test_deploy_rejects_unknown_backend(artifact, tmp_path):
    from engines.serving.deploy import write_triton_repo

    with pytest.raises(RerouteError, match="unknown deploy backend"):
        write_triton_repo(artifact, tmp_path / "x", backend="tflite")
