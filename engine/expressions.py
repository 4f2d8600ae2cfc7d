"""Points expressions in CEL (Common Expression Language): compiled once, evaluated per event.

Exactness: CEL has no decimal type, so expressions never see a float unless they ask for one.
Money attributes are given to expressions as whole currency units (an int, fractions dropped), and an
expression must produce a whole number of points (an int). Dividing whole units by a whole number
therefore gives exactly floor(amount / n), the documented rounding rule for points.
"""
from __future__ import annotations

from dataclasses import dataclass

import cel

from engine.errors import EvaluationError


class ExpressionError(ValueError):
    """An expression that does not compile or does not give whole points."""


@dataclass(frozen=True)
class PointsExpression:
    """A compiled CEL expression that yields whole points."""

    source: str
    program: object

    def evaluate(self, activation: dict) -> int:
        """Points for one event; raises EvaluationError with a reason a rule author can act on."""
        return _whole_points(self.source, _execute(self, activation))


def _whole_points(source: str, result: object) -> int:
    _require_int(source, result)
    if result < 0:  # type: ignore[operator]
        raise EvaluationError(f"points expression {source!r} gave {result}; points cannot be negative")
    return result  # type: ignore[return-value]


def _require_int(source: str, result: object) -> None:
    if isinstance(result, bool) or not isinstance(result, int):
        raise EvaluationError(
            f"points expression {source!r} gave {result!r} ({type(result).__name__}); it must give a whole "
            "number (int), e.g. event.amount / 10000")


def compile_points(source: str, sample_activations: list[dict]) -> PointsExpression:
    """Compile `source` and try it on typed sample events, so type errors surface at load time.

    The expression is accepted when any sample gives a whole number and none gives another type;
    arithmetic that fails on one sample only (a division by a value that is zero there) is not an error.
    """
    try:
        program = cel.compile(source)
    except ValueError as exc:
        raise ExpressionError(f"points expression does not compile: {_first_line(str(exc))}") from None
    expression = PointsExpression(source, program)
    failures: list[str] = []
    for activation in sample_activations:
        try:
            result = _execute(expression, activation)
        except EvaluationError as exc:
            failures.append(str(exc))
            continue
        try:  # the sign depends on real values and is checked per event; the type is checked here
            _require_int(source, result)
        except EvaluationError as exc:
            raise ExpressionError(str(exc)) from None
    if len(failures) == len(sample_activations):
        raise ExpressionError(failures[0])
    return expression


def _execute(expression: PointsExpression, activation: dict) -> object:
    try:
        return expression.program.execute(activation)  # type: ignore[attr-defined]
    except KeyError as exc:
        raise EvaluationError(
            f"points expression {expression.source!r} read {exc.args[0]!r}, which is missing: name an "
            "attribute of the event type or a client field, and guard optional attributes with "
            "has(event.NAME)") from None
    except Exception as exc:
        raise EvaluationError(f"points expression {expression.source!r} failed: {exc}") from None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[:1] + [line for line in lines[1:] if not line.startswith("|")])
