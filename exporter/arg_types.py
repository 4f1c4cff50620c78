"""argparse types shared by the subcommands (comma-separated names and ratios such as 1/3)."""

from __future__ import annotations

import argparse
from fractions import Fraction


def comma_list(text: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def ratio_list(text: str) -> list[float]:
    try:
        values = [float(Fraction(x.strip())) for x in text.split(",") if x.strip()]
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected ratios such as 1/3,2/9,0.25, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected ratios such as 1/3,2/9,0.25, got {text!r}")
    return values
