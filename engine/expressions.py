"""Points expressions in CEL (Common Expression Language): compiled once, evaluated per event.

Exactness: CEL has no decimal type, so expressions never see a float unless they ask for one.
Money attributes are given to expressions as whole currency units (an int, fractions dropped), and an
expression must produce a whole number of points (an int). Dividing whole units by a whole number
therefore gives exactly floor(amount / n), the documented rounding rule for points.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import cel

from engine.errors import EvaluationError
from engine.expression_limits import static_problem

# Runtime budget of one evaluation, in CPU time of the evaluating thread (so a busy machine does not
# reject good events): a slower evaluation rejects its event. The static limits keep the slowest
# expression measured about ten times under it (rules/README.md, "Limits").
EVALUATION_BUDGET_SECONDS = 0.05
# Points one award may give: 10^15 CNY at one point per 10,000 is 10^11, so ten times that is no real award,
# and nine million such awards still fit the 64-bit balance.
MAX_POINTS_PER_AWARD = 10**12


class ExpressionError(ValueError):
    """An expression that does not compile or does not give whole points."""


class OverBudget(EvaluationError):
    """An evaluation that took longer than EVALUATION_BUDGET_SECONDS."""

    def __init__(self, source: str, seconds: float):
        self.seconds = seconds
        super().__init__(f"points expression {source!r} took {describe_seconds(seconds)} on this event; at most "
                         f"{describe_seconds(EVALUATION_BUDGET_SECONDS)}, so the event is rejected")


def describe_seconds(seconds: float) -> str:
    """1.3 s, or 50 ms below a second."""
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


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
    if result > MAX_POINTS_PER_AWARD:  # type: ignore[operator]
        raise EvaluationError(f"points expression {source!r} gave {result:,} points; one award gives at most "
                              f"{MAX_POINTS_PER_AWARD:,}")
    return result  # type: ignore[return-value]


def _require_int(source: str, result: object) -> None:
    if isinstance(result, bool) or not isinstance(result, int):
        raise EvaluationError(
            f"points expression {source!r} gave {result!r} ({type(result).__name__}); it must give a whole "
            "number (int), e.g. event.amount / 10000")


def compile_points(source: str, sample_activations: list[dict], describe: Callable[[dict], str] = repr,
                   what: str = "the points expression") -> PointsExpression:
    """Check `source` against the static limits, compile it and try it on typed sample events.

    The samples are boundary events (each attribute at its extremes, each enum value, each tier,
    optional attributes present and absent), so type errors and slow branches surface at load time.
    The expression is accepted when any sample gives a whole number, none gives another type and
    none takes longer than the budget; arithmetic that fails on some samples only (a division by a
    value that is zero there, an overflow at the largest amount) rejects those events at run time.
    `describe` renders a sample for the messages, `what` names the expression in them.
    """
    over = static_problem(source)
    if over:
        raise ExpressionError(over)
    try:
        program = cel.compile(source)
    except BaseException as exc:  # noqa: BLE001 - narrowed by _cel_failure: a Rust panic is a BaseException
        if not _cel_failure(exc):
            raise
        raise ExpressionError(f"points expression does not compile: {_first_line(str(exc))}") from None
    expression = PointsExpression(source, program)
    failures: list[str] = []
    for activation in sample_activations:
        try:
            result = _execute(expression, activation)
        except OverBudget as exc:
            raise ExpressionError(f"{what} took {describe_seconds(exc.seconds)} on an event with "
                                  f"{describe(activation)}; at most {describe_seconds(EVALUATION_BUDGET_SECONDS)}. "
                                  "Simplify it (fewer or smaller comprehensions)") from None
        except EvaluationError as exc:
            failures.append(str(exc))
            continue
        try:  # the sign depends on real values and is checked per event; the type is checked here
            _require_int(source, result)
        except EvaluationError as exc:
            raise ExpressionError(f"{exc} (on an event with {describe(activation)})") from None
        if result > MAX_POINTS_PER_AWARD:  # type: ignore[operator]  # too many on this sample: its event is rejected
            failures.append(f"points expression {source!r} gives {result:,} points on an event with "
                            f"{describe(activation)}; one award gives at most {MAX_POINTS_PER_AWARD:,}")
    if len(failures) == len(sample_activations):
        raise ExpressionError(failures[0])
    return expression


def _execute(expression: PointsExpression, activation: dict) -> object:
    """The raw result of one evaluation; EvaluationError when it fails, OverBudget when it took too long."""
    began = time.thread_time()
    error: EvaluationError | None = None
    try:
        result = expression.program.execute(activation)  # type: ignore[attr-defined]
    except KeyError as exc:
        error = EvaluationError(
            f"points expression {expression.source!r} read {exc.args[0]!r}, which is missing: name an "
            "attribute of the event type or a client field, and guard optional attributes with "
            "has(event.NAME)")
    except BaseException as exc:  # noqa: BLE001 - narrowed by _cel_failure: a Rust panic is a BaseException
        if not _cel_failure(exc):
            raise
        error = EvaluationError(f"points expression {expression.source!r} failed: {exc}")
    spent = time.thread_time() - began
    if spent > EVALUATION_BUDGET_SECONDS:
        raise OverBudget(expression.source, spent)
    if error is not None:
        raise error
    return result


def _cel_failure(exc: BaseException) -> bool:
    """Whether `exc` is CEL refusing its input: any Exception, or a Rust panic, which pyo3 raises as
    pyo3_runtime.PanicException, a BaseException it does not export; never a cancellation or an interrupt."""
    kind = type(exc)
    return isinstance(exc, Exception) or (kind.__module__ == "pyo3_runtime" and kind.__name__ == "PanicException")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[:1] + [line for line in lines[1:] if not line.startswith("|")])
