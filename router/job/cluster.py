"""The job's Ray side that every step shares: starting Ray, the cluster's GPUs, and passes over a
materialised dataset that run in the driver for a small job and as Ray Data tasks for a large one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import pyarrow as pa

from router.config import JobConfig

# Rows per batch for the vectorised stages (score, budget, assign): large enough that numpy's
# per-call and Arrow's per-batch costs vanish (the stages block their own work for the cache; see
# bench/route.py --batch and bench/README.md). A batch of embeddings is about 100 MB.
ROUTE_BATCH = 1 << 16

# A job of at most this many rows runs the passes after scoring (the budget's second pass, the
# frontier's sample, the assignment and its tally) in the driver, on the materialised blocks: on a
# small job the work takes milliseconds, while starting Ray worker processes for it takes seconds.
# Larger jobs run them as Ray Data passes, spread over the cluster. The driver holds one
# batch at a time, and the assigned rows of such a job (a few MB: no embeddings by then).
SMALL_JOB_ROWS = 50_000


def log(msg: str) -> None:
    print(f"[router] {msg}", flush=True)


def init_ray(cfg: JobConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {}
    if cfg.ray_address is None and "RAY_ADDRESS" not in os.environ:
        # A private local instance: no dashboard, no token file to trip later `ray start` calls.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        kwargs["include_dashboard"] = False
    ray.init(address=cfg.ray_address, **kwargs)
    ctx = ray.data.DataContext.get_current()
    # An actor pool whose actors cannot start (no node has the GPUs asked for) fails the job
    # after this long, instead of waiting forever.
    ctx.wait_for_min_actors_s = max(1, int(cfg.generation.start_timeout_s))
    ctx.enable_progress_bars = os.environ.get("ROUTER_PROGRESS", "1") == "1"
    # Without a terminal, per-operator bars become a log block every few seconds: keep the total.
    ctx.enable_operator_progress_bars = sys.stdout.isatty()


def gpus_available() -> float:
    """The cluster's GPUs, as Ray counts them now."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def wants_gpus(device: str, gpus: float | None = None) -> bool:
    """Whether a stage with this `device` setting (cuda, cpu or auto) asks for GPUs; `gpus`: the
    cluster's (None: ask Ray)."""
    return device == "cuda" or (device == "auto" and (gpus_available() if gpus is None else gpus) > 0)


def small_job(ds) -> bool:
    """Whether the passes over this materialised dataset run in the driver (`SMALL_JOB_ROWS`)."""
    return ds.count() <= SMALL_JOB_ROWS


def driver_batches(ds, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The materialised dataset's rows in batches of ROUTE_BATCH, read in the driver (no task)."""
    for batch in ds.iter_batches(batch_size=ROUTE_BATCH, batch_format="pyarrow", prefetch_batches=0):
        yield batch.select(columns) if columns else batch


def per_batch(ds, fn: Callable[..., pa.Table], columns: list[str] | None = None, **kwargs) -> Iterator[pa.Table]:
    """`fn(batch, **kwargs)` over a materialised dataset's rows, one table per batch of ROUTE_BATCH:
    in the driver for a small job (`small_job`), else as a Ray Data task pass."""
    if small_job(ds):
        for batch in driver_batches(ds, columns):
            yield fn(batch, **kwargs)
        return
    import ray

    narrow = ds.select_columns(columns) if columns else ds
    refs = narrow.map_batches(fn, fn_kwargs=kwargs, batch_size=ROUTE_BATCH, batch_format="pyarrow",
                              num_cpus=1).to_arrow_refs()  # one task per CPU: nothing else runs now
    for ref in refs:
        yield ray.get(ref)


def in_thread(fn: Callable[..., Any], *args: Any) -> Future:
    """`fn(*args)` in a thread of its own; its result (or error) in the future."""
    ex = ThreadPoolExecutor(max_workers=1)
    try:
        return ex.submit(fn, *args)
    finally:
        ex.shutdown(wait=False)
