"""reroute: export, compile, validate and deploy VLMs with recoverable visual-token routing."""

__version__ = "0.1.0"
