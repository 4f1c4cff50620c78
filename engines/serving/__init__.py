"""Serving: a Triton model repository (``deploy``, its BLS ``triton_pipeline`` model), the PyTriton server
(``triton_serve`` over the request ``pipeline``) and its HTTP ``client``."""
