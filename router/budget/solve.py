"""In memory: :func:`solve_budget` on matrices the caller holds. Without caps it runs the
streamed passes on the rows as one batch (every row walking its hull, or, for large inputs,
only the rows that move inside a price window); with caps, the caps solver over that batch."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from router.budget.caps import Caps, CapLimit, cap_limits, cap_usage, priced_quality
from router.budget.checks import as_keys, as_matrices, check_budget
from router.budget.plain import BudgetSolution, assign_blocks, solution, solve_walked
from router.budget.price_search import Batch, Eval, dual_value
from router.budget.repair import solve_caps
from router.budget.summary import BudgetPlan
from router.budget.walk import walk_blocks
from router.budget.windowed import solve_bracketed

# Inputs with fewer rows walk every row: a window would save little.
BRACKET_MIN_ROWS = 1 << 18


def solve_budget(
    quality: Any,
    cost: Any,
    budget: float,
    *,
    caps: Caps = None,
    allow_skip: bool = False,
    keys: Any = None,
) -> BudgetSolution:
    """Choose one model per row maximising total quality within ``budget``.

    ``keys`` (default: the row index) order the tied rows at ``lam*``; pass the
    row ids to get the same answer as the streamed form. With ``allow_skip``
    rows may be left out (-1), but only when the cheapest models do not fit
    (or, with ``caps``, when the caps leave a row nowhere to go).

    ``caps`` limits what single models may take: ``{column: ModelCap(...)}``
    or one ``ModelCap | None`` per column. See "Caps" in the package docstring
    for the method and what it guarantees.
    """
    quality, cost = as_matrices(quality, cost)
    budget = check_budget(budget)
    n_rows = quality.shape[0]
    keys = np.arange(n_rows) if keys is None else as_keys(keys, n_rows)
    limits = cap_limits(caps, quality.shape[1])
    if limits:
        return solve_capped_in_memory(quality, cost, keys, None, budget, limits, allow_skip)
    return solve_uncapped(quality, cost, budget, keys, allow_skip)


def solve_uncapped(
    quality: np.ndarray, cost: np.ndarray, budget: float, keys: np.ndarray, allow_skip: bool
) -> BudgetSolution:
    """:func:`solve_budget` without caps, on checked arguments."""
    if budget == math.inf:
        # lam* = 0: every row keeps its best model, so no walk past the start.
        plan = BudgetPlan(lam=0.0, tie_key=None, predicted_cost=math.nan)
        choice = assign_blocks(walk_blocks(quality, cost, False, 0.0), quality.shape[0], plan, keys)
        return solution(quality, cost, choice, plan, budget)
    if quality.shape[0] >= BRACKET_MIN_ROWS:
        bracketed = solve_bracketed(quality, cost, budget, keys)
        if bracketed is not None:
            return bracketed
    return solve_walked(quality, cost, budget, keys, allow_skip)


class RowsInMemory:
    """The rows as one batch, held by the caller; each price is one plain in-memory solve."""

    def __init__(self, quality: np.ndarray, cost: np.ndarray, keys: np.ndarray, weights: np.ndarray | None):
        self.batch = Batch(0, quality, cost, keys, weights)

    def batches(self) -> Iterator[Batch]:
        yield self.batch

    def evaluate(self, limits: Sequence[CapLimit], prices: np.ndarray, budget: float, skip: bool) -> Eval:
        b = self.batch
        priced = priced_quality(b.quality, b.cost, b.weights, limits, prices)
        sol = solve_budget(priced, b.cost, budget, keys=b.keys, allow_skip=skip)
        usage = cap_usage(b.cost, b.weights, sol.choice, limits)
        served = np.flatnonzero(sol.choice >= 0)
        quality = float(b.quality[served, sol.choice[served]].sum(dtype=np.float64))
        return Eval(prices, sol.lam, None, usage, sol.total_cost, quality, sol.choice)

    def choices(self, ev: Eval, limits: Sequence[CapLimit], skip: bool) -> Iterator[tuple[Batch, np.ndarray]]:
        assert ev.choice is not None
        yield self.batch, ev.choice.copy()


def solve_capped_in_memory(
    quality: np.ndarray,
    cost: np.ndarray,
    keys: np.ndarray,
    weights: np.ndarray | None,
    budget: float,
    limits: tuple[CapLimit, ...],
    allow_skip: bool,
) -> BudgetSolution:
    """:func:`solve_budget` with caps, on checked arguments; ``weights`` is what a
    ``max_rows`` cap counts per row (None: one each)."""
    source = RowsInMemory(quality, cost, keys, weights)
    ev, moves, skip, _ = solve_caps(source, limits, budget, allow_skip)
    (batch, choice), = source.choices(ev, limits, skip)
    choice = moves.apply(batch, choice)
    served = np.flatnonzero(choice >= 0)
    return BudgetSolution(
        choice=choice,
        lam=ev.lam,
        total_cost=float(cost[served, choice[served]].sum(dtype=np.float64)),
        total_quality=float(quality[served, choice[served]].sum(dtype=np.float64)),
        bound=dual_value(source, ev, limits, budget, allow_skip),
        cap_prices=tuple(float(p) for p in ev.prices),
        cap_limits=limits,
    )
