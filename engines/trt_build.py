"""``reroute build``: TensorRT engines for vision, embed, prefill and decode through Polygraphy's loaders.

``NetworkFromOnnxPath`` (strongly typed: the ONNX graph states the precision,
as TensorRT 11 requires) -> ``CreateConfig`` with one optimization profile per
graph (from the manifest's capacity, or ``--min/--opt/--max``) ->
``EngineFromNetwork`` -> ``SaveEngine``. With ``--plugins`` the plugin-form
graphs are built with the token-pool plugin library loaded; ``--no-plugins``
builds the exported graphs as they are (the pool functions inlined).
Everything before the TensorRT import (lint, profiles, plugin-form graphs) runs
and is tested on CPU.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from .artifact import GRAPHS, MANIFEST, Artifact, open_artifact, sha256_file
from .errors import CheckFailure, RerouteError

from .plugin_graph import write_plugin_form
from .plugins import default_library_path
from .trt_check import check_artifact

Shape = tuple[int, ...]
OPT_TEXT_TOKENS = 64  # the optimization point: a typical LLaVA prompt around the image


def engine_dir(artifact: Artifact, plugins: bool) -> Path:
    return artifact.root / "engines" / ("plugins" if plugins else "no-plugins")


def parse_shapes(text: str | None) -> dict[str, Shape]:
    """trtexec-style ``name:1x3x336x336,other:2x600`` -> {name: shape}."""
    if not text:
        return {}
    shapes = {}
    for item in text.split(","):
        match = re.fullmatch(r"\s*([\w.]+):(\d+(?:x\d+)*)\s*", item)
        if not match:
            raise RerouteError(f"bad shape {item!r}: use name:DIMxDIM (e.g. inputs_embeds:1x600x4096)")
        shapes[match.group(1)] = tuple(int(d) for d in match.group(2).split("x"))
    return shapes


def default_profiles(artifact: Artifact, graph: str) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) per input: batch 1..max_batch, prompt N_v+1..max_sequence, per-layer KV lengths
    ``text + visual_tokens(layer)``. For shape inputs the triple holds values (none in fixed-resolution graphs
    since visual_start became per sample; dynamic-resolution ones keep it, engines/trt_profiles_dynamic.py)."""
    m = artifact.manifest
    if "max_visual_tokens" in m["capacity"]:  # dynamic resolution: N_v varies per request
        from .trt_profiles_dynamic import dynamic_profiles

        return dynamic_profiles(artifact, graph, OPT_TEXT_TOKENS)
    cfg, n_v = artifact.decoder_config, m["model"]["num_visual"]
    b, s_max = m["capacity"]["max_batch"], m["capacity"]["max_sequence"]
    s_min, s_opt = n_v + 1, min(n_v + OPT_TEXT_TOKENS, s_max)
    d, kvh, hd = cfg.hidden_size, cfg.num_kv_heads, cfg.head_dim
    if graph == "vision":
        size = artifact.manifest["graphs"]["vision"]["inputs"][0]["shape"][2:]
        return {"pixel_values": ((1, 3, *size), (1, 3, *size), (b, 3, *size))}
    if graph == "embed":
        return {"input_ids": ((1, 1), (1, s_opt), (b, s_max)),
                "image_features": ((1, 0, d), (1, n_v, d), (b, n_v, d))}
    if graph == "prefill":  # mixed batches: visual_start [B], position_ids / attention_mask [B, T]
        tokens = ((1, s_min), (1, s_opt), (b, s_max))
        profile = {"inputs_embeds": tuple((*bt, d) for bt in tokens), "position_ids": tokens,
                   "attention_mask": tokens}
        if any(t["name"] == "visual_start" for t in m["graphs"]["prefill"]["inputs"]):
            profile["visual_start"] = ((1,), (1,), (b,))
        return profile
    profile = {"inputs_embeds": ((1, 1, d), (1, 1, d), (b, 1, d)), "position_ids": ((1, 1), (1, 1), (b, 1)),
               "pad_lengths": ((1,), (1,), (b,))}
    for entry in m["kv"]:
        v = entry["visual_tokens"]
        lengths = (1 + v, OPT_TEXT_TOKENS + v, s_max - n_v + v - 1)  # past = text + visual of that layer
        for kind in ("key", "value"):
            profile[f"past_key_values.{entry['layer']}.{kind}"] = tuple((bb, kvh, n, hd) for bb, n in
                                                                        zip((1, 1, b), lengths))
    return profile


def merge_overrides(profile: dict, mins: dict, opts: dict, maxs: dict) -> dict:
    return {name: (mins.get(name, lo), opts.get(name, mid), maxs.get(name, hi))
            for name, (lo, mid, hi) in profile.items()}


def require_tensorrt():
    """The ``tensorrt`` module and a usable GPU, or a one-line error."""
    try:
        import tensorrt as trt
    except Exception:  # noqa: BLE001 - any import failure means no usable TensorRT here
        raise RerouteError("TensorRT is not installed here (pip install 'reroute[tensorrt]' on a GPU server); "
                           "`reroute check` passed") from None
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
        del builder
    except Exception as exc:  # noqa: BLE001
        raise RerouteError(f"TensorRT cannot create a builder (no usable NVIDIA GPU?): {exc}") from None
    return trt


def build_engines(path, plugins: bool = True, min_shapes: str | None = None, opt_shapes: str | None = None,
                  max_shapes: str | None = None, plugin_library: str | None = None) -> dict:
    """Lint, then build and save one engine per graph; returns the engine metadata added to the manifest."""
    problems = check_artifact(path, plugins=plugins)
    if problems:
        raise CheckFailure(f"{len(problems)} problem(s) TensorRT would reject; run `reroute check {path}`")
    artifact = open_artifact(path)
    overrides = parse_shapes(min_shapes), parse_shapes(opt_shapes), parse_shapes(max_shapes)
    profiles = {g: default_profiles(artifact, g) for g in GRAPHS}
    unknown = set().union(*overrides) - {n for p in profiles.values() for n in p}
    if unknown:
        raise RerouteError(f"no graph has an input named {sorted(unknown)[0]!r}")
    merged_all = {g: merge_overrides(p, *overrides) for g, p in profiles.items()}
    trt = require_tensorrt()
    library = Path(plugin_library) if plugin_library else default_library_path()
    if plugins and not library.is_file():
        raise RerouteError(f"plugin library {library} not found: build it with engines/plugins/build.sh "
                           f"(or pass --no-plugins)")
    return _build(artifact, trt, plugins, merged_all, library)


def _build(artifact: Artifact, trt, plugins: bool, profiles: dict, library: Path) -> dict:  # pragma: no cover - GPU
    from polygraphy.backend.trt import (CreateConfig, EngineFromNetwork, LoadPlugins, NetworkFromOnnxPath,
                                        Profile, SaveEngine)

    out_dir = engine_dir(artifact, plugins)
    out_dir.mkdir(parents=True, exist_ok=True)
    engines = {}
    for graph in GRAPHS:
        onnx_path = write_plugin_form(artifact.graph_path(graph)) if plugins else artifact.graph_path(graph)
        network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
        if plugins:
            network = LoadPlugins(plugins=[str(library)], obj=network)
        profile = Profile()
        for name, (lo, mid, hi) in profiles[graph].items():
            profile.add(name, min=lo, opt=mid, max=hi)
        engine = EngineFromNetwork(network, config=CreateConfig(profiles=[profile]))
        plan = out_dir / f"{graph}.plan"
        SaveEngine(engine, path=str(plan))()
        engines[graph] = {"file": str(plan.relative_to(artifact.root)),
                          "profile": {n: [list(s) for s in t] for n, t in profiles[graph].items()}}
    meta = {"tensorrt": trt.__version__, "gpu": _device_name(), "plugins": plugins,
            "plugin_library": str(library) if plugins else None, "graphs": engines}
    _update_manifest(artifact, "plugins" if plugins else "no-plugins", meta)
    return meta


def _device_name() -> str:  # pragma: no cover - GPU
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    return "unknown"


def _update_manifest(artifact: Artifact, form: str, meta: dict) -> None:
    """Record engine metadata and their sha256, atomically."""
    manifest = dict(artifact.manifest)
    manifest.setdefault("engines", {})[form] = meta
    for p in [*sorted((artifact.root / "engines").rglob("*")), *artifact.root.glob("*.plugins.onnx")]:
        if p.is_file():
            manifest["files"][str(p.relative_to(artifact.root))] = sha256_file(p)
    fd, tmp = tempfile.mkstemp(dir=artifact.root, suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(tmp, artifact.root / MANIFEST)
