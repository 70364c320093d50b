"""Kept hulls: every row's hull walk stored compactly (:class:`Hulls`) by the first pass,
so that the critical bin's breakpoints and the assignment are read from it instead of
walking the rows again."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from router.budget.checks import as_matrices
from router.budget.plain import summarize_blocks
from router.budget.summary import BudgetPlan, BudgetSummary, lam_bin
from router.budget.walk import Block, walk_blocks


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


def hulls_of(blocks: Sequence[tuple[int, Block]], n_rows: int) -> Hulls:
    """The walked blocks of ``n_rows`` rows, stored as :class:`Hulls`."""
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
    quality, cost = as_matrices(quality, cost)
    blocks = list(walk_blocks(quality, cost, False))
    return summarize_blocks((block for _, block in blocks), False), hulls_of(blocks, quality.shape[0])


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
    lam = hulls.lam
    inside = np.flatnonzero(lam_bin(lam) == bin)
    inside = inside[lam[inside] > 0]  # a row's start is not a breakpoint
    rows = _entry_rows(hulls, inside)
    width = cost.shape[1]
    flat = np.ascontiguousarray(cost).ravel()
    # The walk's drop: the cost of the model left minus that of the model taken, in float64.
    left = flat.take(rows * width + hulls.model[inside - 1]).astype(np.float64)
    dcost = left - flat.take(rows * width + hulls.model[inside]).astype(np.float64)
    return lam[inside], dcost, np.asarray(keys(rows))
