"""The request side of ``reroute serve``: validate and preprocess one request, batch and generate.

Batching. PyTriton can only fail a whole Triton batch at once, so Triton's
own dynamic batcher would let one malformed request fail its neighbours.
Instead Triton runs ``max_batch`` model instances, each handling one request:
it validates and preprocesses the request on its own thread (errors go back
to that client only), then hands it to one generation worker.

Fixed-resolution artifacts (LLaVA) batch continuously (engines/serving/continuous.py):
requests of any prompt length and image position join the running decode batch
between steps, up to the artifact's ``capacity.max_batch``, and leave when done.
Dynamic-resolution ones (Qwen2.5-VL, no padded graphs yet) use
:class:`MicroBatcher`: it takes every waiting request with the same prompt
length, image position and N_v and runs them as one batch; ``max_new_tokens``
may differ (the batch runs to the largest and each answer is cut to its own).
Either way each answer equals the request's solo run (tests check it);
``--max-batch 1`` turns batching off.

Deadlines. A job carries its deadline (``--timeout``): the worker drops a
job whose deadline passed while it waited, and the handler stops waiting for
an answer at the deadline, so the client gets a one-line "timed out" error.
"""

from __future__ import annotations

import io
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from ..backends import open_backend
from ..errors import RerouteError
from ..inputs import IMAGE_PLACEHOLDER, ImageError, PromptInputs, decode_image, stack_inputs, visual_span_start
from .stats import ServeStats
from .worker import DeadlineExceeded, GenerationWorker

MAX_NEW_TOKENS_LIMIT = 4096  # the same limit as exporter.generation.check_max_new_tokens
SERVE_BACKENDS = ("onnxruntime", "tensorrt")


class BadRequest(ValueError):
    """A request the server refuses; the message goes back to that client."""


class RequestRefused(Exception):
    """What the inference callable raises for a bad request: an ordinary error, so the model keeps serving.

    PyTriton sends the client ``traceback.format_exception`` of the error; with
    no traceback that is one line, ``engines.serving.pipeline.RequestRefused:
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
    pixel_values: np.ndarray  # [1, 3, H, W] float32 (Qwen2.5-VL: [patches, C * 2 * 14 * 14])
    visual_start: int
    max_new_tokens: int
    future: Future = field(default_factory=Future)
    deadline: float | None = None  # time.monotonic() after which nobody waits for the answer
    inputs: PromptInputs | None = None  # dynamic-resolution artifacts: grid, M-RoPE positions, N_v

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline

    @property
    def key(self) -> tuple[int, int, int]:
        """Jobs batch together only with the same length, image position and N_v."""
        num_visual = 0 if self.inputs is None else self.inputs.num_visual
        return self.input_ids.shape[1], self.visual_start, num_visual


class Pipeline:
    """Validation + preprocessing of one request, and batched greedy generation over an artifact."""

    def __init__(self, artifact_dir: str | os.PathLike, backend: str = "onnxruntime", max_batch: int | None = None,
                 threads: int | None = None, plugins: bool = True):
        from ..artifact import open_artifact

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
        # dynamic-resolution artifacts (Qwen2.5-VL) encode with the family's rules and the saved config
        self.hf_config = self.artifact.hf_config() if model.get("family") == "qwen2_5_vl" else None
        self.backend = open_backend(backend, self.artifact, plugins=plugins, threads=threads)
        self._prep_lock = threading.Lock()  # the fast tokenizer is not safe to call from threads at once

    @property
    def probe_prompt(self) -> str:
        """A minimal valid prompt for this artifact's family (the readiness self-request)."""
        if self.hf_config is not None:
            return "<|vision_start|><|image_pad|><|vision_end|>ready?"
        return f"USER: {IMAGE_PLACEHOLDER}\nready? ASSISTANT:"

    def prepare(self, prompt: bytes, image: bytes, max_new_tokens: int) -> Job:
        """Check one request and turn it into model inputs; BadRequest names the problem."""
        try:
            text = prompt.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("input 'prompt' is not valid UTF-8") from None
        count = text.count(IMAGE_PLACEHOLDER)
        if count != 1 and self.hf_config is None:
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
        if self.hf_config is not None:
            return self._prepare_dynamic(text, picture, max_new_tokens)
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

    def _prepare_dynamic(self, text: str, picture, max_new_tokens: int) -> Job:
        """Qwen2.5-VL: one <|image_pad|> inside <|vision_start|>...<|vision_end|>, N_v within the capacity."""
        from ..qwen_inputs import encode

        try:
            with self._prep_lock:
                inputs = encode(self.processor, self.hf_config, [text], [picture])
            self.artifact.check_visual_tokens(inputs.num_visual)
        except RerouteError as exc:
            raise BadRequest(f"input 'prompt' or 'image': {exc}") from None
        total = inputs.input_ids.shape[1] + max_new_tokens
        if total > self.capacity["max_sequence"]:
            raise BadRequest(f"input 'prompt' is {inputs.input_ids.shape[1]} tokens; with max_new_tokens "
                             f"{max_new_tokens} that exceeds the exported capacity of "
                             f"{self.capacity['max_sequence']} tokens")
        return Job(inputs.input_ids, inputs.pixel_values, inputs.visual_start, max_new_tokens, inputs=inputs)

    def run(self, jobs: list[Job]) -> list[tuple[list[int], str]]:
        """Generate for jobs that share a key, as one batch: (token ids, text) per job."""
        from ..generate import generate_inputs, greedy_generate

        steps = max(j.max_new_tokens for j in jobs)
        if jobs[0].inputs is not None:
            gen = generate_inputs(self.backend, stack_inputs([j.inputs for j in jobs]), steps, self.eos_token_id)
        else:
            input_ids = np.concatenate([j.input_ids for j in jobs])
            pixels = np.concatenate([j.pixel_values for j in jobs])
            gen = greedy_generate(self.backend, input_ids, pixels, jobs[0].visual_start, steps, self.eos_token_id)
        return [self.answer(job, tokens) for job, tokens in zip(jobs, gen.generated)]

    def answer(self, job: Job, tokens) -> tuple[list[int], str]:
        """(token ids, text) of a finished job, cut to its own max_new_tokens."""
        tokens = [int(t) for t in tokens[: job.max_new_tokens]]
        return tokens, self.processor.tokenizer.decode(tokens, skip_special_tokens=True)

    def make_batcher(self, stats: ServeStats | None = None):
        """The generation worker: continuous batching where the graphs take padded batches, else MicroBatcher."""
        if self.hf_config is None:
            from .continuous import ContinuousBatcher

            return ContinuousBatcher(self.backend, self.eos_token_id, self.max_batch, self.answer, stats)
        return MicroBatcher(self.run, self.max_batch, stats)

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


class MicroBatcher(GenerationWorker):
    """Waiting jobs with the same key go together, up to max_batch, and run to the end as one batch."""

    def __init__(self, run, max_batch: int, stats: ServeStats | None = None):
        self._run, self._max_batch = run, max_batch
        super().__init__(stats)

    def _take_group(self) -> list[Job]:
        """Drop the expired jobs, then take the oldest job and up to max_batch - 1 more with its key
        (caller holds the lock)."""
        self._drop_expired()
        if not self._pending:
            return []
        key = self._pending[0].key
        group = [j for j in self._pending if j.key == key][: self._max_batch]
        self._pending = [j for j in self._pending if not any(j is g for g in group)]
        self.stats.set_queue_length(len(self._pending))
        return group

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if not self._pending:
                    return
                group = self._take_group()
            if not group:
                continue
            self.batches.append(len(group))
            self.stats.record_batch(len(group))
            try:
                results = self._run(group)
            except Exception as exc:  # a failing run fails its own jobs, not the server
                for job in group:
                    job.future.set_exception(exc)
            else:
                for job, result in zip(group, results):
                    job.future.set_result(result)


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
    """The PyTriton inference callable (one per Triton model instance; they share the batcher).

    ``timeout``: seconds from the request reaching this handler to its answer (None: no deadline).
    Triton's model is configured with ``max_batch_size: 1`` (so its queue policy can bound the
    queue), hence every tensor arrives and leaves with a leading batch dimension of 1.
    """

    def __init__(self, pipeline: Pipeline, batcher: MicroBatcher, timeout: float | None = None):
        self.pipeline, self.batcher, self.timeout = pipeline, batcher, timeout

    def __call__(self, requests):
        return [self._answer(request) for request in requests]

    def _answer(self, request) -> dict:
        arrived = time.monotonic()
        stats = self.batcher.stats
        try:
            job = self.pipeline.prepare(_scalar(request, "prompt", "bytes"), _scalar(request, "image", "bytes"),
                                        _scalar(request, "max_new_tokens", "int"))
        except BadRequest as exc:
            stats.record_outcome("refused")
            # Not PyTritonUnrecoverableError: that would stop the model; this fails one request only.
            raise RequestRefused(str(exc)) from None
        if self.timeout is not None:
            job.deadline = arrived + self.timeout
        future = self.batcher.submit(job)
        try:
            tokens, text = future.result(timeout=None if job.deadline is None else
                                         max(0.0, job.deadline - time.monotonic()))
        except (TimeoutError, DeadlineExceeded):
            stats.record_outcome("timed_out")
            raise RequestRefused(f"timed out: no answer within the server's --timeout of {self.timeout:g} s") from None
        except Exception:
            stats.record_outcome("failed")
            raise
        stats.record_outcome("ok", time.monotonic() - arrived)
        return {"text": np.array([[text.encode("utf-8")]], dtype=np.object_),
                "token_ids": np.asarray([tokens], dtype=np.int64)}
