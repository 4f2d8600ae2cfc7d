"""Points arithmetic: the tier multiplier and the rounding rule."""
from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal


def apply_multiplier(base_points: int, multiplier: Decimal) -> int:
    """Whole points after a tier multiplier; fractions are dropped (rounded toward zero, i.e. floor)."""
    return int((Decimal(base_points) * multiplier).to_integral_value(rounding=ROUND_FLOOR))
