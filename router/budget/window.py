"""Price windows: a price range ``(lo, hi]`` placed around ``lam*`` from a sample of rows,
and the two-price pass that tells, per row, whether its choice changes inside it. A row
whose choice does not change has no breakpoint in the window and need not walk."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from router.budget.checks import as_matrices, check_budget, format_amount
from router.budget.walk import all_steps, walk_blocks

# The window spans this many standard errors of the sample's cost estimate on each side.
WINDOW_SIGMAS = 6.0
# Where inside a gap between two sample breakpoints a window's end goes: away from both,
# so that no row's breakpoint is likely to sit exactly on it.
GAP_FRACTION = 0.381966
# Rows per block of the two-price pass.
PASS_ROWS = 1 << 13

MOVING = -2
"""In :func:`window_choices`: the row's choice changes inside the window."""


@dataclass(frozen=True)
class PriceWindow:
    """A price range ``(lo, hi]`` expected to hold ``lam*``. A row whose best
    choice is the same at both ends has no breakpoint inside, so passes with a
    window walk only the rows whose choice differs: one argmax at each end,
    instead of a walk, for all the others."""

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not 0 < self.lo < self.hi < math.inf:
            raise ValueError(f"a price window needs 0 < lo < hi < inf; got lo={self.lo}, hi={self.hi}")


class PriceWindowMissed(ValueError):
    """``lam*`` is not inside the window: the passes must run again without it."""

    def __init__(self, window: PriceWindow, budget: float, cost_at_lo: float, cost_at_hi: float) -> None:
        self.window = window
        self.budget, self.cost_at_lo, self.cost_at_hi = float(budget), float(cost_at_lo), float(cost_at_hi)
        super().__init__(
            f"the budget {format_amount(self.budget)} is outside the costs at the window's ends "
            f"({format_amount(self.cost_at_hi)} at lam={window.hi:.6g}, {format_amount(self.cost_at_lo)} at "
            f"lam={window.lo:.6g}); rerun the passes without a window"
        )

    def __reduce__(self) -> tuple[Any, tuple[PriceWindow, float, float, float]]:
        return (type(self), (self.window, self.budget, self.cost_at_lo, self.cost_at_hi))


def check_window(window: PriceWindow, allow_skip: bool) -> None:
    if allow_skip:
        raise ValueError("price windows are for budgets that cover the cheapest models; pass allow_skip=False")


def price_window(sample_quality: Any, sample_cost: Any, budget: float, total_rows: int) -> PriceWindow | None:
    """A window very likely to hold ``lam*`` for a data set of ``total_rows`` rows,
    from a sample of them (rows picked without regard to their values). None when
    the sample puts the budget near either end of the cost range."""
    quality, cost = as_matrices(sample_quality, sample_cost)
    budget = check_budget(budget)
    n_sample = quality.shape[0]
    if not n_sample or budget == math.inf:
        return None
    blocks = list(walk_blocks(quality, cost, False))
    rows, lams, drops, _ = all_steps(blocks)
    if not lams.size:
        return None
    row_cost = np.concatenate([block.start_cost for _, block in blocks])
    order = np.argsort(lams, kind="stable")
    sorted_lams = lams[order]
    scale = total_rows / n_sample
    after = scale * (row_cost.sum() - np.cumsum(drops[order]))
    fits = np.flatnonzero(after <= budget)
    if scale * row_cost.sum() <= budget or not fits.size:
        return None
    # The sample's total at a price sums its rows' costs there, so its error is about
    # sqrt(rows) times their spread; a row's own cost bounds what one step can move.
    moved = lams <= sorted_lams[fits[0]]
    row_cost -= np.bincount(rows[moved], weights=drops[moved], minlength=row_cost.size)
    margin = WINDOW_SIGMAS * scale * math.sqrt(n_sample) * float(row_cost.std()) + float(row_cost.max())
    low = np.flatnonzero(after <= budget + margin)
    high = np.flatnonzero(after <= budget - margin)
    if not high.size:
        return None
    i, j = int(low[0]), int(high[0])
    below = sorted_lams[i - 1] if i else 0.0
    above = sorted_lams[j + 1] if j + 1 < sorted_lams.size else 2 * sorted_lams[j]
    lo = float(sorted_lams[i] - (sorted_lams[i] - below) * GAP_FRACTION)
    hi = float(sorted_lams[j] + (above - sorted_lams[j]) * GAP_FRACTION)
    return PriceWindow(lo, hi) if 0 < lo < hi < math.inf else None


def window_choices(quality: Any, cost: Any, window: PriceWindow) -> np.ndarray:
    """Each row's model at every price in the window, MOVING where it changes inside
    (-1: no model can take the row): one argmax pass at each end of the window.

    Pass it to :func:`summarize` and :func:`assign` (``choices=``) to spare them
    that pass, e.g. computed once in the routing pass and kept as a column.
    """
    quality, cost = as_matrices(quality, cost)
    return two_price_pass(quality, cost, window.lo, window.hi)


def two_price_pass(quality: np.ndarray, cost: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """argmax(Q - lam*C) at both prices, MOVING where they differ.

    A row whose choice is the same at both prices has no breakpoint in ``(lo, hi]``.
    Exact ties at a price resolve to the lower column; window ends sit away from
    the breakpoints the sample saw, so in practice only identical points tie there.
    """
    n_rows, n_models = quality.shape
    dtype = np.float32 if quality.dtype == np.float32 and cost.dtype == np.float32 else np.float64
    block_rows = max(1, min(PASS_ROWS, n_rows))
    work = np.empty((block_rows, n_models), dtype)
    offsets = np.arange(block_rows) * n_models
    choice = np.full(n_rows, -1, np.int64)
    if not n_models:
        return choice
    with np.errstate(invalid="ignore", over="ignore"):
        for first in range(0, n_rows, block_rows):
            q = quality[first : first + block_rows]
            c = cost[first : first + block_rows]
            w = work[: q.shape[0]]
            flat, at = w.ravel(), offsets[: q.shape[0]]
            picks = []
            for lam in (lo, hi):
                np.multiply(c, -lam, out=w)
                w += q
                pick = w.argmax(axis=1)
                # NaN and +inf win an argmax, -inf only where nothing else is left:
                # those rows (an unusable cell, or none usable) are redone with masking.
                dirty = np.flatnonzero(~np.isfinite(flat.take(at + pick)))
                if dirty.size:
                    qd, cd = q[dirty], c[dirty]
                    usable = np.isfinite(qd) & np.isfinite(cd)
                    masked = np.where(usable, qd - lam * np.where(usable, cd, 0.0), -np.inf)
                    pick[dirty] = np.where(usable.any(axis=1), masked.argmax(axis=1), -1)
                picks.append(pick)
            pick_lo, pick_hi = picks
            pick_hi[pick_lo != pick_hi] = MOVING
            choice[first : first + q.shape[0]] = pick_hi
    return choice
