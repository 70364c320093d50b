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

Price windows. Most rows never move near ``lam*``: ``price_window`` places a
window ``(lo, hi]`` around it from a sample of rows, and the passes take
``window=``: one argmax at each end finds the rows whose choice changes inside
(``window_choices``), and only those walk. A windowed summary can also keep
the window's breakpoints (``keys=``), which removes the ``collect_bin`` pass.
``critical_bin`` raises :class:`PriceWindowMissed` if ``lam*`` is not in the
window (the sample misled): then run the passes without one. The answer is the
same with or without a window, unless a row's breakpoint lies within rounding
of an end of the window (the ends sit between the sample's breakpoints). In
memory, ``solve_budget`` does all this on one batch for inputs of at least
``_BRACKET_MIN_ROWS`` rows (a strided sample; if the window misses it walks
every row), so it costs about three argmax passes.

Caps (``ModelCap``: at most so many rows, or so much spend, on one model) are
solved by Lagrangian relaxation too: one price per capped limit, charged on the
capped model's cells (per row, or per unit of its cost), found by coordinate
descent on the dual (per price, the smallest at which its limit holds, by
bisection; the budget's price solved exactly inside each try, by the machinery
above), until a sweep leaves the assignment unchanged. Then a repair moves
rows off any model still over its cap, least reduced value lost first (ties
by key), to the best option that fits the budget and the other caps (where no
single move fits, a pair: a row to a full model and one of its rows elsewhere,
which undoes the stalls coordinate descent meets at ties); and, when
a cap bound, a fill spends what is left on better models in the same order.
What holds:

- always: the budget and every cap hold (up to the rounding of sums), or
  ``InfeasibleCaps`` / ``InfeasibleBudget`` is raised; the same input gives the
  same output; caps that never bind give exactly the uncapped answer;
- always: ``BudgetSolution.bound`` is the Lagrangian dual value at the prices
  found, so no assignment within the budget and caps beats it (nor does the LP
  relaxation): ``bound - total_quality`` is a certificate of the gap;
- tested, not proved: within ``K + 1`` rows' quality range of the LP optimum
  (``K`` capped limits; an LP basic optimum has at most ``K + 1`` split rows),
  against scipy's MILP on medium instances and brute force on small ones.
  ``InfeasibleCaps`` can, in principle, be raised for a feasible instance: with
  spend caps or groups, feasibility alone is a knapsack problem (NP-hard).
- not promised: monotonicity in the budget.

``solve_capped`` / ``assign_capped`` are the streamed form: a driver loop over
a re-readable source of batches, each price tried costing up to three passes
(summarize, collect_bin, assign) and each repair or fill round one pass; the
driver holds histograms and one round's candidate rows.

Group routing (``solve_budget_groups``): one model per group (a task, a source
file), with a group's quality and cost the sums over its rows; the same solver
runs over groups, with group keys as tie keys.

Row keys (ids; the row index in memory) order the tied rows and should be
unique. Prices are found in float32 when both matrices are float32 and in
float64 otherwise; costs are summed in float64. The budget holds up to the
rounding of those sums, and streamed and in-memory runs agree exactly unless
the budget lies within that rounding of a step of ``C(lam)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

NBINS = 1 << 16
# Breakpoints a merged windowed summary keeps (24 bytes and a key each) before it drops them.
KEEP_BREAKPOINTS = 1 << 20
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
    bound: float = math.nan
    """An upper bound on the optimum (the Lagrangian dual value at the prices
    found): no assignment within the budget and caps, over the same options
    (skip included wherever rows may be skipped), has a higher total quality.
    ``bound - total_quality`` is how much this answer can be short of optimal."""
    cap_prices: tuple[float, ...] = ()
    """With caps: the price per capped limit (in the order of ``cap_limits``)."""
    cap_limits: tuple[CapLimit, ...] = ()


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
            drops = np.concatenate(pending_drops)
            if bins.size < NBINS // 16:
                # Few breakpoints: the same per-bin sums (in the same order) over the used bins only.
                used, at = np.unique(bins, return_inverse=True)
                hist[used] += np.bincount(at, weights=drops, minlength=used.size)
                counts[used] += np.bincount(at, minlength=used.size)
            else:
                hist[:] += np.bincount(bins, weights=drops, minlength=NBINS)
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


def summarize(
    quality: Any,
    cost: Any,
    *,
    allow_skip: bool = False,
    window: PriceWindow | None = None,
    keys: Any = None,
    choices: Any = None,
) -> BudgetSummary:
    """The batch's mergeable summary (see the module docstring for ``allow_skip`` and
    ``window``). With a window, ``keys`` makes it keep the window's breakpoints, and
    ``choices`` (:func:`window_choices`' output, if already at hand) spares a pass."""
    quality, cost = _as_matrices(quality, cost)
    if window is not None:
        _check_window(window, allow_skip)
        rows = _window_rows(quality, cost, window, window.hi, choices)
        keys = None if keys is None else _as_keys(keys, quality.shape[0])
        return _window_summary(rows, _settled_totals(quality, cost, rows.choice)[0], window, keys)
    return _summarize_blocks((block for _, block in _walk(quality, cost, allow_skip)), allow_skip)


@dataclass(frozen=True)
class Hulls:
    """Every row's hull walk (``allow_skip=False``) kept, so that later passes over the same
    rows read it instead of walking again: row ``i``'s entries are ``offsets[i]:offsets[i + 1]``.
    The first is ``(0, its best model)``; each next ``(lam, model)`` is the model the row takes
    from price ``lam`` on. Prices are non-decreasing along a row; a row no model can take has
    no entry. :func:`assign_hulls` and :func:`collect_hulls` give exactly what :func:`assign`
    and :func:`collect_bin` give on the rows the hulls were walked on."""

    offsets: np.ndarray  # int64 [N + 1]
    lam: np.ndarray  # float64 [entries]
    model: np.ndarray  # int16 [entries]


def _hulls_of(blocks: Sequence[tuple[int, _Block]], n_rows: int) -> Hulls:
    # A row in a walk's step s was in every step before it (a row that stops never walks again),
    # so its entries are its start and then steps 0, 1, ... in order: entry 1 + s of the row.
    counts = np.zeros(n_rows, np.int64)
    for lo, block in blocks:
        part = counts[lo : lo + block.start.size]
        part += block.start >= 0
        for rows, *_ in block.steps:
            part[rows] += 1
    offsets = np.zeros(n_rows + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    lam = np.zeros(int(offsets[-1]))
    model = np.empty(lam.size, np.int16)
    for lo, block in blocks:
        first = offsets[lo : lo + block.start.size]
        has = np.flatnonzero(block.start >= 0)
        model[first[has]] = block.start[has]  # its lam stays 0
        for step, (rows, step_lam, _, to) in enumerate(block.steps):
            at = first[rows] + 1 + step
            lam[at] = step_lam
            model[at] = to
    return Hulls(offsets, lam, model)


def summarize_hulls(quality: Any, cost: Any) -> tuple[BudgetSummary, Hulls]:
    """:func:`summarize` (``allow_skip=False``), and the rows' hulls from the same walk."""
    quality, cost = _as_matrices(quality, cost)
    blocks = list(_walk(quality, cost, False))
    return _summarize_blocks((block for _, block in blocks), False), _hulls_of(blocks, quality.shape[0])


def _entry_rows(hulls: Hulls, entries: np.ndarray) -> np.ndarray:
    return np.searchsorted(hulls.offsets, entries, side="right") - 1


def assign_hulls(hulls: Hulls, plan: BudgetPlan, keys: Callable[[np.ndarray], Any]) -> np.ndarray:
    """:func:`assign` (``allow_skip=False``) read from the rows' hulls: no walk. ``keys(rows)``
    gives the keys of the rows asked for; it is called only for rows tied at ``plan.lam``."""
    offsets, lam = hulls.offsets, hulls.lam
    first, ends = offsets[:-1], offsets[1:]
    if not lam.size:
        return np.full(first.size, -1, np.int64)
    # Entries the row passes at the plan's price form a prefix of its entries: its start, every
    # price below lam, and one at lam unless the tie rule keeps the row's choice from below it.
    take = lam < plan.lam
    take[first[ends > first]] = True
    if plan.lam > 0:
        tied = np.flatnonzero(lam == plan.lam)
        if tied.size:
            moves = np.ones(tied.size, bool)
            if plan.tie_key is not None:
                moves = ~(np.asarray(keys(_entry_rows(hulls, tied))) <= plan.tie_key)
            take[tied[moves]] = True
    passed = np.zeros(lam.size + 1, np.int64)
    np.cumsum(take, out=passed[1:])
    last = first + (passed[ends] - passed[first]) - 1
    return np.where(last >= first, hulls.model.take(np.maximum(last, 0), mode="clip"), -1).astype(np.int64)


def collect_hulls(
    hulls: Hulls, cost: np.ndarray, keys: Callable[[np.ndarray], Any], bin: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`collect_bin` (``allow_skip=False``) read from the rows' hulls and the cost matrix
    they were walked on: no walk."""
    offsets, lam = hulls.offsets, hulls.lam
    inside = np.flatnonzero(_lam_bin(lam) == bin)
    inside = inside[lam[inside] > 0]  # a row's start is not a breakpoint
    rows = _entry_rows(hulls, inside)
    width = cost.shape[1]
    flat = np.ascontiguousarray(cost).ravel()
    # The walk's drop: the cost of the model left minus that of the model taken, in float64.
    left = flat.take(rows * width + hulls.model[inside - 1]).astype(np.float64)
    dcost = left - flat.take(rows * width + hulls.model[inside]).astype(np.float64)
    return lam[inside], dcost, np.asarray(keys(rows))


def _require_feasible(summary: BudgetSummary, budget: float) -> None:
    if summary.window is not None:
        if not summary.min_cost <= budget < summary.base_cost:
            raise PriceWindowMissed(summary.window, budget, summary.base_cost, summary.min_cost)
    elif not summary.allow_skip and budget < summary.min_cost:
        raise InfeasibleBudget(budget, summary.min_cost)


def critical_bin(summary: BudgetSummary, budget: float) -> int | None:
    """The bin holding ``lam*``, or None when ``lam* = 0`` (the best models fit)."""
    budget = _check_budget(budget)
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
    quality: Any, cost: Any, keys: Any, bin: int, *, allow_skip: bool = False, window: PriceWindow | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This batch's breakpoints in bin ``bin``: ``(lam, dcost, keys)``."""
    quality, cost = _as_matrices(quality, cost)
    keys = _as_keys(keys, quality.shape[0])
    if window is not None:
        _check_window(window, allow_skip)
        rows = _window_rows(quality, cost, window, min(_bin_top(bin), window.hi))
        return _collect_window(rows, keys, bin, window)
    # Rows never need to walk past the bin's upper edge.
    return _collect_blocks(_walk(quality, cost, allow_skip, _bin_top(bin)), keys, bin)


def solve_lambda(
    summary: BudgetSummary, budget: float, bin_lams: Any = None, bin_dcosts: Any = None, bin_keys: Any = None
) -> BudgetPlan:
    """The exact ``lam*`` and tie threshold from the merged summary and the
    critical bin's breakpoints, ``collect_bin``'s output concatenated over
    every batch (empty when ``critical_bin`` is None). A windowed summary that
    kept its breakpoints needs none: leave them out.

    Keys should be unique; tied rows sharing a key are upgraded together or not at all.
    """
    budget = _check_budget(budget)
    bin = critical_bin(summary, budget)
    if bin is None:
        return BudgetPlan(lam=0.0, tie_key=None, predicted_cost=summary.base_cost)
    if bin_lams is None:
        if summary.breakpoints is None:
            raise ValueError("this summary kept no breakpoints: pass collect_bin's output for the critical bin")
        lam, drop, keys = summary.breakpoints
        inside = _lam_bin(lam) == bin
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
    quality, cost = _as_matrices(quality, cost)
    keys = _as_keys(keys, quality.shape[0])
    if window is not None:
        _check_window(window, allow_skip)
        if not window.lo < plan.lam <= window.hi:
            raise ValueError(f"the plan's price {plan.lam} is outside {window}: assign without the window")
        return _assign_window(_window_rows(quality, cost, window, plan.lam, choices), plan, keys)
    return _assign_blocks(_walk(quality, cost, allow_skip, plan.lam), quality.shape[0], plan, keys)


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
    or one ``ModelCap | None`` per column. See "Caps" in the module docstring
    for the method and what it guarantees.
    """
    quality, cost = _as_matrices(quality, cost)
    budget = _check_budget(budget)
    n_rows = quality.shape[0]
    keys = np.arange(n_rows) if keys is None else _as_keys(keys, n_rows)
    limits = _cap_limits(caps, quality.shape[1])
    if limits:
        return _solve_capped_in_memory(quality, cost, keys, None, budget, limits, allow_skip)

    if budget == math.inf:
        # lam* = 0: every row keeps its best model, so no walk past the start.
        plan = BudgetPlan(lam=0.0, tie_key=None, predicted_cost=math.nan)
        choice = _assign_blocks(_walk(quality, cost, False, 0.0), n_rows, plan, keys)
        return _solution(quality, cost, choice, plan, budget)
    if n_rows >= _BRACKET_MIN_ROWS:
        bracketed = _solve_bracketed(quality, cost, budget, keys)
        if bracketed is not None:
            return bracketed
    return _solve_walked(quality, cost, budget, keys, allow_skip)


def _solve_walked(
    quality: np.ndarray, cost: np.ndarray, budget: float, keys: np.ndarray, allow_skip: bool
) -> BudgetSolution:
    """The streamed passes on one batch: every row walks its whole hull."""
    n_rows = quality.shape[0]
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
    return _solution(quality, cost, _assign_blocks(iter(blocks), n_rows, plan, keys), plan, budget)


def _solution(
    quality: np.ndarray, cost: np.ndarray, choice: np.ndarray, plan: BudgetPlan, budget: float
) -> BudgetSolution:
    rows = np.flatnonzero(choice >= 0)
    total_cost = float(cost[rows, choice[rows]].sum(dtype=np.float64))
    total_quality = float(quality[rows, choice[rows]].sum(dtype=np.float64))
    # Every row is at its best for Q - lam*C, so this is the Lagrangian dual value.
    bound = total_quality if plan.lam == 0 else total_quality + plan.lam * (budget - total_cost)
    return BudgetSolution(choice=choice, lam=plan.lam, total_cost=total_cost, total_quality=total_quality, bound=bound)


# ---------------------------------------------------------------- caps


@dataclass(frozen=True)
class ModelCap:
    """Limits on what one model may take; leave a field None for no limit on it."""

    max_rows: int | None = None
    """At most this many rows (with group routing still rows, not groups), e.g.
    what a rate-limited API or a model on one GPU can serve in the job's window."""
    max_cost: float | None = None
    """At most this much spend on the model, in the cost matrix's unit, e.g. a
    provider's prepaid allowance within the overall budget."""

    def __post_init__(self) -> None:
        if self.max_rows is None and self.max_cost is None:
            raise ValueError("ModelCap needs max_rows or max_cost (or both); leave the model out of caps to not cap it")
        rows = self.max_rows
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 0):
            raise ValueError(f"ModelCap.max_rows must be a non-negative integer (or None); got {rows!r}")
        if self.max_cost is not None:
            try:
                spend = float(self.max_cost)
            except (TypeError, ValueError):
                spend = math.nan
            if math.isnan(spend) or spend < 0:
                raise ValueError(f"ModelCap.max_cost must be a non-negative number (or None); got {self.max_cost!r}")


Caps = Mapping[int, ModelCap] | Sequence[ModelCap | None] | None


@dataclass(frozen=True)
class CapLimit:
    """One capped limit: model ``col`` takes at most ``limit`` rows (or spends at most ``limit``)."""

    col: int
    on_cost: bool
    limit: float

    def describe(self) -> str:
        return f"model {self.col}'s cap of {_format_amount(self.limit)} {'spend' if self.on_cost else 'rows'}"


class InfeasibleCaps(ValueError):
    """No assignment was found that serves every row within the caps and the budget."""

    def __init__(self, limit: CapLimit, usage: float) -> None:
        self.limit = limit
        self.usage = float(usage)
        super().__init__(
            f"{limit.describe()} cannot be met while serving every row within the budget (it still has "
            f"{_format_amount(self.usage)} after moving every row that could go elsewhere); raise that cap or "
            f"the budget, or allow skipping rows"
        )

    def __reduce__(self) -> tuple[Any, tuple[CapLimit, float]]:
        return (type(self), (self.limit, self.usage))


def _cap_limits(caps: Caps, n_models: int) -> tuple[CapLimit, ...]:
    if caps is None:
        return ()
    if isinstance(caps, Mapping):
        items = list(caps.items())
    elif isinstance(caps, Sequence) and not isinstance(caps, (str, bytes)):
        if len(caps) != n_models:
            raise ValueError(f"caps as a sequence needs one ModelCap or None per model ({n_models}); got {len(caps)}")
        items = list(enumerate(caps))
    else:
        raise TypeError(
            f"caps must map model columns to ModelCap, or list one ModelCap or None per model; got {caps!r}"
        )
    limits = []
    for col, cap in items:
        if cap is None:
            continue
        if not isinstance(cap, ModelCap):
            raise TypeError(f"caps[{col!r}] must be a ModelCap(max_rows=..., max_cost=...); got {cap!r}")
        if isinstance(col, bool) or not isinstance(col, (int, np.integer)) or not 0 <= col < n_models:
            raise ValueError(f"caps key {col!r} is not a model column (0..{n_models - 1})")
        if cap.max_rows is not None:
            limits.append(CapLimit(int(col), False, float(cap.max_rows)))
        if cap.max_cost is not None and float(cap.max_cost) != math.inf:
            limits.append(CapLimit(int(col), True, float(cap.max_cost)))
    return tuple(sorted(limits, key=lambda lim: (lim.col, lim.on_cost)))


def _priced_quality(
    quality: np.ndarray, cost: np.ndarray, weights: np.ndarray | None, limits: Sequence[CapLimit], prices: np.ndarray
) -> np.ndarray:
    """Quality less each capped limit's price times the row's use of it."""
    if not np.any(prices):
        # Unpriced caps leave the plain problem, walked exactly as without caps.
        return quality
    priced = np.array(quality, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        for lim, price in zip(limits, prices, strict=True):
            if not price:
                continue
            if lim.on_cost:
                priced[:, lim.col] -= price * cost[:, lim.col].astype(np.float64)
            elif weights is None:
                priced[:, lim.col] -= price
            else:
                priced[:, lim.col] -= price * weights
    return priced


def _usage(
    cost: np.ndarray, weights: np.ndarray | None, choice: np.ndarray, limits: Sequence[CapLimit]
) -> np.ndarray:
    out = np.zeros(len(limits))
    for k, lim in enumerate(limits):
        on = choice == lim.col
        if lim.on_cost:
            out[k] = cost[on, lim.col].sum(dtype=np.float64)
        else:
            out[k] = np.count_nonzero(on) if weights is None else weights[on].sum(dtype=np.float64)
    return out


def _reduced_values(
    quality: np.ndarray,
    cost: np.ndarray,
    weights: np.ndarray | None,
    limits: Sequence[CapLimit],
    prices: np.ndarray,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: usable, and Q - lam*C - the caps' prices (-inf where unusable)."""
    with np.errstate(invalid="ignore", over="ignore"):
        usable = np.isfinite(quality) & np.isfinite(cost)
        value = _priced_quality(quality, cost, weights, limits, prices).astype(np.float64, copy=True)
        if lam:
            value -= lam * cost
        value[~usable] = -np.inf
    return usable, value


@dataclass
class _Batch:
    start: int
    quality: np.ndarray
    cost: np.ndarray
    keys: np.ndarray
    weights: np.ndarray | None


@dataclass
class _Eval:
    """The plain solve at one set of cap prices."""

    prices: np.ndarray
    lam: float
    plan: BudgetPlan | None
    usage: np.ndarray
    spent: float = 0.0
    quality: float = 0.0
    choice: np.ndarray | None = None  # in memory only


class _InMemory:
    """The rows as one batch, held by the caller; each price is one plain in-memory solve."""

    def __init__(self, quality: np.ndarray, cost: np.ndarray, keys: np.ndarray, weights: np.ndarray | None):
        self.batch = _Batch(0, quality, cost, keys, weights)

    def batches(self) -> Iterator[_Batch]:
        yield self.batch

    def evaluate(self, limits: Sequence[CapLimit], prices: np.ndarray, budget: float, skip: bool) -> _Eval:
        b = self.batch
        priced = _priced_quality(b.quality, b.cost, b.weights, limits, prices)
        sol = solve_budget(priced, b.cost, budget, keys=b.keys, allow_skip=skip)
        usage = _usage(b.cost, b.weights, sol.choice, limits)
        served = np.flatnonzero(sol.choice >= 0)
        quality = float(b.quality[served, sol.choice[served]].sum(dtype=np.float64))
        return _Eval(prices, sol.lam, None, usage, sol.total_cost, quality, sol.choice)

    def choices(self, ev: _Eval, limits: Sequence[CapLimit], skip: bool) -> Iterator[tuple[_Batch, np.ndarray]]:
        assert ev.choice is not None
        yield self.batch, ev.choice.copy()


class _Streamed:
    """Rows read in batches from a callable, once per pass; only summaries and
    a few candidate rows are kept."""

    def __init__(self, read: Callable[[], Iterable[tuple[Any, Any, Any]]]):
        self.read = read
        self.passes = 0

    def batches(self) -> Iterator[_Batch]:
        self.passes += 1
        start = 0
        for quality, cost, keys in self.read():
            quality, cost = _as_matrices(quality, cost)
            yield _Batch(start, quality, cost, _as_keys(keys, quality.shape[0]), None)
            start += quality.shape[0]

    def evaluate(self, limits: Sequence[CapLimit], prices: np.ndarray, budget: float, skip: bool) -> _Eval:
        def priced(b: _Batch) -> np.ndarray:
            return _priced_quality(b.quality, b.cost, b.weights, limits, prices)

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
        ev = _Eval(prices, plan.lam, plan, np.zeros(len(limits)))
        for b, choice in self.choices(ev, limits, skip):
            ev.usage += _usage(b.cost, b.weights, choice, limits)
            served = np.flatnonzero(choice >= 0)
            ev.spent += float(b.cost[served, choice[served]].sum(dtype=np.float64))
            ev.quality += float(b.quality[served, choice[served]].sum(dtype=np.float64))
        return ev

    def choices(self, ev: _Eval, limits: Sequence[CapLimit], skip: bool) -> Iterator[tuple[_Batch, np.ndarray]]:
        assert ev.plan is not None
        for b in self.batches():
            priced = _priced_quality(b.quality, b.cost, b.weights, limits, ev.prices)
            yield b, assign(priced, b.cost, ev.plan, b.keys, allow_skip=skip)


# The price search stops when a price is known to about 1e-9 of itself (2^22
# ulps); a warm search first steps 2^24 ulps, then 16 times further each time.
_PRICE_TOL_BITS = 1 << 22
_FIRST_STEP_BITS = 1 << 24
_COLD_STEP_BITS = 1 << 52  # a factor of 2
_MAX_PRICE = 1e250
_MAX_SWEEPS = 30
_FILL_ROUNDS = 16
# Rows tried on each side of a two-move repair.
_CHAIN_TRIES = 32


def _bits(value: float) -> int:
    return int(np.array([value], dtype=np.float64).view(np.int64)[0])


def _from_bits(bits: int) -> float:
    return float(np.array([bits], dtype=np.int64).view(np.float64)[0])


class _PriceSearch:
    """Coordinate descent on the Lagrangian dual over the caps' prices, with
    the budget's price solved exactly inside every evaluation."""

    def __init__(self, source: Any, limits: Sequence[CapLimit], budget: float, skip: bool):
        self.source, self.limits, self.budget, self.skip = source, limits, budget, skip
        self.cache: dict[bytes, _Eval] = {}
        self.evaluations = 0

    def at(self, prices: np.ndarray) -> _Eval:
        key = prices.tobytes()
        if key not in self.cache:
            self.evaluations += 1
            self.cache[key] = self.source.evaluate(self.limits, prices.copy(), self.budget, self.skip)
        return self.cache[key]

    def run(self) -> _Eval:
        current = self.at(np.zeros(len(self.limits)))
        for _ in range(_MAX_SWEEPS):
            before = current
            for k in range(len(self.limits)):
                current = self.line_search(current, k)
            # Prices may still creep along a flat valley of the dual, but once a
            # sweep leaves the assignment's totals as they were, nothing more is won.
            if current is before or (
                np.array_equal(current.usage, before.usage)
                and current.spent == before.spent
                and current.quality == before.quality
            ):
                break
        return current

    def line_search(self, current: _Eval, k: int) -> _Eval:
        """The smallest price of limit ``k`` (others fixed) at which it holds: where
        the dual's slope in that price turns non-negative, i.e. its minimum."""
        limit = self.limits[k].limit

        def at(bits: int) -> _Eval:
            prices = current.prices.copy()
            prices[k] = _from_bits(bits)
            return self.at(prices)

        def fits(ev: _Eval) -> bool:
            return bool(ev.usage[k] <= limit)

        start = _bits(current.prices[k])
        if fits(current):
            if start == 0:
                return current
            hi, hi_ev, step = start, current, _FIRST_STEP_BITS
            while True:
                lo = max(hi - step, 0)
                ev = at(lo)
                if not fits(ev):
                    break
                hi, hi_ev, step = lo, ev, step << 4
                if lo == 0:
                    return ev
        else:
            lo, step = start, _FIRST_STEP_BITS
            if start == 0:
                lo, step = _bits(1.0), _COLD_STEP_BITS
                ev = at(lo)
                if fits(ev):
                    lo, hi, hi_ev = 0, lo, ev
            if lo:
                top = _bits(_MAX_PRICE)
                while True:
                    hi = min(lo + step, top)
                    hi_ev = at(hi)
                    if fits(hi_ev):
                        break
                    if hi == top:
                        # Pricing cannot meet this cap (rows with nowhere else to go): the repair will.
                        return hi_ev
                    lo, step = hi, step << 4
        while hi - lo > _PRICE_TOL_BITS and hi_ev.usage[k] != limit:
            mid = (lo + hi) // 2
            ev = at(mid)
            if fits(ev):
                hi, hi_ev = mid, ev
            else:
                lo = mid
        return hi_ev


@dataclass
class _Moves:
    """Rows moved off their Lagrangian choice by the repair and the fill, by
    position in the batches' order (applied on top of each pass's assignment)."""

    positions: list[np.ndarray]
    keys: list[np.ndarray]
    to: list[np.ndarray]

    def apply(self, batch: _Batch, choice: np.ndarray) -> np.ndarray:
        n = choice.size
        for positions, to in zip(self.positions, self.to, strict=True):
            local = positions - batch.start
            inside = (local >= 0) & (local < n)
            choice[local[inside]] = to[inside]
        return choice

    def final(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(positions, keys, to), the last move of each row, ordered by position."""
        if not self.positions:
            return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
        positions = np.concatenate(self.positions)
        keys = np.concatenate(self.keys)
        to = np.concatenate(self.to)
        order = np.argsort(positions, kind="stable")
        positions, keys, to = positions[order], keys[order], to[order]
        last = np.r_[positions[1:] != positions[:-1], True]
        return positions[last], keys[last], to[last]


@dataclass
class _Candidates:
    positions: np.ndarray
    keys: np.ndarray
    to: np.ndarray
    loss: np.ndarray
    gain: np.ndarray
    deltas: np.ndarray  # [candidates, 1 + limits]: cost, then each limit's use


def _best_moves(
    b: _Batch,
    choice: np.ndarray,
    limits: Sequence[CapLimit],
    prices: np.ndarray,
    lam: float,
    room: np.ndarray,
    slack: float,
    allow_skip: bool,
    off: CapLimit | None,
    loose: bool = False,
) -> _Candidates:
    """Each row's best single move that fits the current slack of the budget
    and of every cap (``loose``: whether or not it fits): off the model of
    ``off`` (repair), else to a model of strictly higher quality (fill). Best
    means highest reduced value, ties to the lower cost, then the lower column;
    skipping is the last column."""
    n, m = b.quality.shape
    usable, value = _reduced_values(b.quality, b.cost, b.weights, limits, prices, lam)
    weights = np.ones(n) if b.weights is None else b.weights
    rows = np.arange(n)
    on = choice >= 0
    here = np.where(on, choice, 0)
    cur_cost = np.where(on, b.cost[rows, here], 0.0).astype(np.float64)
    cur_quality = np.where(on, b.quality[rows, here], 0.0).astype(np.float64)
    cur_value = np.where(on, value[rows, here], 0.0)
    if off is not None:
        mine = choice == off.col
        if off.on_cost:
            mine &= cur_cost > 0
        allowed = usable & mine[:, None]
        allowed[:, off.col] = False
    else:
        # Rows a model can take but none does are skipped: any better model may take them.
        allowed = usable & (b.quality > cur_quality[:, None]) & (on | allow_skip)[:, None]
        allowed[rows[on], choice[on]] = False
    with np.errstate(invalid="ignore"):
        allowed &= ((b.cost - cur_cost[:, None]) <= slack) | loose
        for lim, left in zip(limits, room if not loose else np.full(len(limits), np.inf), strict=True):
            need = b.cost[:, lim.col] if lim.on_cost else weights
            allowed[:, lim.col] &= need <= left
    cand_value = np.where(allowed, value, -np.inf)
    best = cand_value.max(axis=1) if m else np.full(n, -np.inf)
    hit = allowed & (cand_value == best[:, None])
    to = np.where(hit, b.cost, np.inf).argmin(axis=1) if m else np.zeros(n, np.intp)
    has = hit.any(axis=1) if m else np.zeros(n, bool)
    if off is not None and allow_skip:
        # Skipping costs nothing and uses no cap; it wins unless a model is worth more.
        skip = mine & (~has | (best < 0))
        to = np.where(skip, -1, to)
        best = np.where(skip, 0.0, best)
        has |= skip
    picked = np.flatnonzero(has)
    to = to[picked].astype(np.int64)
    dest = np.maximum(to, 0)
    new_cost = np.where(to >= 0, b.cost[picked, dest], 0.0).astype(np.float64)
    new_quality = np.where(to >= 0, b.quality[picked, dest], 0.0).astype(np.float64)
    deltas = np.zeros((picked.size, 1 + len(limits)))
    deltas[:, 0] = new_cost - cur_cost[picked]
    was = choice[picked]
    for k, lim in enumerate(limits):
        use_col = b.cost[picked, lim.col].astype(np.float64) if lim.on_cost else weights[picked]
        deltas[:, 1 + k] = np.where(to == lim.col, use_col, 0.0) - np.where(was == lim.col, use_col, 0.0)
    return _Candidates(
        positions=picked + b.start,
        keys=b.keys[picked],
        to=to,
        loss=cur_value[picked] - best[picked],
        gain=new_quality - cur_quality[picked],
        deltas=deltas,
    )


def _gather(parts: list[_Candidates]) -> _Candidates:
    order_parts = [p for p in parts if p.positions.size] or parts[:1]
    if not order_parts:
        none = np.zeros(0)
        return _Candidates(none.astype(np.int64), none, none.astype(np.int64), none, none, np.zeros((0, 1)))
    cands = _Candidates(
        positions=np.concatenate([p.positions for p in order_parts]),
        keys=np.concatenate([p.keys for p in order_parts]),
        to=np.concatenate([p.to for p in order_parts]),
        loss=np.concatenate([p.loss for p in order_parts]),
        gain=np.concatenate([p.gain for p in order_parts]),
        deltas=np.concatenate([p.deltas for p in order_parts]),
    )
    # Cheapest in reduced value first (rows tied at the prices come first), then by key.
    order = np.lexsort((cands.positions, cands.keys, cands.loss))
    return _Candidates(*(getattr(cands, name)[order] for name in ("positions", "keys", "to", "loss", "gain", "deltas")))


def _fitting_prefix(deltas: np.ndarray, room: np.ndarray, checked: np.ndarray) -> int:
    """The longest prefix of moves whose running use of every checked resource stays within its room."""
    if not deltas.shape[0]:
        return 0
    running = np.cumsum(deltas[:, checked], axis=0)
    bad = (running > room[checked]).any(axis=1)
    return int(np.argmax(bad)) if bad.any() else deltas.shape[0]


def _solve_capped(
    source: Any, limits: tuple[CapLimit, ...], budget: float, allow_skip: bool
) -> tuple[_Eval, _Moves, bool, dict[str, float]]:
    """The price search, then the repair and the fill (see "Caps" in the module docstring)."""
    summary = BudgetSummary.empty()
    for b in source.batches():
        summary = summary.merge(summarize(b.quality, b.cost))
    if budget < summary.min_cost and not allow_skip:
        raise InfeasibleBudget(budget, summary.min_cost)
    skip = budget < summary.min_cost
    search = _PriceSearch(source, limits, budget, skip)
    ev = search.run()
    moves = _Moves([], [], [])
    spent, usage = _spent_and_usage(source, ev, moves, limits, skip)
    caps = np.array([lim.limit for lim in limits])
    passes = 0

    def candidates(off: CapLimit | None, loose: bool = False) -> _Candidates:
        nonlocal passes
        passes += 1
        room, slack = caps - usage, budget - spent
        parts = [
            _best_moves(b, moves.apply(b, choice), limits, ev.prices, ev.lam, room, slack, allow_skip, off, loose)
            for b, choice in source.choices(ev, limits, skip)
        ]
        return _gather(parts)

    def two_moves(k: int) -> tuple[_Candidates, int, _Candidates, int] | None:
        """A row off the over-cap model of limit ``k`` to where it cannot go yet, and
        a row off that destination to make room: the first pair, in the order of
        their reduced values lost, that fits the budget and the other caps."""
        first = candidates(limits[k], loose=True)
        seconds: dict[int, _Candidates] = {}
        for i in range(min(first.to.size, _CHAIN_TRIES)):
            dest = int(first.to[i])
            if dest < 0:
                continue
            if dest not in seconds:
                seconds[dest] = candidates(CapLimit(dest, False, 0.0))
            second = seconds[dest]
            for j in range(min(second.to.size, _CHAIN_TRIES)):
                if second.positions[j] == first.positions[i] or second.to[j] == limits[k].col:
                    continue
                after = np.r_[spent, usage] + first.deltas[i] + second.deltas[j]
                others = np.r_[True, np.arange(len(limits)) != k]
                if (after[others] <= np.r_[budget, caps][others]).all():
                    return first, i, second, j
        return None

    def take(cands: _Candidates, chosen: slice | np.ndarray) -> None:
        nonlocal spent, usage
        moves.positions.append(cands.positions[chosen])
        moves.keys.append(cands.keys[chosen])
        moves.to.append(cands.to[chosen])
        total = cands.deltas[chosen].sum(axis=0)
        spent += float(total[0])
        usage = usage + total[1:]

    # Repair: move rows off over-cap models, the cheapest in reduced value first.
    while True:
        over = np.flatnonzero(usage > caps)
        if not over.size:
            break
        k = int(over[0])
        cands = candidates(limits[k])
        room = np.r_[budget - spent, caps - usage]
        checked = np.r_[True, (caps - usage) >= 0]
        fit = _fitting_prefix(cands.deltas, room, checked)
        left = usage[k] + np.cumsum(cands.deltas[:fit, 1 + k])
        enough = np.flatnonzero(left <= caps[k])
        if enough.size:
            take(cands, slice(0, int(enough[0]) + 1))
            continue
        # The cheapest moves run out of room before the cap holds: one move that
        # alone makes it hold (a larger group, a costlier row) is better than them.
        alone = np.flatnonzero(usage[k] + cands.deltas[:, 1 + k] <= caps[k])
        if alone.size:
            take(cands, alone[:1])
        elif fit:
            take(cands, slice(0, fit))
        elif (pair := two_moves(k)) is not None:
            first, i, second, j = pair
            take(second, np.array([j]))
            take(first, np.array([i]))
        else:
            raise InfeasibleCaps(limits[k], usage[k])

    # Fill: spend what the prices and the repair left unused on better models.
    # Caps that never bound leave the plain solution, which already is within a row.
    binding = bool(np.any(ev.prices) or moves.positions)
    for _ in range(_FILL_ROUNDS if binding else 0):
        cands = candidates(None)
        room = np.r_[budget - spent, caps - usage]
        fit = _fitting_prefix(cands.deltas, room, np.ones(room.size, bool))
        if not fit:
            break
        take(cands, slice(0, fit))
    return ev, moves, skip, {"evaluations": search.evaluations, "candidate_passes": passes}


def _spent_and_usage(
    source: Any, ev: _Eval, moves: _Moves, limits: Sequence[CapLimit], skip: bool
) -> tuple[float, np.ndarray]:
    spent, usage = 0.0, np.zeros(len(limits))
    for b, choice in source.choices(ev, limits, skip):
        choice = moves.apply(b, choice)
        served = np.flatnonzero(choice >= 0)
        spent += float(b.cost[served, choice[served]].sum(dtype=np.float64))
        usage += _usage(b.cost, b.weights, choice, limits)
    return spent, usage


def _dual_value(
    source: Any, ev: _Eval, limits: Sequence[CapLimit], budget: float, allow_skip: bool
) -> float:
    """The Lagrangian dual at the final prices: an upper bound on the optimum."""
    total = 0.0
    for b in source.batches():
        usable, value = _reduced_values(b.quality, b.cost, b.weights, limits, ev.prices, ev.lam)
        best = value.max(axis=1) if value.shape[1] else np.full(value.shape[0], -np.inf)
        if allow_skip:
            best = np.maximum(best, 0.0)
        total += float(best[np.isfinite(best)].sum())
    if ev.lam:
        total += ev.lam * budget
    return total + float(sum(p * lim.limit for p, lim in zip(ev.prices, limits, strict=True) if p))


def _solve_capped_in_memory(
    quality: np.ndarray,
    cost: np.ndarray,
    keys: np.ndarray,
    weights: np.ndarray | None,
    budget: float,
    limits: tuple[CapLimit, ...],
    allow_skip: bool,
) -> BudgetSolution:
    source = _InMemory(quality, cost, keys, weights)
    ev, moves, skip, _ = _solve_capped(source, limits, budget, allow_skip)
    (batch, choice), = source.choices(ev, limits, skip)
    choice = moves.apply(batch, choice)
    served = np.flatnonzero(choice >= 0)
    return BudgetSolution(
        choice=choice,
        lam=ev.lam,
        total_cost=float(cost[served, choice[served]].sum(dtype=np.float64)),
        total_quality=float(quality[served, choice[served]].sum(dtype=np.float64)),
        bound=_dual_value(source, ev, limits, budget, allow_skip),
        cap_prices=tuple(float(p) for p in ev.prices),
        cap_limits=limits,
    )


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
    budget = _check_budget(budget)
    source = _Streamed(read)
    first = next(iter(read()), None)
    n_models = _as_matrices(first[0], first[1])[0].shape[1] if first is not None else 0
    limits = _cap_limits(caps, n_models)
    ev, moves, skip, _ = _solve_capped(source, limits, budget, allow_skip)
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
        bound=_dual_value(source, ev, limits, budget, allow_skip),
        passes=source.passes,
    )


def assign_capped(quality: Any, cost: Any, plan: CappedPlan, keys: Any) -> np.ndarray:
    """Each row's model under a :class:`CappedPlan` (int64; -1: skipped or no model can take it)."""
    quality, cost = _as_matrices(quality, cost)
    keys = _as_keys(keys, quality.shape[0])
    priced = _priced_quality(quality, cost, None, plan.limits, plan.prices)
    choice = assign(priced, cost, plan.plan, keys, allow_skip=plan.skip)
    if plan.moved_keys.size:
        at = np.searchsorted(plan.moved_keys, keys).clip(max=plan.moved_keys.size - 1)
        moved = plan.moved_keys[at] == keys
        choice[moved] = plan.moved_to[at[moved]]
    return choice


# ---------------------------------------------------------------- groups


@dataclass(frozen=True, eq=False)
class GroupSums:
    """Per-group totals over the rows some model can take: what group routing
    solves on. Summable over batches (:func:`merge_group_sums`), so a stream of
    rows needs driver memory for the groups only."""

    keys: np.ndarray
    """The group keys, sorted and unique."""
    quality: np.ndarray
    """[G, M] float64: the sum of the group's rows' quality per model (NaN or
    inf where one of its rows cannot go to that model)."""
    cost: np.ndarray
    rows: np.ndarray
    """[G] float64: the group's rows (what a ``max_rows`` cap counts)."""


def group_sums(quality: Any, cost: Any, groups: Any) -> GroupSums:
    """The :class:`GroupSums` of one batch; ``groups`` holds each row's group key.
    Rows no model can take are left out of their group."""
    quality, cost = _as_matrices(quality, cost)
    n_rows, n_models = quality.shape
    groups = np.asarray(groups)
    if groups.shape != (n_rows,):
        raise ValueError(f"groups must be a 1-D array with one group key per row ({n_rows}); got shape {groups.shape}")
    rows = np.flatnonzero(_servable(quality, cost))
    keys, member = np.unique(groups[rows], return_inverse=True)
    return GroupSums(keys, *_sum_by(member, keys.size, quality[rows], cost[rows], np.ones(rows.size)))


def _servable(quality: np.ndarray, cost: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (np.isfinite(quality) & np.isfinite(cost)).any(axis=1)


def _sum_by(
    member: np.ndarray, n_groups: int, quality: np.ndarray, cost: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_models = quality.shape[1]
    cells = (member[:, None] * n_models + np.arange(n_models)).ravel()

    def per_group(matrix: np.ndarray) -> np.ndarray:
        # NaN and inf survive the sums, so one unusable cell makes the group's cell unusable.
        values = matrix.astype(np.float64).ravel()
        return np.bincount(cells, weights=values, minlength=n_groups * n_models).reshape(n_groups, n_models)

    with np.errstate(invalid="ignore"):
        return per_group(quality), per_group(cost), np.bincount(member, weights=rows, minlength=n_groups)


def merge_group_sums(parts: Sequence[GroupSums]) -> GroupSums:
    """The :class:`GroupSums` of the union of the batches (a group may span batches)."""
    if not parts:
        raise ValueError("merge_group_sums needs at least one GroupSums")
    parts = [p for p in parts if p.keys.size] or [parts[0]]
    keys, member = np.unique(np.concatenate([p.keys for p in parts]), return_inverse=True)
    quality = np.concatenate([p.quality for p in parts])
    cost = np.concatenate([p.cost for p in parts])
    rows = np.concatenate([p.rows for p in parts])
    return GroupSums(keys, *_sum_by(member, keys.size, quality, cost, rows))


@dataclass(frozen=True, eq=False)
class GroupPlan:
    """One model per group, applied per batch by :meth:`assign`."""

    keys: np.ndarray
    """The group keys, sorted."""
    choice: np.ndarray
    """The model column of each group (-1: skipped, or no model can take it whole)."""
    lam: float
    predicted_cost: float
    predicted_quality: float
    bound: float
    cap_prices: tuple[float, ...] = ()
    cap_limits: tuple[CapLimit, ...] = ()

    def assign(self, quality: Any, cost: Any, groups: Any) -> np.ndarray:
        """Each row's model: its group's (-1 for a row no model can take, or an unknown group)."""
        quality, cost = _as_matrices(quality, cost)
        groups = np.asarray(groups)
        choice = np.full(quality.shape[0], -1, np.int64)
        if not self.keys.size:
            return choice
        at = np.searchsorted(self.keys, groups).clip(max=self.keys.size - 1)
        rows = np.flatnonzero((self.keys[at] == groups) & _servable(quality, cost))
        choice[rows] = self.choice[at[rows]]
        return choice


def solve_groups(sums: GroupSums, budget: float, *, caps: Caps = None, allow_skip: bool = False) -> GroupPlan:
    """The budget (and caps) solved over groups, with group keys as tie keys: the
    guarantees of :func:`solve_budget`, a group counting as one row."""
    budget = _check_budget(budget)
    limits = _cap_limits(caps, sums.quality.shape[1])
    if limits:
        sol = _solve_capped_in_memory(sums.quality, sums.cost, sums.keys, sums.rows, budget, limits, allow_skip)
    else:
        sol = solve_budget(sums.quality, sums.cost, budget, keys=sums.keys, allow_skip=allow_skip)
    return GroupPlan(
        sums.keys, sol.choice, sol.lam, sol.total_cost, sol.total_quality, sol.bound, sol.cap_prices, sol.cap_limits
    )


def solve_budget_groups(
    quality: Any,
    cost: Any,
    groups: Any,
    budget: float,
    *,
    caps: Caps = None,
    allow_skip: bool = False,
) -> BudgetSolution:
    """One model per group (a task, a source file): the same problem and
    guarantees as :func:`solve_budget`, over groups.

    A group's quality and cost for a model are the sums over its rows; a model
    that cannot take one of the rows cannot take the group. Rows no model can
    take are left out of their group (choice -1). Tied groups are ordered by
    group key; ``caps``' ``max_rows`` still counts rows. ``choice`` is per row.
    The streamed form: :func:`group_sums` per batch, :func:`merge_group_sums`,
    :func:`solve_groups` on the driver, ``GroupPlan.assign`` per batch.
    """
    quality, cost = _as_matrices(quality, cost)
    plan = solve_groups(group_sums(quality, cost, groups), budget, caps=caps, allow_skip=allow_skip)
    return BudgetSolution(
        choice=plan.assign(quality, cost, groups),
        lam=plan.lam,
        total_cost=plan.predicted_cost,
        total_quality=plan.predicted_quality,
        bound=plan.bound,
        cap_prices=plan.cap_prices,
        cap_limits=plan.cap_limits,
    )


# ---------------------------------------------------------------- price windows

# Inputs with fewer rows walk every row: a window would save little.
_BRACKET_MIN_ROWS = 1 << 18
# Rows in the sample that places the window (every k-th row).
_SAMPLE_ROWS = 1 << 16
# The window spans this many standard errors of the sample's cost estimate on each side.
_WINDOW_SIGMAS = 6.0
# Where inside a gap between two sample breakpoints a window's end goes: away from both,
# so that no row's breakpoint is likely to sit exactly on it.
_GAP_FRACTION = 0.381966
# Rows per block of the two-price pass.
_PASS_ROWS = 1 << 13


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
            f"the budget {_format_amount(self.budget)} is outside the costs at the window's ends "
            f"({_format_amount(self.cost_at_hi)} at lam={window.hi:.6g}, {_format_amount(self.cost_at_lo)} at "
            f"lam={window.lo:.6g}); rerun the passes without a window"
        )

    def __reduce__(self) -> tuple[Any, tuple[PriceWindow, float, float, float]]:
        return (type(self), (self.window, self.budget, self.cost_at_lo, self.cost_at_hi))


def _check_window(window: PriceWindow, allow_skip: bool) -> None:
    if allow_skip:
        raise ValueError("price windows are for budgets that cover the cheapest models; pass allow_skip=False")


def price_window(sample_quality: Any, sample_cost: Any, budget: float, total_rows: int) -> PriceWindow | None:
    """A window very likely to hold ``lam*`` for a data set of ``total_rows`` rows,
    from a sample of them (rows picked without regard to their values). None when
    the sample puts the budget near either end of the cost range."""
    quality, cost = _as_matrices(sample_quality, sample_cost)
    budget = _check_budget(budget)
    n_sample = quality.shape[0]
    if not n_sample or budget == math.inf:
        return None
    starts, rows, lams, drops = [], [], [], []
    for lo, block in _walk(quality, cost, False):
        starts.append(block.start_cost)
        for step_rows, lam, drop, _ in block.steps:
            rows.append(step_rows + lo)
            lams.append(lam)
            drops.append(drop)
    if not lams:
        return None
    row_cost = np.concatenate(starts)
    rows, lams, drops = np.concatenate(rows), np.concatenate(lams), np.concatenate(drops)
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
    margin = _WINDOW_SIGMAS * scale * math.sqrt(n_sample) * float(row_cost.std()) + float(row_cost.max())
    low = np.flatnonzero(after <= budget + margin)
    high = np.flatnonzero(after <= budget - margin)
    if not high.size:
        return None
    i, j = int(low[0]), int(high[0])
    below = sorted_lams[i - 1] if i else 0.0
    above = sorted_lams[j + 1] if j + 1 < sorted_lams.size else 2 * sorted_lams[j]
    lo = float(sorted_lams[i] - (sorted_lams[i] - below) * _GAP_FRACTION)
    hi = float(sorted_lams[j] + (above - sorted_lams[j]) * _GAP_FRACTION)
    return PriceWindow(lo, hi) if 0 < lo < hi < math.inf else None


MOVING = -2
"""In :func:`window_choices`: the row's choice changes inside the window."""


def window_choices(quality: Any, cost: Any, window: PriceWindow) -> np.ndarray:
    """Each row's model at every price in the window, MOVING where it changes inside
    (-1: no model can take the row): one argmax pass at each end of the window.

    Pass it to :func:`summarize` and :func:`assign` (``choices=``) to spare them
    that pass, e.g. computed once in the routing pass and kept as a column.
    """
    quality, cost = _as_matrices(quality, cost)
    return _two_price_pass(quality, cost, window.lo, window.hi)


def _two_price_pass(quality: np.ndarray, cost: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """argmax(Q - lam*C) at both prices, MOVING where they differ.

    A row whose choice is the same at both prices has no breakpoint in ``(lo, hi]``.
    Exact ties at a price resolve to the lower column; window ends sit away from
    the breakpoints the sample saw, so in practice only identical points tie there.
    """
    n_rows, n_models = quality.shape
    dtype = np.float32 if quality.dtype == np.float32 and cost.dtype == np.float32 else np.float64
    block_rows = max(1, min(_PASS_ROWS, n_rows))
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


@dataclass
class _WindowRows:
    """A batch seen through a window: every row's choice in the window (final for
    the settled rows), and the walk of the rows whose choice changes inside."""

    choice: np.ndarray
    moving: np.ndarray
    blocks: list[tuple[int, _Block]]


def _window_rows(
    quality: np.ndarray, cost: np.ndarray, window: PriceWindow, lam_limit: float, choices: Any = None
) -> _WindowRows:
    if choices is None:
        choice = _two_price_pass(quality, cost, window.lo, window.hi)
    else:
        choice = np.asarray(choices, dtype=np.int64)
        if choice.shape != (quality.shape[0],):
            raise ValueError(f"choices must hold one window choice per row ({quality.shape[0]}); got {choice.shape}")
    moving = np.flatnonzero(choice == MOVING)
    blocks = list(_walk(quality[moving], cost[moving], False, min(lam_limit, window.hi))) if moving.size else []
    return _WindowRows(choice, moving, blocks)


def _settled_totals(quality: np.ndarray, cost: np.ndarray, choice: np.ndarray) -> tuple[float, float]:
    """Cost and quality of the rows with a model for the whole window."""
    rows = np.flatnonzero(choice >= 0)
    cells = rows * quality.shape[1] + choice[rows]

    def pick(matrix: np.ndarray) -> np.ndarray:
        # A flat take is several times faster than a 2-D fancy index.
        return matrix.ravel().take(cells) if matrix.flags.c_contiguous else matrix[rows, choice[rows]]

    return float(pick(cost).sum(dtype=np.float64)), float(pick(quality).sum(dtype=np.float64))


def _window_summary(
    rows: _WindowRows, settled_cost: float, window: PriceWindow, keys: np.ndarray | None = None
) -> BudgetSummary:
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
        used, at = np.unique(_lam_bin(lam), return_inverse=True)
        hist[used] = np.bincount(at, weights=drop, minlength=used.size)
        counts[used] = np.bincount(at, minlength=used.size)
    kept = None
    if keys is not None and lam.size <= KEEP_BREAKPOINTS:
        kept = (lam, drop, np.concatenate(found) if found else keys[:0])
    n_rows = rows.choice.size
    return BudgetSummary(at_lo, at_lo - float(drop.sum()), hist, counts, n_rows, False, window, kept)


def _collect_window(
    rows: _WindowRows, keys: np.ndarray, bin: int, window: PriceWindow
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lams, drops, found = [], [], []
    moving_keys = keys[rows.moving]
    for lo, block in rows.blocks:
        for step_rows, lam, drop, _ in block.steps:
            inside = (_lam_bin(lam) == bin) & (lam > window.lo)
            if inside.any():
                lams.append(lam[inside])
                drops.append(drop[inside])
                found.append(moving_keys[step_rows[inside] + lo])
    if not lams:
        return np.zeros(0), np.zeros(0), keys[:0]
    return np.concatenate(lams), np.concatenate(drops), np.concatenate(found)


def _assign_window(rows: _WindowRows, plan: BudgetPlan, keys: np.ndarray) -> np.ndarray:
    choice = rows.choice.copy()
    if rows.moving.size:
        choice[rows.moving] = _assign_blocks(iter(rows.blocks), rows.moving.size, plan, keys[rows.moving])
    return choice


def _solve_bracketed(quality: np.ndarray, cost: np.ndarray, budget: float, keys: np.ndarray) -> BudgetSolution | None:
    """The streamed passes with a window, on one batch: a strided sample places the
    window, one two-price pass serves the summary, the critical bin and the assignment,
    and only the rows that move inside the window walk. None when the window misses."""
    n_rows = quality.shape[0]
    sample = np.arange(0, n_rows, max(1, n_rows // _SAMPLE_ROWS))
    window = price_window(quality[sample], cost[sample], budget, n_rows)
    if window is None:
        return None
    rows = _window_rows(quality, cost, window, window.hi)
    settled_cost, settled_quality = _settled_totals(quality, cost, rows.choice)
    summary = _window_summary(rows, settled_cost, window)
    if not summary.min_cost <= budget < summary.base_cost:
        return None
    bin = critical_bin(summary, budget)
    assert bin is not None
    plan = solve_lambda(summary, budget, *_collect_window(rows, keys, bin, window))
    choice = _assign_window(rows, plan, keys)
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
