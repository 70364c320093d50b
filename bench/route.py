"""The routing stage given embeddings: rows/s per CPU core of each step in-process, and what the
whole routing stage adds to a Ray Data pipeline that only produces embeddings.

    python bench/route.py [--rows 1000000] [--batch 65536] [--no-ray]

Part 1, one core (BLAS and OpenMP pinned to one thread): Scorer (annotate, score, cost, and the
budget's pass 1, which walks every row's price hull and keeps it as a column), pass 2 (the
critical bin's breakpoints, read from the kept hulls), Assigner (likewise), on Arrow batches of
synthetic unit embeddings; baseline: the one matrix product routing cannot avoid (embeddings x the
profiles' 32 centroids and 7 capability prototypes).

Part 2, local Ray with 2 CPUs: pipeline A makes the embeddings (a stand-in for the encoder: the
same rows, columns and block sizes) and materialises them; pipeline B is A plus the routing stage
exactly as `router run` runs it (Scorer actors, materialise, budget passes with a binding budget,
Assigner). The table gives both wall times and what routing adds per row; the closing lines put
that next to the encoder's own time per row, which is what routing must not slow down.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy loads: part 1 measures one core
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local instance

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.budget import collect_bin, critical_bin, solve_lambda, summarize  # noqa: E402
from router import schema as S  # noqa: E402
from router.config import load_config  # noqa: E402
from router.backends.encoder import embeddings_to_arrow# noqa: E402
from router.job.budget_passes import collect_rows  # noqa: E402
from router.job.cluster import ROUTE_BATCH  # noqa: E402
from router.stages.route import (  # noqa: E402
    Assigner, PoolArrays, Scorer, budget_matrices, cost_from_batch, keys_of, matrix_from_column,
)  # fmt: skip

PROMPT = "Explain how a river delta forms and why some rivers have none."


def synthetic(first: int, n: int, dim: int = 384) -> pa.Table:
    """Rows as the encoder stage emits them: id, prompt, status, error, unit embedding."""
    rng = np.random.default_rng(first)
    emb = rng.standard_normal((n, dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = pa.array(np.char.add("r", np.arange(first, first + n).astype(str)))
    return pa.table({S.ID: ids, S.PROMPT: pa.array([PROMPT] * n), S.STATUS: pa.array([S.OK] * n),
                     S.ERROR: pa.nulls(n, pa.string()), S.EMBEDDING: embeddings_to_arrow(emb)})  # fmt: skip


def best_of(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def one_core(cfg, n: int) -> None:
    batch = synthetic(0, n)
    scorer = Scorer(cfg.profiles, PoolArrays.from_config(cfg))
    p = scorer.profiles
    emb = matrix_from_column(batch[S.EMBEDDING])
    taxonomy = np.ascontiguousarray(np.concatenate([p.centroids, p.capability_vectors]).T)
    scored = scorer(batch)
    q, c = budget_matrices(scored)  # as the budget's passes read them
    cheapest, best = np.nanmin(c, 1), c[np.arange(n), np.nanargmax(q, 1)]
    budget = 0.5 * float(np.nansum(cheapest, dtype=float) + np.nansum(best, dtype=float))
    summary = summarize(q, c)
    bin = critical_bin(summary, budget)
    plan = solve_lambda(summary, budget, *collect_bin(q, c, keys_of(scored), bin))
    assigner = Assigner(cfg.model_names, plan, False)
    rows = [
        ("baseline: embeddings x taxonomy (one matrix product)", best_of(lambda: emb @ taxonomy)),
        ("Scorer: annotate, score, cost, budget pass 1 (hulls)", best_of(lambda: scorer(batch))),
        ("budget pass 2: the critical bin's breakpoints", best_of(lambda: collect_rows(scored, bin, False))),
        ("Assigner (binding budget)", best_of(lambda: assigner(scored))),
    ]
    total = sum(sec for _, sec in rows[1:])
    print(f"\nPart 1: one core, {n:,} rows per batch, {len(cfg.model_names)} models")
    print(f"{'step':56} {'ms':>8} {'rows/s':>12} {'x baseline':>10}")
    for name, sec in rows + [("routing stage in all (Scorer + pass 2 + Assigner)", total)]:
        print(f"{name:56} {sec * 1e3:>8.1f} {n / sec:>12,.0f} {sec / rows[0][1]:>9.2f}x")
    # What the hulls the Scorer keeps save: the same passes walking every row again.
    walked = Assigner(cfg.model_names, plan, False)
    unkept = scored.drop_columns([S.HULL])
    again = best_of(lambda: collect_bin(*budget_matrices(unkept), keys_of(unkept), bin)) + best_of(
        lambda: walked(unkept))
    print(f"(pass 2 and the Assigner walking every row again instead: {again * 1e3:.1f} ms)")


def assign_batch(batch: pa.Table, assigner: Assigner) -> pa.Table:
    return assigner(batch)


def through_ray(cfg, rows: int, batch_rows: int) -> None:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    import ray.data

    from router.job.budget_passes import solve_plan, summary_sink

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    n_blocks = max(1, -(-rows // batch_rows))
    rows = n_blocks * batch_rows

    def embeddings() -> "ray.data.Dataset":
        return ray.data.range(n_blocks, override_num_blocks=n_blocks).map_batches(
            lambda b: synthetic(int(b["id"][0]) * batch_rows, batch_rows), batch_size=1, batch_format="numpy")

    def encode_only() -> int:
        return embeddings().materialize().count()

    pool = PoolArrays.from_config(cfg)

    parts: dict[str, float] = {}

    def with_routing() -> int:
        t0 = time.perf_counter()
        sink = summary_sink()  # pass 1 of the budget rides on scoring, as in `router run`
        scored = embeddings().map_batches(
            Scorer, fn_constructor_kwargs=dict(profiles=cfg.profiles, pool=pool, summary_sink=sink),
            batch_size=batch_rows,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2), batch_format="pyarrow", num_cpus=0.5,
        ).materialize()  # fmt: skip
        q, c = [], []  # a binding budget: half-way between cheapest and best, from a sample
        for b in scored.limit(batch_rows).iter_batches(batch_size=None, batch_format="pyarrow"):
            q.append(matrix_from_column(b[S.QUALITY]))
            c.append(cost_from_batch(b))
        q, c = np.concatenate(q), np.concatenate(c)
        per_row = 0.5 * (np.nanmin(c, 1).mean() + c[np.arange(len(c)), np.nanargmax(q, 1)].mean())
        t1 = time.perf_counter()
        plan, allow_skip = solve_plan(scored, float(per_row * rows), sink.merged())
        t2 = time.perf_counter()
        n = scored.map_batches(
            assign_batch, fn_kwargs=dict(assigner=Assigner(cfg.model_names, plan, allow_skip)), batch_size=batch_rows,
            batch_format="pyarrow", num_cpus=0.5,
        ).materialize().count()  # fmt: skip
        t3 = time.perf_counter()
        scored.map_batches(lambda b: b, batch_size=batch_rows, batch_format="pyarrow", num_cpus=0.5).materialize()
        parts["(a pass doing nothing, for scale)"] = time.perf_counter() - t3
        parts.update({"embeddings + Scorer, materialised": t1 - t0, "budget passes (solve_plan)": t2 - t1,
                      "Assigner pass": time.perf_counter() - t2})  # fmt: skip
        return n

    # Cold: the first run starts worker processes that import the router (seconds each, once per
    # worker in a job). Warm: the steady state a long job is in.
    cold = []
    for fn in (encode_only, with_routing):
        t = time.perf_counter()
        fn()
        cold.append(time.perf_counter() - t - parts.pop("(a pass doing nothing, for scale)", 0.0))
    results = []
    for name, fn in (("A: embeddings only (encoder stand-in)", encode_only), ("B: A + routing stage", with_routing)):
        t = time.perf_counter()
        assert fn() == rows
        results.append((name, time.perf_counter() - t))
    ray.shutdown()
    nothing = parts.pop("(a pass doing nothing, for scale)")
    results[1] = (results[1][0], results[1][1] - nothing)  # measured inside B, not part of it
    added = results[1][1] - results[0][1]
    print(f"\nPart 2: Ray Data, 2 CPUs, {rows:,} rows in blocks of {batch_rows:,}")
    print(f"{'pipeline':40} {'seconds':>8} {'rows/s':>12}")
    for name, sec in results:
        print(f"{name:40} {sec:>8.2f} {rows / sec:>12,.0f}")
    for name, sec in parts.items():
        print(f"  B's {name:36} {sec:>8.2f}")
    print(f"  (for scale: a Ray Data pass that does nothing over B's scored rows: {nothing:.2f} s)")
    us = added / rows * 1e6
    print(f"cold (first run, workers starting): A {cold[0]:.2f} s, B {cold[1]:.2f} s")
    print(f"routing adds {added:.2f} s = {us:.2f} us per row on 2 CPUs ({us * 2:.2f} CPU-us per row)")
    for where, rate in (("this CPU (ONNX encoder, bench/encode.py)", 200), ("one H200 (split encoder)", 81_700)):
        print(f"  vs encoding at {rate:,} rows/s on {where}: +{added / (rows / rate) * 100:.3g}% wall time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows through Ray (part 2)")
    ap.add_argument("--batch", type=int, default=ROUTE_BATCH, help=f"rows per batch (default {ROUTE_BATCH}, as `router run`)")
    ap.add_argument("--no-ray", action="store_true", help="part 1 only")
    args = ap.parse_args()
    cfg = load_config("jobs/configs/local.yaml", ["input=x", "output=y"])
    one_core(cfg, args.batch)
    if not args.no_ray:
        through_ray(cfg, args.rows, args.batch)


if __name__ == "__main__":
    main()
