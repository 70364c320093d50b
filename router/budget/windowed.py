"""The passes through a price window: one two-price pass settles every row whose choice
does not change inside the window, and only the others walk, up to the window's top. In
memory, :func:`solve_bracketed` runs them on one batch, the window placed from a strided
sample of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from router.budget.plain import BudgetSolution, assign_blocks, collect_blocks
from router.budget.summary import (
    KEEP_BREAKPOINTS,
    NBINS,
    BudgetPlan,
    BudgetSummary,
    critical_bin,
    lam_bin,
    solve_lambda,
)
from router.budget.walk import Block, walk_blocks
from router.budget.window import MOVING, PriceWindow, price_window, two_price_pass

# Rows in the sample that places the window (every k-th row).
SAMPLE_ROWS = 1 << 16


@dataclass
class WindowRows:
    """A batch seen through a window: every row's choice in the window (final for
    the settled rows), and the walk of the rows whose choice changes inside."""

    choice: np.ndarray
    moving: np.ndarray
    blocks: list[tuple[int, Block]]


def window_rows(
    quality: np.ndarray, cost: np.ndarray, window: PriceWindow, lam_limit: float, choices: Any = None
) -> WindowRows:
    """The batch through ``window``, the moving rows walked up to ``lam_limit``;
    ``choices`` is :func:`window_choices`' output if already at hand."""
    if choices is None:
        choice = two_price_pass(quality, cost, window.lo, window.hi)
    else:
        choice = np.asarray(choices, dtype=np.int64)
        if choice.shape != (quality.shape[0],):
            raise ValueError(f"choices must hold one window choice per row ({quality.shape[0]}); got {choice.shape}")
    moving = np.flatnonzero(choice == MOVING)
    blocks = list(walk_blocks(quality[moving], cost[moving], False, min(lam_limit, window.hi))) if moving.size else []
    return WindowRows(choice, moving, blocks)


def settled_totals(quality: np.ndarray, cost: np.ndarray, choice: np.ndarray) -> tuple[float, float]:
    """Cost and quality of the rows with a model for the whole window."""
    rows = np.flatnonzero(choice >= 0)
    cells = rows * quality.shape[1] + choice[rows]

    def pick(matrix: np.ndarray) -> np.ndarray:
        # A flat take is several times faster than a 2-D fancy index.
        return matrix.ravel().take(cells) if matrix.flags.c_contiguous else matrix[rows, choice[rows]]

    return float(pick(cost).sum(dtype=np.float64)), float(pick(quality).sum(dtype=np.float64))


def window_summary(
    rows: WindowRows, settled_cost: float, window: PriceWindow, keys: np.ndarray | None = None
) -> BudgetSummary:
    """The batch's summary within the window (and, with ``keys``, the window's breakpoints kept)."""
    at_lo = settled_cost
    lams, drops, found = [np.zeros(0)], [np.zeros(0)], []
    moving_keys = None if keys is None else keys[rows.moving]
    for lo, block in rows.blocks:
        at_lo += float(block.start_cost.sum())
        for step_rows, lam, drop, _ in block.steps:
            inside = lam > window.lo
            at_lo -= float(drop[~inside].sum())
            lams.append(lam[inside])
            drops.append(drop[inside])
            if moving_keys is not None:
                found.append(moving_keys[step_rows[inside] + lo])
    hist = np.zeros(NBINS)
    counts = np.zeros(NBINS, np.int64)
    lam, drop = np.concatenate(lams), np.concatenate(drops)
    if lam.size:
        used, at = np.unique(lam_bin(lam), return_inverse=True)
        hist[used] = np.bincount(at, weights=drop, minlength=used.size)
        counts[used] = np.bincount(at, minlength=used.size)
    kept = None
    if keys is not None and lam.size <= KEEP_BREAKPOINTS:
        kept = (lam, drop, np.concatenate(found) if found else keys[:0])
    n_rows = rows.choice.size
    return BudgetSummary(at_lo, at_lo - float(drop.sum()), hist, counts, n_rows, False, window, kept)


def collect_window(
    rows: WindowRows, keys: np.ndarray, bin: int, window: PriceWindow
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The batch's breakpoints in bin ``bin`` and inside the window: ``(lam, dcost, keys)``."""
    return collect_blocks(rows.blocks, keys[rows.moving], bin, above=window.lo)


def assign_window(rows: WindowRows, plan: BudgetPlan, keys: np.ndarray) -> np.ndarray:
    """Each row's model under ``plan``: the settled rows keep their window choice."""
    choice = rows.choice.copy()
    if rows.moving.size:
        choice[rows.moving] = assign_blocks(iter(rows.blocks), rows.moving.size, plan, keys[rows.moving])
    return choice


def solve_bracketed(quality: np.ndarray, cost: np.ndarray, budget: float, keys: np.ndarray) -> BudgetSolution | None:
    """The streamed passes with a window, on one batch: a strided sample places the
    window, one two-price pass serves the summary, the critical bin and the assignment,
    and only the rows that move inside the window walk. None when the window misses."""
    n_rows = quality.shape[0]
    sample = np.arange(0, n_rows, max(1, n_rows // SAMPLE_ROWS))
    window = price_window(quality[sample], cost[sample], budget, n_rows)
    if window is None:
        return None
    rows = window_rows(quality, cost, window, window.hi)
    settled_cost, settled_quality = settled_totals(quality, cost, rows.choice)
    summary = window_summary(rows, settled_cost, window)
    if not summary.min_cost <= budget < summary.base_cost:
        return None
    bin = critical_bin(summary, budget)
    assert bin is not None
    plan = solve_lambda(summary, budget, *collect_window(rows, keys, bin, window))
    choice = assign_window(rows, plan, keys)
    moving = rows.moving[choice[rows.moving] >= 0]
    total_cost = settled_cost + float(cost[moving, choice[moving]].sum(dtype=np.float64))
    total_quality = settled_quality + float(quality[moving, choice[moving]].sum(dtype=np.float64))
    return BudgetSolution(
        choice=choice,
        lam=plan.lam,
        total_cost=total_cost,
        total_quality=total_quality,
        bound=total_quality + plan.lam * (budget - total_cost),
    )
