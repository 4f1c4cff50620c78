"""A ``reroute`` model for lmms-eval: its tasks (RefCOCO, GQA, POPE, MME, ...) run on an exported artifact.

Needs the optional ``lmms`` extra (``pip install 'reroute[lmms]'``). lmms-eval finds the model through the
``lmms_eval.models`` entry point in pyproject.toml (``--model reroute --model_args artifact=DIR``), or pass
an instance to ``lmms_eval.evaluator.simple_evaluate(model=RerouteArtifact(...))``.

One request runs at a time, with the artifact's own method and ratio, greedy, through the same
preprocessing as ``reroute generate --chat`` (the artifact's processor and chat template).
"""

from __future__ import annotations

import numpy as np
from lmms_eval.api.model import lmms
from lmms_eval.api.registry import register_model

from engines.generate import greedy_generate

from engines.backends import artifact_backend
from engines.inputs import IMAGE_PLACEHOLDER, chat_prompt, encode


def manifest():
    """Entry point ``lmms_eval.models``: tells lmms-eval where the ``reroute`` model class lives."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="reroute", simple_class_path=f"{__name__}.RerouteArtifact")


def _visual(request, task_dict) -> object:
    context, _, doc_to_visual, doc_id, task, split = request.args[:6]
    visuals = doc_to_visual(task_dict[task][split][doc_id]) if doc_to_visual else []
    if len(visuals) != 1:
        raise ValueError(f"reroute artifacts take exactly one image per request, {task} doc {doc_id} has "
                         f"{len(visuals)}")
    return visuals[0].convert("RGB")


def _cut(text: str, until: list[str]) -> str:
    """The text before the first stop sequence."""
    for stop in until:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@register_model("reroute")
class RerouteArtifact(lmms):
    def __init__(self, artifact: str, backend: str = "onnxruntime", max_new_tokens: int = 32, **kwargs) -> None:
        super().__init__()
        self.processor, self.image_token_id, self.num_visual, self.backend, self.eos, self.artifact = \
            artifact_backend(artifact, backend)
        self.max_new_tokens = int(max_new_tokens)

    def _inputs(self, context: str, image):
        question = context.replace(IMAGE_PLACEHOLDER, "").strip()  # the chat template places the image
        return encode(self.processor, [chat_prompt(self.processor, question)], [image], self.image_token_id,
                      self.num_visual)

    def generate_until(self, requests) -> list[str]:
        out = []
        for request in requests:
            context, gen_kwargs = request.args[0], dict(request.args[1] or {})
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            steps = int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens)
            inputs = self._inputs(context, _visual(request, self.task_dict))
            self.artifact.check_request(*inputs.input_ids.shape, steps)
            gen = greedy_generate(self.backend, inputs.input_ids, inputs.pixel_values, inputs.visual_start, steps,
                                  self.eos)
            text = self.processor.tokenizer.decode(gen.generated[0], skip_special_tokens=True)
            out.append(_cut(text, until).strip())
        return out

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """log p(continuation | context, image): the prefill scores its first token, decode steps the rest."""
        out = []
        for request in requests:
            context, continuation = request.args[0], request.args[1]
            inputs = self._inputs(context, _visual(request, self.task_dict))
            targets = self.processor.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            self.artifact.check_request(*inputs.input_ids.shape, len(targets))
            out.append(self._score(inputs, targets))
        return out

    def _score(self, inputs, targets: list[int]) -> tuple[float, bool]:
        b = self.backend
        t = inputs.input_ids.shape[1]
        features = b.vision(inputs.pixel_values)
        pre = b.prefill(b.embed(inputs.input_ids, features), inputs.visual_start)
        logits, cache, total, greedy = pre.logits, pre.cache, 0.0, True
        no_image = np.zeros((1, 0, features.shape[-1]), dtype=features.dtype)
        for step, token in enumerate(targets):
            total += float(_log_softmax(logits)[0, token])
            greedy &= int(np.argmax(logits[0])) == token
            if step + 1 < len(targets):
                embeds = b.embed(np.array([[token]], dtype=np.int64), no_image)
                logits, cache = b.decode(embeds, np.full((1, 1), t + step, dtype=np.int64), cache)
        return total, greedy

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("reroute artifacts answer single-round requests only")
