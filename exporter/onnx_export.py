"""``reroute export``: four ONNX graphs + manifest + processor files + parity report, written atomically.

Graphs are traced with torch's TorchScript-based ONNX exporter (``dynamo=False``):
on a 2-core machine it exports the 32-layer routed prefill of ``llava-tiny`` in
about 3 s, where the dynamo exporter took 85 s plus minutes of optimisation.
The pool ops export as ``reroute::Pool*`` nodes (graphs/pool.py) and get
their ONNX local-function bodies attached here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from engines.artifact import FORMAT_VERSION, GRAPHS, MANIFEST, installed_versions, sha256_file
from engines.atomic import publish, replace_dir
from engines.errors import RerouteError
from engines.graph_modules import build_graph_modules
from engines.inputs import encode
from engines.onnx_functions import OPSET, attach_pool_functions

from . import export_dynamic
from .inspect_model import make_schedule
from .models import LoadedModel, load_model
from .progress import Progress
from .registry import family_of
from .samples import sample
from .shared_weights import SHARED_DATA, share_external_data

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
DTYPE_NAMES = {"fp32": "float32", "fp16": "float16"}
# Graphs that carry the same decoder weights and so share one external-data file.
DECODER_GRAPHS = ("prefill", "decode")
MANIFEST_PACKAGES = ("reroute", "torch", "transformers", "onnx", "onnxruntime", "polygraphy", "optimum")


def _dynamic_axes(name: str, module, num_layers: int) -> dict:
    batch = {0: "batch"}
    if name == "vision":
        return {"pixel_values": batch, "image_features": batch}
    if name == "embed":
        return {"input_ids": {0: "batch", 1: "sequence"}, "image_features": {0: "batch", 1: "num_image_tokens"},
                "inputs_embeds": {0: "batch", 1: "sequence"}}
    axes = {n: dict(batch) for n in module.output_names()}
    if name == "prefill":
        axes["inputs_embeds"] = {0: "batch", 1: "sequence"}
        for i in range(num_layers):
            for kind in ("key", "value"):
                axes[f"present.{i}.{kind}"] = {0: "batch", 2: f"present_len_{i}"}
    else:
        axes["inputs_embeds"] = batch
        axes["position_ids"] = batch
        for i in range(num_layers):
            for kind in ("key", "value"):
                axes[f"past_key_values.{i}.{kind}"] = {0: "batch", 2: f"past_len_{i}"}
                axes[f"present.{i}.{kind}"] = {0: "batch", 2: f"present_len_{i}"}
    return axes


def _example_inputs(loaded: LoadedModel, modules, dtype) -> dict[str, tuple]:
    """Real inputs for tracing, from one synthetic image and prompt, run through the torch graphs."""
    if loaded.family.dynamic_visual_tokens:
        return export_dynamic.example_inputs(loaded, modules, dtype)
    prompt, image = sample(0)
    inputs = encode(loaded.processor, [prompt], [image], loaded.image_token_id, loaded.num_visual)
    ids = torch.from_numpy(inputs.input_ids)
    pixels = torch.from_numpy(inputs.pixel_values).to(dtype)
    v0 = torch.tensor([inputs.visual_start], dtype=torch.int64)
    with torch.inference_mode():
        features = modules["vision"](pixels)
        embeds = modules["embed"](ids, features)
        out = modules["prefill"](embeds, v0)
    num_layers = loaded.decoder_config.num_layers
    past = tuple(t.clone() for t in out[1 : 1 + 2 * num_layers])
    step = modules["embed"](ids[:, -1:], features[:, :0])
    positions = torch.tensor([[ids.shape[1]]], dtype=torch.int64)
    return {
        "vision": (pixels,),
        "embed": (ids, features),
        "prefill": (embeds, v0),
        "decode": (step, positions, *past),
    }


def _export_one(name: str, module, args: tuple, directory: Path, num_layers: int, dynamic: bool = False) -> None:
    import onnx

    axes = _dynamic_axes(name, module, num_layers)
    axes = export_dynamic.dynamic_axes(name, axes) if dynamic else axes

    scratch = directory / f".scratch-{name}"
    scratch.mkdir()
    raw = scratch / f"{name}.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(raw), dynamo=False, opset_version=OPSET,
            input_names=module.input_names(), output_names=module.output_names(),
            dynamic_axes=axes, do_constant_folding=True,
        )
    model = attach_pool_functions(onnx.load(str(raw)))
    _pin_kv_shapes(model, module)
    final = directory / f"{name}.onnx"
    onnx.save_model(model, str(final), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{name}.onnx.data", size_threshold=1024)  # small constants stay inline
    shutil.rmtree(scratch)
    if name not in DECODER_GRAPHS:  # those are checked once, after they share their weights file
        onnx.checker.check_model(str(final), full_check=True)


def _share_decoder_weights(directory: Path) -> None:
    import onnx

    share_external_data(directory, list(DECODER_GRAPHS))
    for name in DECODER_GRAPHS:
        onnx.checker.check_model(str(directory / f"{name}.onnx"), full_check=True)


def _pin_kv_shapes(model, module) -> None:
    """State every KV tensor's static dims ([batch, kv_heads, len, head_dim]); tracing loses some."""
    decoder = getattr(module, "decoder", None)
    if decoder is None:
        return
    cfg = decoder.cfg
    for value in [*model.graph.input, *model.graph.output]:
        if value.name.startswith(("present.", "past_key_values.")):
            dims = value.type.tensor_type.shape.dim
            dims[1].dim_value, dims[3].dim_value = cfg.num_kv_heads, cfg.head_dim
        elif value.name == "logits":
            value.type.tensor_type.shape.dim[1].dim_value = cfg.vocab_size


def _io_spec(path: Path) -> dict:
    import onnx

    from engines.trt_check import shape_inputs_of

    model = onnx.load(str(path), load_external_data=False)

    def spec(values):
        return [{"name": v.name,
                 "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in values]

    return {"inputs": spec(model.graph.input), "outputs": spec(model.graph.output),
            "shape_inputs": shape_inputs_of(model)}


def _manifest(loaded: LoadedModel, schedule, dtype_flag: str, directory: Path, max_batch: int,
              max_sequence: int) -> dict:
    cfg = loaded.decoder_config

    graphs = {name: {"file": f"{name}.onnx", "data": SHARED_DATA if name in DECODER_GRAPHS else f"{name}.onnx.data",
                     **_io_spec(directory / f"{name}.onnx")}
              for name in GRAPHS}
    n_v = schedule.num_visual
    kv = [{"layer": i, "visual_tokens": v, "present_len": "sequence" if v == n_v else f"sequence - {n_v - v}"}
          for i, v in enumerate(schedule.visual_tokens_per_layer())]
    tok = loaded.processor.tokenizer
    ops = ["PoolSelect", "PoolGather", "PoolScatter"]
    extra_model, extra_capacity = {}, {}
    if loaded.family.dynamic_visual_tokens:  # one artifact for every N_v up to max_visual_tokens
        extra_model, extra_capacity = export_dynamic.manifest_entries(loaded)
        ops = export_dynamic.DYNAMIC_OPS
    return {
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {
            "spec": loaded.spec, "source": loaded.source, "family": family_of(loaded.config).model_type,
            "decoder": cfg.to_dict(), "num_visual": loaded.num_visual, "image_token_id": loaded.image_token_id,
            "eos_token_id": tok.eos_token_id, **extra_model,
        },
        "method": schedule.method, "ratio": schedule.ratio, "schedule": schedule.to_dict(exact=True),
        "dtype": DTYPE_NAMES[dtype_flag], "opset": OPSET,
        "custom_domain": {"domain": "reroute", "ops": ops,
                          "bodies": "ONNX local functions (standard ops)"},
        "capacity": {"max_batch": max_batch, "max_sequence": max_sequence, **extra_capacity},
        "graphs": graphs, "kv": kv, "processor_dir": "processor", "packages": installed_versions(MANIFEST_PACKAGES),
    }


def default_out(model: str, method: str, ratio: float) -> Path:
    slug = Path(model).name if os.path.isdir(model) else model.replace("/", "--")
    return Path("artifacts") / f"{slug}-{method}-r{ratio:.4g}"


def _make_parent(target: Path) -> None:
    """--out's folder, created if missing; one line (exit 2) if it cannot be, e.g. under a file or read-only."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RerouteError(f"cannot create {target.parent} for --out: {exc.strerror or exc}") from None


def _make_temp_beside(target: Path) -> Path:
    try:
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as exc:
        raise RerouteError(f"cannot write in {target.parent} for --out: {exc.strerror or exc}") from None


def export_artifact(model: str, method: str = "reroute", ratio: float = 0.25, out: str | None = None,
                    dtype: str = "fp32", force: bool = False, layers=None, keep_ratios=None, max_batch: int = 4,
                    max_sequence: int | None = None, parity_samples: int = 2, quiet: bool = False,
                    loaded: LoadedModel | None = None):
    """Export an artifact folder; returns (path, parity report or None). ``loaded`` reuses a loaded model."""
    from .parity import run_parity, write_report

    if dtype not in DTYPES:
        raise RerouteError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if max_batch < 1:
        raise RerouteError(f"--max-batch must be >= 1, got {max_batch}")
    target = Path(out) if out else default_out(model, method, ratio)
    if target.exists() and not force:
        raise RerouteError(f"{target} already exists; pass --force to replace it")
    _make_parent(target)
    progress = Progress(4 + len(GRAPHS) + (parity_samples > 0), quiet)
    with progress(f"loading {model}"):
        loaded = loaded or load_model(model)
        schedule = make_schedule(loaded.config, method, ratio, layers, keep_ratios)
        limit = loaded.config.text_config.max_position_embeddings
        max_sequence = max_sequence or min(2048, limit)
        if not (loaded.num_visual + 2 <= max_sequence <= limit):
            raise RerouteError(f"--max-sequence must be in [{loaded.num_visual + 2}, {limit}], got {max_sequence}")
        if loaded.family.dynamic_visual_tokens and not export_dynamic.max_visual_tokens_ok(loaded.num_visual):
            raise RerouteError(f"max_pixels allows {loaded.num_visual} visual tokens per image; TensorRT's TopK "
                               f"takes at most 3840: lower max_pixels in the processor")
    tmp = _make_temp_beside(target)
    try:
        with progress("tracing example inputs"):
            modules = build_graph_modules(loaded, schedule, DTYPES[dtype])
            examples = _example_inputs(loaded, modules, DTYPES[dtype])
        for name in GRAPHS:
            with progress(f"exporting {name}.onnx"):
                _export_one(name, modules[name], examples[name], tmp, loaded.decoder_config.num_layers,
                            loaded.family.dynamic_visual_tokens)
        with progress("storing the decoder weights once for prefill and decode"):
            _share_decoder_weights(tmp)
        with progress("writing manifest and processor"):
            loaded.processor.save_pretrained(tmp / "processor")
            if loaded.family.dynamic_visual_tokens:  # its preprocessing needs the config (engines/artifact.py)
                loaded.config.save_pretrained(tmp / "processor")
            manifest = _manifest(loaded, schedule, dtype, tmp, max_batch, max_sequence)
            manifest["files"] = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            (tmp / MANIFEST).write_text(__import__("json").dumps(manifest, indent=2))
        report = None
        if parity_samples > 0:
            with progress(f"parity: torch vs onnxruntime on {parity_samples} samples"):
                report = run_parity(tmp, ["torch", "onnxruntime"], samples=parity_samples, steps=8,
                                    loaded=loaded)
                report["artifact"] = str(target.resolve())
                write_report(report, tmp / "parity.json")
        publish(tmp)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, report
