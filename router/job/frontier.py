"""The predicted quality-cost frontier a report draws: the budget swept over a sample of the scored
rows, and where the job's plan sits on it."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from router import schema as S
from router.budget import solve_budget
from router.job.cluster import driver_batches
from router.job.tally import ModelTally
from router.stages.route import cost_from_batch, matrix_from_column

# Budgets swept for the frontier.
FRONTIER_POINTS = 30
# Rows the frontier is solved on: enough for a smooth curve, a second or two of solving.
FRONTIER_SAMPLE = 20_000


def predicted_frontier(
    quality: np.ndarray, cost: np.ndarray, n_rows: int, budget: float, *, points: int = FRONTIER_POINTS
) -> dict[str, Any] | None:
    """Total predicted quality against predicted spend, the budget swept from every row's cheapest
    model to every row's best one (and down to `budget` when it is lower: then rows are
    skipped, as in the run). Solved on a sample of rows (quality, cost: k x M) and scaled to `n_rows`."""
    k = quality.shape[0]
    if k == 0 or n_rows == 0:
        return None
    scale = n_rows / k
    cost = np.asarray(cost, np.float64)
    usable = np.isfinite(cost) & np.isfinite(quality)
    routable = usable.any(axis=1)
    cheapest = float(np.where(usable, cost, np.inf).min(axis=1)[routable].sum())
    best = solve_budget(quality, cost, math.inf)
    lo, hi = cheapest, best.total_cost
    marks = [cheapest]
    if math.isfinite(budget):
        lo = min(lo, budget / scale)
        marks.append(budget / scale)
    budgets = np.unique(np.clip(np.concatenate([np.linspace(lo, hi, points), marks]), lo, hi))
    swept = []
    for b in budgets:
        s = solve_budget(quality, cost, float(b), allow_skip=True)
        swept.append({
            "budget_usd": float(b) * scale,
            "cost_usd": s.total_cost * scale,
            "quality": s.total_quality * scale,
            "rows_skipped": round(int(((s.choice < 0) & routable).sum()) * scale),
        })  # fmt: skip
    return {
        "rows": n_rows,
        "sample_rows": k,
        "cheapest_usd": cheapest * scale,
        "best_quality_usd": best.total_cost * scale,
        "best_quality": best.total_quality * scale,
        "points": swept,
    }


def sampled_frontier(scored, n_rows: int, budget: float) -> dict[str, Any] | None:
    """The predicted quality-cost frontier from a random sample of at most FRONTIER_SAMPLE rows of
    the scored matrices (one cheap pass over two columns; nothing is re-encoded)."""
    import ray

    columns = [S.QUALITY, S.COST]
    if n_rows <= FRONTIER_SAMPLE:  # every row: read in the driver
        tables = [t for t in driver_batches(scored, columns) if t.num_rows]
    else:
        ds = scored.select_columns(columns).random_sample(FRONTIER_SAMPLE / n_rows, seed=0)
        tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    if not tables:
        return None
    t = pa.concat_tables(tables)
    return predicted_frontier(matrix_from_column(t[S.QUALITY]), cost_from_batch(t), n_rows, budget)


def chosen_point(by_model: Iterable[ModelTally], budget: float | None) -> dict[str, Any]:
    """Where the plan sits on the frontier: its predicted spend and total predicted quality."""
    by_model = list(by_model)
    return {
        "budget_usd": None if budget is None or math.isinf(budget) else budget,
        "cost_usd": sum(t.predicted_cost or 0.0 for t in by_model),
        "quality": sum(t.predicted_quality or 0.0 for t in by_model),
    }


def with_chosen(frontier: dict[str, Any] | None, by_model: Iterable[ModelTally],
                budget: float | None) -> dict[str, Any] | None:
    """The frontier with its `chosen` point (None: no frontier)."""
    return None if frontier is None else {**frontier, "chosen": chosen_point(by_model, budget)}
