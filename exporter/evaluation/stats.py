"""Confidence intervals: Wilson score for one accuracy, Newcombe's paired interval for a difference.

Both are closed forms (no resampling), so a rerun reproduces them exactly.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``correct / n`` (Wilson 1927); (0, 1) when n == 0."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exact bounds at 0 and n (the closed form leaves float noise such as 5.6e-17 there)
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == n else min(1.0, centre + half)
    return low, high


def paired_counts(a: list[bool], b: list[bool]) -> tuple[int, int, int, int]:
    """(both right, only a right, only b right, both wrong) over the same items."""
    if len(a) != len(b):
        raise ValueError("paired scores need the same items")
    both = sum(x and y for x, y in zip(a, b))
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    return both, only_a, only_b, len(a) - both - only_a - only_b


def paired_difference(a: list[bool], b: list[bool], z: float = Z95) -> dict:
    """acc(a) - acc(b) on the same items with Newcombe's (1998) method 10 interval.

    The Wilson intervals of both accuracies are combined with the correlation phi of the paired
    outcomes, which narrows the interval when a and b tend to be right on the same items.
    """
    both, only_a, only_b, neither = paired_counts(a, b)
    n = len(a)
    if n == 0:
        return {"n": 0, "difference": 0.0, "ci": (-1.0, 1.0), "only_a": 0, "only_b": 0}
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = wilson_interval(both + only_a, n, z)
    l2, u2 = wilson_interval(both + only_b, n, z)
    margins = (both + only_a) * (neither + only_b) * (both + only_b) * (neither + only_a)
    phi = (both * neither - only_a * only_b) / math.sqrt(margins) if margins else 0.0
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    diff = p1 - p2
    return {"n": n, "difference": diff, "ci": (max(-1.0, diff - below), min(1.0, diff + above)),
            "only_a": only_a, "only_b": only_b}
