"""Accumulation arithmetic of real-time automation rules ("1 point per 10 EUR wagered").

A rule that accumulates has a *step* per wallet currency (for example 10 EUR / 8 GBP / 12 USD). Every
event adds an amount (money for value accumulation, ``1`` for count accumulation such as "1 point
for every 100 bets") to what the user carried over from earlier events. Each whole step in that
total is one *execution* of the rule; what is left below one step is the *remainder*, remembered
for the user's next event.

One event never triggers more than :data:`MAX_EXECUTIONS_PER_EVENT` executions. Executions beyond
the cap are **discarded, not carried**: the remainder after a capped event is the same sub-step
remainder an uncapped event would leave. Two reasons:

- the specification's example ("a 2000 EUR deposit in one transaction ... he will get only 1000
  points") gives exactly 1000 points and says nothing of paying the rest later;
- the cap exists to stop a configuration mistake (a step of 0.01 instead of 10, say) from running
  away; carrying the excess would only spread the same runaway over the user's next events.

All arithmetic is exact :class:`~decimal.Decimal` arithmetic in a private decimal context whose
precision is sized to the operands (never less than 50 digits), so results never depend on, and
never alter, the caller's decimal context. Floats are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal, Inexact, InvalidOperation, Overflow, Rounded

__all__ = [
    "MAX_EXECUTIONS_PER_EVENT",
    "Accrual",
    "AccumulationError",
    "accrue",
    "step_for_currency",
    "step_lookup",
]

MAX_EXECUTIONS_PER_EVENT = 1000
"""The most executions one event (one transaction) can trigger."""

_MIN_PRECISION = 50
# Operands spanning more digits than this (e.g. Decimal("1E+5000")) are refused rather than
# computed with an enormous context: no real amount or step looks like that.
_MAX_PRECISION = 1000


class AccumulationError(ValueError):
    """An accumulation input is invalid: a step that is not positive, a negative amount or
    remainder, a NaN or infinity, an out-of-range magnitude, or a cap below 1."""


@dataclass(frozen=True, slots=True)
class Accrual:
    """The outcome of adding one event's amount to a user's accumulation."""

    executions: int
    """Executions this event triggers, ``0 <= executions <= cap``."""
    remainder: Decimal
    """What is carried to the user's next event, always ``0 <= remainder < step``."""
    uncapped_executions: int
    """Whole steps in ``remainder + amount`` before the cap; equal to ``executions`` unless capped."""

    @property
    def capped(self) -> bool:
        """True when the cap discarded executions (``uncapped_executions > executions``)."""
        return self.uncapped_executions > self.executions


def accrue(
    remainder: Decimal,
    amount: Decimal,
    step: Decimal,
    cap: int = MAX_EXECUTIONS_PER_EVENT,
) -> Accrual:
    """Add one event's ``amount`` to the carried ``remainder`` and count whole ``step``\\ s.

    ``total = remainder + amount``; ``uncapped = floor(total / step)``;
    ``executions = min(uncapped, cap)``; the new remainder is ``total - uncapped * step``. The
    executions above ``cap`` are discarded (see the module docstring for why).

    A carried ``remainder`` that is not below ``step`` (possible after the rule's step was edited
    to a smaller value) is accepted and simply counts towards the total.

    :param remainder: carried from the user's previous event; ``Decimal(0)`` for a new user.
    :param amount: this event's amount (``Decimal(1)`` for count accumulation).
    :param step: the amount that makes one execution, in the same currency; must be positive.
    :param cap: the most executions this event may trigger; at least 1.
    :raises AccumulationError: on invalid input (see :class:`AccumulationError`).
    :raises TypeError: when a value is not a ``Decimal`` or ``int`` (floats are refused), or
        ``cap`` is not an ``int``.
    """
    remainder = _as_decimal("remainder", remainder)
    amount = _as_decimal("amount", amount)
    step = _as_decimal("step", step)
    _check_not_negative("remainder", remainder)
    _check_not_negative("amount", amount)
    if step <= 0:
        raise AccumulationError(f"step must be greater than zero, got {step}")
    _check_cap(cap)

    try:
        # Everyday amounts fit the common context: tried first, as sizing a context costs more than
        # the arithmetic. Its traps make any rounding raise, so a result it gives is exact.
        uncapped, carried = _whole_steps(_COMMON_CONTEXT, remainder, amount, step)
    except (Inexact, Rounded, InvalidOperation, Overflow):
        uncapped, carried = _whole_steps(_exact_context(remainder, amount, step), remainder, amount, step)
    whole = int(uncapped)
    return Accrual(executions=min(whole, cap), remainder=carried, uncapped_executions=whole)


def step_for_currency(steps: Mapping[str, Decimal], currency: str | None) -> Decimal | None:
    """The rule's step for a user's wallet currency, or ``None`` when it has none.

    ``None`` (no step for that currency, or the user has no currency) means the rule does not
    accumulate for that user. Currency codes are matched case-insensitively and ignoring
    surrounding spaces, on both the configured keys and ``currency``.

    :raises AccumulationError: when two configured keys differ only in case or spacing but map to
        different steps (the configuration is ambiguous).
    """
    if currency is None:
        return None
    wanted = _currency_key(currency)
    if not wanted:
        return None
    found: Decimal | None = None
    for key, step in steps.items():
        if _currency_key(key) != wanted:
            continue
        if found is not None and found != step:
            raise AccumulationError(f"currency {wanted!r} is configured more than once with different steps")
        found = step
    return found


def step_lookup(steps: Mapping[str, Decimal]) -> Callable[[str | None], Decimal | None]:
    """:func:`step_for_currency` over ``steps``, with the configured keys normalised once (a rule's
    steps are looked up for every event it accumulates). Steps that are ambiguous (two spellings of
    one code with different steps) keep the full lookup, so it raises as it always did."""
    normalised: dict[str, Decimal] = {}
    for key, value in steps.items():
        code = _currency_key(key)
        if normalised.get(code, value) != value:
            return lambda currency: step_for_currency(steps, currency)
        normalised[code] = value

    def lookup(currency: str | None) -> Decimal | None:
        code = _currency_key(currency) if currency is not None else ""
        return normalised.get(code) if code else None

    return lookup


# -- helpers --------------------------------------------------------------------------------------


def _whole_steps(ctx: Context, remainder: Decimal, amount: Decimal, step: Decimal) -> tuple[Decimal, Decimal]:
    """(whole steps in remainder + amount, what is left), computed in ``ctx``."""
    total = ctx.add(remainder, amount)
    uncapped = ctx.divide_int(total, step)  # truncation == floor: both operands are >= 0
    return uncapped, ctx.subtract(total, ctx.multiply(uncapped, step))


def _currency_key(code: str) -> str:
    return code.strip().upper()


def _as_decimal(name: str, value: Decimal | int) -> Decimal:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise AccumulationError(f"{name} must be a finite number, got {value}")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    raise TypeError(f"{name} must be a Decimal (or int), got {type(value).__name__}")


def _check_not_negative(name: str, value: Decimal) -> None:
    if value < 0:
        raise AccumulationError(f"{name} must not be negative, got {value}")


def _check_cap(cap: int) -> None:
    if not isinstance(cap, int) or isinstance(cap, bool):
        raise TypeError(f"cap must be an int, got {type(cap).__name__}")
    if cap < 1:
        raise AccumulationError(f"cap must be at least 1, got {cap}")


def _exact_context(*values: Decimal) -> Context:
    """A decimal context in which +, -, * and integer division of ``values`` are all exact.

    Every intermediate (the total, the quotient, quotient * step, the remainder) has no digit above
    the largest operand's leading digit (+1 for a carry) nor below the smallest operand's exponent,
    so that span plus a margin is enough. ``Inexact``/``Rounded`` are trapped so that a mistake here
    raises instead of silently rounding.
    """
    top = max(v.adjusted() for v in values)
    bottom = min(v.as_tuple().exponent for v in values)
    if not isinstance(bottom, int):  # NaN and infinity have a letter for an exponent
        raise AccumulationError("amount, remainder and step must be finite numbers")
    needed = top - bottom + 3
    if needed > _MAX_PRECISION or top > _MAX_PRECISION or bottom < -_MAX_PRECISION:
        raise AccumulationError("amount, remainder and step span too many digits to accumulate exactly")
    if needed <= _MIN_PRECISION:
        return _COMMON_CONTEXT  # every everyday amount; building a Context costs more than the arithmetic
    return _context(max(_MIN_PRECISION, needed))


def _context(precision: int) -> Context:
    return Context(
        prec=precision,
        rounding=ROUND_HALF_EVEN,  # never applied: Inexact is trapped
        Emax=999_999,
        Emin=-999_999,
        traps=[InvalidOperation, Inexact, Rounded, Overflow],
    )


# Shared, but never observed: with Inexact and Rounded trapped an operation either is exact or
# raises, so the flags it may set carry no information anybody reads.
_COMMON_CONTEXT = _context(_MIN_PRECISION)
