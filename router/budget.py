"""Budget-bounded model assignment: pick one model per row to maximise total
predicted quality while the total predicted cost stays within a budget.

This is a multiple-choice knapsack, solved by Lagrangian relaxation. At a
price ``lam >= 0`` every row independently takes ``argmax_t Q[i,t] - lam*C[i,t]``
(ties toward the lower cost, then the lower column). As ``lam`` grows, a row's
choice walks down the upper convex hull of its (cost, quality) points, so the
total cost ``C(lam)`` is a non-increasing, right-continuous step function. The
solution price is ``lam* = min{lam >= 0 : C(lam) <= budget}``. Rows whose
breakpoint sits exactly at ``lam*`` are "tied": walking in ascending row-key
order, the longest prefix of them whose extra cost still fits in the budget
keeps the more expensive choice from just below ``lam*``. The result is
deterministic and loses at most one row's quality spread against the optimum.

A cell whose quality or cost is NaN or infinite is a model that cannot take
the row; a row no model can take gets choice -1 and costs nothing.

The same code runs in memory (:func:`solve_budget`) and streamed over batches
of rows, with only summaries travelling to a driver:

1. ``summarize`` every batch and ``merge_summaries`` the results. A summary is
   a histogram of the breakpoints' cost drops over 65536 bins of ``lam`` (the
   top 16 bits of its float64 representation, which order like ``lam``), so its
   size does not depend on the number of rows.
2. ``critical_bin(summary, budget)`` names the bin holding ``lam*`` (``None``
   when the budget already covers every row's best model).
3. ``collect_bin`` on every batch returns that bin's exact breakpoints.
4. ``solve_lambda`` on the driver turns them into a :class:`BudgetPlan`
   (``lam*`` and the tie threshold).
5. ``assign`` each batch under the plan.

Skipping rows (``allow_skip``) adds, per row, a virtual option of cost 0 and
quality 0 whose choice is reported as -1. It changes the breakpoints, so every
batch must agree on it: decide it once from the merged summary of a pass with
``allow_skip=False`` (``summary.min_cost > budget`` means even the cheapest
models do not fit) and, only then, redo the passes with ``allow_skip=True``.
When the budget covers every row's cheapest model no row is ever skipped.

Row keys (ids; the row index in memory) order the tied rows and should be
unique. Prices are found in float32 when both matrices are float32 and in
float64 otherwise; costs are summed in float64. The budget holds up to the
rounding of those sums, and streamed and in-memory runs agree exactly unless
the budget lies within that rounding of a step of ``C(lam)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

NBINS = 1 << 16
_BIN_SHIFT = np.uint64(48)
_INF_BIN = int(np.array([np.inf]).view(np.uint64)[0] >> _BIN_SHIFT)
# Cells per block of the hull walk: small enough that a block's buffers stay
# in cache, large enough that the per-call overhead of numpy is noise.
_BLOCK_CELLS = 1 << 17
# Every breakpoint is at least this, so lam = 0 always means "best quality".
_SMALLEST_LAM = float(np.nextafter(0.0, 1.0))


class InfeasibleBudget(ValueError):
    """The budget cannot pay for even the cheapest model of every row."""

    def __init__(self, budget: float, minimum: float) -> None:
        self.budget = float(budget)
        self.minimum = float(minimum)
        super().__init__(
            f"budget {_format_amount(self.budget)} is below the cheapest assignment "
            f"({_format_amount(self.minimum, at_least=True)}); raise budget.total to at least "
            f"{_format_amount(self.minimum, at_least=True)} or allow skipping rows"
        )

    def __reduce__(self) -> tuple[Any, tuple[float, float]]:
        # Exceptions cross process boundaries (Ray) by pickling their init args.
        return (type(self), (self.budget, self.minimum))


@dataclass(frozen=True)
class BudgetSolution:
    """One model per row (-1: skipped or no model can take it) at price ``lam``."""

    choice: np.ndarray
    lam: float
    total_cost: float
    total_quality: float


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

    @classmethod
    def empty(cls, *, allow_skip: bool = False) -> BudgetSummary:
        return cls(
            base_cost=0.0,
            min_cost=0.0,
            hist=np.zeros(NBINS, dtype=np.float64),
            counts=np.zeros(NBINS, dtype=np.int64),
            n_rows=0,
            allow_skip=allow_skip,
        )

    def merge(self, other: BudgetSummary) -> BudgetSummary:
        if other.allow_skip != self.allow_skip:
            raise ValueError("cannot merge summaries computed with and without allow_skip")
        return BudgetSummary(
            base_cost=self.base_cost + other.base_cost,
            min_cost=self.min_cost + other.min_cost,
            hist=self.hist + other.hist,
            counts=self.counts + other.counts,
            n_rows=self.n_rows + other.n_rows,
            allow_skip=self.allow_skip,
        )


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


@dataclass(frozen=True)
class _Block:
    """The hull walk of one block of rows.

    ``steps`` holds, per hull step, the block-local rows that moved and their
    breakpoint price, cost drop and new column; a row's steps come in
    non-decreasing ``lam`` order. Column ``n_models`` is the skip option.
    """

    start: np.ndarray
    start_cost: np.ndarray
    min_cost: np.ndarray
    steps: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    n_models: int


def _as_matrices(quality: Any, cost: Any) -> tuple[np.ndarray, np.ndarray]:
    quality = np.asarray(quality)
    cost = np.asarray(cost)
    if quality.ndim != 2 or quality.shape != cost.shape:
        raise ValueError(
            f"quality and cost must be 2-D arrays of the same shape [rows, models]; "
            f"got {quality.shape} and {cost.shape}"
        )
    return quality, cost


def _check_budget(budget: float) -> float:
    budget = float(budget)
    if math.isnan(budget) or budget < 0:
        raise ValueError(f"budget must be a non-negative number (math.inf for none); got {budget}")
    return budget


def _as_keys(keys: Any, n_rows: int) -> np.ndarray:
    keys = np.asarray(keys)
    if keys.shape != (n_rows,):
        raise ValueError(f"keys must be a 1-D array with one key per row ({n_rows}); got shape {keys.shape}")
    return keys


def _format_amount(value: float, *, at_least: bool = False) -> str:
    text = f"{value:.6g}"
    # A rounded-down minimum would send the user to a budget that still fails.
    if at_least and float(text) < value:
        text = repr(value)
    return text


def _lam_bin(lam: np.ndarray) -> np.ndarray:
    return (np.ascontiguousarray(lam, dtype=np.float64).view(np.uint64) >> _BIN_SHIFT).astype(np.int64)


def _bin_top(bin: int) -> float:
    """The lowest price past a bin (inf for the last finite bin and beyond)."""
    if bin + 1 >= _INF_BIN:
        return math.inf
    return float((np.array([bin + 1], dtype=np.uint64) << _BIN_SHIFT).view(np.float64)[0])


class _Workspace:
    """Scratch buffers reused by every block of one walk.

    Blocks are stored model-major ([models, rows]) so that reductions over the
    models run as fast elementwise passes; reusing the buffers avoids the page
    faults that fresh block-sized temporaries cost on every step.
    """

    def __init__(self, width: int, block_rows: int, dtype: type) -> None:
        shape = (width, block_rows)
        self.width = width
        self.stride = block_rows
        self.quality = [np.empty(shape, dtype), np.empty(shape, dtype)]
        self.cost = [np.empty(shape, dtype), np.empty(shape, dtype)]
        self.flat_quality = [buffer.ravel() for buffer in self.quality]
        self.flat_cost = [buffer.ravel() for buffer in self.cost]
        self.offsets = np.arange(block_rows)
        self.ratio = np.empty(shape, dtype)
        self.loss = np.empty(shape, dtype)
        self.hit = np.empty(shape, bool)
        # Small unsigned sums count and locate the hits of each row cheaply.
        self.tally_dtype = np.uint8 if width < 1 << 8 else np.uint16 if width < 1 << 16 else np.uint32
        self.tally = np.empty(shape, self.tally_dtype)
        self.column = np.arange(width, dtype=self.tally_dtype)[:, None]


def _cheapest_hit(hit: np.ndarray, cost: np.ndarray, space: _Workspace) -> tuple[np.ndarray, np.ndarray]:
    """Per row (column of ``hit``): the number of hits and the cheapest hit's
    model, ties to the lower model index."""
    marks = hit.view(np.uint8)
    count = np.add.reduce(marks, axis=0, dtype=space.tally_dtype)
    tally = space.tally[:, : hit.shape[1]]
    np.multiply(marks, space.column, out=tally, casting="unsafe")
    # Exact wherever a row has a single hit; the rest are redone below.
    model = np.add.reduce(tally, axis=0, dtype=space.tally_dtype).astype(np.intp)
    several = np.flatnonzero(count > 1)
    if several.size:
        model[several] = np.where(hit[:, several], cost[:, several], np.inf).argmin(axis=0)
    return model, count


def _walk_block(quality: np.ndarray, cost: np.ndarray, allow_skip: bool, lam_limit: float, space: _Workspace) -> _Block:
    """Walk every row of a block down its hull, one vectorised step per hull point.

    Steps whose price exceeds ``lam_limit`` are neither taken nor reported.
    """
    n_rows, n_models = quality.shape
    width = space.width
    if width == 0:
        none = np.full(n_rows, -1, dtype=np.int64)
        return _Block(none, np.zeros(n_rows), np.full(n_rows, np.nan), [], n_models)
    qa = space.quality[0][:, :n_rows]
    ca = space.cost[0][:, :n_rows]
    qa[:n_models] = quality.T
    ca[:n_models] = cost.T
    if allow_skip:
        qa[n_models] = 0.0
        ca[n_models] = 0.0
    cols = np.arange(n_rows, dtype=np.int32)

    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if n_models:
            # A row sum is finite only if every cell is (or it overflowed, which
            # the masking also handles), so clean blocks skip the masking.
            check = qa[:n_models].sum(axis=0) + ca[:n_models].sum(axis=0)
            if not np.isfinite(check).all():
                # x - x is 0 for a finite x and NaN otherwise: this marks every
                # cell a model cannot take as NaN in both matrices, which every
                # fmax/fmin/== below passes over, with no masked (branchy) pass.
                unusable = np.subtract(qa[:n_models], qa[:n_models], out=space.ratio[:n_models, :n_rows])
                unusable += ca[:n_models]
                unusable -= ca[:n_models]
                qa[:n_models] += unusable
                ca[:n_models] += unusable
            cheapest = np.fmin.reduce(ca[:n_models], axis=0)
        else:
            cheapest = np.full(n_rows, np.nan, dtype=ca.dtype)
        min_cost = cheapest.astype(np.float64)

        best_quality = np.fmax.reduce(qa, axis=0)
        hit = np.equal(qa, best_quality, out=space.hit[:, :n_rows])
        start, _ = _cheapest_hit(hit, ca, space)
        takeable = ~np.isnan(best_quality)
        at = start * space.stride + cols
        cur_cost = space.flat_cost[0].take(at)
        cur_quality = np.where(takeable, space.flat_quality[0].take(at), np.nan)
        start_cost = np.where(takeable, cur_cost, 0.0).astype(np.float64)
        start = np.where(takeable, start, -1).astype(np.int64)
        floor_cost = np.fmin(cheapest, 0.0) if allow_skip else cheapest
        # NaN quality marks a row that has stopped walking: it poisons the row's
        # ratios and price, so the row never moves again and costs no masking pass.
        going = (floor_cost < cur_cost) & (lam_limit >= _SMALLEST_LAM)
        cur_quality[~going] = np.nan
        lam_prev = np.full(n_rows, _SMALLEST_LAM)

        steps = []
        qw, cw, side = qa, ca, 0
        while True:
            n_going = int(np.count_nonzero(going))
            if not n_going:
                break
            if n_going <= cols.size // 2:
                # Drop the stopped rows once they are the majority; until then
                # computing on them is cheaper than moving the others.
                keep = np.flatnonzero(going)
                side = 1 - side
                qw = np.compress(going, qw, axis=1, out=space.quality[side][:, :n_going])
                cw = np.compress(going, cw, axis=1, out=space.cost[side][:, :n_going])
                cols, cur_quality, cur_cost = cols[keep], cur_quality[keep], cur_cost[keep]
                lam_prev, floor_cost = lam_prev[keep], floor_cost[keep]
            w = cols.size
            # Per candidate: cost saved per unit of quality lost; the next hull
            # point maximises it. No cheaper point has a higher quality (the walk
            # keeps that true), so taking |loss| leaves the cheaper points' ratios
            # positive and sends every other point to <= 0, -inf or NaN, none of
            # which beats them: no masked pass needed.
            ratio = np.subtract(cur_cost, cw, out=space.ratio[:, :w])
            loss = np.subtract(cur_quality, qw, out=space.loss[:, :w])
            np.abs(loss, out=loss)
            np.divide(ratio, loss, out=ratio)
            best_ratio = np.fmax.reduce(ratio, axis=0)
            hit = np.equal(ratio, best_ratio, out=space.hit[:, :w])
            to, _ = _cheapest_hit(hit, cw, space)
            at = to * space.stride
            at += space.offsets[:w]
            new_cost = space.flat_cost[side].take(at)
            new_quality = space.flat_quality[side].take(at)
            lam = ((cur_quality - new_quality) / (cur_cost - new_cost)).astype(np.float64)
            # Rounding could put a later breakpoint a hair below an earlier one;
            # the clamp keeps each row's prices non-decreasing, which the
            # histogram, the tie rule and the replay in assign all rely on.
            lam = np.maximum(lam, lam_prev)
            taken = lam <= lam_limit  # False for the stopped rows' NaN
            steps.append(
                (
                    cols[taken],
                    lam[taken],
                    cur_cost[taken].astype(np.float64) - new_cost[taken],
                    to[taken].astype(np.int32),
                )
            )
            going = taken & (new_cost > floor_cost)
            cur_quality = np.where(going, new_quality, np.nan)
            cur_cost, lam_prev = new_cost, lam
    return _Block(start, start_cost, min_cost, steps, n_models)


def _walk(
    quality: np.ndarray, cost: np.ndarray, allow_skip: bool, lam_limit: float = math.inf
) -> Iterator[tuple[int, _Block]]:
    n_rows, n_models = quality.shape
    width = n_models + int(allow_skip)
    # float32 input is walked in float32 (twice the vector width); anything
    # else in float64. Cost drops and prices are always reported in float64.
    dtype = np.float32 if quality.dtype == np.float32 and cost.dtype == np.float32 else np.float64
    block_rows = max(64, _BLOCK_CELLS // max(width, 1))
    space = _Workspace(width, min(block_rows, max(n_rows, 1)), dtype)
    for lo in range(0, n_rows, block_rows):
        hi = lo + block_rows
        yield lo, _walk_block(quality[lo:hi], cost[lo:hi], allow_skip, lam_limit, space)


def _public_choice(choice: np.ndarray, n_models: int) -> np.ndarray:
    return np.where(choice >= n_models, -1, choice).astype(np.int64)


def row_breakpoints(
    quality: Any, cost: Any, *, allow_skip: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every row's hull walk: ``(start_choice, bp_row, bp_lam, bp_dcost, bp_to)``.

    ``start_choice`` is the choice at ``lam = 0`` (-1: no model can take the
    row). From price ``bp_lam[k]`` on, row ``bp_row[k]`` switches to column
    ``bp_to[k]`` (-1: skip) and its cost drops by ``bp_dcost[k] > 0``. A row's
    breakpoints appear in increasing ``lam`` order (equal only where rounding
    would otherwise have put a later one below an earlier one).
    """
    quality, cost = _as_matrices(quality, cost)
    starts, rows, lams, drops, tos = [], [], [], [], []
    n_models = quality.shape[1]
    for lo, block in _walk(quality, cost, allow_skip):
        starts.append(block.start)
        for step_rows, lam, drop, to in block.steps:
            rows.append(step_rows + lo)
            lams.append(lam)
            drops.append(drop)
            tos.append(to)

    def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

    return (
        _public_choice(cat(starts, np.int64), n_models),
        cat(rows, np.int64),
        cat(lams, np.float64),
        cat(drops, np.float64),
        _public_choice(cat(tos, np.int64), n_models),
    )


def _summarize_blocks(blocks: Iterable[_Block], allow_skip: bool) -> BudgetSummary:
    hist = np.zeros(NBINS, dtype=np.float64)
    counts = np.zeros(NBINS, dtype=np.int64)
    base_cost = min_cost = 0.0
    n_rows = 0
    pending_bins: list[np.ndarray] = []
    pending_drops: list[np.ndarray] = []
    pending = 0

    def flush() -> None:
        nonlocal pending
        if pending:
            bins = np.concatenate(pending_bins)
            hist[:] += np.bincount(bins, weights=np.concatenate(pending_drops), minlength=NBINS)
            counts[:] += np.bincount(bins, minlength=NBINS)
            pending_bins.clear()
            pending_drops.clear()
            pending = 0

    for block in blocks:
        base_cost += float(block.start_cost.sum())
        min_cost += float(block.min_cost[np.isfinite(block.min_cost)].sum())
        n_rows += block.start.size
        for _, lam, drop, _ in block.steps:
            pending_bins.append(_lam_bin(lam))
            pending_drops.append(drop)
            pending += lam.size
        # Histogram many blocks at once: a full-width bincount per block would
        # cost more than the blocks' breakpoints themselves.
        if pending >= 1 << 20:
            flush()
    flush()
    return BudgetSummary(base_cost, min_cost, hist, counts, n_rows, allow_skip)


def summarize(quality: Any, cost: Any, *, allow_skip: bool = False) -> BudgetSummary:
    """The batch's mergeable summary (see the module docstring for ``allow_skip``)."""
    quality, cost = _as_matrices(quality, cost)
    return _summarize_blocks((block for _, block in _walk(quality, cost, allow_skip)), allow_skip)


def _require_feasible(summary: BudgetSummary, budget: float) -> None:
    if not summary.allow_skip and budget < summary.min_cost:
        raise InfeasibleBudget(budget, summary.min_cost)


def critical_bin(summary: BudgetSummary, budget: float) -> int | None:
    """The bin holding ``lam*``, or None when ``lam* = 0`` (the best models fit)."""
    budget = _check_budget(budget)
    _require_feasible(summary, budget)
    if summary.base_cost <= budget or not summary.counts.any():
        return None
    after = summary.base_cost - np.cumsum(summary.hist)
    fits = np.flatnonzero(after <= budget)
    last_used = int(np.flatnonzero(summary.counts)[-1])
    # If rounding keeps even the cheapest plan a hair over budget, the last
    # breakpoint is still the right price: the cheapest plan is known to fit.
    return int(fits[0]) if fits.size and fits[0] <= last_used else last_used


def _collect_blocks(
    blocks: Iterator[tuple[int, _Block]], keys: np.ndarray, bin: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lams, drops, found = [], [], []
    for lo, block in blocks:
        for rows, lam, drop, _ in block.steps:
            inside = _lam_bin(lam) == bin
            if inside.any():
                lams.append(lam[inside])
                drops.append(drop[inside])
                found.append(keys[rows[inside] + lo])
    if not lams:
        return np.zeros(0), np.zeros(0), keys[:0]
    return np.concatenate(lams), np.concatenate(drops), np.concatenate(found)


def collect_bin(
    quality: Any, cost: Any, keys: Any, bin: int, *, allow_skip: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This batch's breakpoints in bin ``bin``: ``(lam, dcost, keys)``."""
    quality, cost = _as_matrices(quality, cost)
    keys = _as_keys(keys, quality.shape[0])
    # Rows never need to walk past the bin's upper edge.
    return _collect_blocks(_walk(quality, cost, allow_skip, _bin_top(bin)), keys, bin)


def solve_lambda(summary: BudgetSummary, budget: float, bin_lams: Any, bin_dcosts: Any, bin_keys: Any) -> BudgetPlan:
    """The exact ``lam*`` and tie threshold from the merged summary and the
    critical bin's breakpoints, ``collect_bin``'s output concatenated over
    every batch (empty when ``critical_bin`` is None).

    Keys should be unique; tied rows sharing a key are upgraded together or not at all.
    """
    budget = _check_budget(budget)
    bin = critical_bin(summary, budget)
    if bin is None:
        return BudgetPlan(lam=0.0, tie_key=None, predicted_cost=summary.base_cost)
    lams = np.asarray(bin_lams, dtype=np.float64)
    drops = np.asarray(bin_dcosts, dtype=np.float64)
    keys = np.asarray(bin_keys)
    if not lams.size:
        raise ValueError(f"no breakpoints were collected for the critical bin {bin}")
    # The same running sum critical_bin used, so both agree on the bin's start.
    cost_before_bin = summary.base_cost - (float(np.cumsum(summary.hist)[bin - 1]) if bin else 0.0)

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


def _assign_blocks(blocks: Iterator[tuple[int, _Block]], n_rows: int, plan: BudgetPlan, keys: np.ndarray) -> np.ndarray:
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
        choice[lo : lo + local.size] = _public_choice(local, block.n_models)
    return choice


def assign(quality: Any, cost: Any, plan: BudgetPlan, keys: Any, *, allow_skip: bool = False) -> np.ndarray:
    """Each row's model under ``plan`` (int64; -1: skipped or no model can take it)."""
    quality, cost = _as_matrices(quality, cost)
    keys = _as_keys(keys, quality.shape[0])
    return _assign_blocks(_walk(quality, cost, allow_skip, plan.lam), quality.shape[0], plan, keys)


def solve_budget(
    quality: Any,
    cost: Any,
    budget: float,
    *,
    caps: Any = None,
    allow_skip: bool = False,
    keys: Any = None,
) -> BudgetSolution:
    """Choose one model per row maximising total quality within ``budget``.

    ``keys`` (default: the row index) order the tied rows at ``lam*``; pass the
    row ids to get the same answer as the streamed form. With ``allow_skip``
    rows may be left out (-1), but only when the cheapest models do not fit.
    """
    if caps is not None:
        raise NotImplementedError("caps (per-model limits) are not supported by solve_budget yet")
    quality, cost = _as_matrices(quality, cost)
    budget = _check_budget(budget)
    n_rows = quality.shape[0]
    keys = np.arange(n_rows) if keys is None else _as_keys(keys, n_rows)

    if budget == math.inf:
        # lam* = 0: every row keeps its best model, so no walk past the start.
        plan = BudgetPlan(lam=0.0, tie_key=None, predicted_cost=math.nan)
        return _solution(quality, cost, _assign_blocks(_walk(quality, cost, False, 0.0), n_rows, plan, keys), plan)

    # One walk serves the summary, the critical bin and the assignment.
    blocks = list(_walk(quality, cost, False))
    summary = _summarize_blocks((block for _, block in blocks), False)
    if budget < summary.min_cost:
        if not allow_skip:
            raise InfeasibleBudget(budget, summary.min_cost)
        blocks = list(_walk(quality, cost, True))
        summary = _summarize_blocks((block for _, block in blocks), True)
    bin = critical_bin(summary, budget)
    if bin is None:
        plan = solve_lambda(summary, budget, [], [], keys[:0])
    else:
        plan = solve_lambda(summary, budget, *_collect_blocks(iter(blocks), keys, bin))
    return _solution(quality, cost, _assign_blocks(iter(blocks), n_rows, plan, keys), plan)


def _solution(quality: np.ndarray, cost: np.ndarray, choice: np.ndarray, plan: BudgetPlan) -> BudgetSolution:
    rows = np.flatnonzero(choice >= 0)
    return BudgetSolution(
        choice=choice,
        lam=plan.lam,
        total_cost=float(cost[rows, choice[rows]].sum(dtype=np.float64)),
        total_quality=float(quality[rows, choice[rows]].sum(dtype=np.float64)),
    )
