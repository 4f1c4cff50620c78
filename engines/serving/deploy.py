"""``reroute deploy``: an artifact folder -> a Triton Inference Server model repository.

The repository holds one model per graph (``reroute_vision``, ``reroute_embed``,
``reroute_prefill``, ``reroute_decode``) and a Python-backend model,
``reroute_pipeline``, that runs a whole request (prompt, image bytes,
max_new_tokens -> text, token_ids) through them with BLS calls
(engines/serving/triton_pipeline.py, copied as its ``1/model.py``).

Every ``config.pbtxt`` is generated from data: a dict built from the
manifest's graph IO (symbolic dims -> -1) is parsed into tritonclient's
``ModelConfig`` protobuf message and printed with ``text_format``, so what is
written is always a valid message. The graph models use ``max_batch_size: 0``
with the batch dimension explicit (-1): the graphs have many dynamic dims and
the pipeline sends one request at a time. Start the server with
``--disable-auto-complete-config`` (launch.sh does): Triton's auto-complete
would otherwise turn ``max_batch_size: 0`` into its default batch size for the
graphs whose every tensor starts with a dynamic dim, then reject their
explicit batch dims.

Written atomically: a temporary folder beside ``out`` is renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

from ..artifact import GRAPHS, Artifact, open_artifact
from ..atomic import publish, replace_dir
from ..errors import RerouteError

BACKENDS = ("onnxruntime", "tensorrt")
PIPELINE_MODEL = "reroute_pipeline"
MODEL_PREFIX = "reroute_"
PIPELINE_SOURCE = Path(__file__).with_name("triton_pipeline.py")
QWEN_FAMILY = "qwen2_5_vl"
_ENGINES = Path(__file__).resolve().parent.parent
# family -> (the source copied as model.py, self-contained modules copied beside it)
PIPELINE_SOURCES = {
    None: (PIPELINE_SOURCE, ()),
    QWEN_FAMILY: (Path(__file__).with_name("triton_qwen.py"),
                  (PIPELINE_SOURCE, _ENGINES / "qwen_processor.py", _ENGINES / "qwen_vision_inputs.py",
                   _ENGINES / "qwen_rope.py")),
}
# family -> the image placeholder a prompt holds once
PLACEHOLDERS = {None: "<image>", QWEN_FAMILY: "<|vision_start|><|image_pad|><|vision_end|>"}
PLUGIN_LIBRARY = "libreroute_plugins.so"
MAX_NEW_TOKENS_LIMIT = 4096  # the same limit as exporter.generation.check_max_new_tokens

# numpy dtype names (the manifest's) -> Triton data types
TRITON_DTYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8", "int16": "TYPE_INT16",
    "int32": "TYPE_INT32", "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32",
    "float64": "TYPE_FP64", "bfloat16": "TYPE_BF16", "object": "TYPE_STRING", "bytes": "TYPE_STRING",
}

PIPELINE_INPUTS = [
    {"name": "prompt", "data_type": "TYPE_STRING", "dims": [1]},
    {"name": "image", "data_type": "TYPE_STRING", "dims": [1]},
    {"name": "max_new_tokens", "data_type": "TYPE_INT32", "dims": [1]},
]
PIPELINE_OUTPUTS = [
    {"name": "text", "data_type": "TYPE_STRING", "dims": [1]},
    {"name": "token_ids", "data_type": "TYPE_INT64", "dims": [-1]},
]


def graph_model_name(graph: str) -> str:
    return f"{MODEL_PREFIX}{graph}"


def triton_dims(shape: list) -> list[int]:
    """Manifest shape -> Triton dims: symbolic (a string) or unknown (0 / None) -> -1."""
    return [d if isinstance(d, int) and d > 0 else -1 for d in shape]


def triton_dtype(dtype: str) -> str:
    try:
        return TRITON_DTYPES[dtype]
    except KeyError:
        raise RerouteError(f"no Triton data type for {dtype!r}") from None


def _tensors(specs: list[dict]) -> list[dict]:
    return [{"name": t["name"], "data_type": triton_dtype(t["dtype"]), "dims": triton_dims(t["shape"])}
            for t in specs]


def graph_config(artifact: Artifact, graph: str, backend: str) -> dict:
    """The config of one graph's model, as a dict in ModelConfig's JSON form."""
    spec = artifact.manifest["graphs"][graph]
    config = {
        "name": graph_model_name(graph),
        "max_batch_size": 0,
        "input": _tensors(spec["inputs"]),
        "output": _tensors(spec["outputs"]),
    }
    if backend == "onnxruntime":
        config.update(platform="onnxruntime_onnx", default_model_filename="model.onnx")
    else:
        config.update(platform="tensorrt_plan", default_model_filename="model.plan",
                      instance_group=[{"count": 1, "kind": "KIND_GPU"}])
    return config


def pipeline_config() -> dict:
    return {
        "name": PIPELINE_MODEL,
        "backend": "python",
        "max_batch_size": 0,
        "input": PIPELINE_INPUTS,
        "output": PIPELINE_OUTPUTS,
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
    }


def to_pbtxt(config: dict) -> str:
    """A config dict -> the text form of Triton's ModelConfig message (unknown fields are an error)."""
    try:
        from google.protobuf import json_format, text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise RerouteError(f"reroute deploy needs tritonclient's protobuf messages ({exc}); "
                           f"pip install 'reroute[serve]'") from None

    message = json_format.ParseDict(config, model_config_pb2.ModelConfig())
    return text_format.MessageToString(message)


def pipeline_settings(artifact: Artifact) -> dict:
    """What model.py needs from the manifest (it runs inside Triton, without reroute)."""
    manifest = artifact.manifest
    model = manifest["model"]
    return {
        "models": {graph: graph_model_name(graph) for graph in GRAPHS},
        "image_token_id": model["image_token_id"],
        "num_visual": model["num_visual"],
        "eos_token_id": model["eos_token_id"],
        "num_layers": artifact.decoder_config.num_layers,
        "num_stages": len(artifact.schedule.layers),
        "max_sequence": manifest["capacity"]["max_sequence"],
        "max_new_tokens_limit": MAX_NEW_TOKENS_LIMIT,
        "input_dtypes": {graph: {t["name"]: t["dtype"] for t in spec["inputs"]}
                         for graph, spec in manifest["graphs"].items()},
        **_family_settings(manifest),
    }


def _family_settings(manifest: dict) -> dict:
    """Dynamic resolution (Qwen2.5-VL): the vision settings its index inputs need and the N_v bound."""
    model = manifest["model"]
    if model.get("family") != QWEN_FAMILY:
        return {}
    return {"family": QWEN_FAMILY, "vision": model["vision"],
            "max_visual_tokens": manifest["capacity"]["max_visual_tokens"],
            "max_pixels": manifest["capacity"]["max_pixels"]}


def pipeline_sources(artifact: Artifact) -> tuple[Path, tuple[Path, ...]]:
    """The pipeline model's source and the modules it loads from beside it, for the artifact's family."""
    family = artifact.manifest["model"].get("family")
    return PIPELINE_SOURCES.get(family, PIPELINE_SOURCES[None])


def engine_form(plugins: bool) -> str:
    return "plugins" if plugins else "no-plugins"


def engine_path(artifact: Artifact, graph: str, plugins: bool = True) -> Path:
    """The engine ``reroute build`` wrote for ``graph``: as the manifest records it, else
    ``engines/<plugins|no-plugins>/NAME.plan``, else a plain ``engines/NAME.plan``."""
    form = engine_form(plugins)
    recorded = artifact.manifest.get("engines", {}).get(form, {}).get("graphs", {}).get(graph, {}).get("file")
    candidates = [artifact.root / recorded] if recorded else []
    candidates += [artifact.root / "engines" / form / f"{graph}.plan", artifact.root / "engines" / f"{graph}.plan"]
    return next((c for c in candidates if c.is_file()), candidates[0])


def plugin_library(artifact: Artifact) -> Path | None:
    """The token-pool plugin library the plugin-form engines need, if it can be found here."""
    from ..plugins import default_library_path

    recorded = artifact.manifest.get("engines", {}).get("plugins", {}).get("plugin_library")
    for candidate in (recorded, artifact.root / "engines" / PLUGIN_LIBRARY, default_library_path()):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _check_engines(artifact: Artifact, plugins: bool) -> None:
    missing = [g for g in GRAPHS if not engine_path(artifact, g, plugins).is_file()]
    if missing:
        flag = "--plugins" if plugins else "--no-plugins"
        raise RerouteError(
            f"{artifact.root} has no {engine_form(plugins)} TensorRT engines for {', '.join(missing)}; "
            f"run `reroute build {artifact.root} {flag}` first"
        )


def _launch_script(backend: str, plugins: bool = True) -> str:
    lines = [
        "#!/usr/bin/env bash",
        "# Start Triton Inference Server on this model repository (in a Triton container, e.g.",
        "# nvcr.io/nvidia/tritonserver:<yy.mm>-py3, with numpy, pillow and transformers installed",
        "# for the Python backend). Extra arguments go to tritonserver, e.g. --http-port 8000.",
        "# The Python backend's interpreter ignores PYTHONPATH: it uses the site-packages of the first",
        "# python3 on PATH, so put a virtualenv's bin/ first on PATH if the packages live there.",
        "set -euo pipefail",
        'REPO="$(cd "$(dirname "$0")" && pwd)"',
    ]
    if backend == "tensorrt" and plugins:
        lines += [
            "# The engines use reroute's TensorRT plugins: preload their library.",
            f'PLUGINS="${{REROUTE_PLUGINS:-$REPO/plugins/{PLUGIN_LIBRARY}}}"',
            'if [ ! -f "$PLUGINS" ]; then',
            f'  echo "launch.sh: $PLUGINS not found; set REROUTE_PLUGINS to {PLUGIN_LIBRARY}" >&2',
            "  exit 2",
            "fi",
            'LD_PRELOAD="$PLUGINS${LD_PRELOAD:+:$LD_PRELOAD}" exec tritonserver --model-repository "$REPO" \\',
            '    --disable-auto-complete-config "$@"',
        ]
    else:
        lines.append('exec tritonserver --model-repository "$REPO" --disable-auto-complete-config "$@"')
    return "\n".join(lines) + "\n"


def _readme(artifact: Artifact, backend: str, plugins: bool = True) -> str:
    file = "1/model.onnx" if backend == "onnxruntime" else "1/model.plan"
    graphs = "\n".join(f"- `{graph_model_name(g)}`: the {g} graph ({file})" for g in GRAPHS)
    preload = f"LD_PRELOAD=$PWD/plugins/{PLUGIN_LIBRARY} " if backend == "tensorrt" and plugins else ""
    form = f" ({engine_form(plugins)} engines)" if backend == "tensorrt" else ""
    family = artifact.manifest["model"].get("family")
    placeholder = PLACEHOLDERS.get(family, PLACEHOLDERS[None])
    packages = "numpy, pillow, torch and transformers" if family == QWEN_FAMILY else "numpy, pillow and transformers"
    example = f"{placeholder}What is it?" if family == QWEN_FAMILY else f"USER: {placeholder}\\nWhat is it? ASSISTANT:"
    return f"""# reroute Triton model repository

Written by `reroute deploy` from `{artifact.root}` ({artifact.manifest['model']['spec']},
method {artifact.manifest['method']}, ratio {artifact.manifest['ratio']}), backend {backend}{form}.

Models:
{graphs}
- `{PIPELINE_MODEL}`: Python backend; runs a whole request through the graphs with BLS calls.
  Inputs `prompt` (BYTES [1], exactly one `{placeholder}`), `image` (BYTES [1], encoded image file),
  `max_new_tokens` (INT32 [1]); outputs `text` (BYTES [1]) and `token_ids` (INT64 [-1]).

Start the server (Triton container; the Python backend needs {packages}):

```bash
{preload}tritonserver --model-repository $PWD --disable-auto-complete-config
# or: ./launch.sh
```

`--disable-auto-complete-config` keeps the configs as written: with auto-complete on, Triton's
onnxruntime backend would give the graphs whose every tensor has a dynamic first dimension a
`max_batch_size` of its own and then reject their explicit batch dimension.

Readiness: probe `/v2/models/{PIPELINE_MODEL}/ready` (200 once the pipeline model is loaded and can
answer; tritonserver loads every model of this repository before it listens, so `/v2/health/ready`
agrees with it here). Metrics: `http://127.0.0.1:8002/metrics` (queue time, pending requests, latencies).

Query it:

```bash
reroute client --url http://127.0.0.1:8000 --model {PIPELINE_MODEL} --image picture.png \\
    --prompt "{example}" --max-new-tokens 16
```
"""


def write_triton_repo(artifact_dir: str | os.PathLike, out_dir: str | os.PathLike, backend: str = "onnxruntime",
                      force: bool = False, plugins: bool = True) -> Path:
    """Write the model repository for ``artifact_dir`` to ``out_dir``; returns its path.

    ``backend="tensorrt"`` takes the engines ``reroute build`` wrote (``plugins``: the plugin-form
    engines, else the no-plugin ones) and, for the plugin form, copies the plugin library to
    ``plugins/`` when it can be found (else ``launch.sh`` asks for ``REROUTE_PLUGINS``).
    """
    if backend not in BACKENDS:
        raise RerouteError(f"unknown deploy backend {backend!r}; choose from {', '.join(BACKENDS)}")
    artifact = open_artifact(artifact_dir)
    if backend == "tensorrt":
        _check_engines(artifact, plugins)
    target = Path(out_dir)
    if target.exists() and not force:
        raise RerouteError(f"{target} already exists; pass --force to replace it")
    if target.resolve() == artifact.root.resolve():
        raise RerouteError("the model repository cannot replace the artifact folder itself")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _fill(artifact, tmp, backend, plugins)
        publish(tmp, executables=("launch.sh",))
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _copy_or_link(src: Path, dst: Path, copied: dict[Path, Path]) -> None:
    """Copy ``src`` once; later copies of the same file (prefill and decode share the decoder
    weights) are hard links to the first, falling back to a copy across file systems."""
    first = copied.get(src)
    if first is not None:
        try:
            os.link(first, dst)
            return
        except OSError:
            pass
    shutil.copyfile(src, dst)
    copied.setdefault(src, dst)


def _fill(artifact: Artifact, root: Path, backend: str, plugins: bool) -> None:
    copied: dict[Path, Path] = {}
    for graph in GRAPHS:
        model_dir = root / graph_model_name(graph)
        version = model_dir / "1"
        version.mkdir(parents=True)
        if backend == "onnxruntime":
            spec = artifact.manifest["graphs"][graph]
            shutil.copyfile(artifact.graph_path(graph), version / "model.onnx")
            data = spec.get("data")
            if data and (artifact.root / data).is_file():
                # model.onnx names its external data file by its exported name: keep that name beside it.
                _copy_or_link(artifact.root / data, version / Path(data).name, copied)
        else:
            shutil.copyfile(engine_path(artifact, graph, plugins), version / "model.plan")
        (model_dir / "config.pbtxt").write_text(to_pbtxt(graph_config(artifact, graph, backend)))

    pipeline = root / PIPELINE_MODEL
    version = pipeline / "1"
    version.mkdir(parents=True)
    source, helpers = pipeline_sources(artifact)
    shutil.copyfile(source, version / "model.py")
    for helper in helpers:
        shutil.copyfile(helper, version / helper.name)
    shutil.copytree(artifact.root / artifact.manifest["processor_dir"], version / "processor")
    (version / "pipeline.json").write_text(json.dumps(pipeline_settings(artifact), indent=2))
    (pipeline / "config.pbtxt").write_text(to_pbtxt(pipeline_config()))

    if backend == "tensorrt" and plugins:
        library = plugin_library(artifact)
        if library is not None:
            (root / "plugins").mkdir()
            shutil.copyfile(library, root / "plugins" / PLUGIN_LIBRARY)
    (root / "README.md").write_text(_readme(artifact, backend, plugins))
    launch = root / "launch.sh"
    launch.write_text(_launch_script(backend, plugins))
    launch.chmod(launch.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
