"""Tests for the budget solver: against brute force, a literal per-row
reference of the rule, a MILP, and the streamed form against the in-memory one."""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from router.budget import plain as budget_plain
from router.budget import solve as budget_solve
from router.budget import summary as budget_summary
from router.budget import walk as budget_walk
from router.budget import window as budget_window
from router.budget import windowed as budget_windowed
from router.budget import (
    MOVING,
    NBINS,
    BudgetPlan,
    PriceWindow,
    PriceWindowMissed,
    BudgetSummary,
    CapLimit,
    InfeasibleBudget,
    InfeasibleCaps,
    ModelCap,
    assign,
    assign_capped,
    collect_bin,
    critical_bin,
    merge_summaries,
    price_window,
    row_breakpoints,
    solve_budget,
    solve_budget_groups,
    solve_groups,
    group_sums,
    merge_group_sums,
    solve_capped,
    solve_lambda,
    summarize,
    summarize_hulls,
    assign_hulls,
    collect_hulls,
    window_choices,
)

# No example database: a run never depends on, or records, earlier failures.
SETTINGS = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
TOL = 1e-9


# ---------------------------------------------------------------- instances


@st.composite
def grid_instances(draw: Any, max_rows: int = 6, max_models: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Small instances on a coarse dyadic grid: every sum is exact in float64,
    and ties, collinear points and duplicate rows are common."""
    n = draw(st.integers(1, max_rows))
    m = draw(st.integers(1, max_models))
    cost = draw(hnp.arrays(np.int64, (n, m), elements=st.integers(0, 12))) / 4.0
    quality = draw(hnp.arrays(np.int64, (n, m), elements=st.integers(-2, 8))) / 8.0
    missing = draw(hnp.arrays(np.int8, (n, m), elements=st.sampled_from([0, 0, 0, 0, 1, 2, 3])))
    quality[missing == 1] = np.nan
    cost[missing == 2] = np.nan
    cost[missing == 3] = np.inf
    if draw(st.booleans()):
        quality[1:] = quality[0]
        cost[1:] = cost[0]
    return quality, cost


def float_instance(rng: np.random.Generator, n: int, m: int, nan_rate: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    cost = rng.lognormal(0.0, 1.0, (n, m)) * rng.integers(1, 20, (n, 1))
    quality = rng.uniform(0.0, 1.0, (n, m))
    quality[rng.random((n, m)) < nan_rate / 2] = np.nan
    cost[rng.random((n, m)) < nan_rate / 2] = np.nan
    return quality, cost


def feasible_cells(quality: np.ndarray, cost: np.ndarray) -> np.ndarray:
    return np.isfinite(quality) & np.isfinite(cost)


def min_and_base_cost(quality: np.ndarray, cost: np.ndarray) -> tuple[float, float]:
    """Cost of every row's cheapest model and of its best-quality model."""
    ok = feasible_cells(quality, cost)
    served = ok.any(axis=1)
    if not served.any():
        return 0.0, 0.0
    cheapest = np.where(ok, cost, np.inf).min(axis=1)[served].sum()
    q = np.where(ok, quality, -np.inf)
    top = ok & (q == q.max(axis=1, keepdims=True))
    base = np.where(top, cost, np.inf).min(axis=1)[served].sum()
    return float(cheapest), float(base)


def options(quality: np.ndarray, cost: np.ndarray, allow_skip: bool) -> list[list[tuple[int, float, float]]]:
    """Per row: (model, quality, cost) of each choice; -1 is skip or "no model"."""
    ok = feasible_cells(quality, cost)
    rows = []
    for i in range(quality.shape[0]):
        row = [(int(t), float(quality[i, t]), float(cost[i, t])) for t in np.flatnonzero(ok[i])]
        if allow_skip or not row:
            row.append((-1, 0.0, 0.0))
        rows.append(row)
    return rows


def brute_force(quality: np.ndarray, cost: np.ndarray, budget: float, allow_skip: bool = False) -> float | None:
    """Best total quality over every assignment within budget (None: none fits)."""
    total_q = np.zeros(1)
    total_c = np.zeros(1)
    for row in options(quality, cost, allow_skip):
        total_q = np.add.outer(total_q, [q for _, q, _ in row]).ravel()
        total_c = np.add.outer(total_c, [c for _, _, c in row]).ravel()
    fits = total_c <= budget + TOL
    return float(total_q[fits].max()) if fits.any() else None


def quality_spread(quality: np.ndarray, cost: np.ndarray, allow_skip: bool = False) -> float:
    """The most one row can lose: max over rows of (best - worst quality)."""
    spreads = [max(q for _, q, _ in row) - min(q for _, q, _ in row) for row in options(quality, cost, allow_skip)]
    return max(spreads, default=0.0)


def reference_solve(
    quality: np.ndarray, cost: np.ndarray, budget: float, keys: np.ndarray, allow_skip: bool
) -> tuple[np.ndarray, float]:
    """The rule, literally and row by row: (choice, lam*)."""
    n = quality.shape[0]
    skip = allow_skip and budget < min_and_base_cost(quality, cost)[0]
    start = np.full(n, -1)
    breakpoints = []  # (lam, row, cost drop, from, to)
    for i, row in enumerate(options(quality, cost, skip)):
        if row == [(-1, 0.0, 0.0)] and not skip:
            continue
        best_q = max(q for _, q, _ in row)
        cur = min((c, t if t >= 0 else 10**9, t, q) for t, q, c in row if q == best_q)
        start[i] = cur[2]
        while True:
            cheaper = [(t, q, c) for t, q, c in row if c < cur[0]]
            if not cheaper:
                break
            lams = [((cur[3] - q) / (cur[0] - c), c, t if t >= 0 else 10**9, t, q) for t, q, c in cheaper]
            lam = min(x[0] for x in lams)
            _, c, _, t, q = min(x for x in lams if x[0] == lam)
            breakpoints.append((lam, i, cur[0] - c, cur[2], t))
            cur = (c, t if t >= 0 else 10**9, t, q)
    choice = start.copy()
    spent = sum(cost[i, start[i]] for i in range(n) if start[i] >= 0)
    if spent <= budget:
        return choice, 0.0
    lam_star = None
    for lam in sorted({b[0] for b in breakpoints}):
        spent -= sum(b[2] for b in breakpoints if b[0] == lam)
        if spent <= budget:
            lam_star = lam
            break
    assert lam_star is not None
    for lam, i, _, _, to in sorted(breakpoints):
        if lam <= lam_star:
            choice[i] = to
    tied = sorted((keys[b[1]], b[2], b[1], b[3]) for b in breakpoints if b[0] == lam_star)
    room = budget - spent
    for _, drop, i, before in tied:
        if drop > room:
            break
        room -= drop
        choice[i] = before
    return choice, lam_star


def streamed(
    quality: np.ndarray,
    cost: np.ndarray,
    budget: float,
    keys: np.ndarray,
    cuts: list[int],
    allow_skip: bool = False,
) -> tuple[np.ndarray, BudgetPlan]:
    """The pipeline's passes over batches split at ``cuts``."""
    edges = [0, *sorted(cuts), quality.shape[0]]
    batches = [(quality[a:b], cost[a:b], keys[a:b]) for a, b in pairwise(edges)]
    summary = merge_summaries([summarize(q, c) for q, c, _ in batches])
    skip = budget < summary.min_cost
    if skip and allow_skip:
        summary = merge_summaries([summarize(q, c, allow_skip=True) for q, c, _ in batches])
    found = critical_bin(summary, budget)
    if found is None:
        plan = solve_lambda(summary, budget, [], [], keys[:0])
    else:
        parts = [collect_bin(q, c, k, found, allow_skip=skip) for q, c, k in batches]
        plan = solve_lambda(summary, budget, *(np.concatenate(p) for p in zip(*parts, strict=True)))
    choice = np.concatenate([assign(q, c, plan, k, allow_skip=skip) for q, c, k in batches])
    return choice, plan


@contextmanager
def small_blocks(cells: int = 64) -> Iterator[None]:
    """Walk in tiny blocks, so that small inputs cross block boundaries."""
    saved = budget_walk.BLOCK_CELLS
    budget_walk.BLOCK_CELLS = cells
    try:
        yield
    finally:
        budget_walk.BLOCK_CELLS = saved


@contextmanager
def bracketed(sample_rows: int) -> Iterator[None]:
    """Take the bracketed in-memory path whatever the size, with a sample of about ``sample_rows``."""
    knobs = ((budget_solve, "BRACKET_MIN_ROWS"), (budget_windowed, "SAMPLE_ROWS"), (budget_window, "PASS_ROWS"))
    saved = [getattr(module, name) for module, name in knobs]
    for (module, name), value in zip(knobs, (0, sample_rows, 64), strict=True):
        setattr(module, name, value)
    try:
        yield
    finally:
        for (module, name), value in zip(knobs, saved, strict=True):
            setattr(module, name, value)


def assert_served_within_budget(
    quality: np.ndarray, cost: np.ndarray, sol: Any, budget: float, skipping: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Choices are takeable, every takeable row is served unless skipping, the
    totals match and the budget holds. Returns the takeable cells and the row indices."""
    ok = feasible_cells(quality, cost)
    rows = np.arange(quality.shape[0])
    chosen = sol.choice >= 0
    assert ok[rows[chosen], sol.choice[chosen]].all()
    if not skipping:
        assert np.array_equal(chosen, ok.any(axis=1))
    assert sol.total_cost <= budget * (1 + TOL) + TOL
    assert sol.total_cost == pytest.approx(cost[rows[chosen], sol.choice[chosen]].sum(), abs=1e-9)
    assert sol.total_quality == pytest.approx(quality[rows[chosen], sol.choice[chosen]].sum(), abs=1e-9)
    return ok, rows


def assert_valid(quality: np.ndarray, cost: np.ndarray, sol: Any, budget: float, skipping: bool = False) -> None:
    """Choices are takeable, every takeable row is served unless skipping,
    totals match, the budget holds, and each row is optimal for Q - lam*C
    (with skipping: over its models and the skip option)."""
    ok, rows = assert_served_within_budget(quality, cost, sol, budget, skipping)
    value = np.where(ok, quality - sol.lam * np.where(ok, cost, 0.0), -np.inf)
    for i in rows[ok.any(axis=1)]:
        best = value[i].max()
        mine = value[i, sol.choice[i]] if sol.choice[i] >= 0 else 0.0
        if skipping:
            best = max(best, 0.0)
        assert mine >= best - 1e-9 * (1 + abs(best) + sol.lam * np.abs(cost[i, ok[i]]).max())


# ---------------------------------------------------------------- small instances


@pytest.mark.timeout(60)
@SETTINGS
@given(grid_instances(), st.integers(0, 24))
def test_near_optimal_against_brute_force(instance: tuple[np.ndarray, np.ndarray], step: int) -> None:
    quality, cost = instance
    cheapest, base = min_and_base_cost(quality, cost)
    budget = cheapest + (base - cheapest) * step / 16 - (0.25 if step == 0 else 0.0)
    if budget < 0:
        budget = 0.0
    optimum = brute_force(quality, cost, budget)
    if optimum is None:
        with pytest.raises(InfeasibleBudget) as raised:
            solve_budget(quality, cost, budget)
        assert raised.value.minimum == cheapest
        return
    sol = solve_budget(quality, cost, budget)
    assert_valid(quality, cost, sol, budget)
    assert sol.total_quality <= optimum + TOL
    assert sol.total_quality >= optimum - quality_spread(quality, cost) - TOL
    again = solve_budget(np.asfortranarray(quality), np.asfortranarray(cost), budget)
    assert np.array_equal(again.choice, sol.choice) and again.lam == sol.lam


@pytest.mark.timeout(60)
@SETTINGS
@given(
    grid_instances(), st.integers(0, 24), st.booleans(), st.randoms(use_true_random=False), st.sampled_from([0, 1, 2])
)
def test_matches_literal_reference(
    instance: tuple[np.ndarray, np.ndarray], step: int, allow_skip: bool, random: Any, sample_rows: int
) -> None:
    quality, cost = instance
    cheapest, base = min_and_base_cost(quality, cost)
    low = 0.0 if allow_skip else cheapest
    budget = low + (base - low) * step / 16
    keys = np.array(random.sample(range(1000), quality.shape[0]))
    if sample_rows:
        with bracketed(sample_rows):
            sol = solve_budget(quality, cost, budget, keys=keys, allow_skip=allow_skip)
    else:
        sol = solve_budget(quality, cost, budget, keys=keys, allow_skip=allow_skip)
    choice, lam = reference_solve(quality, cost, budget, keys, allow_skip)
    assert np.array_equal(sol.choice, choice)
    assert sol.lam == lam


@pytest.mark.timeout(60)
@SETTINGS
@given(grid_instances(), st.integers(0, 24), st.integers(0, 24))
def test_monotone_in_budget(instance: tuple[np.ndarray, np.ndarray], a: int, b: int) -> None:
    quality, cost = instance
    cheapest, base = min_and_base_cost(quality, cost)
    small, large = (cheapest + (base - cheapest) * s / 16 for s in sorted((a, b)))
    lo, hi = solve_budget(quality, cost, small), solve_budget(quality, cost, large)
    assert hi.total_quality >= lo.total_quality - TOL
    assert hi.lam <= lo.lam


@pytest.mark.timeout(60)
@SETTINGS
@given(grid_instances(), st.integers(0, 16))
def test_skipping_against_brute_force(instance: tuple[np.ndarray, np.ndarray], step: int) -> None:
    quality, cost = instance
    cheapest, _ = min_and_base_cost(quality, cost)
    budget = cheapest * step / 16
    sol = solve_budget(quality, cost, budget, allow_skip=True)
    assert_valid(quality, cost, sol, budget, skipping=budget < cheapest)
    if budget < cheapest:
        optimum = brute_force(quality, cost, budget, allow_skip=True)
        assert sol.total_quality >= optimum - quality_spread(quality, cost, allow_skip=True) - TOL
    else:
        assert np.array_equal(sol.choice, solve_budget(quality, cost, budget).choice)


@pytest.mark.timeout(30)
@settings(max_examples=60, deadline=None, database=None)
@given(grid_instances(), st.integers(0, 40))
def test_no_row_skipped_when_cheapest_models_fit(instance: tuple[np.ndarray, np.ndarray], extra: int) -> None:
    quality, cost = instance
    cheapest, _ = min_and_base_cost(quality, cost)
    budget = cheapest + extra / 8
    with_skip = solve_budget(quality, cost, budget, allow_skip=True)
    without = solve_budget(quality, cost, budget)
    assert np.array_equal(with_skip.choice, without.choice)
    assert np.array_equal(with_skip.choice >= 0, feasible_cells(quality, cost).any(axis=1))


@pytest.mark.timeout(30)
def test_budget_covering_cheapest_models_never_skips_even_when_skipping_pays() -> None:
    # Skipping row 0 would fund row 1's upgrade, but the cheapest models fit.
    quality = np.array([[0.01, np.nan], [0.0, 1.0]])
    cost = np.array([[1.0, np.nan], [1.0, 2.0]])
    sol = solve_budget(quality, cost, 2.0, allow_skip=True)
    assert sol.choice.tolist() == [0, 0]
    below = solve_budget(quality, cost, 1.9, allow_skip=True)
    assert (below.choice == -1).any() and below.total_cost <= 1.9


# ---------------------------------------------------------------- streaming


@pytest.mark.timeout(60)
@settings(max_examples=60, deadline=None, database=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 300),
    st.integers(1, 6),
    st.sampled_from(["int", "str"]),
    st.booleans(),
)
def test_streamed_equals_in_memory(seed: int, n: int, m: int, key_kind: str, allow_skip: bool) -> None:
    rng = np.random.default_rng(seed)
    quality, cost = float_instance(rng, n, m)
    # Duplicate rows make exact ties across batches.
    dupes = rng.integers(0, n, n // 3)
    quality[dupes] = quality[0]
    cost[dupes] = cost[0]
    ids = rng.permutation(10 * n)[:n]
    keys = np.array([f"row-{i:06d}" for i in ids]) if key_kind == "str" else ids.astype(np.int64)
    cheapest, base = min_and_base_cost(quality, cost)
    # Budgets stay clear of the steps of C(lam): there the answer hinges on
    # the rounding of sums taken in a different order.
    if allow_skip:
        budget = cheapest * rng.uniform(0.05, 0.95)
    else:
        budget = cheapest * (1 + 1e-9) + (base - cheapest) * rng.uniform(0.02, 0.98)
    cuts = sorted(rng.integers(0, n + 1, rng.integers(0, 6)).tolist())
    with small_blocks():
        expected = solve_budget(quality, cost, budget, keys=keys, allow_skip=allow_skip)
        choice, plan = streamed(quality, cost, budget, keys, cuts, allow_skip)
    assert np.array_equal(choice, expected.choice)
    assert plan.lam == expected.lam
    assert_valid(quality, cost, expected, budget, skipping=allow_skip and budget < cheapest)
    assert plan.predicted_cost == pytest.approx(expected.total_cost, rel=1e-9, abs=1e-9)
    assert plan.predicted_cost <= budget


@pytest.mark.timeout(60)
@settings(max_examples=60, deadline=None, database=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 300),
    st.integers(1, 6),
    st.sampled_from(["int", "str"]),
    st.sampled_from(["float64", "float32", "float32 costs read as float64"]),
)
def test_kept_hulls_give_what_walking_again_gives(seed: int, n: int, m: int, key_kind: str, dtypes: str) -> None:
    """The Scorer keeps each row's hull from pass 1; pass 2 and the assignment read it instead of
    walking again. Same summary, same breakpoints, same plan and same choices, ties included."""
    rng = np.random.default_rng(seed)
    quality, cost = float_instance(rng, n, m)
    if n:
        dupes = rng.integers(0, n, n // 3)  # exact ties at the critical price
        quality[dupes], cost[dupes] = quality[0], cost[0]
        quality[rng.integers(0, n, n // 10)] = np.nan  # rows no model can take
    if dtypes != "float64":
        quality, cost = quality.astype(np.float32), cost.astype(np.float32)
    if dtypes == "float32 costs read as float64":  # as the pipeline reads its float32 column
        cost = cost.astype(np.float64)
    ids = rng.permutation(10 * n + 1)[:n]
    keys = np.array([f"row-{i:06d}" for i in ids]) if key_kind == "str" else ids.astype(np.int64)
    cheapest, base = min_and_base_cost(quality.astype(float), cost.astype(float))
    with small_blocks():
        walked = summarize(quality, cost)
        kept, hulls = summarize_hulls(quality, cost)
        assert (kept.base_cost, kept.min_cost, kept.n_rows) == (walked.base_cost, walked.min_cost, walked.n_rows)
        np.testing.assert_array_equal(kept.counts, walked.counts)
        np.testing.assert_array_equal(kept.hist, walked.hist)
        assert hulls.offsets.size == n + 1 and np.all(np.diff(hulls.offsets) >= 0)
        for fraction in (0.0, 0.3, 0.7, 1.0):
            budget = cheapest * (1 + 1e-9) + (base - cheapest) * fraction
            found = critical_bin(walked, budget)
            if found is None:
                plan = solve_lambda(walked, budget, [], [], keys[:0])
            else:
                lam, dcost, k = collect_bin(quality, cost, keys, found)
                lam2, dcost2, k2 = collect_hulls(hulls, cost, lambda rows: keys[rows], found)
                order, order2 = np.lexsort((k, lam)), np.lexsort((k2, lam2))
                np.testing.assert_array_equal(lam[order], lam2[order2])
                np.testing.assert_array_equal(dcost[order], dcost2[order2])
                np.testing.assert_array_equal(k[order], k2[order2])
                plan = solve_lambda(walked, budget, lam, dcost, k)
                assert plan == solve_lambda(walked, budget, lam2, dcost2, k2)
            def keys_at(rows: np.ndarray) -> np.ndarray:
                return keys[rows]

            assert np.array_equal(assign_hulls(hulls, plan, keys_at), assign(quality, cost, plan, keys))
            for tie_key in (keys[0] if n else None, None):  # other tie thresholds at the same price
                other = BudgetPlan(plan.lam, tie_key, plan.predicted_cost)
                assert np.array_equal(assign_hulls(hulls, other, keys_at), assign(quality, cost, other, keys))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_streamed_equals_in_memory_over_many_blocks(dtype: type) -> None:
    rng = np.random.default_rng(7)
    quality, cost = float_instance(rng, 40_000, 9, nan_rate=0.05)
    quality, cost = quality.astype(dtype), cost.astype(dtype)
    keys = rng.permutation(40_000)
    cheapest, base = min_and_base_cost(quality.astype(float), cost.astype(float))
    for fraction in (0.1, 0.5, 0.9):
        budget = cheapest + (base - cheapest) * fraction
        sol = solve_budget(quality, cost, budget, keys=keys)
        choice, _ = streamed(quality, cost, budget, keys, [5_000, 5_001, 23_456])
        assert np.array_equal(choice, sol.choice)
        assert_valid(quality.astype(float), cost.astype(float), sol, budget)
        assert budget - sol.total_cost < np.nanmax(cost)  # within one row of the budget


@pytest.mark.timeout(60)
@settings(max_examples=60, deadline=None, database=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(100, 3000),
    st.integers(1, 9),
    st.sampled_from([np.float64, np.float32]),
    st.sampled_from([0.0, 0.05]),
    st.sampled_from([16, 128, 1024]),
)
def test_bracketed_solve_equals_walking_every_row(
    seed: int, n: int, m: int, dtype: type, nan_rate: float, sample_rows: int
) -> None:
    rng = np.random.default_rng(seed)
    quality, cost = float_instance(rng, n, m, nan_rate)
    quality, cost = quality.astype(dtype), cost.astype(dtype)
    dupes = rng.integers(0, n, n // 4)
    quality[dupes], cost[dupes] = quality[0], cost[0]
    keys = rng.permutation(n)
    cheapest, base = min_and_base_cost(quality.astype(float), cost.astype(float))
    budget = cheapest * (1 + 1e-9) + (base - cheapest) * rng.uniform(0.02, 0.98)
    walked = budget_plain.solve_walked(quality, cost, budget, keys, False)
    with bracketed(sample_rows):
        fast = budget_windowed.solve_bracketed(quality, cost, budget, keys)
    if fast is None:  # the sample missed: solve_budget walks every row instead
        return
    assert np.array_equal(fast.choice, walked.choice)
    assert fast.lam == walked.lam
    assert fast.total_cost == pytest.approx(walked.total_cost, rel=1e-9)
    assert fast.total_quality == pytest.approx(walked.total_quality, rel=1e-9)
    assert fast.total_cost <= budget * (1 + 1e-12)


@pytest.mark.timeout(30)
def test_large_inputs_walk_only_the_rows_near_the_price() -> None:
    rng = np.random.default_rng(4)
    n = 100_000
    quality, cost = float_instance(rng, n, 6, nan_rate=0.01)
    cheapest, base = min_and_base_cost(quality, cost)
    budget = (cheapest + base) / 2
    keys = np.arange(n)
    sample = np.arange(0, n, n // budget_windowed.SAMPLE_ROWS)
    window = price_window(quality[sample], cost[sample], budget, n)
    assert window is not None
    lo, hi = window.lo, window.hi
    moving = np.flatnonzero(window_choices(quality, cost, window) == MOVING)
    assert moving.size < n // 10
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(budget_solve, "BRACKET_MIN_ROWS", n)
        sol = solve_budget(quality, cost, budget)
    walked = budget_plain.solve_walked(quality, cost, budget, keys, False)
    assert lo < sol.lam <= hi
    assert np.array_equal(sol.choice, walked.choice) and sol.lam == walked.lam
    assert_valid(quality, cost, sol, budget)


@pytest.mark.timeout(60)
@settings(max_examples=60, deadline=None, database=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(200, 3000),
    st.integers(2, 9),
    st.booleans(),
    st.booleans(),
    st.sampled_from([np.float64, np.float32]),
)
def test_windowed_passes_equal_in_memory(
    seed: int, n: int, m: int, keep_breakpoints: bool, routed_choices: bool, dtype: type
) -> None:
    rng = np.random.default_rng(seed)
    quality, cost = float_instance(rng, n, m, nan_rate=0.05)
    quality, cost = quality.astype(dtype), cost.astype(dtype)
    keys = rng.permutation(10 * n)[:n]
    cheapest, base = min_and_base_cost(quality.astype(float), cost.astype(float))
    budget = cheapest + (base - cheapest) * rng.uniform(0.1, 0.9)
    expected = solve_budget(quality, cost, budget, keys=keys)
    sample = rng.choice(n, n // 3, replace=False)
    window = price_window(quality[sample], cost[sample], budget, n)
    if window is None:
        return
    edges = [0, *sorted(rng.integers(0, n + 1, rng.integers(0, 6)).tolist()), n]
    batches = []
    for a, b in pairwise(edges):
        q, c, k = quality[a:b], cost[a:b], keys[a:b]
        batches.append((q, c, k, window_choices(q, c, window) if routed_choices else None))
    summaries = [
        summarize(q, c, window=window, keys=k if keep_breakpoints else None, choices=ch) for q, c, k, ch in batches
    ]
    merged = merge_summaries([BudgetSummary.empty(window=window), *summaries])
    if not window.lo < expected.lam <= window.hi:
        with pytest.raises(PriceWindowMissed, match="rerun the passes without a window"):
            critical_bin(merged, budget)
        return
    found = critical_bin(merged, budget)
    if keep_breakpoints:
        plan = solve_lambda(merged, budget)
    else:
        assert merged.breakpoints is None
        parts = [collect_bin(q, c, k, found, window=window) for q, c, k, _ in batches]
        plan = solve_lambda(merged, budget, *(np.concatenate(p) for p in zip(*parts, strict=True)))
    choice = np.concatenate([assign(q, c, plan, k, window=window, choices=ch) for q, c, k, ch in batches])
    assert np.array_equal(choice, expected.choice)
    assert plan.lam == expected.lam
    assert plan.predicted_cost == pytest.approx(expected.total_cost, rel=1e-9)


@pytest.mark.timeout(30)
def test_summaries_travel_sparse_and_keep_few_breakpoints() -> None:
    rng = np.random.default_rng(6)
    quality, cost = float_instance(rng, 2_000, 5)
    keys = np.arange(2_000)
    cheapest, base = min_and_base_cost(quality, cost)
    budget = (cheapest + base) / 2
    window = price_window(quality, cost, budget, 2_000)
    assert window is not None
    summary = summarize(quality, cost, window=window, keys=keys)
    copy = pickle.loads(pickle.dumps(summary))
    assert len(pickle.dumps(summary)) < 64 * 1024  # not the 1 MiB of dense bins
    assert np.array_equal(copy.hist, summary.hist) and np.array_equal(copy.counts, summary.counts)
    assert copy.window == window and all(map(np.array_equal, copy.breakpoints, summary.breakpoints))
    assert solve_lambda(copy, budget) == solve_lambda(summary, budget)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(budget_summary, "KEEP_BREAKPOINTS", summary.breakpoints[0].size)
        assert summary.merge(summary).breakpoints is None
    with pytest.raises(ValueError, match="collect_bin"):
        solve_lambda(summarize(quality, cost, window=window), budget)
    with pytest.raises(ValueError, match="different price windows"):
        summary.merge(summarize(quality, cost))
    with pytest.raises(ValueError, match="allow_skip=False"):
        summarize(quality, cost, window=window, allow_skip=True)
    with pytest.raises(ValueError, match="0 < lo < hi"):
        PriceWindow(2.0, 1.0)
    missed = PriceWindowMissed(window, 1.0, 3.0, 2.0)
    assert str(pickle.loads(pickle.dumps(missed))) == str(missed)


# ---------------------------------------------------------------- ties


@pytest.mark.timeout(30)
def test_duplicate_rows_upgrade_in_key_order() -> None:
    n = 10
    quality = np.tile([1.0, 2.0], (n, 1))
    cost = np.tile([1.0, 3.0], (n, 1))
    budget = n * 1.0 + 3 * 2.0 + 1.0  # room for three upgrades and a bit
    sol = solve_budget(quality, cost, budget)
    assert sol.choice.tolist() == [1, 1, 1] + [0] * 7
    assert sol.lam == 0.5
    assert budget - 2.0 < sol.total_cost <= budget
    reverse = solve_budget(quality, cost, budget, keys=np.arange(n)[::-1].copy())
    assert reverse.choice.tolist() == [0] * 7 + [1, 1, 1]
    assert solve_budget(quality, cost, budget).choice.tolist() == sol.choice.tolist()


@pytest.mark.timeout(30)
def test_tie_threshold_with_string_keys_across_batches() -> None:
    n = 9
    quality = np.tile([1.0, 2.0, 2.5], (n, 1))
    cost = np.tile([1.0, 3.0, 5.0], (n, 1))
    keys = np.array(["k5", "k1", "k8", "k3", "k0", "k7", "k2", "k6", "k4"])
    budget = n * 1.0 + 4 * 2.0 + 1.5
    sol = solve_budget(quality, cost, budget, keys=keys)
    upgraded = sorted(keys[sol.choice == 1])
    assert upgraded == ["k0", "k1", "k2", "k3"]
    choice, plan = streamed(quality, cost, budget, keys, [2, 3, 7])
    assert np.array_equal(choice, sol.choice)
    assert plan.tie_key == "k3" and plan.lam == 0.5


@pytest.mark.timeout(30)
def test_rows_sharing_a_key_upgrade_together_or_not_at_all() -> None:
    quality = np.tile([1.0, 2.0], (4, 1))
    cost = np.tile([1.0, 3.0], (4, 1))
    keys = np.array([1, 1, 2, 2])
    assert solve_budget(quality, cost, 4.0 + 3 * 2.0, keys=keys).choice.tolist() == [1, 1, 0, 0]
    assert solve_budget(quality, cost, 4.0 + 1 * 2.0, keys=keys).choice.tolist() == [0, 0, 0, 0]


@pytest.mark.timeout(30)
def test_lambda_is_the_smallest_price_that_fits() -> None:
    rng = np.random.default_rng(3)
    quality, cost = float_instance(rng, 500, 5)
    keys = np.arange(500)
    cheapest, base = min_and_base_cost(quality, cost)
    budget = (cheapest + base) / 2
    sol = solve_budget(quality, cost, budget)
    assert sol.lam > 0
    below = BudgetPlan(lam=sol.lam, tie_key=10**9, predicted_cost=math.nan)  # every tied row upgraded
    at = BudgetPlan(lam=sol.lam, tie_key=None, predicted_cost=math.nan)
    rows = np.arange(500)

    def spent(choice: np.ndarray) -> float:
        return float(cost[rows[choice >= 0], choice[choice >= 0]].sum())

    assert spent(assign(quality, cost, below, keys)) > budget
    assert spent(assign(quality, cost, at, keys)) <= budget


# ---------------------------------------------------------------- edges


@pytest.mark.timeout(30)
def test_infinite_budget_takes_best_quality_cheapest_first() -> None:
    quality = np.array([[0.5, 0.9, 0.9], [np.nan, 0.2, 0.1], [0.3, 0.3, 0.3]])
    cost = np.array([[1.0, 3.0, 2.0], [1.0, 5.0, 1.0], [2.0, 1.0, 1.0]])
    sol = solve_budget(quality, cost, math.inf)
    assert sol.choice.tolist() == [2, 1, 1]
    assert sol.lam == 0.0
    assert sol.total_cost == 8.0
    assert sol.total_quality == pytest.approx(1.4)


@pytest.mark.timeout(30)
def test_infeasible_budget_names_the_minimum() -> None:
    quality = np.array([[1.0, 0.5], [1.0, np.nan]])
    cost = np.array([[2.0, 0.25], [1.0, 0.1]])
    with pytest.raises(InfeasibleBudget) as raised:
        solve_budget(quality, cost, 0.5)
    assert raised.value.minimum == 1.25
    assert "budget 0.5 is below the cheapest assignment (1.25)" in str(raised.value)
    assert "at least 1.25" in str(raised.value)
    assert isinstance(raised.value, ValueError)
    copy = pickle.loads(pickle.dumps(raised.value))
    assert copy.minimum == 1.25 and str(copy) == str(raised.value)
    summary = summarize(quality, cost)
    with pytest.raises(InfeasibleBudget):
        critical_bin(summary, 0.5)
    assert solve_budget(quality, cost, 1.25).choice.tolist() == [1, 0]


@pytest.mark.timeout(30)
def test_minimum_in_message_is_never_rounded_down() -> None:
    err = InfeasibleBudget(1.0, 1.2345641)
    shown = str(err).split("at least ")[1].split(" ")[0]
    assert float(shown) >= 1.2345641


@pytest.mark.timeout(30)
@pytest.mark.parametrize("bad", [-1.0, math.nan, -math.inf])
def test_bad_budget_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="budget"):
        solve_budget(np.ones((2, 2)), np.ones((2, 2)), bad)


@pytest.mark.timeout(30)
def test_shapes_must_match() -> None:
    with pytest.raises(ValueError, match="same shape"):
        solve_budget(np.ones((2, 2)), np.ones((2, 3)), 5.0)
    with pytest.raises(ValueError, match="keys"):
        solve_budget(np.ones((2, 2)), np.ones((2, 2)), 5.0, keys=[1, 2, 3])


@pytest.mark.timeout(30)
def test_rows_no_model_can_take_are_ignored() -> None:
    quality = np.array([[np.nan, 1.0], [0.5, 0.7], [np.inf, 0.2]])
    cost = np.array([[1.0, np.nan], [1.0, 2.0], [1.0, np.nan]])
    sol = solve_budget(quality, cost, 1.0)
    assert sol.choice.tolist() == [-1, 0, -1]
    assert sol.total_cost == 1.0
    nothing = solve_budget(np.full((3, 2), np.nan), np.ones((3, 2)), 0.0)
    assert nothing.choice.tolist() == [-1, -1, -1] and nothing.total_cost == 0.0


@pytest.mark.timeout(30)
def test_empty_inputs() -> None:
    sol = solve_budget(np.zeros((0, 3)), np.zeros((0, 3)), 1.0)
    assert sol.choice.shape == (0,) and sol.total_cost == 0.0
    no_models = solve_budget(np.zeros((2, 0)), np.zeros((2, 0)), 1.0)
    assert no_models.choice.tolist() == [-1, -1]


@pytest.mark.timeout(30)
def test_summaries_must_agree_on_skipping() -> None:
    q, c = np.ones((2, 2)), np.ones((2, 2))
    with pytest.raises(ValueError, match="allow_skip"):
        summarize(q, c).merge(summarize(q, c, allow_skip=True))
    with pytest.raises(ValueError):
        merge_summaries([])
    merged = merge_summaries([summarize(q, c), BudgetSummary.empty(), summarize(q[:1], c[:1])])
    assert merged.n_rows == 3 and merged.base_cost == 3.0 and merged.min_cost == 3.0


# ---------------------------------------------------------------- the hull walk


@pytest.mark.timeout(30)
def test_row_breakpoints_walk_the_hull() -> None:
    quality = np.array([[1.0, 0.9, 0.5, 0.5], [3.0, 2.0, 1.0, np.nan], [1.0, 1.0, 1.0, 1.0]])
    cost = np.array([[3.0, 2.0, 1.0, 2.5], [3.0, 2.0, 1.0, 0.5], [2.0, 2.0, 2.0, 2.0]])
    start, row, lam, drop, to = row_breakpoints(quality, cost)
    assert start.tolist() == [0, 0, 0]
    steps = sorted(zip(row.tolist(), lam.tolist(), drop.tolist(), to.tolist(), strict=True))
    # Row 0 passes the dominated (2.5, 0.5); row 1's points are collinear, so
    # it jumps straight to the cheapest; row 2 has nowhere to go.
    assert steps == [(0, pytest.approx(0.1), 1.0, 1), (0, pytest.approx(0.4), 1.0, 2), (1, 1.0, 2.0, 2)]


@pytest.mark.timeout(30)
def test_skip_option_is_the_last_hull_point() -> None:
    quality = np.array([[1.0, 0.8], [1.0, 0.5]])
    cost = np.array([[2.0, 1.0], [2.0, 1.0]])
    start, row, lam, drop, to = row_breakpoints(quality, cost, allow_skip=True)
    assert start.tolist() == [0, 0]
    steps = sorted(zip(row.tolist(), lam.tolist(), drop.tolist(), to.tolist(), strict=True))
    # Row 1's points and the skip option (0, 0) are collinear: one jump.
    assert steps == [(0, pytest.approx(0.2), 1.0, 1), (0, 0.8, 1.0, -1), (1, 0.5, 2.0, -1)]


@pytest.mark.timeout(30)
def test_breakpoint_prices_increase_per_row_and_sum_to_the_cost_range() -> None:
    rng = np.random.default_rng(11)
    quality, cost = float_instance(rng, 2_000, 12)
    with small_blocks(4096):
        _, row, lam, drop, _ = row_breakpoints(quality, cost)
    order = np.lexsort((np.arange(row.size), row))
    same_row = row[order][1:] == row[order][:-1]
    assert (np.diff(lam[order])[same_row] >= 0).all()
    assert (lam > 0).all() and (drop > 0).all()
    cheapest, base = min_and_base_cost(quality, cost)
    assert drop.sum() == pytest.approx(base - cheapest)
    summary = summarize(quality, cost)
    assert summary.counts.sum() == row.size and summary.hist.sum() == pytest.approx(drop.sum())
    assert summary.hist.shape == (NBINS,)


@pytest.mark.timeout(30)
def test_assign_at_a_price_is_the_tie_broken_argmax() -> None:
    rng = np.random.default_rng(5)
    quality, cost = float_instance(rng, 3_000, 7)
    keys = np.arange(3_000)
    ok = feasible_cells(quality, cost)
    for lam in rng.lognormal(-3.0, 2.0, 8):
        value = np.where(ok, quality - lam * np.where(ok, cost, 0.0), -np.inf)
        expected = np.where(ok.any(axis=1), value.argmax(axis=1), -1)
        plan = BudgetPlan(lam=float(lam), tie_key=None, predicted_cost=math.nan)
        assert np.array_equal(assign(quality, cost, plan, keys), expected)


@pytest.mark.timeout(30)
def test_price_bins_are_ordered_like_prices() -> None:
    rng = np.random.default_rng(2)
    lam = np.sort(np.concatenate([rng.lognormal(0.0, 20.0, 10_000), [5e-324, 1e-300, 1.0, 1e300, np.inf]]))
    bins = budget_summary.lam_bin(lam)
    assert (np.diff(bins) >= 0).all() and bins.max() < NBINS


# ---------------------------------------------------------------- against a MILP


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", range(4))
def test_within_one_row_of_milp(seed: int) -> None:
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(seed)
    n, m = 40, 5
    quality, cost = float_instance(rng, n, m, nan_rate=0.15)
    ok = feasible_cells(quality, cost)
    quality[ok.sum(axis=1) == 0, 0] = 0.5
    cost[ok.sum(axis=1) == 0, 0] = 1.0
    ok = feasible_cells(quality, cost)
    cheapest, base = min_and_base_cost(quality, cost)
    budget = cheapest + (base - cheapest) * rng.uniform(0.2, 0.8)

    q = np.where(ok, quality, 0.0).ravel()
    c = np.where(ok, cost, 0.0).ravel()
    one_per_row = np.kron(np.eye(n), np.ones(m))
    result = optimize.milp(
        -q,
        constraints=[
            optimize.LinearConstraint(one_per_row, 1, 1),
            optimize.LinearConstraint(c[None, :], -np.inf, budget),
        ],
        integrality=np.ones(n * m),
        bounds=optimize.Bounds(0, ok.ravel().astype(float)),
    )
    assert result.success
    optimum = -result.fun
    sol = solve_budget(quality, cost, budget)
    assert_valid(quality, cost, sol, budget)
    assert sol.total_quality <= optimum + 1e-6
    assert sol.total_quality >= optimum - quality_spread(quality, cost) - 1e-6


# ---------------------------------------------------------------- float32


@pytest.mark.timeout(30)
def test_float32_inputs_keep_the_budget() -> None:
    rng = np.random.default_rng(9)
    quality, cost = float_instance(rng, 5_000, 6)
    q32, c32 = quality.astype(np.float32), cost.astype(np.float32)
    cheapest, base = min_and_base_cost(q32.astype(float), c32.astype(float))
    budget = (cheapest + base) / 2
    sol32 = solve_budget(q32, c32, budget)
    sol64 = solve_budget(q32.astype(float), c32.astype(float), budget)
    assert_valid(q32.astype(float), c32.astype(float), sol32, budget)
    assert sol32.total_quality == pytest.approx(sol64.total_quality, abs=quality_spread(quality, cost))


# ---------------------------------------------------------------- caps


def cap_limits(caps: dict[int, ModelCap]) -> list[CapLimit]:
    out = []
    for col, cap in sorted(caps.items()):
        if cap.max_rows is not None:
            out.append(CapLimit(col, False, float(cap.max_rows)))
        if cap.max_cost is not None:
            out.append(CapLimit(col, True, float(cap.max_cost)))
    return out


def usage(cost: np.ndarray, choice: np.ndarray, lim: CapLimit, weights: np.ndarray | None = None) -> float:
    on = choice == lim.col
    if lim.on_cost:
        return float(cost[on, lim.col].sum())
    return float(on.sum() if weights is None else weights[on].sum())


def brute_force_capped(
    quality: np.ndarray,
    cost: np.ndarray,
    budget: float,
    limits: list[CapLimit],
    allow_skip: bool = False,
    weights: np.ndarray | None = None,
) -> float | None:
    """Best total quality over every assignment within the budget and the caps."""
    weights = np.ones(quality.shape[0]) if weights is None else weights
    total_q, total_c = np.zeros(1), np.zeros(1)
    used = [np.zeros(1) for _ in limits]
    for i, row in enumerate(options(quality, cost, allow_skip)):
        total_q = np.add.outer(total_q, [q for _, q, _ in row]).ravel()
        total_c = np.add.outer(total_c, [c for _, _, c in row]).ravel()
        for k, lim in enumerate(limits):
            step = [(c if lim.on_cost else weights[i]) if t == lim.col else 0.0 for t, _, c in row]
            used[k] = np.add.outer(used[k], step).ravel()
    fits = total_c <= budget + TOL
    for k, lim in enumerate(limits):
        fits &= used[k] <= lim.limit + TOL
    return float(total_q[fits].max()) if fits.any() else None


def assert_capped_valid(
    quality: np.ndarray, cost: np.ndarray, sol: Any, budget: float, caps: dict[int, ModelCap], allow_skip: bool
) -> None:
    """Choices are takeable, every takeable row is served unless skipping is
    allowed, the totals match, and the budget and every cap hold."""
    assert_served_within_budget(quality, cost, sol, budget, allow_skip)
    for lim in cap_limits(caps):
        assert usage(cost, sol.choice, lim) <= lim.limit * (1 + TOL) + TOL
    assert sol.bound >= sol.total_quality - 1e-9


@st.composite
def cap_sets(draw: Any, n_models: int, n_rows: int, max_cost: float) -> dict[int, ModelCap]:
    cols = draw(st.lists(st.integers(0, n_models - 1), min_size=1, max_size=min(2, n_models), unique=True))
    caps = {}
    for col in cols:
        rows = draw(st.one_of(st.none(), st.integers(0, n_rows)))
        spend = draw(st.one_of(st.none(), st.integers(0, 12).map(lambda x: x / 12 * max_cost)))
        if rows is None and spend is None:
            rows = draw(st.integers(0, n_rows))
        caps[col] = ModelCap(max_rows=rows, max_cost=spend)
    return caps


CAP_SETTINGS = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.timeout(90)
@CAP_SETTINGS
@given(grid_instances(max_rows=5, max_models=3), st.integers(0, 24), st.booleans(), st.data())
def test_caps_against_brute_force(
    instance: tuple[np.ndarray, np.ndarray], step: int, allow_skip: bool, data: Any
) -> None:
    quality, cost = instance
    if allow_skip:
        # Rows are skipped only when they must be, so skipping rows of negative
        # quality (which would pay) is out of scope here.
        quality = np.abs(quality)
    n, m = quality.shape
    cheapest, base = min_and_base_cost(quality, cost)
    budget = (0.0 if allow_skip else cheapest) + (base - (0.0 if allow_skip else cheapest)) * step / 16
    caps = data.draw(cap_sets(m, n, max(base, 1.0)))
    limits = cap_limits(caps)
    serving = brute_force_capped(quality, cost, budget, limits)
    skipping = brute_force_capped(quality, cost, budget, limits, allow_skip=True) if allow_skip else serving
    try:
        sol = solve_budget(quality, cost, budget, caps=caps, allow_skip=allow_skip)
    except InfeasibleCaps:
        assert not allow_skip and serving is None
        return
    except InfeasibleBudget:
        assert not allow_skip and budget < cheapest
        return
    assert_capped_valid(quality, cost, sol, budget, caps, allow_skip)
    # Serve every row when that fits the budget and the caps; skip only then.
    optimum = serving if serving is not None and budget >= cheapest else skipping
    assert optimum is not None and skipping is not None
    assert sol.total_quality <= skipping + TOL
    assert sol.bound >= skipping - TOL
    spread = quality_spread(quality, cost, allow_skip)
    assert sol.total_quality >= optimum - (len(limits) + 1) * spread - TOL


def milp_capped(
    quality: np.ndarray, cost: np.ndarray, budget: float, limits: list[CapLimit], *, relax: bool = False
) -> float:
    """The exact optimum (or with relax=True, the LP bound) with scipy's milp."""
    optimize = pytest.importorskip("scipy.optimize")
    n, m = quality.shape
    ok = feasible_cells(quality, cost)
    c = np.where(ok, cost, 0.0)
    constraints = [
        optimize.LinearConstraint(np.kron(np.eye(n), np.ones(m)), 1, 1),
        optimize.LinearConstraint(c.ravel()[None, :], -np.inf, budget),
    ]
    for lim in limits:
        use = np.zeros((n, m))
        use[:, lim.col] = c[:, lim.col] if lim.on_cost else ok[:, lim.col]
        constraints.append(optimize.LinearConstraint(use.ravel()[None, :], -np.inf, lim.limit))
    result = optimize.milp(
        -np.where(ok, quality, 0.0).ravel(),
        constraints=constraints,
        integrality=np.zeros(n * m) if relax else np.ones(n * m),
        bounds=optimize.Bounds(0, ok.ravel().astype(float)),
    )
    assert result.success
    return -result.fun


def capped_instance(seed: int, n: int = 50, m: int = 5) -> tuple[np.ndarray, np.ndarray, float, dict[int, ModelCap]]:
    """A medium instance whose budget and caps (a row cap on the most wanted
    model, a spend cap on another) all bind."""
    rng = np.random.default_rng(seed)
    quality, cost = float_instance(rng, n, m, nan_rate=0.0)
    cheapest, base = min_and_base_cost(quality, cost)
    budget = cheapest + (base - cheapest) * rng.uniform(0.3, 0.9)
    favourite = int(np.bincount(quality.argmax(axis=1), minlength=m).argmax())
    other = (favourite + 1 + int(rng.integers(0, m - 1))) % m
    caps = {favourite: ModelCap(max_rows=int(rng.integers(2, n // 4)))}
    if seed % 2:
        caps[other] = ModelCap(max_cost=float(cost[:, other].mean() * rng.uniform(1, 5)))
    return quality, cost, budget, caps


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", range(8))
def test_caps_within_rows_of_milp(seed: int) -> None:
    quality, cost, budget, caps = capped_instance(seed)
    limits = cap_limits(caps)
    optimum = milp_capped(quality, cost, budget, limits)
    lp = milp_capped(quality, cost, budget, limits, relax=True)
    sol = solve_budget(quality, cost, budget, caps=caps)
    assert_capped_valid(quality, cost, sol, budget, caps, allow_skip=False)
    assert sol.total_quality <= optimum + 1e-6
    assert sol.bound >= lp - 1e-6  # weak duality: the bound is at least the LP optimum
    assert sol.total_quality >= lp - (len(limits) + 1) * quality_spread(quality, cost) - 1e-6
    assert len(sol.cap_prices) == len(limits) and min(sol.cap_prices) >= 0


@pytest.mark.timeout(60)
@settings(max_examples=25, deadline=None, database=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 120), st.integers(2, 5), st.booleans())
def test_streamed_caps_equal_in_memory(seed: int, n: int, m: int, allow_skip: bool) -> None:
    rng = np.random.default_rng(seed)
    quality, cost = float_instance(rng, n, m)
    keys = rng.permutation(10 * n)[:n]
    cheapest, base = min_and_base_cost(quality, cost)
    low = 0.0 if allow_skip else cheapest * (1 + 1e-9)
    budget = low + (max(base, low) - low) * rng.uniform(0.05, 0.95)
    caps = {int(rng.integers(0, m)): ModelCap(max_rows=int(rng.integers(0, n + 1)))}
    spend_col = int(rng.integers(0, m))
    caps[spend_col] = ModelCap(max_rows=caps.get(spend_col, ModelCap(1)).max_rows, max_cost=float(rng.uniform(0, 10)))
    cuts = sorted(rng.integers(0, n + 1, rng.integers(0, 5)).tolist())
    edges = [0, *cuts, n]
    batches = [(quality[a:b], cost[a:b], keys[a:b]) for a, b in pairwise(edges)]
    try:
        expected = solve_budget(quality, cost, budget, caps=caps, allow_skip=allow_skip, keys=keys)
    except InfeasibleCaps:
        with pytest.raises(InfeasibleCaps):
            solve_capped(lambda: batches, budget, caps, allow_skip=allow_skip)
        return
    plan = solve_capped(lambda: batches, budget, caps, allow_skip=allow_skip)
    choice = np.concatenate([assign_capped(q, c, plan, k) for q, c, k in batches])
    assert np.array_equal(choice, expected.choice)
    assert plan.predicted_cost == pytest.approx(expected.total_cost, rel=1e-9, abs=1e-9)
    assert plan.bound == pytest.approx(expected.bound, rel=1e-9, abs=1e-9)
    assert plan.passes >= 3
    assert_capped_valid(quality, cost, expected, budget, caps, allow_skip)


@pytest.mark.timeout(30)
def test_caps_are_deterministic_and_unbinding_caps_change_nothing() -> None:
    quality, cost, budget, caps = capped_instance(3, n=400)
    sol = solve_budget(quality, cost, budget, caps=caps)
    again = solve_budget(np.asfortranarray(quality), np.asfortranarray(cost), budget, caps=dict(reversed(caps.items())))
    assert np.array_equal(sol.choice, again.choice) and sol.cap_prices == again.cap_prices
    plain = solve_budget(quality, cost, budget)
    loose = {col: ModelCap(max_rows=400, max_cost=math.inf) for col in range(quality.shape[1])}
    unbound = solve_budget(quality, cost, budget, caps=loose)
    assert np.array_equal(unbound.choice, plain.choice) and unbound.lam == plain.lam
    assert unbound.cap_prices == (0.0,) * 5
    as_list = solve_budget(quality, cost, budget, caps=[caps.get(col) for col in range(5)])
    assert np.array_equal(as_list.choice, sol.choice)


@pytest.mark.timeout(30)
def test_row_cap_with_identical_rows_fills_the_cap_in_key_order() -> None:
    # Ten identical rows all prefer model 1, which takes at most three: the
    # price that pushes them off moves all ten at once; the fill brings back three.
    quality = np.tile([0.5, 0.9], (10, 1))
    cost = np.tile([1.0, 1.0], (10, 1))
    keys = np.arange(10)[::-1].copy()
    sol = solve_budget(quality, cost, math.inf, caps={1: ModelCap(max_rows=3)}, keys=keys)
    assert sol.choice.tolist() == [0] * 7 + [1] * 3
    assert sol.total_quality == pytest.approx(7 * 0.5 + 3 * 0.9)
    assert sol.bound >= sol.total_quality - 1e-9


@pytest.mark.timeout(30)
def test_caps_that_cannot_be_met() -> None:
    # Row 1 can only take model 0, which is capped at no rows.
    quality = np.array([[1.0, 0.5], [1.0, np.nan]])
    cost = np.ones((2, 2))
    caps = {0: ModelCap(max_rows=0)}
    with pytest.raises(InfeasibleCaps) as raised:
        solve_budget(quality, cost, 10.0, caps=caps)
    assert "model 0's cap of 0 rows cannot be met" in str(raised.value)
    assert "allow skipping rows" in str(raised.value)
    copy = pickle.loads(pickle.dumps(raised.value))
    assert str(copy) == str(raised.value)
    sol = solve_budget(quality, cost, 10.0, caps=caps, allow_skip=True)
    assert sol.choice.tolist() == [1, -1]
    with pytest.raises(InfeasibleBudget):
        solve_budget(quality, cost, 1.0, caps=caps)


@pytest.mark.timeout(30)
def test_bad_caps_are_rejected() -> None:
    q = c = np.ones((2, 2))
    with pytest.raises(ValueError, match="max_rows or max_cost"):
        ModelCap()
    with pytest.raises(ValueError, match="max_rows"):
        ModelCap(max_rows=-1)
    with pytest.raises(ValueError, match="max_rows"):
        ModelCap(max_rows=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_cost"):
        ModelCap(max_cost=math.nan)
    with pytest.raises(ValueError, match="model column"):
        solve_budget(q, c, 5.0, caps={2: ModelCap(max_rows=1)})
    with pytest.raises(TypeError, match="ModelCap"):
        solve_budget(q, c, 5.0, caps={0: 1})
    with pytest.raises(ValueError, match="one ModelCap or None per model"):
        solve_budget(q, c, 5.0, caps=[ModelCap(max_rows=1)])


# ---------------------------------------------------------------- groups


def group_instance(
    quality: np.ndarray, cost: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-group sums over the rows some model can take: (quality, cost, sizes, servable, member)."""
    servable = feasible_cells(quality, cost).any(axis=1)
    names, member = np.unique(labels[servable], return_inverse=True)
    gq = np.zeros((names.size, quality.shape[1]))
    gc = np.zeros_like(gq)
    for g in range(names.size):
        gq[g] = quality[servable][member == g].sum(axis=0)
        gc[g] = cost[servable][member == g].sum(axis=0)
    return gq, gc, np.bincount(member, minlength=names.size).astype(float), servable, member


@pytest.mark.timeout(60)
@SETTINGS
@given(grid_instances(max_rows=8, max_models=3), st.integers(0, 24), st.data())
def test_groups_against_brute_force(instance: tuple[np.ndarray, np.ndarray], step: int, data: Any) -> None:
    quality, cost = instance
    n = quality.shape[0]
    labels = np.array(data.draw(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=n, max_size=n)))
    gq, gc, _, servable, member = group_instance(quality, cost, labels)
    cheapest, base = min_and_base_cost(gq, gc)
    budget = cheapest + (base - cheapest) * step / 16
    optimum = brute_force(gq, gc, budget)
    if optimum is None:
        with pytest.raises(InfeasibleBudget) as raised:
            solve_budget_groups(quality, cost, labels, budget)
        assert raised.value.minimum == pytest.approx(cheapest)
        return
    sol = solve_budget_groups(quality, cost, labels, budget)
    assert (sol.choice[~servable] == -1).all()
    group_choice = np.full(gq.shape[0], -2)
    for g, row_choice in zip(member, sol.choice[servable], strict=True):
        assert group_choice[g] in (-2, row_choice)  # one model per group
        group_choice[g] = row_choice
    assert_valid(gq, gc, type(sol)(group_choice, sol.lam, sol.total_cost, sol.total_quality), budget)
    assert sol.total_quality <= optimum + TOL
    assert sol.total_quality >= optimum - quality_spread(gq, gc) - TOL
    assert sol.bound >= optimum - TOL


@pytest.mark.timeout(60)
@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(grid_instances(max_rows=7, max_models=3), st.integers(0, 24), st.data())
def test_groups_with_caps_against_brute_force(instance: tuple[np.ndarray, np.ndarray], step: int, data: Any) -> None:
    quality, cost = instance
    n, m = quality.shape
    labels = np.array(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    gq, gc, sizes, servable, member = group_instance(quality, cost, labels)
    cheapest, base = min_and_base_cost(gq, gc)
    budget = cheapest + (base - cheapest) * step / 16
    caps = data.draw(cap_sets(m, n, max(base, 1.0)))
    limits = cap_limits(caps)
    optimum = brute_force_capped(gq, gc, budget, limits, weights=sizes)
    try:
        sol = solve_budget_groups(quality, cost, labels, budget, caps=caps)
    except (InfeasibleCaps, InfeasibleBudget):
        assert optimum is None
        return
    assert optimum is not None
    # A group no model can take as a whole is left out, like a row no model can take.
    assert_capped_valid(quality, cost, sol, budget, caps, allow_skip=True)
    group_ok = feasible_cells(gq, gc).any(axis=1)
    assert np.array_equal(sol.choice >= 0, np.isin(np.arange(n), np.flatnonzero(servable)[group_ok[member]]))
    for g in range(gq.shape[0]):
        assert len(set(sol.choice[servable][member == g].tolist())) == 1
    assert optimum + TOL >= sol.total_quality >= optimum - (len(limits) + 1) * quality_spread(gq, gc) - TOL


@pytest.mark.timeout(60)
@SETTINGS
@given(grid_instances(max_rows=12, max_models=3), st.integers(0, 24), st.data())
def test_streamed_groups_equal_in_memory(instance: tuple[np.ndarray, np.ndarray], step: int, data: Any) -> None:
    """Per-batch group sums merged on a driver give the in-memory answer, for any split of the rows."""
    quality, cost = instance
    n = quality.shape[0]
    labels = np.array(data.draw(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=n, max_size=n)))
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=4)))
    gq, gc, _, _, _ = group_instance(quality, cost, labels)
    cheapest, base = min_and_base_cost(gq, gc)
    budget = cheapest + (base - cheapest) * step / 16
    try:
        expected = solve_budget_groups(quality, cost, labels, budget, allow_skip=step % 2 == 1)
    except InfeasibleBudget:
        with pytest.raises(InfeasibleBudget):
            solve_groups(merge_group_sums([group_sums(quality, cost, labels)]), budget)
        return
    bounds = [0, *cuts, n]
    parts = [group_sums(quality[a:b], cost[a:b], labels[a:b]) for a, b in pairwise(bounds)]
    plan = solve_groups(merge_group_sums(parts), budget, allow_skip=step % 2 == 1)
    choice = np.concatenate([plan.assign(quality[a:b], cost[a:b], labels[a:b]) for a, b in pairwise(bounds)])
    assert np.array_equal(choice, expected.choice)
    assert plan.predicted_cost == expected.total_cost <= budget + TOL
    assert plan.predicted_quality == expected.total_quality
    # Pickled plans travel to Ray workers.
    again = pickle.loads(pickle.dumps(plan))
    assert np.array_equal(again.assign(quality, cost, labels), expected.choice)
