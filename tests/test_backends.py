"""engines/backends.py: one place that opens a backend by name, with one-line errors."""

import pytest

from engines.backends import BACKENDS, open_backend
from engines.errors import RerouteError


def test_unknown_backend_names_the_choices():
    with pytest.raises(RerouteError, match="unknown backend 'tflite'; choose from " + ", ".join(BACKENDS)):
        open_backend("tflite", artifact=None)


def test_torch_backend_needs_the_loaded_model():
    with pytest.raises(RerouteError, match="torch backend runs the checkpoint"):
        open_backend("torch", artifact=None)
