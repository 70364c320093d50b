"""Walking every row down its whole hull: the three passes over a batch's walked blocks
(summarize, collect the critical bin, assign), and the in-memory solve that runs them on
one batch and walks it once."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from router.budget.caps import CapLimit
from router.budget.summary import (
    NBINS,
    BudgetPlan,
    BudgetSummary,
    InfeasibleBudget,
    critical_bin,
    lam_bin,
    solve_lambda,
)
from router.budget.walk import Block, public_choice, walk_blocks


@dataclass(frozen=True)
class BudgetSolution:
    """One model per row (-1: skipped or no model can take it) at price ``lam``."""

    choice: np.ndarray
    lam: float
    total_cost: float
    total_quality: float
    bound: float = math.nan
    """An upper bound on the optimum (the Lagrangian dual value at the prices
    found): no assignment within the budget and caps, over the same options
    (skip included wherever rows may be skipped), has a higher total quality.
    ``bound - total_quality`` is how much this answer can be short of optimal."""
    cap_prices: tuple[float, ...] = ()
    """With caps: the price per capped limit (in the order of ``cap_limits``)."""
    cap_limits: tuple[CapLimit, ...] = ()


def summarize_blocks(blocks: Iterable[Block], allow_skip: bool) -> BudgetSummary:
    """The summary of the walked blocks: their breakpoints' cost drops, histogrammed by price bin."""
    hist = np.zeros(NBINS, dtype=np.float64)
    counts = np.zeros(NBINS, dtype=np.int64)
    base_cost = min_cost = 0.0
    n_rows = 0
    pending_bins: list[np.ndarray] = []
    pending_drops: list[np.ndarray] = []
    pending = 0
    for block in blocks:
        base_cost += float(block.start_cost.sum())
        min_cost += float(block.min_cost[np.isfinite(block.min_cost)].sum())
        n_rows += block.start.size
        for _, lam, drop, _ in block.steps:
            pending_bins.append(lam_bin(lam))
            pending_drops.append(drop)
            pending += lam.size
        # Histogram many blocks at once: a full-width bincount per block would
        # cost more than the blocks' breakpoints themselves.
        if pending >= 1 << 20:
            _add_to_histogram(hist, counts, pending_bins, pending_drops)
            pending = 0
    if pending:
        _add_to_histogram(hist, counts, pending_bins, pending_drops)
    return BudgetSummary(base_cost, min_cost, hist, counts, n_rows, allow_skip)


def _add_to_histogram(hist: np.ndarray, counts: np.ndarray, bins: list[np.ndarray], drops: list[np.ndarray]) -> None:
    """Add the pending breakpoints (``bins``, ``drops``) to the histogram, and empty those lists."""
    at_bins = np.concatenate(bins)
    at_drops = np.concatenate(drops)
    if at_bins.size < NBINS // 16:
        # Few breakpoints: the same per-bin sums (in the same order) over the used bins only.
        used, at = np.unique(at_bins, return_inverse=True)
        hist[used] += np.bincount(at, weights=at_drops, minlength=used.size)
        counts[used] += np.bincount(at, minlength=used.size)
    else:
        hist[:] += np.bincount(at_bins, weights=at_drops, minlength=NBINS)
        counts[:] += np.bincount(at_bins, minlength=NBINS)
    bins.clear()
    drops.clear()


def collect_blocks(
    blocks: Iterable[tuple[int, Block]], keys: np.ndarray, bin: int, above: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The walked blocks' breakpoints in bin ``bin`` (and priced above ``above``, if given):
    ``(lam, dcost, keys)``."""
    lams, drops, found = [], [], []
    for lo, block in blocks:
        for rows, lam, drop, _ in block.steps:
            inside = lam_bin(lam) == bin
            if above is not None:
                inside &= lam > above
            if inside.any():
                lams.append(lam[inside])
                drops.append(drop[inside])
                found.append(keys[rows[inside] + lo])
    if not lams:
        return np.zeros(0), np.zeros(0), keys[:0]
    return np.concatenate(lams), np.concatenate(drops), np.concatenate(found)


def assign_blocks(blocks: Iterator[tuple[int, Block]], n_rows: int, plan: BudgetPlan, keys: np.ndarray) -> np.ndarray:
    """Each walked row's model under ``plan``: its steps replayed up to ``plan.lam``, the tie rule at it."""
    choice = np.full(n_rows, -1, dtype=np.int64)
    for lo, block in blocks:
        local = block.start.copy()
        for rows, lam, _, to in block.steps:
            move = lam < plan.lam
            tied = ~move & (lam == plan.lam)
            if tied.any():
                upgraded = np.zeros(tied.size, dtype=bool)
                if plan.tie_key is not None:
                    upgraded[tied] = keys[rows[tied] + lo] <= plan.tie_key
                move |= tied & ~upgraded
            local[rows[move]] = to[move]
        choice[lo : lo + local.size] = public_choice(local, block.n_models)
    return choice


def solve_walked(
    quality: np.ndarray, cost: np.ndarray, budget: float, keys: np.ndarray, allow_skip: bool
) -> BudgetSolution:
    """The streamed passes on one batch: every row walks its whole hull."""
    n_rows = quality.shape[0]
    # One walk serves the summary, the critical bin and the assignment.
    blocks = list(walk_blocks(quality, cost, False))
    summary = summarize_blocks((block for _, block in blocks), False)
    if budget < summary.min_cost:
        if not allow_skip:
            raise InfeasibleBudget(budget, summary.min_cost)
        blocks = list(walk_blocks(quality, cost, True))
        summary = summarize_blocks((block for _, block in blocks), True)
    bin = critical_bin(summary, budget)
    if bin is None:
        plan = solve_lambda(summary, budget, [], [], keys[:0])
    else:
        plan = solve_lambda(summary, budget, *collect_blocks(iter(blocks), keys, bin))
    return solution(quality, cost, assign_blocks(iter(blocks), n_rows, plan, keys), plan, budget)


def solution(
    quality: np.ndarray, cost: np.ndarray, choice: np.ndarray, plan: BudgetPlan, budget: float
) -> BudgetSolution:
    """The answer for ``choice``: its totals, and the dual bound at the plan's price."""
    rows = np.flatnonzero(choice >= 0)
    total_cost = float(cost[rows, choice[rows]].sum(dtype=np.float64))
    total_quality = float(quality[rows, choice[rows]].sum(dtype=np.float64))
    # Every row is at its best for Q - lam*C, so this is the Lagrangian dual value.
    bound = total_quality if plan.lam == 0 else total_quality + plan.lam * (budget - total_cost)
    return BudgetSolution(choice=choice, lam=plan.lam, total_cost=total_cost, total_quality=total_quality, bound=bound)
