"""``reroute generate``: one image + prompt through a backend, greedy decoding."""

from __future__ import annotations

import os
import tempfile

import numpy as np

from engines.errors import RerouteError
from engines.generate import Generation, generate_inputs
from engines.inputs import chat_prompt, encode, load_image

from .inspect_model import make_schedule
from .models import load_model

MAX_NEW_TOKENS_LIMIT = 4096


def torch_backend(model: str, method: str, ratio: float, layers=None, keep_ratios=None, **options):
    """(loaded model, TorchBackend) for a model spec and a schedule; ``options``: device, dtype."""
    from engines.torch_runner import TorchBackend

    loaded = load_model(model)
    schedule = make_schedule(loaded.config, method, ratio, layers, keep_ratios)
    return loaded, TorchBackend(loaded, schedule, **options)


class ArtifactEncoder:
    """What :func:`run_generate` needs of a loaded model, from an artifact alone (dynamic-resolution
    families: the family's prompt checks, N_v per image, M-RoPE positions; the model is not loaded)."""

    def __init__(self, artifact, processor):
        from .registry import FAMILIES

        self.family = FAMILIES[artifact.manifest["model"]["family"]]
        self.artifact, self.processor, self.config = artifact, processor, artifact.hf_config()

    @classmethod
    def of(cls, artifact, processor) -> "ArtifactEncoder | None":
        """None for fixed-resolution artifacts (LLaVA's encoding from the manifest's ids is enough)."""
        from .registry import FAMILIES

        return cls(artifact, processor) if FAMILIES[artifact.manifest["model"]["family"]].dynamic_visual_tokens \
            else None

    def encode(self, prompts, images):
        inputs = self.family.encode(self.processor, self.config, prompts, images)
        self.artifact.check_visual_tokens(inputs.num_visual)
        return inputs


def check_max_new_tokens(n: int) -> None:
    if not (1 <= n <= MAX_NEW_TOKENS_LIMIT):
        raise RerouteError(f"--max-new-tokens must be in [1, {MAX_NEW_TOKENS_LIMIT}], got {n}")


def run_generate(backend, loaded_processor, image_token_id: int, num_visual: int, image: str, prompt: str,
                 chat: bool, max_new_tokens: int, eos_token_id: int | None,
                 artifact=None, loaded=None) -> tuple[dict, Generation]:
    """``loaded`` (an exporter.models.LoadedModel): encode through its family (prompt checks, dynamic N_v,
    M-RoPE positions); without it, LLaVA's fixed-N_v encoding with the given ids."""
    check_max_new_tokens(max_new_tokens)
    picture = load_image(image)
    if loaded is not None:
        text = chat_prompt(loaded_processor, prompt, loaded.family.placeholder) if chat else prompt
        inputs = loaded.encode([text], [picture])
    else:
        text = chat_prompt(loaded_processor, prompt) if chat else prompt
        inputs = encode(loaded_processor, [text], [picture], image_token_id, num_visual)
    if artifact is not None:
        artifact.check_request(*inputs.input_ids.shape, max_new_tokens)
    gen = generate_inputs(backend, inputs, max_new_tokens, eos_token_id)
    tokens = gen.generated[0]
    result = {
        "backend": backend.name,
        "prompt_token_ids": inputs.input_ids[0].tolist(),
        "generated_token_ids": tokens,
        "text": loaded_processor.tokenizer.decode(tokens, skip_special_tokens=True),
        "selected_indices": [s[0].tolist() for s in gen.selections],
        "kv_tokens_per_layer": gen.cache_lengths,
    }
    return result, gen


def save_logits(path: str, logits: np.ndarray) -> None:
    """Write the prefill's last-position logits atomically (temp file, then rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise RerouteError(f"cannot write {path}: directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(suffix=".npy", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, logits)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
