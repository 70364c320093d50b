"""The streamed form's passes over one batch of rows: ``summarize`` (merged on the driver),
``collect_bin`` (the critical bin's breakpoints) and ``assign`` (each row's model under the
driver's plan); each walks every row, or, given a price window, only the rows that move
inside it."""

from __future__ import annotations

from typing import Any

import numpy as np

from router.budget.checks import as_keys, as_matrices
from router.budget.plain import assign_blocks, collect_blocks, summarize_blocks
from router.budget.summary import BudgetPlan, BudgetSummary, bin_top
from router.budget.walk import walk_blocks
from router.budget.window import PriceWindow, check_window
from router.budget.windowed import assign_window, collect_window, settled_totals, window_rows, window_summary


def summarize(
    quality: Any,
    cost: Any,
    *,
    allow_skip: bool = False,
    window: PriceWindow | None = None,
    keys: Any = None,
    choices: Any = None,
) -> BudgetSummary:
    """The batch's mergeable summary (see the package docstring for ``allow_skip`` and
    ``window``). With a window, ``keys`` makes it keep the window's breakpoints, and
    ``choices`` (:func:`window_choices`' output, if already at hand) spares a pass."""
    quality, cost = as_matrices(quality, cost)
    if window is not None:
        check_window(window, allow_skip)
        rows = window_rows(quality, cost, window, window.hi, choices)
        keys = None if keys is None else as_keys(keys, quality.shape[0])
        return window_summary(rows, settled_totals(quality, cost, rows.choice)[0], window, keys)
    return summarize_blocks((block for _, block in walk_blocks(quality, cost, allow_skip)), allow_skip)


def collect_bin(
    quality: Any, cost: Any, keys: Any, bin: int, *, allow_skip: bool = False, window: PriceWindow | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This batch's breakpoints in bin ``bin``: ``(lam, dcost, keys)``."""
    quality, cost = as_matrices(quality, cost)
    keys = as_keys(keys, quality.shape[0])
    if window is not None:
        check_window(window, allow_skip)
        rows = window_rows(quality, cost, window, min(bin_top(bin), window.hi))
        return collect_window(rows, keys, bin, window)
    # Rows never need to walk past the bin's upper edge.
    return collect_blocks(walk_blocks(quality, cost, allow_skip, bin_top(bin)), keys, bin)


def assign(
    quality: Any,
    cost: Any,
    plan: BudgetPlan,
    keys: Any,
    *,
    allow_skip: bool = False,
    window: PriceWindow | None = None,
    choices: Any = None,
) -> np.ndarray:
    """Each row's model under ``plan`` (int64; -1: skipped or no model can take it).
    With a window, ``choices`` is :func:`window_choices`' output if already at hand."""
    quality, cost = as_matrices(quality, cost)
    keys = as_keys(keys, quality.shape[0])
    if window is not None:
        check_window(window, allow_skip)
        if not window.lo < plan.lam <= window.hi:
            raise ValueError(f"the plan's price {plan.lam} is outside {window}: assign without the window")
        return assign_window(window_rows(quality, cost, window, plan.lam, choices), plan, keys)
    return assign_blocks(walk_blocks(quality, cost, allow_skip, plan.lam), quality.shape[0], plan, keys)
