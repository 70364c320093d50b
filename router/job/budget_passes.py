"""The budget's passes over the scored rows, on Ray: the maths is `router.budget`'s (numpy), this
module moves its inputs and summaries between Arrow batches, Ray and the driver.

    pass 1: each batch's breakpoint histogram, sent by the Scorer to a `SummarySink` as it scores
    pass 2: the critical bin's exact breakpoints (only when the budget binds) -> lambda*

With per-model caps (`models.NAME.max_rows` / `max_spend`) the passes are those of
`router.budget.solve_capped`, reading the scored columns from the object store once per pass;
with `budget.group_column`, one pass sums quality and cost per group and the driver solves over
groups. Either way the driver holds summaries (and, for groups, one row per group), not rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from router import schema as S
from router.budget import (
    NBINS, BudgetPlan, BudgetSummary, CappedPlan, GroupPlan, GroupSums, InfeasibleBudget, InfeasibleCaps, ModelCap,
    collect_bin, collect_hulls, critical_bin, group_sums, merge_group_sums, solve_capped, solve_groups, solve_lambda,
    summarize,
)  # fmt: skip
from router.config import JobConfig
from router.job.cluster import driver_batches, log, per_batch, small_job
from router.stages.route import (
    RoutePlan, budget_matrices, cost_from_batch, group_keys, hulls_from_column, keys_at, keys_of, matrix_from_column,
)  # fmt: skip

# ---------------------------------------------------------------- pass 1: riding on scoring


class _Merger:
    """The sink's actor: one merged histogram, plus the keys of the batches seen so that a
    retried batch counts once."""

    def __init__(self) -> None:
        self.merged = BudgetSummary.empty(allow_skip=False)
        self.seen: set[str] = set()

    def add(self, key: str, summary: BudgetSummary) -> None:
        if key not in self.seen:
            self.seen.add(key)
            self.merged = self.merged.merge(summary)

    def get(self) -> BudgetSummary:
        return self.merged


@dataclass(frozen=True)
class SummarySink:
    """Where the Scorer sends each batch's budget summary (pass 1 riding on scoring): an actor
    that merges them. The Scorer calls it; the driver reads the merged summary once scoring ends."""

    actor: Any

    def __call__(self, batch: pa.Table, summary: BudgetSummary) -> None:
        import ray

        ids = batch[S.ID]
        key = f"{ids[0]}\0{ids[-1]}\0{batch.num_rows}" if batch.num_rows else ""  # a retried batch counts once
        ray.get(self.actor.add.remote(key, summary))

    def merged(self) -> BudgetSummary:
        import ray

        return ray.get(self.actor.get.remote())

    def close(self) -> None:
        import ray

        ray.kill(self.actor)


def summary_sink() -> SummarySink:
    """A new sink (its actor asks for no CPU: it only adds histograms)."""
    import ray

    return SummarySink(ray.remote(num_cpus=0)(_Merger).remote())


def _summary_rows(batch: pa.Table, allow_skip: bool) -> pa.Table:
    """A batch's summary as one row (the histogram's non-empty bins only)."""
    s = summarize(*budget_matrices(batch), allow_skip=allow_skip)
    nz = np.flatnonzero(s.counts)
    return pa.table(
        {
            "base_cost": [s.base_cost],
            "min_cost": [s.min_cost],
            "n_rows": [s.n_rows],
            "bins": [nz.astype(np.int64)],
            "hist": [s.hist[nz]],
            "counts": [s.counts[nz]],
        }
    )


def merged_summary(scored, allow_skip: bool) -> BudgetSummary:
    """Pass 1 as a pass of its own over the scored rows (the Scorer's when rows may be skipped, or
    when batches were keyed alike)."""
    total = BudgetSummary.empty(allow_skip=allow_skip)
    summaries = per_batch(scored, _summary_rows, [S.QUALITY, S.COST], allow_skip=allow_skip)
    for row in (r for t in summaries for r in t.to_pylist()):  # one row per batch; the driver keeps one histogram
        hist = np.zeros(NBINS)
        counts = np.zeros(NBINS, np.int64)
        hist[row["bins"]] = row["hist"]
        counts[row["bins"]] = row["counts"]
        total = total.merge(BudgetSummary(row["base_cost"], row["min_cost"], hist, counts, row["n_rows"], allow_skip))
    return total


# ---------------------------------------------------------------- pass 2: the critical bin


def collect_rows(batch: pa.Table, bin: int, allow_skip: bool) -> pa.Table:
    """A batch's breakpoints in the critical `bin`: price, cost step and row key, one row each."""
    if not allow_skip and S.HULL in batch.column_names:  # the Scorer's walk, read back
        hulls, cost = hulls_from_column(batch[S.HULL]), matrix_from_column(batch[S.COST])
        lam, dcost, keys = collect_hulls(hulls, cost, keys_at(batch), bin)
    else:
        lam, dcost, keys = collect_bin(*budget_matrices(batch), keys_of(batch), bin, allow_skip=allow_skip)
    return pa.table({"lam": pa.array(lam, pa.float64()), "dcost": pa.array(dcost, pa.float64()),
                     "key": pa.array(keys, pa.string())})  # fmt: skip


def solve_plan(scored, budget: float, summary: BudgetSummary | None = None) -> tuple[BudgetPlan, bool]:
    """Pass 1 (histogram; skipped when `summary` came from the scoring pass) and, when the budget
    binds, pass 2 (the critical bin): lambda* and ties."""
    if summary is None or summary.allow_skip:
        summary = merged_summary(scored, allow_skip=False)
    allow_skip = budget < summary.min_cost
    if allow_skip:
        log(f"budget {budget:.6g} is below the cheapest assignment ({summary.min_cost:.6g}): "
            "some rows will be left unanswered (status over_budget)")  # fmt: skip
        summary = merged_summary(scored, allow_skip=True)
    bin = critical_bin(summary, budget)
    if bin is None:
        return solve_lambda(summary, budget, [], [], []), allow_skip
    kept = not allow_skip and S.HULL in (scored.columns() or ())  # pass 1's walk, kept by the Scorer
    columns = [S.ID, S.COST, S.HULL] if kept else [S.ID, S.QUALITY, S.COST]
    found = per_batch(scored, collect_rows, columns, bin=bin, allow_skip=allow_skip)
    tables = [t for t in found if t.num_rows]
    t = pa.concat_tables(tables) if tables else pa.table({"lam": [], "dcost": [], "key": []})
    lam = t["lam"].to_numpy()
    dcost = t["dcost"].to_numpy()
    keys = t["key"].to_numpy(zero_copy_only=False).astype(str)
    return solve_lambda(summary, budget, lam, dcost, keys), allow_skip


# ---------------------------------------------------------------- caps and groups


def model_caps(cfg: JobConfig) -> dict[int, ModelCap]:
    """The pool's caps by model column (the scorer's columns follow the config's model order)."""
    return {
        i: ModelCap(max_rows=m.max_rows, max_cost=m.max_spend)
        for i, m in enumerate(cfg.models)
        if m.max_rows is not None or m.max_spend is not None
    }


def group_source(cfg: JobConfig) -> str | None:
    """The scored column holding `budget.group_column` (the id and text columns are renamed on read)."""
    col = cfg.budget.group_column
    return S.ID if col == cfg.id_column else S.PROMPT if col == cfg.text_column else col


def _float64_column(x: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x, np.float64).ravel()), x.shape[1])


def _group_rows(batch: pa.Table, column: str) -> pa.Table:
    """A batch's quality and cost summed per group, one row per group."""
    sums = group_sums(matrix_from_column(batch[S.QUALITY]), cost_from_batch(batch), group_keys(batch, column))
    return pa.table({"key": pa.array(sums.keys, pa.string()), "quality": _float64_column(sums.quality),
                     "cost": _float64_column(sums.cost), "rows": pa.array(sums.rows, pa.float64())})  # fmt: skip


def _skip_note(error: Exception) -> None:
    log(f"{error}; routing with some rows left unanswered (status over_budget) instead")


def solve_group_plan(scored, budget: float, column: str, caps: dict[int, ModelCap]) -> tuple[GroupPlan, bool]:
    """One pass of per-batch group sums, merged on the driver (one row per group), and the group
    solve (with the caps, if any)."""
    total: GroupSums | None = None
    for t in per_batch(scored, _group_rows, column=column):
        if not t.num_rows:
            continue
        part = GroupSums(
            t["key"].to_numpy(zero_copy_only=False).astype(str), matrix_from_column(t["quality"]),
            matrix_from_column(t["cost"]), t["rows"].to_numpy(),
        )  # fmt: skip
        total = merge_group_sums([part] if total is None else [total, part])
    if total is None:  # no row any model can take
        return GroupPlan(np.zeros(0, str), np.zeros(0, np.int64), 0.0, 0.0, 0.0, 0.0), False
    log(f"group routing: {total.keys.size} groups over {int(total.rows.sum())} routable rows")
    try:
        return solve_groups(total, budget, caps=caps), False
    except (InfeasibleBudget, InfeasibleCaps) as e:
        _skip_note(e)
        return solve_groups(total, budget, caps=caps, allow_skip=True), True


def solve_capped_plan(scored, budget: float, caps: dict[int, ModelCap]) -> tuple[CappedPlan, bool]:
    """`router.budget.solve_capped` over the scored rows: each pass reads the id, quality and cost
    columns (one narrow copy in the object store) block by block; the driver keeps summaries."""
    import ray

    columns = [S.ID, S.QUALITY, S.COST]
    if small_job(scored):
        def tables() -> Iterator[pa.Table]:
            return driver_batches(scored, columns)
    else:
        refs = scored.select_columns(columns).to_arrow_refs()

        def tables() -> Iterator[pa.Table]:
            return (ray.get(ref) for ref in refs)

    def read():
        for t in tables():
            if t.num_rows:
                yield matrix_from_column(t[S.QUALITY]), cost_from_batch(t), keys_of(t)

    try:
        plan, skip = solve_capped(read, budget, caps), False
    except (InfeasibleBudget, InfeasibleCaps) as e:
        _skip_note(e)
        plan, skip = solve_capped(read, budget, caps, allow_skip=True), True
    log(f"caps solved in {plan.passes} passes over the scored rows; cap prices "
        + ", ".join(f"{lim.describe()}: {p:.4g}" for lim, p in zip(plan.limits, plan.prices)))  # fmt: skip
    return plan, skip


def solve_route(cfg: JobConfig, scored, n_rows: int, summary: BudgetSummary | None) -> tuple[RoutePlan, bool]:
    """The driver's plan: per row under the budget, under the caps, or per group."""
    caps = model_caps(cfg)
    column = group_source(cfg)
    if column is not None:
        return solve_group_plan(scored, cfg.budget.total, column, caps)
    if caps:
        return solve_capped_plan(scored, cfg.budget.total, caps)
    # Every row must be in the summary once; if batches were keyed alike (duplicate ids), summarise again.
    return solve_plan(scored, cfg.budget.total, summary if summary is not None and summary.n_rows == n_rows else None)
