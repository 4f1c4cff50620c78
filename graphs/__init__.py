"""Export-friendly routed decoders (pure torch).

Everything here is plain torch with static per-stage capacities, so the same
modules run eagerly as the PyTorch reference and trace into ONNX graphs.
"""
