"""Accumulation arithmetic: the specification's examples, per-currency steps, errors and properties.

Every example in docs/rule-timing.md ("Accumulation") has a test here.
"""

from __future__ import annotations

import decimal
from collections.abc import Sequence
from contextlib import AbstractContextManager
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smartico_stream.engine.accumulation import (
    MAX_EXECUTIONS_PER_EVENT,
    Accrual,
    AccumulationError,
    accrue,
    step_for_currency,
    step_lookup,
)

D = Decimal
UNCAPPED = 10**60  # a cap no generated event can reach

# The specification's example: 1 point per 10 EUR / 8 GBP / 12 USD wagered.
WAGER_STEPS = {"EUR": D("10"), "GBP": D("8"), "USD": D("12")}


def run(amounts: Sequence[Decimal], step: Decimal, cap: int = MAX_EXECUTIONS_PER_EVENT) -> list[Accrual]:
    """Feed one user's events in order, carrying the remainder as the engine does."""
    remainder = D(0)
    results = []
    for amount in amounts:
        accrual = accrue(remainder, amount, step, cap)
        results.append(accrual)
        remainder = accrual.remainder
    return results


# -- the specification's examples -----------------------------------------------------------------


def test_deposit_of_10_5_eur_with_a_1_eur_step_gives_10_and_remembers_0_5() -> None:
    assert accrue(D(0), D("10.5"), D(1)) == Accrual(executions=10, remainder=D("0.5"), uncapped_executions=10)


def test_the_remembered_0_5_counts_towards_the_next_deposit() -> None:
    first = accrue(D(0), D("10.5"), D(1))
    second = accrue(first.remainder, D("0.6"), D(1))
    assert (second.executions, second.remainder) == (1, D("0.1"))


def test_deposit_of_10_5_eur_with_a_10_eur_step_gives_1_and_remembers_0_5() -> None:
    accrual = accrue(D(0), D("10.5"), D(10))
    assert (accrual.executions, accrual.remainder, accrual.capped) == (1, D("0.5"), False)


def test_deposit_of_2000_eur_with_a_1_eur_step_is_capped_at_1000_and_the_excess_is_discarded() -> None:
    accrual = accrue(D(0), D(2000), D(1))
    assert accrual.executions == MAX_EXECUTIONS_PER_EVENT == 1000
    assert accrual.uncapped_executions == 2000
    assert accrual.capped
    assert accrual.remainder == 0  # the 1000 executions above the cap are not carried
    # ... so the next small deposit is counted from scratch, not topped up with 1000 pending points.
    assert accrue(accrual.remainder, D("1.5"), D(1)) == Accrual(1, D("0.5"), 1)


def test_capped_event_keeps_only_the_sub_step_remainder() -> None:
    accrual = accrue(D("0.25"), D("2000.5"), D(1))
    assert (accrual.executions, accrual.uncapped_executions, accrual.remainder) == (1000, 2000, D("0.75"))


def test_exactly_the_cap_is_not_capped() -> None:
    accrual = accrue(D(0), D(1000), D(1))
    assert (accrual.executions, accrual.capped) == (1000, False)


def test_count_accumulation_one_point_for_every_100_bets() -> None:
    results = run([D(1)] * 250, D(100))
    executed_at = [i + 1 for i, r in enumerate(results) if r.executions]
    assert executed_at == [100, 200]  # exactly one execution at the 100th bet, the next at the 200th
    assert all(r.executions in (0, 1) for r in results)
    assert results[-1].remainder == 50


def test_wagering_accumulation_per_currency() -> None:
    # 1 point per 10 EUR / 8 GBP / 12 USD: the same bets give different points by wallet currency.
    bets = [D("5"), D("5"), D("7.5"), D("6.5")]  # 24 in total
    points = {cur: sum(r.executions for r in run(bets, step)) for cur, step in WAGER_STEPS.items()}
    assert points == {"EUR": 2, "GBP": 3, "USD": 2}


def test_custom_cap() -> None:
    accrual = accrue(D(0), D(50), D(1), cap=3)
    assert (accrual.executions, accrual.uncapped_executions, accrual.capped) == (3, 50, True)


def test_zero_amount_changes_nothing() -> None:
    assert accrue(D("0.3"), D(0), D(1)) == Accrual(0, D("0.3"), 0)


def test_remainder_at_or_above_step_after_a_step_change_counts_towards_the_total() -> None:
    # The rule's step was lowered from 10 to 2 while the user carried 7.
    assert accrue(D(7), D(0), D(2)) == Accrual(3, D(1), 3)


def test_large_amounts_with_8_decimal_places_are_exact() -> None:
    amount = D("999999999999999.99999999")
    accrual = accrue(D("0.00000001"), amount, D("0.00000003"), cap=UNCAPPED)
    assert accrual.uncapped_executions == 33333333333333333333333
    assert accrual.remainder == D("0.00000001")
    assert accrual.uncapped_executions * D("0.00000003") + accrual.remainder == amount + D("0.00000001")


def test_ints_are_accepted_as_exact_decimals() -> None:
    assert accrue(0, 25, 10) == Accrual(2, D(5), 2)


def test_global_decimal_context_is_neither_used_nor_changed() -> None:
    with decimal.localcontext() as ctx:
        ctx.prec = 3
        ctx.rounding = decimal.ROUND_UP
        ctx.traps[decimal.Inexact] = True
        before = (ctx.prec, ctx.rounding, dict(ctx.flags))
        accrual = accrue(D("0.005"), D("123456.789"), D("0.01"))
        assert (ctx.prec, ctx.rounding, dict(ctx.flags)) == before
    assert accrual.uncapped_executions == 12345679
    assert accrual.remainder == D("0.004")


# -- per-currency steps ---------------------------------------------------------------------------


@pytest.mark.parametrize(("currency", "step"), [("EUR", D(10)), ("GBP", D(8)), ("USD", D(12))])
def test_step_for_each_wallet_currency(currency: str, step: Decimal) -> None:
    assert step_for_currency(WAGER_STEPS, currency) == step


@pytest.mark.parametrize("currency", ["eur", "Eur", " EUR "])
def test_currency_codes_are_case_insensitive(currency: str) -> None:
    assert step_for_currency(WAGER_STEPS, currency) == D(10)
    assert step_for_currency({"eur": D(10)}, "EUR") == D(10)


@pytest.mark.parametrize("currency", ["CAD", "", None])
def test_currency_without_a_step_does_not_accumulate(currency: str | None) -> None:
    assert step_for_currency(WAGER_STEPS, currency) is None


def test_same_currency_configured_twice_with_different_steps_is_an_error() -> None:
    assert step_for_currency({"EUR": D(10), "eur": D("10.0")}, "EUR") == D(10)  # same value: fine
    with pytest.raises(AccumulationError, match="EUR"):
        step_for_currency({"EUR": D(10), "eur": D(5)}, "EUR")


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remainder", "amount", "step", "cap", "message"),
    [
        (D(0), D(1), D(0), 1000, "step must be greater than zero"),
        (D(0), D(1), D(-1), 1000, "step must be greater than zero"),
        (D(0), D(-1), D(1), 1000, "amount must not be negative"),
        (D("-0.1"), D(1), D(1), 1000, "remainder must not be negative"),
        (D(0), D("NaN"), D(1), 1000, "amount must be a finite number"),
        (D(0), D("sNaN"), D(1), 1000, "amount must be a finite number"),
        (D(0), D(1), D("Infinity"), 1000, "step must be a finite number"),
        (D("-Infinity"), D(1), D(1), 1000, "remainder must be a finite number"),
        (D(0), D(1), D(1), 0, "cap must be at least 1"),
        (D(0), D(1), D(1), -5, "cap must be at least 1"),
        (D(0), D("1E+5000"), D("1E-5000"), 1000, "too many digits"),
    ],
)
def test_invalid_inputs(remainder: Decimal, amount: Decimal, step: Decimal, cap: int, message: str) -> None:
    with pytest.raises(AccumulationError, match=message):
        accrue(remainder, amount, step, cap)


def test_accumulation_error_is_a_value_error() -> None:
    assert issubclass(AccumulationError, ValueError)


@pytest.mark.parametrize(
    "args", [(D(0), 10.5, D(1)), (0.0, D(1), D(1)), (D(0), D(1), 1.0), (D(0), "10", D(1)), (D(0), True, D(1))]
)
def test_floats_and_other_types_are_refused(args: tuple[object, object, object]) -> None:
    with pytest.raises(TypeError):
        accrue(*args)  # type: ignore[arg-type]


def test_negative_zero_amount_is_zero() -> None:
    assert accrue(D(0), D("-0"), D(1)) == Accrual(0, D(0), 0)


# -- properties -----------------------------------------------------------------------------------


def exact() -> AbstractContextManager[decimal.Context]:
    """A context for the tests' own reference arithmetic, wide enough to be exact."""
    return decimal.localcontext(decimal.Context(prec=100, traps=[decimal.Inexact, decimal.InvalidOperation]))


def money(places: int, max_value: str) -> st.SearchStrategy[Decimal]:
    return st.decimals(min_value=0, max_value=D(max_value), places=places, allow_nan=False, allow_infinity=False)


def steps(places: int) -> st.SearchStrategy[Decimal]:
    smallest = D(1).scaleb(-places)
    return st.decimals(min_value=smallest, max_value=D("1000000"), places=places)


@st.composite
def runs(draw: st.DrawFn) -> tuple[list[Decimal], Decimal]:
    places = draw(st.sampled_from([2, 8]))
    amounts = draw(st.lists(money(places, "1000000000000000"), max_size=30))
    return amounts, draw(steps(places))


@given(runs())
def test_executions_times_step_plus_remainder_is_the_sum_of_amounts(case: tuple[list[Decimal], Decimal]) -> None:
    amounts, step = case
    results = run(amounts, step, cap=UNCAPPED)
    final = results[-1].remainder if results else D(0)
    with exact():
        assert sum(r.executions for r in results) * step + final == sum(amounts, D(0))


@given(runs())
def test_remainder_is_always_below_the_step(case: tuple[list[Decimal], Decimal]) -> None:
    amounts, step = case
    for r in run(amounts, step):
        assert 0 <= r.remainder < step


@given(runs())
def test_uncapped_total_executions_are_floor_of_total_over_step(case: tuple[list[Decimal], Decimal]) -> None:
    amounts, step = case
    with exact():
        expected = int(sum(amounts, D(0)) // step)
    assert sum(r.executions for r in run(amounts, step, cap=UNCAPPED)) == expected
    # With the default cap the sum of *uncapped* executions is the same, and so are the executions
    # themselves whenever no event hit the cap.
    capped_run = run(amounts, step)
    assert sum(r.uncapped_executions for r in capped_run) == expected
    if not any(r.capped for r in capped_run):
        assert sum(r.executions for r in capped_run) == expected


@given(runs(), st.integers(min_value=1, max_value=2000))
def test_cap_bounds_executions_and_leaves_remainders_unchanged(case: tuple[list[Decimal], Decimal], cap: int) -> None:
    amounts, step = case
    capped_run = run(amounts, step, cap=cap)
    free_run = run(amounts, step, cap=UNCAPPED)
    for capped, free in zip(capped_run, free_run, strict=True):
        assert capped.executions <= cap
        assert capped.executions == min(free.executions, cap)
        assert capped.uncapped_executions == free.executions
        assert capped.capped == (free.executions > cap)
        assert capped.remainder == free.remainder  # the excess is discarded, never carried


@given(
    st.sampled_from([2, 8]).flatmap(lambda p: st.tuples(money(p, "100000"), steps(p), st.lists(st.integers(1, 10**6)))),
    st.integers(min_value=1, max_value=1000),
)
def test_splitting_an_amount_never_gives_fewer_executions(case: tuple[Decimal, Decimal, list[int]], cap: int) -> None:
    # Uncapped, splitting gives exactly the same executions. Capped, never fewer: if no piece hits
    # the cap the pieces give all floor(total/step) executions, and if one does it alone gives cap,
    # while the single event gives min(floor(total/step), cap).
    amount, step, weights = case
    pieces = split(amount, weights)
    assert sum(pieces, D(0)) == amount
    single = accrue(D(0), amount, step, cap)
    split_run = run(pieces, step, cap)
    assert sum(r.executions for r in split_run) >= single.executions
    assert split_run[-1].remainder == single.remainder
    uncapped_single = accrue(D(0), amount, step, UNCAPPED)
    assert sum(r.executions for r in run(pieces, step, UNCAPPED)) == uncapped_single.executions


def split(amount: Decimal, weights: list[int]) -> list[Decimal]:
    """Split ``amount`` into len(weights) non-negative pieces (at its own precision) summing to it."""
    if not weights:
        return [amount]
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)
    units = int(amount.scaleb(-exponent))  # amount in its smallest unit
    total_weight = sum(weights)
    cuts = [units * w // total_weight for w in weights[:-1]]
    cuts.append(units - sum(cuts))
    return [D(c).scaleb(exponent) for c in cuts]


_CODES = st.sampled_from(["EUR", "eur", " EUR ", "USD", "usd", "GBP", "", " "])


@given(
    steps=st.dictionaries(_CODES, st.sampled_from([D(1), D(10), D("0.5")]), max_size=4),
    currency=st.one_of(st.none(), _CODES),
)
def test_step_lookup_answers_as_step_for_currency(steps: dict[str, Decimal], currency: str | None) -> None:
    """The per-rule lookup the rule plans use gives the same step, or raises the same error."""
    try:
        expected: Decimal | type[Exception] | None = step_for_currency(steps, currency)
    except AccumulationError:
        expected = AccumulationError
    try:
        got: Decimal | type[Exception] | None = step_lookup(steps)(currency)
    except AccumulationError:
        got = AccumulationError
    assert got == expected
