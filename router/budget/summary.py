"""The driver's side of the streamed form: a batch's mergeable summary (a histogram of its
breakpoints' cost drops over bins of price), the bin that holds ``lam*``, and the exact
``lam*`` and tie threshold (:class:`BudgetPlan`) from that bin's breakpoints."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from router.budget.checks import check_budget, format_amount
from router.budget.window import PriceWindow, PriceWindowMissed

NBINS = 1 << 16
# Breakpoints a merged windowed summary keeps (24 bytes and a key each) before it drops them.
KEEP_BREAKPOINTS = 1 << 20
BIN_SHIFT = np.uint64(48)
INF_BIN = int(np.array([np.inf]).view(np.uint64)[0] >> BIN_SHIFT)


def lam_bin(lam: np.ndarray) -> np.ndarray:
    """The bin of each price: the top 16 bits of its float64, which order like the prices."""
    return (np.ascontiguousarray(lam, dtype=np.float64).view(np.uint64) >> BIN_SHIFT).astype(np.int64)


def bin_top(bin: int) -> float:
    """The lowest price past a bin (inf for the last finite bin and beyond)."""
    if bin + 1 >= INF_BIN:
        return math.inf
    return float((np.array([bin + 1], dtype=np.uint64) << BIN_SHIFT).view(np.float64)[0])


class InfeasibleBudget(ValueError):
    """The budget cannot pay for even the cheapest model of every row."""

    def __init__(self, budget: float, minimum: float) -> None:
        self.budget = float(budget)
        self.minimum = float(minimum)
        super().__init__(
            f"budget {format_amount(self.budget)} is below the cheapest assignment "
            f"({format_amount(self.minimum, at_least=True)}); raise budget.total to at least "
            f"{format_amount(self.minimum, at_least=True)} or allow skipping rows"
        )

    def __reduce__(self) -> tuple[Any, tuple[float, float]]:
        # Exceptions cross process boundaries (Ray) by pickling their init args.
        return (type(self), (self.budget, self.minimum))


@dataclass(frozen=True, eq=False)
class BudgetSummary:
    """What the driver needs from a batch to find the bin of ``lam*``; merges by addition.

    ``base_cost`` is the cost of every row's best-quality choice (``lam = 0``),
    ``min_cost`` of every row's cheapest real model (never the skip option), and
    ``hist[b]``/``counts[b]`` the summed cost drop and number of breakpoints
    whose ``lam`` falls in bin ``b``.
    """

    base_cost: float
    min_cost: float
    hist: np.ndarray
    counts: np.ndarray
    n_rows: int
    allow_skip: bool = False
    window: PriceWindow | None = None
    """Set when the batch was summarised within a price window: then ``base_cost``
    and ``min_cost`` are the costs at the window's ends and the histogram holds
    only the breakpoints inside it."""
    breakpoints: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    """With a window and keys: the window's breakpoints themselves, ``(lam, dcost,
    keys)``, so that no collect_bin pass is needed. Merging drops them once there
    are more than KEEP_BREAKPOINTS, which bounds the driver's memory."""

    @classmethod
    def empty(cls, *, allow_skip: bool = False, window: PriceWindow | None = None) -> BudgetSummary:
        return cls(
            base_cost=0.0,
            min_cost=0.0,
            hist=np.zeros(NBINS, dtype=np.float64),
            counts=np.zeros(NBINS, dtype=np.int64),
            n_rows=0,
            allow_skip=allow_skip,
            window=window,
            breakpoints=None if window is None else (np.zeros(0), np.zeros(0), np.zeros(0)),
        )

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Summaries travel between processes (Ray) and most bins are empty: send the used ones.
        used = np.flatnonzero(self.counts)
        fields = (self.base_cost, self.min_cost, self.n_rows, self.allow_skip, self.window, self.breakpoints)
        return (_summary_from_bins, (*fields, used, self.hist[used], self.counts[used]))

    def merge(self, other: BudgetSummary) -> BudgetSummary:
        if other.allow_skip != self.allow_skip:
            raise ValueError("cannot merge summaries computed with and without allow_skip")
        if other.window != self.window:
            raise ValueError(f"cannot merge summaries over different price windows ({self.window} and {other.window})")
        kept = None
        if self.breakpoints is not None and other.breakpoints is not None:
            if self.breakpoints[0].size + other.breakpoints[0].size <= KEEP_BREAKPOINTS:
                # An empty part may carry placeholder keys of another type: leave it out.
                parts = [p for p in (self.breakpoints, other.breakpoints) if p[0].size] or [other.breakpoints]
                kept = tuple(np.concatenate(column) for column in zip(*parts, strict=True))
        return BudgetSummary(
            base_cost=self.base_cost + other.base_cost,
            min_cost=self.min_cost + other.min_cost,
            hist=self.hist + other.hist,
            counts=self.counts + other.counts,
            n_rows=self.n_rows + other.n_rows,
            allow_skip=self.allow_skip,
            window=self.window,
            breakpoints=kept,  # type: ignore[arg-type]
        )


def _summary_from_bins(
    base_cost: float,
    min_cost: float,
    n_rows: int,
    allow_skip: bool,
    window: PriceWindow | None,
    breakpoints: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    used: np.ndarray,
    hist: np.ndarray,
    counts: np.ndarray,
) -> BudgetSummary:
    dense_hist = np.zeros(NBINS)
    dense_counts = np.zeros(NBINS, np.int64)
    dense_hist[used], dense_counts[used] = hist, counts
    return BudgetSummary(base_cost, min_cost, dense_hist, dense_counts, n_rows, allow_skip, window, breakpoints)


def merge_summaries(summaries: Sequence[BudgetSummary]) -> BudgetSummary:
    """Sum batch summaries; all must agree on ``allow_skip``."""
    if not summaries:
        raise ValueError("no summaries to merge")
    merged = summaries[0]
    for summary in summaries[1:]:
        merged = merged.merge(summary)
    return merged


@dataclass(frozen=True)
class BudgetPlan:
    """The driver's decision, applied per batch by :func:`assign`.

    Rows take their choice at price ``lam``, except that rows with a breakpoint
    exactly at ``lam`` and key ``<= tie_key`` keep the more expensive choice
    from just below it. ``tie_key`` is None when no tied row is upgraded.
    """

    lam: float
    tie_key: Any
    predicted_cost: float


def _require_feasible(summary: BudgetSummary, budget: float) -> None:
    if summary.window is not None:
        if not summary.min_cost <= budget < summary.base_cost:
            raise PriceWindowMissed(summary.window, budget, summary.base_cost, summary.min_cost)
    elif not summary.allow_skip and budget < summary.min_cost:
        raise InfeasibleBudget(budget, summary.min_cost)


def critical_bin(summary: BudgetSummary, budget: float) -> int | None:
    """The bin holding ``lam*``, or None when ``lam* = 0`` (the best models fit)."""
    budget = check_budget(budget)
    _require_feasible(summary, budget)
    if summary.base_cost <= budget:
        return None
    used, after = _cost_after_bins(summary)
    if not used.size:
        return None
    fits = np.flatnonzero(after <= budget)
    # If rounding keeps even the cheapest plan a hair over budget, the last
    # breakpoint is still the right price: the cheapest plan is known to fit.
    return int(used[fits[0]]) if fits.size else int(used[-1])


def _cost_after_bins(summary: BudgetSummary) -> tuple[np.ndarray, np.ndarray]:
    """The bins holding breakpoints, and the total cost past each of them.

    Empty bins add exact zeros, so summing only the used ones gives the same
    numbers as a running sum over every bin, at a fraction of the cost.
    """
    cached = summary.__dict__.get("_cost_after_bins")
    if cached is None:
        used = np.flatnonzero(summary.counts)
        cached = (used, summary.base_cost - np.cumsum(summary.hist[used]))
        # critical_bin and solve_lambda both need it; a summary is not changed once made.
        object.__setattr__(summary, "_cost_after_bins", cached)
    return cached


def solve_lambda(
    summary: BudgetSummary, budget: float, bin_lams: Any = None, bin_dcosts: Any = None, bin_keys: Any = None
) -> BudgetPlan:
    """The exact ``lam*`` and tie threshold from the merged summary and the
    critical bin's breakpoints, ``collect_bin``'s output concatenated over
    every batch (empty when ``critical_bin`` is None). A windowed summary that
    kept its breakpoints needs none: leave them out.

    Keys should be unique; tied rows sharing a key are upgraded together or not at all.
    """
    budget = check_budget(budget)
    bin = critical_bin(summary, budget)
    if bin is None:
        return BudgetPlan(lam=0.0, tie_key=None, predicted_cost=summary.base_cost)
    if bin_lams is None:
        if summary.breakpoints is None:
            raise ValueError("this summary kept no breakpoints: pass collect_bin's output for the critical bin")
        lam, drop, keys = summary.breakpoints
        inside = lam_bin(lam) == bin
        bin_lams, bin_dcosts, bin_keys = lam[inside], drop[inside], keys[inside]
    lams = np.asarray(bin_lams, dtype=np.float64)
    drops = np.asarray(bin_dcosts, dtype=np.float64)
    keys = np.asarray(bin_keys)
    if not lams.size:
        raise ValueError(f"no breakpoints were collected for the critical bin {bin}")
    # The same running sum critical_bin used, so both agree on the bin's start.
    used, after = _cost_after_bins(summary)
    at_bin = int(np.searchsorted(used, bin))
    cost_before_bin = float(after[at_bin - 1]) if at_bin else summary.base_cost

    order = np.argsort(keys, kind="stable")
    order = order[np.argsort(lams[order], kind="stable")]
    lams, drops, keys = lams[order], drops[order], keys[order]
    price_starts = np.flatnonzero(np.r_[True, lams[1:] != lams[:-1]])
    cost_after = cost_before_bin - np.cumsum(np.add.reduceat(drops, price_starts))
    fits = np.flatnonzero(cost_after <= budget)
    at = int(fits[0]) if fits.size else price_starts.size - 1
    lam = float(lams[price_starts[at]])

    tied = slice(price_starts[at], price_starts[at + 1] if at + 1 < price_starts.size else lams.size)
    tied_keys, upgrade = keys[tied], np.cumsum(drops[tied])
    # A prefix may only end where the key changes, so "key <= tie_key" picks it exactly.
    ends = np.flatnonzero(np.r_[tied_keys[1:] != tied_keys[:-1], True])
    fitting = ends[cost_after[at] + upgrade[ends] <= budget]
    if not fitting.size:
        return BudgetPlan(lam=lam, tie_key=None, predicted_cost=float(cost_after[at]))
    last = int(fitting[-1])
    tie_key = tied_keys[last]
    return BudgetPlan(
        lam=lam,
        tie_key=tie_key.item() if isinstance(tie_key, np.generic) else tie_key,
        predicted_cost=float(cost_after[at] + upgrade[last]),
    )
