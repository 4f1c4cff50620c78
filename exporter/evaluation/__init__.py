"""``reroute eval``: accuracy of routed models on a VQA / grounding dataset (issue 14).

``data`` reads ``data.jsonl``, ``scoring`` scores one answer (pure functions), ``stats`` gives confidence
intervals, ``runner`` runs the items through backends, ``report`` renders tables, Markdown and the plot.
"""
