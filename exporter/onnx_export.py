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
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
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
from .models import LoadedModel, load_config
from .preflight import parity_fits, preflight
from .progress import Progress
from .registry import family_of, num_visual_tokens
from .samples import sample
from .shared_weights import SHARED_DATA
from .skeleton import parameter_sources
from .weight_binder import DataFile, bind_weights
from .weight_source import WeightSource, open_source, resolve_dtype

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
        if "attention_mask" in module.input_names():  # fixed resolution: mixed (left-padded) batches
            axes.update(visual_start=batch, position_ids={0: "batch", 1: "sequence"},
                        attention_mask={0: "batch", 1: "sequence"})
        for i in range(num_layers):
            for kind in ("key", "value"):
                axes[f"present.{i}.{kind}"] = {0: "batch", 2: f"present_len_{i}"}
    else:
        axes["inputs_embeds"] = batch
        axes["position_ids"] = batch
        if "pad_lengths" in module.input_names():
            axes["pad_lengths"] = batch
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
    v0 = torch.tensor([inputs.visual_start], dtype=torch.int64)  # [B]: one start per sample
    positions = torch.arange(ids.shape[1], dtype=torch.int64)[None]  # [B, T]
    mask = torch.ones_like(ids)  # [B, T]: no padding in the tracing sample
    with torch.inference_mode():
        features = modules["vision"](pixels)
        embeds = modules["embed"](ids, features)
        out = modules["prefill"](embeds, v0, positions, mask)
    num_layers = loaded.decoder_config.num_layers
    past = tuple(t.clone() for t in out[1 : 1 + 2 * num_layers])
    step = modules["embed"](ids[:, -1:], features[:, :0])
    pad_lengths = torch.zeros(1, dtype=torch.int64)
    return {
        "vision": (pixels,),
        "embed": (ids, features),
        "prefill": (embeds, v0, positions, mask),
        "decode": (step, torch.tensor([[ids.shape[1]]], dtype=torch.int64), pad_lengths, *past),
    }


def _export_one(name: str, module, args: tuple, directory: Path, num_layers: int, source: WeightSource,
                data: DataFile, on_tensor=None, dynamic: bool = False) -> None:
    """Trace ``module`` with its parameters as graph inputs, then stream the real weights into ``data``.
    ``dynamic``: a dynamic-resolution family's graph (N_v varies; exporter/export_dynamic.py)."""
    import onnx

    axes = _dynamic_axes(name, module, num_layers)
    axes = export_dynamic.dynamic_axes(name, axes) if dynamic else axes

    scratch = directory / f".scratch-{name}"
    scratch.mkdir()
    raw = scratch / f"{name}.onnx"
    with torch.no_grad(), warnings.catch_warnings(), _shape_inference_without_weight_values():
        warnings.simplefilter("ignore")
        # export_params=False keeps weights out of the proto (at 7B it could not hold them); the weight-only
        # chains constant folding would fold are folded by bind_weights, with the real weights.
        torch.onnx.export(
            module, args, str(raw), dynamo=False, opset_version=OPSET, export_params=False,
            input_names=module.input_names(), output_names=module.output_names(),
            dynamic_axes=axes, do_constant_folding=False,
        )
    model = attach_pool_functions(onnx.load(str(raw)))
    shutil.rmtree(scratch)
    _pin_kv_shapes(model, module)
    params = parameter_sources(module, source.names)
    weights = {graph_name: partial(source.read, model_name) for graph_name, model_name in params.items()}
    bind_weights(model, weights, data, on_tensor)
    onnx.save_model(model, str(directory / f"{name}.onnx"))


@contextmanager
def _shape_inference_without_weight_values():
    """Run the TorchScript exporter's ONNX shape inference without the parameters' values.

    Why: given the parameters, that pass keeps a constant value for every node whose inputs are all
    known (the Transpose of each Linear weight, its Casts), i.e. a contiguous copy of each weight, all
    held until the export ends: +1 GiB for llava-bench's prefill, the whole decoder at 7B. Shapes and
    dtypes come from the graph inputs' types, so withholding the values changes no inferred type
    (tests/test_streamed_export.py compares the graphs with the constant-folded export's).
    """
    names = ("_jit_pass_onnx_graph_shape_type_inference", "_jit_pass_onnx_node_shape_type_inference")
    originals = {name: getattr(torch._C, name) for name in names}

    def without_values(original):
        return lambda target, params_dict, *rest: original(target, {}, *rest)

    try:
        for name, original in originals.items():
            setattr(torch._C, name, without_values(original))
        yield
    finally:
        for name, original in originals.items():
            setattr(torch._C, name, original)


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


@dataclass
class ExportOptions:
    """What ``reroute export`` was asked for; the CLI fills it, tests construct it."""

    model: str
    method: str = "reroute"
    ratio: float = 0.25
    out: str | None = None
    dtype: str = "auto"  # fp16 for llava and half-precision checkpoints, fp32 otherwise
    force: bool = False
    layers: list | None = None
    keep_ratios: list | None = None
    max_batch: int = 4
    max_sequence: int | None = None
    parity_samples: int = 2
    quiet: bool = False


class ExportStageError(RerouteError):
    """An unexpected internal error during one stage of an export (the cause is chained for --debug)."""

    exit_code = 1


@contextmanager
def _stage(progress: Progress, label: str):
    with progress(label) as step:
        try:
            yield step
        except (RerouteError, KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise ExportStageError(f"export failed while {label}: {type(exc).__name__}: {first} "
                                   f"(internal error; rerun with --debug for the traceback)") from exc


def _check_options(o: ExportOptions) -> Path:
    if o.dtype not in (*DTYPES, "auto"):
        raise RerouteError(f"--dtype must be one of auto, {', '.join(DTYPES)}, got {o.dtype!r}")
    if o.max_batch < 1:
        raise RerouteError(f"--max-batch must be >= 1, got {o.max_batch}")
    target = Path(o.out) if o.out else default_out(o.model, o.method, o.ratio)
    if target.exists() and not o.force:
        raise RerouteError(f"{target} already exists; pass --force to replace it")
    return target


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


def export_artifact(options: ExportOptions | str, *args, loaded: LoadedModel | None = None, **kwargs):
    """Export an artifact folder; returns (path, parity report or None).

    ``loaded``: a model already in memory whose weights are bound instead of reading its files (tests).
    The older positional form ``export_artifact(model, method, ratio, ...)`` is still accepted.
    """
    o = options if isinstance(options, ExportOptions) else ExportOptions(options, *args, **kwargs)
    target = _check_options(o)
    config = loaded.config if loaded is not None else load_config(o.model)
    schedule = make_schedule(config, o.method, o.ratio, o.layers, o.keep_ratios)
    limit = config.text_config.max_position_embeddings
    max_sequence = o.max_sequence or min(2048, limit)
    if not (num_visual_tokens(config) + 2 <= max_sequence <= limit):
        raise RerouteError(f"--max-sequence must be in [{num_visual_tokens(config) + 2}, {limit}], got {max_sequence}")
    if family_of(config).dynamic_visual_tokens and not export_dynamic.max_visual_tokens_ok(num_visual_tokens(config)):
        raise RerouteError(f"max_pixels allows {num_visual_tokens(config)} visual tokens per image; TensorRT's TopK "
                           f"takes at most 3840: lower max_pixels in the processor")
    dtype = resolve_dtype(o.model, o.dtype, loaded)
    preflight(o.model, config, dtype, loaded)
    parity = o.parity_samples > 0 and parity_fits(o.model, config, dtype, loaded)
    _make_parent(target)
    progress = Progress(4 + len(GRAPHS) + parity, o.quiet)
    tmp = _make_temp_beside(target)
    try:
        report = _export_into(tmp, o, progress, schedule, dtype, max_sequence, loaded, parity)
        if report is not None:
            report["artifact"] = str(target.resolve())
            from .parity import write_report

            write_report(report, tmp / "parity.json")
        publish(tmp)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, report


def _export_into(tmp: Path, o: ExportOptions, progress: Progress, schedule, dtype: str, max_sequence: int,
                 loaded, parity: bool):
    with _stage(progress, f"preparing the weights of {o.model} ({dtype})"):
        source = open_source(o.model, dtype, tmp, loaded)
    try:
        with _stage(progress, "tracing example inputs (stand-in weights)"):
            modules = build_graph_modules(source.loaded, schedule, DTYPES[dtype])
            examples = _example_inputs(source.loaded, modules, DTYPES[dtype])
        num_layers = source.loaded.decoder_config.num_layers
        decoder_data = DataFile(tmp / SHARED_DATA)  # prefill and decode: one file, each weight once
        try:
            for name in GRAPHS:
                data = decoder_data if name in DECODER_GRAPHS else DataFile(tmp / f"{name}.onnx.data")
                with _stage(progress, f"exporting {name}.onnx, streaming its weights") as step:
                    _export_one(name, modules[name], examples[name], tmp, num_layers, source, data, step.update,
                                source.loaded.family.dynamic_visual_tokens)
                if data is not decoder_data:
                    data.close()
        finally:
            decoder_data.close()
    finally:
        source.close()  # a preset's scratch weights must be gone before the manifest lists the files
    del modules, examples
    with _stage(progress, "checking the graphs (onnx full_check)"):
        for name in GRAPHS:
            _check_graph(tmp / f"{name}.onnx")
    with _stage(progress, "writing manifest and processor"):
        _write_manifest(tmp, source.loaded, schedule, dtype, o.max_batch, max_sequence)
    if not parity:
        return None
    from .parity import run_parity

    with _stage(progress, f"parity: torch vs onnxruntime on {o.parity_samples} samples"):
        return run_parity(tmp, ["torch", "onnxruntime"], samples=o.parity_samples, steps=8, loaded=loaded)


def _check_graph(path: Path) -> None:
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    for orphan in path.parent.glob(f"{path.name}.data"):  # a data file no tensor of this graph uses
        if orphan.stat().st_size == 0:
            orphan.unlink()


def _write_manifest(tmp: Path, loaded, schedule, dtype: str, max_batch: int, max_sequence: int) -> None:
    import json

    loaded.processor.save_pretrained(tmp / "processor")
    if loaded.family.dynamic_visual_tokens:  # its preprocessing needs the config (engines/artifact.py)
        loaded.config.save_pretrained(tmp / "processor")
    manifest = _manifest(loaded, schedule, dtype, tmp, max_batch, max_sequence)
    manifest["files"] = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
