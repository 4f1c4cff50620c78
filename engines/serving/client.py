"""``reroute client``: one image + prompt to a ``reroute serve`` (or Triton) server over HTTP (tritonclient)."""

from __future__ import annotations

from pathlib import Path

from ..errors import RerouteError
from .protocol import (BUSY_MESSAGE, MODEL_NAME, _endpoint, batched_model, infer, make_client,  # noqa: F401
                       server_message)


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
        return infer(client, prompt, image, max_new_tokens, model, batched_model(client, model))
    except InferenceServerException as exc:
        raise RerouteError(f"server refused the request: {server_message(exc)}") from None
    except OSError as exc:
        raise RerouteError(f"cannot reach Triton at {url}: {exc.strerror or exc}") from None
    finally:
        client.close()
