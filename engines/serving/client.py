"""``reroute client``: one image + prompt to a ``reroute serve`` (or Triton) server over HTTP (tritonclient)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from ..errors import RerouteError
from .triton_serve import INSTALL_HINT, MODEL_NAME


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


def infer(client, prompt: str | bytes, image: bytes, max_new_tokens: int, model: str = MODEL_NAME) -> dict:
    """One request on an open client: {'text', 'generated_token_ids'}; server errors raise as they come."""
    import tritonclient.http as httpclient

    prompt = prompt.encode("utf-8") if isinstance(prompt, str) else prompt
    inputs = [httpclient.InferInput("prompt", [1], "BYTES"), httpclient.InferInput("image", [1], "BYTES"),
              httpclient.InferInput("max_new_tokens", [1], "INT32")]
    inputs[0].set_data_from_numpy(np.array([prompt], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.array([image], dtype=np.object_))
    inputs[2].set_data_from_numpy(np.array([max_new_tokens], dtype=np.int32))
    outputs = [httpclient.InferRequestedOutput("text"), httpclient.InferRequestedOutput("token_ids")]
    result = client.infer(model, inputs, outputs=outputs)
    text = result.as_numpy("text").reshape(-1)[0]
    return {"text": text.decode("utf-8") if isinstance(text, bytes) else str(text),
            "generated_token_ids": [int(t) for t in result.as_numpy("token_ids").reshape(-1)]}


def client_generate(url: str, image_path: str, prompt: str, max_new_tokens: int = 32, model: str = MODEL_NAME,
                    timeout: float = 600.0) -> dict:
    """``reroute client``: read the image file, send one request, return the answer (RerouteError on failure)."""
    from tritonclient.utils import InferenceServerException

    try:
        image = Path(image_path).read_bytes()
    except FileNotFoundError:
        raise RerouteError(f"image not found: {image_path}") from None
    except OSError as exc:
        raise RerouteError(f"cannot read image {image_path}: {exc.strerror}") from None
    client = make_client(url, timeout)
    try:
        return infer(client, prompt, image, max_new_tokens, model)
    except InferenceServerException as exc:
        raise RerouteError(f"server refused the request: {server_message(exc)}") from None
    except OSError as exc:
        raise RerouteError(f"cannot reach Triton at {url}: {exc.strerror or exc}") from None
    finally:
        client.close()


def server_message(exc) -> str:
    """The useful line of a Triton error (PyTriton sends a traceback whose last line names the problem)."""
    message = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    for line in reversed(lines):
        for marker in ("RequestRefused: ", "Model execute error: "):
            if marker in line:
                return line.split(marker, 1)[1]
    return " ".join(lines[-1:]) if lines else str(exc)
