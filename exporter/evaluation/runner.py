"""Run dataset items through backends: the PyTorch reference per method x ratio, or exported artifacts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

from graphs.flops import flops, kv_bytes, tokens_per_layer
from graphs.schedule import solve_schedule

from engines.errors import RerouteError
from engines.inputs import chat_prompt
from ..inspect_model import DTYPE_BYTES
from .data import Dataset, Item
from .progress import ItemProgress
from .scoring import score_answer
from .shared_inputs import PrecomputedVision, SharedInputs


@dataclass
class EvalConfig:
    """One column of the results: a schedule on a backend, opened lazily by ``open``."""

    label: str
    backend_name: str
    schedule: object  # graphs.schedule.Schedule
    decoder: object  # graphs.config.DecoderConfig
    kv_dtype: str
    open: Callable[[], tuple]  # -> (backend, processor, image_token_id, num_visual, eos_token_id, artifact)
    max_batch: int | None = None
    # configs with equal keys tokenise alike / compute equal vision features (shared_inputs.py)
    processor_key: str | None = None
    vision_key: str | None = None

    def __post_init__(self):
        # without a key, a config shares nothing with the others
        self.processor_key = self.processor_key or f"config:{id(self)}:processor"
        self.vision_key = self.vision_key or f"config:{id(self)}:vision"

    def costs(self) -> dict:
        """FLOPs ratio and KV bytes in the visual-token convention (text tokens not counted, as inspect)."""
        unrouted = solve_schedule("none", 1.0, self.decoder.num_layers, self.schedule.num_visual)
        report = flops(self.decoder, self.schedule)
        nbytes = DTYPE_BYTES[self.kv_dtype]
        return {"flops_ratio": report.routed / report.full, "tflops": report.routed / 1e12,
                "kv_bytes": kv_bytes(self.decoder, tokens_per_layer(self.schedule), nbytes),
                "kv_bytes_full": kv_bytes(self.decoder, tokens_per_layer(unrouted), nbytes),
                "kv_dtype": self.kv_dtype}


@dataclass
class ItemResult:
    index: int
    kind: str
    answer: str
    correct: bool
    unparseable: bool = False
    iou: float | None = None


@dataclass
class ConfigResult:
    method: str
    ratio: float
    backend: str
    label: str
    costs: dict
    items: list[ItemResult] = field(default_factory=list)
    seconds: float = 0.0


def model_configs(model: str, methods: list[str], ratios: list[float]) -> list[EvalConfig]:
    """Methods x ratios through the PyTorch reference of one loaded model (``none`` once, at ratio 1)."""
    from engines.torch_runner import TorchBackend

    from ..inspect_model import make_schedule
    from ..models import load_model

    loaded = load_model(model)
    configs, seen = [], set()
    for method in methods:
        for ratio in ([1.0] if method == "none" else ratios):
            schedule = make_schedule(loaded.config, method, ratio)
            if (method, schedule.ratio) in seen:
                continue
            seen.add((method, schedule.ratio))

            def open_torch(schedule=schedule):
                return (TorchBackend(loaded, schedule), loaded.processor, loaded.image_token_id, loaded.num_visual,
                        loaded.processor.tokenizer.eos_token_id, None)

            configs.append(EvalConfig(f"{method} r={schedule.ratio:.4f} torch", "torch", schedule,
                                      loaded.decoder_config, "float32", open_torch,
                                      processor_key=f"model:{id(loaded)}", vision_key=f"torch:{id(loaded)}:float32"))
    return configs


def artifact_configs(paths: list[str], backends: list[str], threads: int | None = None) -> list[EvalConfig]:
    """Each artifact's own method and ratio, on each backend (``threads``: ONNX Runtime intra-op threads)."""
    from engines.artifact import open_artifact
    from engines.backends import open_backend

    configs = []
    for path in paths:
        artifact = open_artifact(path)
        schedule = artifact.schedule
        for name in backends:
            def open_artifact_backend(artifact=artifact, name=name):
                model = artifact.manifest["model"]
                backend = open_backend(name, artifact, threads=threads)
                return (backend, artifact.processor(), model["image_token_id"], model["num_visual"],
                        model["eos_token_id"], artifact)

            configs.append(EvalConfig(f"{schedule.method} r={schedule.ratio:.4f} {name} ({artifact.root.name})",
                                      name, schedule, artifact.decoder_config, artifact.dtype,
                                      open_artifact_backend, artifact.capacity["max_batch"],
                                      *artifact_keys(artifact.manifest, name)))
    return configs


def artifact_keys(manifest: dict, backend: str) -> tuple[str, str]:
    """(processor key, vision key) from the sha256 of the artifact's files (verified when it was opened):
    artifacts exported from one checkpoint share their processor files and their vision graph."""
    files = manifest["files"]
    processor = ",".join(f"{name}={sha}" for name, sha in sorted(files.items()) if name.startswith("processor/"))
    vision = manifest["graphs"]["vision"]
    weights = [files.get(vision["file"]), files.get(vision.get("data") or "")]
    return f"processor:{processor}", f"{backend}:{manifest['dtype']}:" + ",".join(str(w) for w in weights)


def batches(items: list[Item], lengths: dict[int, int], size: int) -> Iterator[list[Item]]:
    """Items grouped by prompt length (a batch must share it), in a fixed order, ``size`` at a time."""
    ordered = sorted(items, key=lambda it: (lengths[it.index], it.index))
    batch: list[Item] = []
    for item in ordered:
        if batch and (len(batch) == size or lengths[batch[0].index] != lengths[item.index]):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def run_config(config: EvalConfig, data: Dataset, batch_size: int, max_new_tokens: int,
               progress: ItemProgress, shared: SharedInputs) -> ConfigResult:
    from engines.generate import greedy_generate

    backend, processor, image_token_id, num_visual, eos, artifact = config.open()
    size = min(batch_size, config.max_batch or batch_size)
    prompts = {it.index: chat_prompt(processor, it.question) for it in data.items}
    lengths = shared.prompt_lengths(config.processor_key, processor, prompts)
    s = config.schedule
    result = ConfigResult(s.method, s.ratio, config.backend_name, config.label, config.costs())
    try:
        for batch in batches(data.items, lengths, size):
            input_ids, features, visual_start = shared.batch(config, backend, processor, image_token_id,
                                                             num_visual, batch, prompts)
            if artifact is not None:
                artifact.check_request(*input_ids.shape, max_new_tokens)
            gen = greedy_generate(PrecomputedVision(backend, features), input_ids, None, visual_start,
                                  max_new_tokens, eos)
            for item, tokens in zip(batch, gen.generated):
                answer = processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()
                score = score_answer(item, answer)
                result.items.append(ItemResult(item.index, item.kind, answer, score.correct, score.unparseable,
                                               score.iou))
            progress.advance(len(batch))
    finally:
        if hasattr(backend, "close"):
            backend.close()
    result.items.sort(key=lambda r: r.index)
    result.seconds = progress.config_seconds()
    return result


def run_eval(configs: list[EvalConfig], data: Dataset, batch_size: int = 4, max_new_tokens: int = 32,
             quiet: bool = False, finished: dict | None = None, on_result=None) -> list[ConfigResult]:
    """Every config over ``data``, in order. ``finished``: label -> ConfigResult of configs an earlier run
    with the same inputs completed (taken as they are, not run); ``on_result(result)`` after each config."""
    if not data.items:
        raise RerouteError(f"no usable items in {data.root} "
                           f"({len(data.malformed)} malformed lines, {len(data.missing_images)} missing images)")
    if batch_size < 1:
        raise RerouteError(f"--batch-size must be >= 1, got {batch_size}")
    finished = finished or {}
    todo = [c for c in configs if c.label not in finished]
    progress = ItemProgress(len(todo), len(data.items), quiet=quiet)
    shared = SharedInputs.for_configs(todo)
    results = []
    for config in configs:
        if config.label in finished:
            results.append(finished[config.label])
            continue
        progress.start(config.label)
        results.append(run_config(config, data, batch_size, max_new_tokens, progress, shared))
        progress.finish()
        if on_result is not None:
            on_result(results[-1])
    return results
