"""The hull walk: every row of a block, vectorised, from its best-quality model down the
upper convex hull of its (cost, quality) points, one step per hull point, reporting each
step's price, cost drop and new model. Every pass of the solver reads its walk."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from router.budget.checks import as_matrices

# Cells per block of the hull walk: small enough that a block's buffers stay
# in cache, large enough that the per-call overhead of numpy is noise.
BLOCK_CELLS = 1 << 17
# Every breakpoint is at least this, so lam = 0 always means "best quality".
SMALLEST_LAM = float(np.nextafter(0.0, 1.0))

Steps = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Block:
    """The hull walk of one block of rows.

    ``steps`` holds, per hull step, the block-local rows that moved and their
    breakpoint price, cost drop and new column; a row's steps come in
    non-decreasing ``lam`` order. Column ``n_models`` is the skip option.
    """

    start: np.ndarray
    start_cost: np.ndarray
    min_cost: np.ndarray
    steps: list[Steps]
    n_models: int


class Workspace:
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


def cheapest_hit(hit: np.ndarray, cost: np.ndarray, space: Workspace) -> tuple[np.ndarray, np.ndarray]:
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


@dataclass
class Front:
    """The rows of a block still walking, each at its current hull point, and their
    points ``quality``/``cost`` (model-major). Once most rows have stopped, all of it
    is compacted to the walking rows, into the other of the workspace's two buffers
    (``side``)."""

    cols: np.ndarray
    """Each walking row's block-local row."""
    cur_quality: np.ndarray
    """The current point's quality; NaN once the row has stopped."""
    cur_cost: np.ndarray
    lam_prev: np.ndarray
    """The price of the row's last step: the next is never below it."""
    floor_cost: np.ndarray
    """The cost of the row's cheapest point (or of skipping it): the row stops there."""
    going: np.ndarray
    quality: np.ndarray
    cost: np.ndarray
    side: int = 0

    def drop_stopped(self, n_going: int, space: Workspace) -> None:
        keep = np.flatnonzero(self.going)
        self.side = 1 - self.side
        self.quality = np.compress(self.going, self.quality, axis=1, out=space.quality[self.side][:, :n_going])
        self.cost = np.compress(self.going, self.cost, axis=1, out=space.cost[self.side][:, :n_going])
        self.cols, self.cur_quality, self.cur_cost = self.cols[keep], self.cur_quality[keep], self.cur_cost[keep]
        self.lam_prev, self.floor_cost = self.lam_prev[keep], self.floor_cost[keep]

    def step(self, lam_limit: float, space: Workspace) -> Steps:
        """Move every walking row to its next hull point; the moves priced at most ``lam_limit``."""
        w = self.cols.size
        # Per candidate: cost saved per unit of quality lost; the next hull
        # point maximises it. No cheaper point has a higher quality (the walk
        # keeps that true), so taking |loss| leaves the cheaper points' ratios
        # positive and sends every other point to <= 0, -inf or NaN, none of
        # which beats them: no masked pass needed.
        ratio = np.subtract(self.cur_cost, self.cost, out=space.ratio[:, :w])
        loss = np.subtract(self.cur_quality, self.quality, out=space.loss[:, :w])
        np.abs(loss, out=loss)
        np.divide(ratio, loss, out=ratio)
        best_ratio = np.fmax.reduce(ratio, axis=0)
        hit = np.equal(ratio, best_ratio, out=space.hit[:, :w])
        to, _ = cheapest_hit(hit, self.cost, space)
        at = to * space.stride
        at += space.offsets[:w]
        new_cost = space.flat_cost[self.side].take(at)
        new_quality = space.flat_quality[self.side].take(at)
        lam = ((self.cur_quality - new_quality) / (self.cur_cost - new_cost)).astype(np.float64)
        # Rounding could put a later breakpoint a hair below an earlier one;
        # the clamp keeps each row's prices non-decreasing, which the
        # histogram, the tie rule and the replay in assign all rely on.
        lam = np.maximum(lam, self.lam_prev)
        taken = lam <= lam_limit  # False for the stopped rows' NaN
        moved = (
            self.cols[taken],
            lam[taken],
            self.cur_cost[taken].astype(np.float64) - new_cost[taken],
            to[taken].astype(np.int32),
        )
        self.going = taken & (new_cost > self.floor_cost)
        self.cur_quality = np.where(self.going, new_quality, np.nan)
        self.cur_cost, self.lam_prev = new_cost, lam
        return moved


def _load(quality: np.ndarray, cost: np.ndarray, allow_skip: bool, space: Workspace) -> tuple[np.ndarray, np.ndarray]:
    """The block, model-major, in the workspace (and the skip option's row of zeros)."""
    n_rows, n_models = quality.shape
    qa = space.quality[0][:, :n_rows]
    ca = space.cost[0][:, :n_rows]
    qa[:n_models] = quality.T
    ca[:n_models] = cost.T
    if allow_skip:
        qa[n_models] = 0.0
        ca[n_models] = 0.0
    return qa, ca


def _cheapest_usable(qa: np.ndarray, ca: np.ndarray, n_models: int, space: Workspace) -> np.ndarray:
    """Each row's cheapest real model's cost (NaN: none), once the cells no model can take are
    marked NaN in both matrices."""
    n_rows = qa.shape[1]
    if not n_models:
        return np.full(n_rows, np.nan, dtype=ca.dtype)
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
    return np.fmin.reduce(ca[:n_models], axis=0)


def _start(
    qa: np.ndarray, ca: np.ndarray, cheapest: np.ndarray, allow_skip: bool, lam_limit: float, space: Workspace
) -> tuple[np.ndarray, np.ndarray, Front]:
    """Each row's choice at ``lam = 0`` (-1: no model can take it) and its cost, and the
    rows that walk on from there."""
    n_rows = qa.shape[1]
    cols = np.arange(n_rows, dtype=np.int32)
    best_quality = np.fmax.reduce(qa, axis=0)
    hit = np.equal(qa, best_quality, out=space.hit[:, :n_rows])
    start, _ = cheapest_hit(hit, ca, space)
    takeable = ~np.isnan(best_quality)
    at = start * space.stride + cols
    cur_cost = space.flat_cost[0].take(at)
    cur_quality = np.where(takeable, space.flat_quality[0].take(at), np.nan)
    start_cost = np.where(takeable, cur_cost, 0.0).astype(np.float64)
    start = np.where(takeable, start, -1).astype(np.int64)
    floor_cost = np.fmin(cheapest, 0.0) if allow_skip else cheapest
    # NaN quality marks a row that has stopped walking: it poisons the row's
    # ratios and price, so the row never moves again and costs no masking pass.
    going = (floor_cost < cur_cost) & (lam_limit >= SMALLEST_LAM)
    cur_quality[~going] = np.nan
    lam_prev = np.full(n_rows, SMALLEST_LAM)
    return start, start_cost, Front(cols, cur_quality, cur_cost, lam_prev, floor_cost, going, qa, ca)


def walk_block(quality: np.ndarray, cost: np.ndarray, allow_skip: bool, lam_limit: float, space: Workspace) -> Block:
    """Walk every row of a block down its hull, one vectorised step per hull point.

    Steps whose price exceeds ``lam_limit`` are neither taken nor reported.
    """
    n_rows, n_models = quality.shape
    if space.width == 0:
        none = np.full(n_rows, -1, dtype=np.int64)
        return Block(none, np.zeros(n_rows), np.full(n_rows, np.nan), [], n_models)
    qa, ca = _load(quality, cost, allow_skip, space)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        cheapest = _cheapest_usable(qa, ca, n_models, space)
        min_cost = cheapest.astype(np.float64)
        start, start_cost, front = _start(qa, ca, cheapest, allow_skip, lam_limit, space)
        steps = []
        while n_going := int(np.count_nonzero(front.going)):
            if n_going <= front.cols.size // 2:
                # Drop the stopped rows once they are the majority; until then
                # computing on them is cheaper than moving the others.
                front.drop_stopped(n_going, space)
            steps.append(front.step(lam_limit, space))
    return Block(start, start_cost, min_cost, steps, n_models)


def walk_blocks(
    quality: np.ndarray, cost: np.ndarray, allow_skip: bool, lam_limit: float = math.inf
) -> Iterator[tuple[int, Block]]:
    """The walk of every block of rows, with the block's first row."""
    n_rows, n_models = quality.shape
    width = n_models + int(allow_skip)
    # float32 input is walked in float32 (twice the vector width); anything
    # else in float64. Cost drops and prices are always reported in float64.
    dtype = np.float32 if quality.dtype == np.float32 and cost.dtype == np.float32 else np.float64
    block_rows = max(64, BLOCK_CELLS // max(width, 1))
    space = Workspace(width, min(block_rows, max(n_rows, 1)), dtype)
    for lo in range(0, n_rows, block_rows):
        hi = lo + block_rows
        yield lo, walk_block(quality[lo:hi], cost[lo:hi], allow_skip, lam_limit, space)


def all_steps(blocks: Sequence[tuple[int, Block]]) -> Steps:
    """Every step of the walked blocks, one array each: rows (numbered across the
    blocks), prices, cost drops, new columns."""
    parts = [(rows + lo, lam, drop, to) for lo, block in blocks for rows, lam, drop, to in block.steps]
    if not parts:
        return np.zeros(0, np.int32), np.zeros(0), np.zeros(0), np.zeros(0, np.int32)
    rows, lams, drops, tos = (np.concatenate(column) for column in zip(*parts, strict=True))
    return rows, lams, drops, tos


def public_choice(choice: np.ndarray, n_models: int) -> np.ndarray:
    """The walk's columns as callers see them: the skip option is -1."""
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
    quality, cost = as_matrices(quality, cost)
    n_models = quality.shape[1]
    blocks = list(walk_blocks(quality, cost, allow_skip))
    rows, lams, drops, tos = all_steps(blocks)
    starts = [block.start for _, block in blocks]
    start = np.concatenate(starts).astype(np.int64) if starts else np.zeros(0, np.int64)
    return (
        public_choice(start, n_models),
        rows.astype(np.int64),
        lams.astype(np.float64),
        drops.astype(np.float64),
        public_choice(tos.astype(np.int64), n_models),
    )
