"""Churn early warning: which of the programme's signals a client's metrics fire."""
from __future__ import annotations

from engine.metrics import Values, check, display
from engine.schema import ChurnPolicy


def fired_signals(policy: ChurnPolicy, values: Values, tier: str, tiers: list[str]) -> list[dict]:
    """The signals that fire for a client in `tier` (none below the policy's `min_tier`), with their values."""
    if policy.min_tier is not None and tiers.index(tier) < tiers.index(policy.min_tier):
        return []
    fired = []
    for signal in policy.signals:
        result = check(signal, values)
        if result.met:
            fired.append({"id": signal.id, "description": signal.description, "metric": signal.metric,
                          "operator": result.operator, "threshold": display(result.threshold),
                          "value": display(result.value)})
    return fired
