"""One firing of a rule: its executions (``N``, from accumulation) folded into one action per spec.

A rule that accumulates can execute up to 1000 times for one event. Instead of emitting its actions
once per execution, the engine emits each action once per *firing*, carrying ``executions: N`` and
parameters that add up over the executions (:func:`params_for_executions`). The user's state must
still change exactly as the N executions would have changed it one after the other
(:func:`points_after` for points; tags and level are idempotent, so one pass is enough).

All arithmetic here is exact: sums and products of Decimals in a context as wide as the operands
need (nothing here divides), independent of the caller's decimal context.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal
from typing import Any

from smartico_stream.engine.actions import ActionKind

__all__ = ["PointsEffect", "params_for_executions", "points_after", "points_effect"]

ZERO = Decimal(0)

# The kinds whose ``amount`` is a quantity per execution that adds up over a firing. give_bonus also
# has an optional ``amount``, but that is the size of *one* bonus: a firing grants the bonus once,
# with ``executions`` saying how many the executions earned, and the receiver decides what N bonuses
# mean (N grants, or one of N times the amount).
SUMMED_AMOUNT_KINDS = frozenset({ActionKind.GIVE_POINTS, ActionKind.DEDUCT_POINTS})


def _exact() -> Context:
    # With the largest precision and exponent range, +, - and * never round, and libmpdec sizes each
    # result to its digits, not to the precision. A fresh context per call: contexts carry flags.
    return Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)


def params_for_executions(kind: ActionKind, params: Mapping[str, Any], executions: int) -> dict[str, Any]:
    """The parameters of one action standing for ``executions`` executions of its spec.

    give_points and deduct_points carry the total: ``amount`` x ``executions``, exactly. Every other
    kind keeps the spec's parameters (give_bonus's ``amount`` is per bonus, see the module notes).
    ``params`` is not modified; with one execution the result equals it.
    """
    if executions < 1:
        raise ValueError(f"a firing has at least one execution, got {executions}")
    result = dict(params)
    if kind in SUMMED_AMOUNT_KINDS and executions != 1:
        result["amount"] = _exact().multiply(params["amount"], executions)
    return result


@dataclass(frozen=True, slots=True)
class PointsEffect:
    """What a sequence of points actions does to a balance ``p >= 0``: ``max(floor, p + shift)``, or
    the constant ``floor`` when ``shift`` is None (the sequence resets the points at some point).

    Every points action is of that form (give: ``+amount``, deduct: ``-amount`` floored at 0, reset:
    constant 0) and the form is closed under composition, so a whole execution, and N of them, are
    one such effect, computed without running the executions one by one."""

    floor: Decimal = ZERO
    shift: Decimal | None = ZERO

    def then(self, after: PointsEffect) -> PointsEffect:
        """This effect followed by ``after``."""
        if after.shift is None:
            return after
        exact = _exact()
        floor = max(after.floor, exact.add(self.floor, after.shift))
        if self.shift is None:
            return PointsEffect(floor, None)
        return PointsEffect(floor, exact.add(self.shift, after.shift))

    def repeated(self, times: int) -> PointsEffect:
        """This effect applied ``times`` (>= 1) times in a row."""
        if times < 1:
            raise ValueError(f"an effect is repeated at least once, got {times}")
        if self.shift is None or times == 1:
            return self  # a constant stays the same constant
        # f^n(p) = max(floor, floor + shift, ..., floor + (n-1) shift, p + n shift): the largest of the
        # floors is the first when shift < 0 and the last when shift >= 0.
        exact = _exact()
        last_floor = exact.add(self.floor, exact.multiply(self.shift, times - 1))
        return PointsEffect(max(self.floor, last_floor), exact.multiply(self.shift, times))

    def apply(self, points: Decimal) -> Decimal:
        """The balance after the effect."""
        if self.shift is None:
            return self.floor
        return max(self.floor, _exact().add(points, self.shift))


def points_effect(actions: Iterable[tuple[ActionKind, Mapping[str, Any]]]) -> PointsEffect:
    """The effect on the points of one execution running ``actions`` (kind, params) in order."""
    effect = PointsEffect()
    for kind, params in actions:
        if kind == ActionKind.GIVE_POINTS:
            effect = effect.then(PointsEffect(ZERO, params["amount"]))
        elif kind == ActionKind.DEDUCT_POINTS:
            effect = effect.then(PointsEffect(ZERO, _exact().minus(params["amount"])))  # "-" would round
        elif kind == ActionKind.RESET_POINTS:
            effect = effect.then(PointsEffect(ZERO, None))
    return effect


def points_after(points: Decimal, actions: Iterable[tuple[ActionKind, Mapping[str, Any]]], executions: int) -> Decimal:
    """The balance after ``executions`` executions, each running ``actions`` in order, from ``points``
    (>= 0): the same as running them one execution after the other, deductions floored at 0 each
    time. This can differ from applying the firing's totals once: "deduct 10, give 5" twice from 0
    leaves 5, while "deduct 20, give 10" leaves 10."""
    return points_effect(actions).repeated(executions).apply(points)
