"""Per-stage capacities computed IN the graph from N_v (dynamic resolution, SPEC section 9).

One artifact serves every image size up to its capacity: ``N_v`` is read from
a tensor shape, and each stage's ``k_s = max(1, floor(N_v * r_s))`` (deletion:
also at most the previous stage's survivors) is integer arithmetic on it, so
TensorRT sees a shape-derived TopK K whose bound follows from ``max_pixels``.

``floor(N_v * r + 1e-9)`` (the schedule's own rule, whose epsilon absorbs the
float error of an exact product) is evaluated as ``(N_v * num + EPSILON) // DENOMINATOR``
with ``num = round(r * DENOMINATOR)``: exact integer ops on every backend, no float
rounding that could differ between ONNX Runtime, TensorRT and Python.
:func:`stage_coefficients` proves, for every ``N_v`` up to the bound, that this
gives the schedule's own ``k_s`` (graphs/schedule.py), and refuses otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .schedule import DELETE, Schedule

# 2^50: N_v * num stays below 2^63 for N_v <= 8192 and r <= 1, and the rounding of num moves
# N_v * r by at most N_v / 2^51 (< 4e-12), far inside the schedule's 1e-9 tolerance.
DENOMINATOR = 1 << 50
EPSILON = round(1e-9 * DENOMINATOR)
MAX_BOUND = 8192


class CapacityError(ValueError):
    """The in-graph capacity formula would differ from the schedule for some N_v."""


@dataclass(frozen=True)
class StageCoefficients:
    """What the graph needs to recompute the schedule's k_s from N_v."""

    numerators: tuple[int, ...]  # per stage: round(r_s * DENOMINATOR)
    action: str | None
    bound: int  # the largest N_v the artifact accepts

    def capacities(self, num_visual: int) -> list[int]:
        """The k_s this formula gives for an integer N_v (what the graph computes)."""
        k: list[int] = []
        for num in self.numerators:
            ks = max(1, (num_visual * num + EPSILON) // DENOMINATOR)
            k.append(min(ks, k[-1]) if self.action == DELETE and k else ks)
        return k


def stage_coefficients(schedule: Schedule, bound: int) -> StageCoefficients:
    """Integer coefficients for ``schedule``'s keep ratios, checked against it for N_v in 1..bound."""
    if not 1 <= bound <= MAX_BOUND:
        raise CapacityError(f"visual token bound {bound} is outside 1..{MAX_BOUND}")
    coeffs = StageCoefficients(tuple(round(r * DENOMINATOR) for r in schedule.keep_ratios), schedule.action, bound)
    for n in range(1, bound + 1):
        if coeffs.capacities(n) != list(schedule.for_num_visual(n).k):
            raise CapacityError(f"in-graph capacities differ from the schedule at N_v={n}")
    return coeffs


def stage_sizes(coeffs: StageCoefficients, num_visual: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per stage: (candidates P_s, capacity k_s) as int64 [1] tensors computed from N_v (0-d or [1] int64).

    Routing scores all N_v candidates at every stage; deletion scores the previous stage's survivors.
    """
    n = num_visual.reshape(1).to(torch.int64)  # [1]
    sizes: list[tuple[torch.Tensor, torch.Tensor]] = []
    for s, num in enumerate(coeffs.numerators):
        # everything is >= 0, so truncating division is floor division; it exports as one Div node (floor
        # mode adds a sign-correction subgraph) that TensorRT's shape arithmetic and the K bound follow
        k = torch.clamp(torch.div(n * num + EPSILON, DENOMINATOR, rounding_mode="trunc"), min=1)  # [1]
        if coeffs.action == DELETE and s > 0:
            prev_k = sizes[-1][1]
            sizes.append((prev_k, torch.minimum(k, prev_k)))
        else:
            sizes.append((n, k))
    return sizes
