"""What the benchmarks share: how a goal is reported."""
from __future__ import annotations


def verdict(met: bool) -> str:
    """'met' or 'NOT met'."""
    return "met" if met else "NOT met"
