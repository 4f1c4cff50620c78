"""Fidelity: routed vs unrouted outputs of the PyTorch reference on synthetic samples."""

from __future__ import annotations

import numpy as np

from engines.errors import RerouteError

from .common import BASELINE, ratio_label

FIDELITY_RANDOM_NOTE = ("the model has random weights (a preset): these agreement and KL figures only show how "
                        "much routing perturbs this network's outputs and say NOTHING about accuracy; run with a "
                        "real checkpoint (e.g. --model llava) for meaningful numbers")


FIDELITY_REAL_NOTE = ("agreement of the routed model with the unrouted one on synthetic images; a proxy for "
                      "accuracy loss, not a benchmark score")


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """KL(p || q) of the softmax distributions, in nats, float64."""
    p = p_logits.astype(np.float64)
    q = q_logits.astype(np.float64)
    lp = p - p.max() - np.log(np.exp(p - p.max()).sum())
    lq = q - q.max() - np.log(np.exp(q - q.max()).sum())
    return float(np.sum(np.exp(lp) * (lp - lq)))


def run_fidelity(loaded, methods, ratios, samples: int = 4, steps: int = 8) -> dict:
    """Routed vs unrouted outputs on synthetic images and prompts (PyTorch reference backend).

    Per (method, ratio), means over samples of: top-1 agreement of the first generated
    token, KL(unrouted || routed) of the prefill's next-token distribution, the fraction of
    the ``steps`` greedy tokens equal position by position, and the length of the common
    prefix of the two greedy sequences.
    """
    from engines.generate import greedy_generate
    from engines.torch_runner import TorchBackend
    from graphs.schedule import solve_schedule

    from engines.inputs import encode
    from ..inspect_model import make_schedule
    from ..samples import sample

    if samples < 1 or steps < 1:
        raise RerouteError(f"fidelity needs >= 1 sample and >= 1 step, got {samples} and {steps}")
    cfg = loaded.decoder_config
    inputs = []
    for i in range(samples):
        prompt, image = sample(i)
        inputs.append(encode(loaded.processor, [prompt], [image], loaded.image_token_id, loaded.num_visual))

    def generate(schedule):
        backend = TorchBackend(loaded, schedule)
        return [greedy_generate(backend, x.input_ids, x.pixel_values, x.visual_start, steps, None) for x in inputs]

    reference = generate(solve_schedule(BASELINE, 1.0, cfg.num_layers, loaded.num_visual))
    rows = []
    for ratio in ratios:
        for method in methods:
            try:
                schedule = make_schedule(loaded.config, method, ratio)
            except RerouteError:
                continue
            gens = generate(schedule)
            top1, kls, agree, prefix = [], [], [], []
            for ref, gen in zip(reference, gens):
                a, b = ref.generated[0], gen.generated[0]
                top1.append(float(a[0] == b[0]))
                kls.append(_kl(ref.prefill_logits[0], gen.prefill_logits[0]))
                agree.append(sum(x == y for x, y in zip(a, b)) / steps)
                common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                prefix.append(common)
            rows.append({"method": method, "ratio": ratio, "ratio_label": ratio_label(ratio),
                         "top1_agreement": float(np.mean(top1)), "kl_unrouted_routed": float(np.mean(kls)),
                         "kl_max": float(np.max(kls)), "greedy_token_agreement": float(np.mean(agree)),
                         "greedy_common_prefix": float(np.mean(prefix))})
    random_weights = str(loaded.source).startswith("preset:")
    return {"samples": samples, "steps": steps, "backend": "torch", "random_weights": random_weights,
            "note": FIDELITY_RANDOM_NOTE if random_weights else FIDELITY_REAL_NOTE, "rows": rows}
