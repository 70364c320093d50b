"""Caps, streamed: :func:`solve_capped` runs the caps solver as a driver loop over a
re-readable source of batches (each price tried costs up to three passes, each repair or
fill round one), holding histograms and one round's candidate rows, never the rows; and
:func:`assign_capped` applies its :class:`CappedPlan` to a batch."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from router.budget.caps import Caps, CapLimit, cap_limits, cap_usage, priced_quality
from router.budget.checks import as_keys, as_matrices, check_budget
from router.budget.passes import assign, collect_bin, summarize
from router.budget.price_search import Batch, Eval, dual_value
from router.budget.repair import solve_caps
from router.budget.summary import BudgetPlan, BudgetSummary, critical_bin, solve_lambda


class StreamedRows:
    """Rows read in batches from a callable, once per pass; only summaries and
    a few candidate rows are kept."""

    def __init__(self, read: Callable[[], Iterable[tuple[Any, Any, Any]]]):
        self.read = read
        self.passes = 0

    def batches(self) -> Iterator[Batch]:
        self.passes += 1
        start = 0
        for quality, cost, keys in self.read():
            quality, cost = as_matrices(quality, cost)
            yield Batch(start, quality, cost, as_keys(keys, quality.shape[0]), None)
            start += quality.shape[0]

    def evaluate(self, limits: Sequence[CapLimit], prices: np.ndarray, budget: float, skip: bool) -> Eval:
        def priced(b: Batch) -> np.ndarray:
            return priced_quality(b.quality, b.cost, b.weights, limits, prices)

        summary = BudgetSummary.empty(allow_skip=skip)
        for b in self.batches():
            summary = summary.merge(summarize(priced(b), b.cost, allow_skip=skip))
        bin = critical_bin(summary, budget)
        if bin is None:
            plan = solve_lambda(summary, budget, [], [], [])
        else:
            parts = [collect_bin(priced(b), b.cost, b.keys, bin, allow_skip=skip) for b in self.batches()]
            lams, drops, keys = (np.concatenate(p) for p in zip(*parts, strict=True))
            plan = solve_lambda(summary, budget, lams, drops, keys)
        ev = Eval(prices, plan.lam, plan, np.zeros(len(limits)))
        for b, choice in self.choices(ev, limits, skip):
            ev.usage += cap_usage(b.cost, b.weights, choice, limits)
            served = np.flatnonzero(choice >= 0)
            ev.spent += float(b.cost[served, choice[served]].sum(dtype=np.float64))
            ev.quality += float(b.quality[served, choice[served]].sum(dtype=np.float64))
        return ev

    def choices(self, ev: Eval, limits: Sequence[CapLimit], skip: bool) -> Iterator[tuple[Batch, np.ndarray]]:
        assert ev.plan is not None
        for b in self.batches():
            priced = priced_quality(b.quality, b.cost, b.weights, limits, ev.prices)
            yield b, assign(priced, b.cost, ev.plan, b.keys, allow_skip=skip)


@dataclass(frozen=True, eq=False)
class CappedPlan:
    """The driver's decision under caps, applied per batch by :func:`assign_capped`."""

    limits: tuple[CapLimit, ...]
    prices: np.ndarray
    """One price per limit: quality given up per row (or per unit spent) on the capped model."""
    plan: BudgetPlan
    """The budget's plan over the priced quality."""
    skip: bool
    """Whether the passes walk with the skip option (the budget is below the cheapest models)."""
    moved_keys: np.ndarray
    """Keys of the rows the repair and the fill moved (sorted), and where to."""
    moved_to: np.ndarray
    predicted_cost: float
    predicted_quality: float
    bound: float
    passes: int
    """How many passes over the batches the solve took."""

    @property
    def lam(self) -> float:
        """The budget's price (over the priced quality)."""
        return self.plan.lam


def solve_capped(
    read: Callable[[], Iterable[tuple[Any, Any, Any]]],
    budget: float,
    caps: Caps,
    *,
    allow_skip: bool = False,
) -> CappedPlan:
    """The streamed form of ``solve_budget(..., caps=caps)``.

    ``read()`` is called once per pass and must yield the same batches of
    ``(quality, cost, keys)`` in the same order each time; keys must be unique
    (the moved rows are named by key). Each price tried costs up to three
    passes (summarize, collect_bin, assign); the repair and the fill one pass
    per round. The driver holds the histograms and the candidate rows of one
    round, not the rows.
    """
    budget = check_budget(budget)
    source = StreamedRows(read)
    first = next(iter(read()), None)
    n_models = as_matrices(first[0], first[1])[0].shape[1] if first is not None else 0
    limits = cap_limits(caps, n_models)
    ev, moves, skip, _ = solve_caps(source, limits, budget, allow_skip)
    predicted_cost = predicted_quality = 0.0
    for b, choice in source.choices(ev, limits, skip):
        choice = moves.apply(b, choice)
        served = np.flatnonzero(choice >= 0)
        predicted_cost += float(b.cost[served, choice[served]].sum(dtype=np.float64))
        predicted_quality += float(b.quality[served, choice[served]].sum(dtype=np.float64))
    _, keys, to = moves.final()
    order = np.argsort(keys, kind="stable")
    assert ev.plan is not None
    return CappedPlan(
        limits=limits,
        prices=ev.prices,
        plan=ev.plan,
        skip=skip,
        moved_keys=keys[order],
        moved_to=to[order],
        predicted_cost=predicted_cost,
        predicted_quality=predicted_quality,
        bound=dual_value(source, ev, limits, budget, allow_skip),
        passes=source.passes,
    )


def assign_capped(quality: Any, cost: Any, plan: CappedPlan, keys: Any) -> np.ndarray:
    """Each row's model under a :class:`CappedPlan` (int64; -1: skipped or no model can take it)."""
    quality, cost = as_matrices(quality, cost)
    keys = as_keys(keys, quality.shape[0])
    priced = priced_quality(quality, cost, None, plan.limits, plan.prices)
    choice = assign(priced, cost, plan.plan, keys, allow_skip=plan.skip)
    if plan.moved_keys.size:
        at = np.searchsorted(plan.moved_keys, keys).clip(max=plan.moved_keys.size - 1)
        moved = plan.moved_keys[at] == keys
        choice[moved] = plan.moved_to[at[moved]]
    return choice
