"""Group routing: one model per group of rows (a task, a source file), a group's quality and
cost the sums over its rows, solved by the same solver with group keys as tie keys. The
sums add up over batches, so a stream needs driver memory for the groups only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from router.budget.caps import Caps, CapLimit, cap_limits
from router.budget.checks import as_matrices, check_budget
from router.budget.plain import BudgetSolution
from router.budget.solve import solve_budget, solve_capped_in_memory


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
    quality, cost = as_matrices(quality, cost)
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
        quality, cost = as_matrices(quality, cost)
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
    budget = check_budget(budget)
    limits = cap_limits(caps, sums.quality.shape[1])
    if limits:
        sol = solve_capped_in_memory(sums.quality, sums.cost, sums.keys, sums.rows, budget, limits, allow_skip)
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
    quality, cost = as_matrices(quality, cost)
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
