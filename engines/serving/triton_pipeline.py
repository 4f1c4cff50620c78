"""Triton Python-backend model that runs one whole request through the reroute graphs (BLS).

``reroute deploy`` copies this file to ``reroute_pipeline/1/model.py`` next to
``pipeline.json`` (model names and constants from the manifest) and
``processor/`` (tokenizer + image processor). It is self-contained: inside
the Triton container it needs numpy, pillow and transformers, not reroute.

Request: ``prompt`` (BYTES [1], UTF-8, exactly one ``<image>``), ``image``
(BYTES [1], an encoded picture: PNG, JPEG, ...), ``max_new_tokens`` (INT32 [1]).
Response: ``text`` (BYTES [1]) and ``token_ids`` (INT64 [n]): greedy tokens,
cut after EOS, exactly as ``reroute generate`` computes them.

Each request: vision -> embed -> routed prefill (routing decided there) ->
decode steps over the per-layer compact KV cache, every graph called with
``pb_utils.InferenceRequest(...).exec()``. A bad request gets an error
response naming the problem; the other requests of the batch are unaffected.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

IMAGE_PLACEHOLDER = "<image>"
# Same pixel limit as exporter/inputs.py (this file runs inside Triton, where exporter is not importable).
MAX_IMAGE_PIXELS = 50_000_000


class BadRequest(ValueError):
    """A request the model refuses; its message goes back to the client."""


class TritonPythonModel:
    def initialize(self, args):
        if args and args.get("model_repository") and args.get("model_version"):
            here = os.path.join(args["model_repository"], str(args["model_version"]))
        else:
            here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, "pipeline.json")) as f:
            self.cfg = json.load(f)
        self.here = here
        self.processor = self._load_processor(os.path.join(here, "processor"))
        self.models = self.cfg["models"]
        self.num_layers = self.cfg["num_layers"]
        self.num_stages = self.cfg["num_stages"]
        self.kv_out = [f"present.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value")]
        self.kv_in = [f"past_key_values.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value")]
        self.dtypes = {graph: {name: np.dtype(dt) for name, dt in inputs.items()}
                       for graph, inputs in self.cfg["input_dtypes"].items()}
        memory = getattr(pb_utils, "PreferredMemory", None)
        # Ask for outputs in CPU memory (TensorRT models would otherwise hand back GPU tensors).
        self.preferred = memory(pb_utils.TRITONSERVER_MEMORY_CPU, 0) if memory is not None else None

    def _load_processor(self, directory):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(directory, local_files_only=True)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                tokens, text = self._generate(*self._parse(request))
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("text", np.array([text.encode("utf-8")], dtype=np.object_)),
                    pb_utils.Tensor("token_ids", np.asarray(tokens, dtype=np.int64)),
                ]))
            except BadRequest as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
            except Exception as exc:  # a failing graph call: report it, keep serving
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"internal error: {type(exc).__name__}: {exc}")))
        return responses

    # -- request parsing -------------------------------------------------------------------------------

    def _input(self, request, name):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            raise BadRequest(f"missing input '{name}'")
        value = tensor.as_numpy()
        if value.size != 1:
            raise BadRequest(f"input '{name}' must hold exactly one element, got shape {list(value.shape)}")
        return value.reshape(-1)[0]

    def _parse(self, request):
        prompt = self._input(request, "prompt")
        try:
            prompt = prompt.decode("utf-8") if isinstance(prompt, bytes) else str(prompt)
        except UnicodeDecodeError:
            raise BadRequest("input 'prompt' is not valid UTF-8") from None
        self._check_prompt(prompt)
        picture = self._picture(request)
        max_new = int(self._input(request, "max_new_tokens"))
        limit = self.cfg["max_new_tokens_limit"]
        if not 1 <= max_new <= limit:
            raise BadRequest(f"input 'max_new_tokens' must be in [1, {limit}], got {max_new}")
        return prompt, picture, max_new

    def _check_prompt(self, prompt):
        count = prompt.count(IMAGE_PLACEHOLDER)
        if count != 1:
            raise BadRequest(f"input 'prompt' must contain exactly one {IMAGE_PLACEHOLDER} placeholder, "
                             f"found {count}")

    def _picture(self, request):
        from PIL import Image

        data = self._input(request, "image")
        if not isinstance(data, bytes) or not data:
            raise BadRequest("input 'image' must be the non-empty bytes of an encoded image")
        try:
            with Image.open(io.BytesIO(data)) as img:
                # Checked from the header, before decoding: a small file can declare gigapixels.
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise BadRequest(f"input 'image' is too large ({img.width}x{img.height} pixels; the limit is "
                                     f"{MAX_IMAGE_PIXELS:,} pixels)")
                picture = img.convert("RGB")
        except Image.DecompressionBombError:
            raise BadRequest(f"input 'image' is too large (the limit is {MAX_IMAGE_PIXELS:,} pixels)") from None
        except BadRequest:
            raise
        except Exception as exc:  # PIL raises several types for undecodable or truncated data
            raise BadRequest(f"input 'image' is not a readable image ({type(exc).__name__})") from None
        return picture

    # -- generation ------------------------------------------------------------------------------------

    def _call(self, graph, feeds, outputs):
        """One BLS call to the graph's model; feeds cast to the graph's input dtypes, and only the graph's
        own inputs sent (an unrouted prefill has no visual_start, a dynamic-resolution decode no pad_lengths)."""
        tensors = [pb_utils.Tensor(name, np.ascontiguousarray(value, dtype=self.dtypes[graph][name]))
                   for name, value in feeds.items() if name in self.dtypes[graph]]
        kwargs = {"preferred_memory": self.preferred} if self.preferred is not None else {}
        response = pb_utils.InferenceRequest(model_name=self.models[graph], requested_output_names=outputs,
                                             inputs=tensors, **kwargs).exec()
        if response.has_error():
            raise RuntimeError(f"model {self.models[graph]}: {response.error().message()}")
        return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs}

    def _encode(self, prompt, picture):
        batch = self.processor(images=[picture], text=[prompt], return_tensors="np")
        ids = np.asarray(batch["input_ids"], dtype=np.int64)
        where = np.flatnonzero(ids[0] == self.cfg["image_token_id"])
        n_v = self.cfg["num_visual"]
        if len(where) != n_v or where[-1] - where[0] != n_v - 1:
            raise BadRequest(f"input 'prompt' must expand to one contiguous span of {n_v} image tokens")
        start = int(where[0])
        if start + n_v >= ids.shape[1]:
            raise BadRequest("input 'prompt' needs at least one text token after the image")
        return ids, np.asarray(batch["pixel_values"], dtype=np.float32), start

    def _check_capacity(self, ids, max_new):
        capacity = self.cfg["max_sequence"]
        if ids.shape[1] + max_new > capacity:
            raise BadRequest(f"prompt of {ids.shape[1]} tokens + max_new_tokens {max_new} exceeds the exported "
                             f"capacity of {capacity} tokens")

    def _generate(self, prompt, picture, max_new):
        ids, pixels, visual_start = self._encode(prompt, picture)
        self._check_capacity(ids, max_new)
        features = self._call("vision", {"pixel_values": pixels}, ["image_features"])["image_features"]
        embeds = self._call("embed", {"input_ids": ids, "image_features": features}, ["inputs_embeds"])
        routing = [f"routing.{s}.indices" for s in range(self.num_stages)]
        # one request, no padding: positions 0..T-1 and an all-ones mask (format 2 graphs take both)
        prompt_len = ids.shape[1]
        out = self._call("prefill", {"inputs_embeds": embeds["inputs_embeds"],
                                     "visual_start": np.array([visual_start], dtype=np.int64),
                                     "position_ids": np.arange(prompt_len, dtype=np.int64)[None],
                                     "attention_mask": np.ones((1, prompt_len), dtype=np.int64)},
                         ["logits", *self.kv_out, *routing])
        return self._greedy(out, features, max_new,
                            lambda step: np.array([[prompt_len + step - 1]], dtype=np.int64))

    def _greedy(self, out, features, max_new, decode_position):
        """Greedy decoding from the prefill's outputs; ``decode_position(step)``: decode step ``step``'s
        position ids (step 1 is the first decode call)."""
        cache = [out[name] for name in self.kv_out]
        token = int(np.argmax(out["logits"][0]))
        tokens, eos = [token], self.cfg["eos_token_id"]
        no_image = np.zeros((1, 0, features.shape[-1]), dtype=features.dtype)  # decode tokens are text only
        for step in range(1, max_new):
            if eos is not None and token == eos:
                break
            embed = self._call("embed", {"input_ids": np.array([[token]], dtype=np.int64),
                                         "image_features": no_image}, ["inputs_embeds"])["inputs_embeds"]
            # pad_lengths: format-2 LLaVA decode graphs take it (one request: no padding); _call drops it for
            # graphs without that input
            feeds = {"inputs_embeds": embed, "position_ids": decode_position(step),
                     "pad_lengths": np.zeros(1, dtype=np.int64)}
            feeds.update(zip(self.kv_in, cache))
            out = self._call("decode", feeds, ["logits", *self.kv_out])
            cache = [out[name] for name in self.kv_out]
            token = int(np.argmax(out["logits"][0]))
            tokens.append(token)
        return tokens, self.processor.tokenizer.decode(tokens, skip_special_tokens=True)

    def finalize(self):
        self.processor = None
