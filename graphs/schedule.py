"""Routing schedules from one ``--ratio`` (SPEC section 5).

``solve_schedule(method, ratio, num_layers, num_visual)`` returns the decision
layers, keep ratios and per-stage capacities ``k_s = floor(N_v * r_s)``.
The free value of each method (r, l or a) is solved so that the average
number of active visual tokens over all layers equals ``ratio * N_v``.
Keep ratios are capped at 1 (a stage cannot keep more tokens than exist), so
``ratio = 1`` gives the identity routing for every method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

ROUTE = "compact_route"
DELETE = "physical_delete"

# The reference depth the published layer lists are written for.
REFERENCE_DEPTH = 32


class ScheduleError(ValueError):
    """A ratio, method or explicit schedule that cannot be honoured."""


@dataclass(frozen=True)
class MethodSpec:
    action: str | None
    layers: tuple[int, ...]
    # value -> keep ratio per stage (before capping at 1)
    stage_ratios: Callable[[float], list[float]]
    value_name: str
    description: str


METHODS: dict[str, MethodSpec] = {
    "none": MethodSpec(None, (), lambda v: [], "-", "unrouted model"),
    "fastv": MethodSpec(DELETE, (3,), lambda v: [v], "r", "FastV, K=3: delete at layer 3"),
    "pdrop": MethodSpec(
        DELETE, (2, 7, 15, 23), lambda v: [v, v**2, v**3, v**4], "l",
        "PyramidDrop: delete at 4 stages, geometric keep ratios",
    ),
    "reroute-fastv": MethodSpec(
        ROUTE, (3, 7, 15, 23), lambda v: [v, v, v, v], "r",
        "recoverable routing on FastV's schedule (flat keep ratio)",
    ),
    "reroute": MethodSpec(
        ROUTE, (2, 7, 15, 23), lambda v: [v, v, v / 2, v / 4], "a",
        "recoverable routing on PyramidDrop's stages (default)",
    ),
}
DEFAULT_METHOD = "reroute"


@dataclass(frozen=True)
class Schedule:
    method: str
    action: str | None
    ratio: float
    num_layers: int
    num_visual: int
    layers: tuple[int, ...] = ()
    keep_ratios: tuple[float, ...] = ()
    k: tuple[int, ...] = ()
    value: float | None = None
    explicit: bool = field(default=False)

    @property
    def routed(self) -> bool:
        return bool(self.layers)

    def stage_of_layer(self, layer: int) -> int:
        """Index of the stage ``layer`` belongs to, -1 before the first decision layer."""
        stage = -1
        for s, d in enumerate(self.layers):
            if layer >= d:
                stage = s
        return stage

    def visual_tokens_per_layer(self) -> list[int]:
        """Visual tokens each decoder layer processes (and stores in its KV cache)."""
        out = []
        for layer in range(self.num_layers):
            s = self.stage_of_layer(layer)
            out.append(self.num_visual if s < 0 else self.k[s])
        return out

    def avg_visual_tokens(self) -> float:
        per_layer = self.visual_tokens_per_layer()
        return sum(per_layer) / len(per_layer)

    def candidates(self, stage: int) -> int:
        """Pool size scored at decision ``stage``: all N_v when routing, survivors when deleting."""
        if self.action == ROUTE or stage == 0:
            return self.num_visual
        return self.k[stage - 1]

    def for_num_visual(self, num_visual: int) -> "Schedule":
        """The same schedule for an image with ``num_visual`` tokens (dynamic resolution, SPEC section 9).

        Keep ratios are fractions of this image's own N_v: ``k_s = max(1, floor(N_v * r_s))``, and for
        deletion never more than the previous stage's survivors.
        """
        if num_visual < 1:
            raise ScheduleError(f"an image needs at least one visual token, got {num_visual}")
        return replace(self, num_visual=num_visual, k=_per_image_capacities(num_visual, self.keep_ratios,
                                                                            self.action))

    def to_dict(self, exact: bool = False) -> dict:
        """``exact``: keep ratios at full precision (manifests: a dynamic-N_v graph recomputes every k_s
        from them, so the artifact must record the very values it was built with); else rounded for reports."""
        return {
            "method": self.method,
            "action": self.action,
            "ratio": self.ratio,
            "num_layers": self.num_layers,
            "num_visual": self.num_visual,
            "layers": list(self.layers),
            "keep_ratios": [float(r) if exact else round(r, 6) for r in self.keep_ratios],
            "k": list(self.k),
            "value": self.value,
            "explicit": self.explicit,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Schedule":
        return cls(
            method=data["method"], action=data["action"], ratio=data["ratio"],
            num_layers=data["num_layers"], num_visual=data["num_visual"],
            layers=tuple(data["layers"]), keep_ratios=tuple(data["keep_ratios"]),
            k=tuple(data["k"]), value=data.get("value"), explicit=data.get("explicit", False),
        )


def map_layers(layers: Sequence[int], num_layers: int) -> tuple[int, ...]:
    """The release's depth mapping: ``round(layer * L / 32)``."""
    if num_layers == REFERENCE_DEPTH:
        return tuple(layers)
    mapped = tuple(round(d * num_layers / REFERENCE_DEPTH) for d in layers)
    if any(b <= a for a, b in zip(mapped, mapped[1:])) or (mapped and mapped[-1] >= num_layers):
        raise ScheduleError(
            f"decision layers {list(layers)} do not map onto a {num_layers}-layer decoder "
            f"(got {list(mapped)}); pass explicit --layers"
        )
    return mapped


def _average(layers: Sequence[int], ratios: Sequence[float], num_layers: int) -> float:
    """Average active visual fraction per layer for continuous keep ratios."""
    bounds = list(layers) + [num_layers]
    total = float(layers[0])  # layers before the first decision run on all tokens
    for s, r in enumerate(ratios):
        total += (bounds[s + 1] - bounds[s]) * min(r, 1.0)
    return total / num_layers


def _solve_value(spec: MethodSpec, layers: Sequence[int], ratio: float, num_layers: int) -> float:
    """Smallest value v >= 0 whose capped schedule averages ``ratio`` (bisection: the average is monotone in v)."""
    def avg(v: float) -> float:
        return _average(layers, spec.stage_ratios(v), num_layers)

    lo, hi = 0.0, 1.0
    while avg(hi) < ratio:
        hi *= 2.0
        if hi > 1e6:
            raise ScheduleError(f"ratio {ratio} cannot be reached by method {spec.value_name}")
    if avg(lo) > ratio + 1e-12:
        raise ScheduleError("unreachable")  # pragma: no cover - guarded by caller
    for _ in range(200):
        mid = (lo + hi) / 2
        if avg(mid) >= ratio:
            hi = mid
        else:
            lo = mid
    return hi


def _capacity(num_visual: int, r: float) -> int:
    # floor(N_v * r); the tiny epsilon only absorbs float error of an exact product
    return int(math.floor(num_visual * r + 1e-9))


def _per_image_capacities(num_visual: int, ratios: Sequence[float], action: str | None) -> tuple[int, ...]:
    """``max(1, floor(N_v * r_s))``; deletion never keeps more than the previous stage's survivors."""
    k: list[int] = []
    for r in ratios:
        ks = max(1, _capacity(num_visual, r))
        k.append(min(ks, k[-1]) if action == DELETE and k else ks)
    return tuple(k)


def _check_ratio(ratio: float) -> None:
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and 0.0 < ratio <= 1.0):
        raise ScheduleError(f"--ratio must be in (0, 1], got {ratio}")


def solve_schedule(
    method: str,
    ratio: float,
    num_layers: int,
    num_visual: int,
    layers: Sequence[int] | None = None,
    keep_ratios: Sequence[float] | None = None,
    at_least_one: bool = False,
) -> Schedule:
    """Schedule for ``method`` at average visual ratio ``ratio`` (or an explicit one).

    ``at_least_one``: dynamic-resolution models (SPEC section 9) keep ``max(1, floor(N_v * r_s))`` tokens
    per stage instead of refusing a stage that would keep less than one token (SPEC section 5).
    """
    if method not in METHODS:
        raise ScheduleError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    spec = METHODS[method]
    if layers is not None or keep_ratios is not None:
        return _explicit_schedule(method, spec, num_layers, num_visual, layers, keep_ratios, at_least_one)
    _check_ratio(ratio)
    if spec.action is None:
        return Schedule(method, None, 1.0, num_layers, num_visual)
    mapped = map_layers(spec.layers, num_layers)
    floor_avg = mapped[0] / num_layers
    if ratio < floor_avg - 1e-12:
        raise ScheduleError(
            f"ratio {ratio:.4g} is infeasible for {method}: its first {mapped[0]} layers run on all "
            f"visual tokens, so the average cannot go below {floor_avg:.4g}"
        )
    value = _solve_value(spec, mapped, ratio, num_layers)
    ratios = tuple(min(r, 1.0) for r in spec.stage_ratios(value))
    if at_least_one:
        k = _per_image_capacities(num_visual, ratios, spec.action)
    else:
        k = tuple(_capacity(num_visual, r) for r in ratios)
        _check_capacities(method, ratio, ratios, k)
    return Schedule(method, spec.action, float(ratio), num_layers, num_visual, mapped, ratios, k, value)


def _check_capacities(method: str, ratio: float, ratios: Sequence[float], k: Sequence[int]) -> None:
    for s, (r, ks) in enumerate(zip(ratios, k)):
        if ks < 1:
            raise ScheduleError(
                f"ratio {ratio:.4g} is infeasible for {method}: stage {s} keeps {r:.4g} of the "
                f"visual tokens, less than one token"
            )


def _explicit_schedule(method, spec, num_layers, num_visual, layers, keep_ratios, at_least_one) -> Schedule:
    if spec.action is None:
        raise ScheduleError("method 'none' takes no --layers/--keep-ratios")
    if layers is None or keep_ratios is None:
        raise ScheduleError("--layers and --keep-ratios must be given together")
    layers, ratios = tuple(int(x) for x in layers), tuple(float(x) for x in keep_ratios)
    if len(layers) != len(ratios) or not layers:
        raise ScheduleError(f"{len(layers)} layers but {len(ratios)} keep ratios")
    if any(b <= a for a, b in zip(layers, layers[1:])) or layers[0] < 0 or layers[-1] >= num_layers:
        raise ScheduleError(f"--layers must increase strictly within [0, {num_layers}), got {list(layers)}")
    if any(not (0.0 < r <= 1.0) for r in ratios):
        raise ScheduleError(f"--keep-ratios must lie in (0, 1], got {list(ratios)}")
    k = tuple(_capacity(num_visual, r) for r in ratios)
    # per image N_v the capacities are recomputed, so a dynamic model's ratios themselves must not increase
    growing = ratios if at_least_one else k
    if spec.action == DELETE and any(b > a for a, b in zip(growing, growing[1:])):
        raise ScheduleError("deletion keeps survivors only: keep ratios must not increase")
    if at_least_one:
        k = _per_image_capacities(num_visual, ratios, spec.action)
    else:
        _check_capacities(method, float("nan"), ratios, k)
    avg = _average(layers, ratios, num_layers)
    return Schedule(method, spec.action, avg, num_layers, num_visual, layers, ratios, k, None, True)
