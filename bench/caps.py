"""Caps and group routing in a job, as `router run` solves them, on N scored rows through Ray.

    python bench/caps.py [--rows 1048576] [--groups 1000]

The rows are synthetic unit embeddings scored by the real Scorer with the example pool (as in
bench/route.py). The budget is half-way between every row at its cheapest model and every row at
its best. Three plans over the same scored rows, each timed from the scored rows to the plan:

- plain: the budget alone (pass 1 rode on scoring; the critical-bin pass) - the baseline;
- caps: the same budget, and the model the plain plan uses most capped at half its rows
  (`models.NAME.max_rows`), solved by `router.budget.solve_capped` over the object store;
- groups: the same budget, one model per group of rows (`budget.group_column`, `--groups` groups).

For each: seconds, passes, predicted spend against the budget, total predicted quality against
the Lagrangian upper bound (the gap is how far from optimal it can be), and the capped model's rows.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local instance

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from route import synthetic  # noqa: E402  (bench/route.py: the encoder stage's rows)

from router.budget import ModelCap  # noqa: E402
from router.config import load_config  # noqa: E402
from router.job.budget_passes import solve_capped_plan, solve_group_plan, solve_plan, summary_sink  # noqa: E402
from router.job.tally import tally  # noqa: E402
from router.stages.route import Assigner, PoolArrays, Scorer  # noqa: E402


def with_topic(first: int, n: int, groups: int) -> pa.Table:
    return synthetic(first, n).append_column("topic", pa.array((np.arange(first, first + n) % groups).astype(str)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1 << 20)
    ap.add_argument("--groups", type=int, default=1000)
    args = ap.parse_args()
    import ray

    import route as bench_route

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.cloudpickle.register_pickle_by_value(bench_route)  # workers cannot import bench/ by name
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False
    os.chdir(ROOT)
    cfg = load_config("jobs/configs/local.yaml", ["input=x", "output=y"])
    block = 1 << 16
    n_blocks = max(1, args.rows // block)
    groups = args.groups
    sink = summary_sink()
    scored = ray.data.range(n_blocks, override_num_blocks=n_blocks).map_batches(
        lambda b: with_topic(int(b["id"][0]) * block, block, groups), batch_size=1, batch_format="numpy",
    ).map_batches(
        Scorer, fn_constructor_kwargs=dict(profiles=cfg.profiles, pool=PoolArrays.from_config(cfg), summary_sink=sink),
        batch_size=block, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2), batch_format="pyarrow",
        num_cpus=0.5,
    ).materialize()  # fmt: skip
    summary = sink.merged()
    budget = 0.5 * (summary.base_cost + summary.min_cost)
    rows = scored.count()

    def assigned(plan, skip, group_column=None):
        data = scored.map_batches(
            Assigner, fn_constructor_kwargs=dict(models=cfg.model_names, plan=plan, allow_skip=skip,
                                                 group_column=group_column),
            compute=ray.data.ActorPoolStrategy(size=1), batch_size=8192, batch_format="pyarrow", num_cpus=0.25,
        ).materialize()  # fmt: skip
        return {t.model: (t.rows, t.predicted_cost or 0.0, t.predicted_quality or 0.0) for t in tally(data)[0]}

    t = time.perf_counter()
    plain, skip = solve_plan(scored, budget, summary)
    plain_s = time.perf_counter() - t
    base = assigned(plain, skip)
    busiest = max(base, key=lambda m: base[m][0])
    cap = base[busiest][0] // 2
    caps = {cfg.model_names.index(busiest): ModelCap(max_rows=cap)}
    t = time.perf_counter()
    capped, cskip = solve_capped_plan(scored, budget, caps)
    capped_s = time.perf_counter() - t
    after = assigned(capped, cskip)
    t = time.perf_counter()
    grouped, gskip = solve_group_plan(scored, budget, "topic", {})
    grouped_s = time.perf_counter() - t
    by_group = assigned(grouped, gskip, "topic")
    ray.shutdown()

    def total(table, k):
        return sum(v[k] for v in table.values())

    print(f"\n{rows:,} rows x {len(cfg.model_names)} models, budget {budget:.6g} USD (binding), local Ray with 2 CPUs")
    print(f"{'plan':34} {'seconds':>8} {'passes':>7} {'spend/budget':>13} {'quality':>12} {'bound-quality':>14}"
          f" {busiest + ' rows':>40}")  # fmt: skip
    print(f"{'plain (baseline)':34} {plain_s:>8.2f} {'2':>7} {total(base, 1) / budget:>13.9f} {total(base, 2):>12.4f}"
          f" {'-':>14} {base[busiest][0]:>40,}")  # fmt: skip
    print(f"{'caps: ' + busiest[:20] + f' <= {cap:,}':34} {capped_s:>8.2f} {capped.passes:>7} "
          f"{total(after, 1) / budget:>13.9f} {total(after, 2):>12.4f} {capped.bound - capped.predicted_quality:>14.6f}"
          f" {after.get(busiest, (0,))[0]:>40,}")  # fmt: skip
    print(f"{f'groups: {groups} groups':34} {grouped_s:>8.2f} {'1':>7} {total(by_group, 1) / budget:>13.9f} "
          f"{total(by_group, 2):>12.4f} {grouped.bound - grouped.predicted_quality:>14.6f}"
          f" {by_group.get(busiest, (0,))[0]:>40,}")  # fmt: skip
    print(f"caps cost {capped_s / plain_s:.1f}x the plain solve; groups {grouped_s / plain_s:.1f}x")


if __name__ == "__main__":
    main()
