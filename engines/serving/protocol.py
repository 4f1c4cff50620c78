"""Talking to ``reroute serve`` over HTTP (tritonclient): the model's name and tensors, and its error lines.

Shared by ``reroute client`` (:mod:`engines.serving.client`), the server's own first request
(:mod:`engines.serving.triton_serve`) and ``scripts/load_test.py``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import numpy as np

from ..errors import RerouteError

MODEL_NAME = "reroute"
INSTALL_HINT = "pip install 'reroute[serve]' (nvidia-pytriton, tritonclient[http,grpc])"
BUSY_MARKER = "Exceeds maximum queue size"  # Triton's answer when the queue policy's bound is reached
BUSY_MESSAGE = "server busy: its request queue is full (reroute serve --max-queue); retry later"
QUEUE_TIMEOUT_MARKER = "Request timeout expired"  # Triton's answer when a request waited past its queue policy
QUEUE_TIMEOUT_MESSAGE = "timed out: the request waited in the queue past the server's --timeout"


def _endpoint(url: str) -> tuple[str, bool]:
    """'http://host:port' (or 'host:port') -> ('host:port', ssl)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https"):
        raise RerouteError(f"--url must be http://HOST:PORT, got {url!r}")
    if not parts.hostname:
        raise RerouteError(f"--url has no host: {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise RerouteError(f"--url has an invalid port: {url!r}") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}", parts.scheme == "https"


def make_client(url: str, timeout: float = 600.0):
    try:
        import tritonclient.http as httpclient
    except ImportError as exc:
        raise RerouteError(f"reroute client needs tritonclient ({exc}); {INSTALL_HINT}") from None
    endpoint, ssl = _endpoint(url)
    return httpclient.InferenceServerClient(endpoint, ssl=ssl, connection_timeout=min(timeout, 60.0),
                                            network_timeout=timeout)


def batched_model(client, model: str = MODEL_NAME) -> bool:
    """Whether ``model`` takes a leading batch dimension (``reroute serve``: [1, 1] inputs) or not (the
    pipeline model of a ``reroute deploy`` repository: [1]), from the server's model metadata."""
    metadata = client.get_model_metadata(model)
    shapes = [list(i["shape"]) for i in metadata.get("inputs", [])]
    return bool(shapes) and len(shapes[0]) == 2 and int(shapes[0][0]) == -1


def infer(client, prompt: str | bytes, image: bytes, max_new_tokens: int, model: str = MODEL_NAME,
          batched: bool = True) -> dict:
    """One request on an open client: {'text', 'generated_token_ids'}; server errors raise as they come.
    ``batched``: the model has a batch dimension (``reroute serve``'s does; see :func:`batched_model`)."""
    import tritonclient.http as httpclient

    prompt = prompt.encode("utf-8") if isinstance(prompt, str) else prompt
    shape = [1, 1] if batched else [1]
    inputs = [httpclient.InferInput("prompt", shape, "BYTES"), httpclient.InferInput("image", shape, "BYTES"),
              httpclient.InferInput("max_new_tokens", shape, "INT32")]
    inputs[0].set_data_from_numpy(np.array([prompt], dtype=np.object_).reshape(shape))
    inputs[1].set_data_from_numpy(np.array([image], dtype=np.object_).reshape(shape))
    inputs[2].set_data_from_numpy(np.array([max_new_tokens], dtype=np.int32).reshape(shape))
    outputs = [httpclient.InferRequestedOutput("text"), httpclient.InferRequestedOutput("token_ids")]
    result = client.infer(model, inputs, outputs=outputs)
    text = result.as_numpy("text").reshape(-1)[0]
    return {"text": text.decode("utf-8") if isinstance(text, bytes) else str(text),
            "generated_token_ids": [int(t) for t in result.as_numpy("token_ids").reshape(-1)]}


def server_message(exc) -> str:
    """The useful line of a Triton error (PyTriton sends a traceback whose last line names the problem)."""
    message = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    if BUSY_MARKER in str(message):
        return BUSY_MESSAGE
    if QUEUE_TIMEOUT_MARKER in str(message):
        return QUEUE_TIMEOUT_MESSAGE
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    for line in reversed(lines):
        for marker in ("RequestRefused: ", "Model execute error: "):
            if marker in line:
                return line.split(marker, 1)[1]
    return " ".join(lines[-1:]) if lines else str(exc)
