"""Benchmark of the budget solver against the baselines the issue names, measured in the same run.

    .venv/bin/python bench/budget.py                      # 10M rows x 16 models, then Ray on 10M rows
    .venv/bin/python bench/budget.py --rows 1000000 --ray-rows 1000000 --repeat 3
    .venv/bin/python bench/budget.py --no-ray             # in-memory table only

In memory: one argmax(Q - lam*C) pass over the arrays (the floor any price-based router pays),
`solve_budget`, and the naive alternative, bisection on lam with a full argmax pass and cost sum
per step until a step moves less than one row's cost. Through Ray (local, 2 CPUs): the routing
pass (a small random embedding per row, Q = sigmoid(E @ P), cost = tokens x price, materialised)
followed by the unbudgeted assignment, against the same with the budget's passes (summary
riding on the routing pass, the critical bin's breakpoints, assignment at lam*).

Times are the median of --repeat runs; ratios are taken run by run, then the median.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from router.budget import (  # noqa: E402
    BudgetPlan,
    BudgetSummary,
    PriceWindow,
    assign,
    collect_bin,
    critical_bin,
    price_window,
    solve_budget,
    solve_lambda,
    summarize,
    window_choices,
)
from router.budget.windowed import SAMPLE_ROWS  # noqa: E402

# Rows per block of the baseline argmax pass: the same cache-sized blocks the solver walks.
ARGMAX_BLOCK = 1 << 14


# ---------------------------------------------------------------- synthetic routing data


class Synthetic:
    """What the routing stage computes per batch, from a small random embedding: predicted
    quality (a logistic of a linear score) and cost (estimated tokens x each model's price)."""

    def __init__(self, models: int, dim: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.models, self.dim, self.seed = models, dim, seed
        self.projection = (rng.standard_normal((dim, models)) / np.sqrt(dim)).astype(np.float32)
        self.bias = rng.normal(0.0, 0.5, models).astype(np.float32)
        # Prices spread over two and a half orders of magnitude, like a real API pool.
        self.price = np.exp(rng.uniform(np.log(0.05), np.log(15.0), models)) * 1e-6

    def batch(self, first_id: int, n: int, dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, first_id])
        emb = rng.standard_normal((n, self.dim), dtype=np.float32)
        quality = emb @ self.projection
        quality += self.bias
        np.negative(quality, out=quality)
        np.exp(quality, out=quality)
        quality += 1.0
        np.reciprocal(quality, out=quality)
        tokens = rng.lognormal(6.0, 1.0, n)
        cost = np.multiply.outer(tokens, self.price)
        return quality.astype(dtype, copy=False), cost.astype(dtype, copy=False)

    def matrices(self, rows: int, dtype: type, chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
        quality = np.empty((rows, self.models), dtype)
        cost = np.empty((rows, self.models), dtype)
        for lo in range(0, rows, chunk):
            n = min(chunk, rows - lo)
            quality[lo : lo + n], cost[lo : lo + n] = self.batch(lo, n, dtype)
        return quality, cost


def midpoint_budget(quality: np.ndarray, cost: np.ndarray) -> float:
    """Halfway between every row's cheapest model and every row's best one: a budget that binds."""
    rows = np.arange(quality.shape[0])
    cheapest = float(cost.min(axis=1).sum())
    best = float(cost[rows, quality.argmax(axis=1)].sum())
    return cheapest + 0.5 * (best - cheapest)


# ---------------------------------------------------------------- baselines


def argmax_pass(quality: np.ndarray, cost: np.ndarray, lam: float, out: np.ndarray, *, spend: bool = False) -> float:
    """out[i] = argmax_t Q[i,t] - lam*C[i,t], in cache-sized blocks with reused buffers; with
    spend=True also the total cost of those choices (what one bisection step needs)."""
    n, m = quality.shape
    work = np.empty((ARGMAX_BLOCK, m), np.result_type(quality, cost))
    offsets = np.arange(ARGMAX_BLOCK) * m
    total = 0.0
    for lo in range(0, n, ARGMAX_BLOCK):
        hi = min(lo + ARGMAX_BLOCK, n)
        w = work[: hi - lo]
        np.multiply(cost[lo:hi], -lam, out=w)
        w += quality[lo:hi]
        choice = w.argmax(axis=1)
        out[lo:hi] = choice
        if spend:
            total += float(cost[lo:hi].ravel().take(offsets[: hi - lo] + choice).sum())
    return total


def argmax_whole(quality: np.ndarray, cost: np.ndarray, lam: float, out: np.ndarray) -> None:
    """The one-liner: (Q - lam*C).argmax(axis=1), with its full-size temporaries."""
    out[:] = (quality - lam * cost).argmax(axis=1)


def bisection(quality: np.ndarray, cost: np.ndarray, budget: float) -> tuple[float, int]:
    """The naive solver: bisect on lam, one full pass per step, until a step moves less
    than one row's cost (or 60 steps). Returns (lam, passes)."""
    out = np.empty(quality.shape[0], np.int64)
    one_row = float(np.nanmax(cost))
    passes = 1
    if argmax_pass(quality, cost, 0.0, out, spend=True) <= budget:
        return 0.0, passes
    lo, hi = 0.0, 1.0
    while True:
        passes += 1
        spent_hi = argmax_pass(quality, cost, hi, out, spend=True)
        if spent_hi <= budget:
            break
        lo, hi = hi, hi * 4
    spent_lo = math.inf
    for _ in range(60):
        if spent_lo - spent_hi <= one_row:
            break
        mid = 0.5 * (lo + hi)
        passes += 1
        spent = argmax_pass(quality, cost, mid, out, spend=True)
        if spent <= budget:
            hi, spent_hi = mid, spent
        else:
            lo, spent_lo = mid, spent
    return hi, passes


def _ragged(values: np.ndarray) -> np.ndarray:
    out = np.empty(1, dtype=object)
    out[0] = values
    return out


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Peak memory allocated while fn runs, beyond what was live before (numpy reports to tracemalloc)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak - before


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


# ---------------------------------------------------------------- in memory


def bench_in_memory(rows: int, models: int, dtype: type, repeat: int, naive_repeat: int) -> None:
    synth = Synthetic(models, dim=64)
    t0 = time.perf_counter()
    quality, cost = synth.matrices(rows, dtype)
    budget = midpoint_budget(quality, cost)
    print(f"\n## In memory: {rows:,} rows x {models} models, {np.dtype(dtype).name} "
          f"({gib(quality.nbytes + cost.nbytes)} of input, made in {time.perf_counter() - t0:.1f}s)")  # fmt: skip

    sol = solve_budget(quality, cost, budget)  # warm-up, and lam* for the baselines
    out = np.empty(rows, np.int64)
    base_t, whole_t, solve_t, naive_t, ratios, speedups = [], [], [], [], [], []
    passes = 0
    for r in range(repeat):
        base_t.append(timed(lambda: argmax_pass(quality, cost, sol.lam, out)))
        whole_t.append(timed(lambda: argmax_whole(quality, cost, sol.lam, out)))
        solve_t.append(timed(lambda: solve_budget(quality, cost, budget)))
        ratios.append(solve_t[-1] / min(base_t[-1], whole_t[-1]))
        if r < naive_repeat:
            naive = {}
            naive_t.append(timed(lambda: naive.update(result=bisection(quality, cost, budget))))
            passes = naive["result"][1]
            speedups.append(naive_t[-1] / solve_t[-1])
    peak = peak_extra_bytes(lambda: solve_budget(quality, cost, budget))
    med = statistics.median

    print(f"budget {budget:.6g} (halfway from the cheapest to the best models): lam* = {sol.lam:.6g}, "
          f"spend {sol.total_cost:.6g}, bound - quality = {sol.bound - sol.total_quality:.3g}")  # fmt: skip
    print()
    print("| what | time (s) | ratio |")
    print("|---|---:|---:|")
    print(f"| argmax(Q - lam*C), blocked (baseline) | {med(base_t):.3f} | 1 |")
    print(f"| argmax(Q - lam*C), one numpy expression | {med(whole_t):.3f} | {med(whole_t) / med(base_t):.2f} |")
    print(f"| solve_budget | {med(solve_t):.3f} | **{med(ratios):.2f}x** the faster argmax (target <= 5) |")
    if naive_t:
        print(f"| naive bisection on lam, {passes} full passes | {med(naive_t):.3f} | "
              f"**{med(speedups):.1f}x** slower than solve_budget (target >= 5) |")  # fmt: skip
    print()
    print(f"solve_budget peak extra memory (tracemalloc): {gib(peak)} "
          f"({peak / (quality.nbytes + cost.nbytes):.2f}x the input); process max RSS "
          f"{gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}")  # fmt: skip
    del quality, cost


# ---------------------------------------------------------------- through Ray


def bench_ray(rows: int, models: int, dim: int, batch_rows: int, repeat: int, full_walk: bool) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import logging

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    import ray.data

    # Ray Data warns that it disabled progress bars and, while the summary sink (0 CPUs) lives, that no CPU is free.
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    synth = Synthetic(models, dim)
    n_blocks = max(1, rows // batch_rows)

    @ray.remote(num_cpus=0)
    class SummarySink:
        """Merges the batch summaries the routing pass sends: the driver's O(histogram) state."""

        def __init__(self, window: PriceWindow | None):
            self.merged = BudgetSummary.empty(window=window)

        def add(self, summary: BudgetSummary) -> None:
            self.merged = self.merged.merge(summary)

        def get(self) -> BudgetSummary:
            return self.merged

    def route(batch: dict[str, np.ndarray], sink=None, window=None) -> dict[str, np.ndarray]:
        ids = batch["id"]
        quality, cost = synth.batch(int(ids[0]), ids.size, np.float32)
        out = {"id": ids, "quality": quality, "cost": cost}
        if sink is not None:  # the budget's summary rides on the routing pass
            if window is not None:
                # Each row's model across the window, kept for the assignment pass.
                out["window_choice"] = window_choices(quality, cost, window)
            summary = summarize(quality, cost, window=window, keys=ids, choices=out.get("window_choice"))
            ray.get(sink.add.remote(summary))
        return out

    def argmax_assign(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"id": batch["id"], "model": batch["quality"].argmax(axis=1)}

    def collect(batch: dict[str, np.ndarray], bin: int, window) -> dict[str, np.ndarray]:
        lam, drop, keys = collect_bin(batch["quality"], batch["cost"], batch["id"], bin, window=window)
        return {"lam": lam, "drop": drop, "key": keys}

    def assign_at_plan(batch: dict[str, np.ndarray], plan: BudgetPlan, window) -> dict[str, np.ndarray]:
        choices = batch.get("window_choice") if window is not None else None
        model = assign(batch["quality"], batch["cost"], plan, batch["id"], window=window, choices=choices)
        return {"id": batch["id"], "model": model}

    def routed(**kwargs) -> ray.data.Dataset:
        data = ray.data.range(rows, override_num_blocks=n_blocks)
        return data.map_batches(route, fn_kwargs=kwargs, batch_size=batch_rows).materialize()

    def unbudgeted() -> None:
        routed().map_batches(argmax_assign, batch_size=batch_rows).materialize()

    def budgeted(windowed: bool) -> BudgetPlan:
        # The budget: halfway from the cheapest models to the best ones, known from the
        # generator's pilot below (a real job states it in its config).
        pilot_q, pilot_c = synth.batch(rows + 1, min(rows, SAMPLE_ROWS), np.float32)
        budget = rows / pilot_q.shape[0] * midpoint_budget(pilot_q, pilot_c.astype(np.float64))
        # A pilot sample (a real job routes a random sample of its input first) places the window.
        window = price_window(pilot_q, pilot_c, budget, rows) if windowed else None
        sink = SummarySink.remote(window)
        data = routed(sink=sink, window=window)
        merged = ray.get(sink.get.remote())
        bin = critical_bin(merged, budget)  # PriceWindowMissed would mean: redo without the window
        if merged.breakpoints is not None:  # the window's breakpoints came with the summaries
            plan = solve_lambda(merged, budget)
        else:
            found = ray.get(data.map_batches(collect, fn_kwargs=dict(bin=bin, window=window), batch_size=batch_rows)
                            .to_numpy_refs())  # fmt: skip
            lam, drop, keys = (np.concatenate([part[k] for part in found]) for k in ("lam", "drop", "key"))
            plan = solve_lambda(merged, budget, lam, drop, keys)
        if windowed:
            passes.append(2 if merged.breakpoints is not None else 3)
        data.map_batches(assign_at_plan, fn_kwargs=dict(plan=plan, window=window), batch_size=batch_rows).materialize()
        return plan

    passes: list[int] = []
    unbudgeted()  # warm-up: workers started, code shipped
    plain_t, window_t, walk_t, window_added, walk_added = [], [], [], [], []
    for _ in range(repeat):
        plain_t.append(timed(unbudgeted))
        window_t.append(timed(lambda: budgeted(True)))
        window_added.append(window_t[-1] / plain_t[-1] - 1)
        if full_walk:
            walk_t.append(timed(lambda: budgeted(False)))
            walk_added.append(walk_t[-1] / plain_t[-1] - 1)
    ray.shutdown()
    med = statistics.median
    print(f"\n## Through Ray Data: {rows:,} rows x {models} models, embedding dim {dim}, "
          f"{n_blocks} blocks of {batch_rows:,} rows, local Ray with 2 CPUs")  # fmt: skip
    print()
    print("| pipeline | time (s) | added to routing |")
    print("|---|---:|---:|")
    print(f"| routing pass + argmax assignment (no budget) | {med(plain_t):.2f} | baseline |")
    kept = "keeps the window's breakpoints, so no critical-bin pass" if passes[0] == 2 else "then a critical-bin pass"
    print(f"| routing pass with the windowed summary riding on it ({kept}) + assignment at lam* "
          f"| {med(window_t):.2f} | **{100 * med(window_added):.0f}%** (target <= 20%) |")  # fmt: skip
    if full_walk:
        print(f"| routing pass, then summary, critical-bin and assignment passes without a window "
              f"(every row walks its hull in each) | {med(walk_t):.2f} | {100 * med(walk_added):.0f}% |")  # fmt: skip
    print()
    print("The pilot (65,536 routed rows that place the window) is inside the budgeted times.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows in memory")
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--naive-repeat", type=int, default=1, help="runs of the (slow) naive bisection")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--ray-rows", type=int, default=10_000_000, help="rows streamed through Ray")
    parser.add_argument("--dim", type=int, default=64, help="embedding size of the synthetic routing pass")
    parser.add_argument("--batch-rows", type=int, default=100_000)
    parser.add_argument("--full-walk", action="store_true", help="also time the Ray passes without a price window")
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()

    print(f"# bench/budget.py: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, numpy {np.__version__}")  # fmt: skip
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    if args.rows:
        dtype = getattr(np, args.dtype)
        bench_in_memory(args.rows, args.models, dtype, args.repeat, min(args.naive_repeat, args.repeat))
    if not args.no_ray and args.ray_rows:
        bench_ray(args.ray_rows, args.models, args.dim, args.batch_rows, args.repeat, args.full_walk)


if __name__ == "__main__":
    main()
