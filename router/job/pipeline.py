"""The one place the stages are composed into Ray Data pipelines (DESIGN.md 2).

    read -> validate -> encode -> score & cost  (one streaming pass, materialised: N x M floats)
    budget pass 1: per-batch breakpoint histograms (sent by the scorers), merged -> critical bin
    budget pass 2: the critical bin's exact breakpoints (only when the budget binds) -> lambda*
    assign(lambda*) -> per engine: generate -> write parquet; rows not to generate are written as is

With per-model caps (`models.NAME.max_rows` / `max_spend`) the budget passes are those of
`router.budget.solve_capped`, reading the scored columns from the object store once per pass;
with `budget.group_column`, one pass sums quality and cost per group and the driver solves over
groups. Either way the driver holds summaries (and, for groups, one row per group), not rows.

Each stage's resources are on the line that adds it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from router import budget as B
from router import schema as S
from router.config import ConfigError, JobConfig, JobFailed, ModelSpec
from router.stages.read import plan_read, read_units, units_as_items
from router.job.output import Prior, clear_tmp, commit_shard, committed_files, open_output, raise_fence, read_prior
from router.method.profiles import load_profiles
from router.stages.route import (
    Assigner, PoolArrays, RoutePlan, Scorer, budget_matrices, cost_from_batch, group_keys, hulls_from_column, keys_at,
    keys_of, matrix_from_column,
)  # fmt: skip

# Rows per batch for the vectorised stages (score, budget, assign): large enough that numpy's
# per-call and Arrow's per-batch costs vanish (the stages block their own work for the cache).
# On one core the routing stage ran at 375k rows/s in batches of 8192 and 480-570k in 65,536
# (bench/route.py --batch). A batch of embeddings is about 100 MB.
ROUTE_BATCH = 1 << 16

# A job of at most this many rows runs the passes after scoring (the budget's second pass, the
# frontier's sample, the assignment and its tally) in the driver, on the materialised blocks: on a
# small job the work takes milliseconds, while starting Ray worker processes for it took seconds
# (about 3 s for the first task pass after encoding and 1.5 s for the Assigner's actor, on 2
# cores). Larger jobs run them as Ray Data passes, spread over the cluster. The driver holds one
# batch at a time, and the assigned rows of such a job (a few MB: no embeddings by then).
SMALL_JOB_ROWS = 50_000


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


@dataclass
class Phase:
    name: str
    rows: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else math.inf


@dataclass
class RunResult:
    output: str | None
    n_rows: int
    plan: RoutePlan | None
    budget: float
    allow_skip: bool
    phases: list[Phase] = field(default_factory=list)
    by_model: list[dict[str, Any]] = field(default_factory=list)
    by_status: dict[str, int] = field(default_factory=dict)
    standin: bool = False
    frontier: dict[str, Any] | None = None
    """Predicted quality against spend over a sweep of budgets (report.predicted_frontier)."""
    resumed: Prior | None = None
    """What earlier runs of the job had committed when this one started (None: a fresh start)."""
    schedule: Any = None
    """How the engines share the GPUs (router.job.schedule.Schedule); None: no vLLM engine on GPUs."""
    generation: list[dict[str, Any]] = field(default_factory=list)
    """Per engine pool as run: replicas, GPUs, start and seconds, rows, tokens, spend, errors."""


def engine_failure(error: Exception, names: list[str], weights: str, timeout: float) -> JobFailed | None:
    """The one-line reason an engine pool failed, if it failed to start (else None: not ours to explain).
    Ray wraps the engine's own error in its actor-death errors, so it is found in the text."""
    import re

    from router.backends.generators import EngineStartError

    text = str(error)
    found = re.search(rf"the \w+ engine for .*? {EngineStartError.MARK}: [^\n]*", text)
    which = f"generate {', '.join(names)}"
    if found:
        return JobFailed(f"{which}: {found.group(0)}")
    if "Timed out while starting actors" in text:
        return JobFailed(
            f"{which}: the engine(s) for {weights!r} did not start within {timeout:g} s "
            "(generation.start_timeout_s): the cluster may not have the GPUs, CPUs or memory they ask for"
        )
    return None


def engine_died(error: Exception) -> bool:
    """Whether a generation pass failed because its engine actors died (after Ray's retries)."""
    import ray

    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ray.exceptions.RayActorError):
            return True
        cause = cause.__cause__
    return "actor died" in str(error).lower()


def engine_restarts(cfg: JobConfig) -> dict[str, Any]:
    """Ray options of each engine actor: a dead engine is replaced and its batch retried, a bounded
    number of times (Ray Data's default is forever)."""
    n = cfg.generation.engine_retries
    return {"max_restarts": n, "max_task_retries": n}


def _mark_failed(batch: pa.Table, done: pa.Array, message: str) -> pa.Table:
    """The rows not written yet (id not in `done`), marked generation_error with `message`."""
    batch = batch.filter(pc.invert(pc.is_in(batch[S.ID], value_set=done)))
    n = batch.num_rows
    batch = batch.set_column(batch.schema.get_field_index(S.STATUS), S.STATUS, pa.array([S.GENERATION_ERROR] * n))
    return batch.set_column(batch.schema.get_field_index(S.ERROR), S.ERROR, pa.array([message] * n, pa.string()))


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


def check_profiles(cfg: JobConfig):
    try:
        profiles = load_profiles(cfg.profiles)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None
    unknown = [m for m in cfg.model_names if m not in profiles.models]
    if unknown:
        raise ConfigError(
            f"unknown model {unknown[0]!r}: the profiles ({cfg.profiles}) know {', '.join(profiles.models)}; "
            "profile it with `router profile` or remove it from the pool"
        )
    from router.backends.encoder import encoder_name

    if encoder_name(cfg.encoder.model) != profiles.encoder:
        raise ConfigError(
            f"the profiles were built with encoder {profiles.encoder!r} but encoder.model is "
            f"{cfg.encoder.model!r}; use the same encoder for both"
        )
    return profiles


def _gpus_available() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def wants_gpus(device: str, gpus: float | None = None) -> bool:
    """Whether a stage with this `device` setting (cuda, cpu or auto) asks for GPUs; `gpus`: the
    cluster's (None: ask Ray)."""
    return device == "cuda" or (device == "auto" and (_gpus_available() if gpus is None else gpus) > 0)


def summary_sink():
    """An actor that merges the budget summaries the Scorer sends (pass 1 riding on scoring).
    It holds one histogram, plus the keys of the batches seen so that a retried batch counts once."""
    import ray

    @ray.remote(num_cpus=0)
    class SummarySink:
        def __init__(self) -> None:
            self.merged = B.BudgetSummary.empty(allow_skip=False)
            self.seen: set[str] = set()

        def add(self, key: str, summary: B.BudgetSummary) -> None:
            if key not in self.seen:
                self.seen.add(key)
                self.merged = self.merged.merge(summary)

        def get(self) -> B.BudgetSummary:
            return self.merged

    return SummarySink.remote()


def scored_dataset(cfg: JobConfig, summary_sink=None, skip_ids: pa.Array | None = None):
    """read -> validate -> encode -> score & cost, materialised once (the text is never re-encoded).
    With a `summary_sink`, the Scorer sends it the budget summary of every batch; rows whose id is
    in `skip_ids` (written by an earlier run of the job) are left out as they are read."""
    import ray
    from router.stages.encode import Encoder, Tokenize

    units, _ = plan_read(cfg.input, cfg.text_column, cfg.id_column)
    # Embed what the profiles were built from: the same part of a long prompt.
    window = load_profiles(cfg.profiles).meta.get("window", "head")
    on_gpu = wants_gpus(cfg.encoder.device)
    enc = cfg.encoder
    cpus = int(ray.cluster_resources().get("CPU", 1))
    routers = max(1, cpus // 4)  # Scorer actors: each keeps up with about one GPU encoder (bench/route.py)
    # GPU encoders get their rows tokenized by CPU actors, so the GPU only embeds. A CPU encoder
    # tokenizes its own batches: tokenizing is a few percent of its time (bench/encode.py), where a
    # process of its own cost about 3 s of a small job on 2 cores.
    tokenizers = enc.backend != "sentence-transformers" and on_gpu
    encoder_args = dict(num_gpus=1 if on_gpu else 0, num_cpus=1)
    # Reading runs as tasks asking for what the next stage's actors ask for, so that Ray Data fuses
    # the two: each tokenizer (or CPU encoder) actor reads the units it then works on. No reader
    # process of its own, and reads run as wide as that stage.
    read_args = dict(num_cpus=0.25) if tokenizers else encoder_args
    ds = ray.data.from_items(units_as_items(units), override_num_blocks=len(units))
    ds = ds.map_batches(
        read_units, fn_kwargs=dict(text_column=cfg.text_column, id_column=cfg.id_column, skip_ids=skip_ids),
        batch_size=1, batch_format="pyarrow", **read_args,
    )  # fmt: skip
    if tokenizers:
        ds = ds.map_batches(
            Tokenize, fn_constructor_kwargs=dict(model=enc.model, window=window),
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=enc.tokenizers or max(1, cpus // 2)),
            batch_size=enc.batch_size, batch_format="pyarrow", num_cpus=0.25,
        )  # fmt: skip
    ds = ds.map_batches(
        Encoder, fn_constructor_kwargs=dict(model=enc.model, device="cuda" if on_gpu else "cpu", backend=enc.backend,
                                            window=window, threads=enc.threads or None),
        compute=ray.data.ActorPoolStrategy(size=enc.replicas), batch_size=enc.batch_size,
        batch_format="pyarrow", **encoder_args,
    )  # fmt: skip
    ds = ds.map_batches(
        Scorer, fn_constructor_kwargs=dict(profiles=cfg.profiles, pool=PoolArrays.from_config(cfg),
                                           task_column=cfg.task_column, summary_sink=summary_sink),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=routers), batch_size=ROUTE_BATCH,
        batch_format="pyarrow", num_cpus=0.25,
    )  # fmt: skip
    return ds.materialize()


def _summary_rows(batch: pa.Table, allow_skip: bool) -> pa.Table:
    s = B.summarize(*budget_matrices(batch), allow_skip=allow_skip)
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


def _collect_rows(batch: pa.Table, bin: int, allow_skip: bool) -> pa.Table:
    if not allow_skip and S.HULL in batch.column_names:  # the Scorer's walk, read back
        hulls, cost = hulls_from_column(batch[S.HULL]), matrix_from_column(batch[S.COST])
        lam, dcost, keys = B.collect_hulls(hulls, cost, keys_at(batch), bin)
    else:
        lam, dcost, keys = B.collect_bin(*budget_matrices(batch), keys_of(batch), bin, allow_skip=allow_skip)
    return pa.table({"lam": pa.array(lam, pa.float64()), "dcost": pa.array(dcost, pa.float64()),
                     "key": pa.array(keys, pa.string())})  # fmt: skip


def _merged_summary(scored, allow_skip: bool) -> B.BudgetSummary:
    total = B.BudgetSummary.empty(allow_skip=allow_skip)
    summaries = per_batch(scored, _summary_rows, [S.QUALITY, S.COST], allow_skip=allow_skip)
    for row in (r for t in summaries for r in t.to_pylist()):  # one row per batch; the driver keeps one histogram
        hist = np.zeros(B.NBINS)
        counts = np.zeros(B.NBINS, np.int64)
        hist[row["bins"]] = row["hist"]
        counts[row["bins"]] = row["counts"]
        total = total.merge(B.BudgetSummary(row["base_cost"], row["min_cost"], hist, counts, row["n_rows"], allow_skip))
    return total


def solve_plan(scored, budget: float, summary: B.BudgetSummary | None = None) -> tuple[B.BudgetPlan, bool]:
    """Pass 1 (histogram; skipped when `summary` came from the scoring pass) and, when the budget
    binds, pass 2 (the critical bin): lambda* and ties."""
    if summary is None or summary.allow_skip:
        summary = _merged_summary(scored, allow_skip=False)
    allow_skip = budget < summary.min_cost
    if allow_skip:
        log(f"budget {budget:.6g} USD is below the cheapest assignment ({summary.min_cost:.6g} USD): "
            "some rows will be left unanswered (status over_budget)")  # fmt: skip
        summary = _merged_summary(scored, allow_skip=True)
    bin = B.critical_bin(summary, budget)
    if bin is None:
        return B.solve_lambda(summary, budget, [], [], []), allow_skip
    kept = not allow_skip and S.HULL in (scored.columns() or ())  # pass 1's walk, kept by the Scorer
    columns = [S.ID, S.COST, S.HULL] if kept else [S.ID, S.QUALITY, S.COST]
    found = per_batch(scored, _collect_rows, columns, bin=bin, allow_skip=allow_skip)
    tables = [t for t in found if t.num_rows]
    t = pa.concat_tables(tables) if tables else pa.table({"lam": [], "dcost": [], "key": []})
    lam = t["lam"].to_numpy()
    dcost = t["dcost"].to_numpy()
    keys = t["key"].to_numpy(zero_copy_only=False).astype(str)
    return B.solve_lambda(summary, budget, lam, dcost, keys), allow_skip


def model_caps(cfg: JobConfig) -> dict[int, B.ModelCap]:
    """The pool's caps by model column (the scorer's columns follow the config's model order)."""
    return {
        i: B.ModelCap(max_rows=m.max_rows, max_cost=m.max_spend)
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
    sums = B.group_sums(matrix_from_column(batch[S.QUALITY]), cost_from_batch(batch), group_keys(batch, column))
    return pa.table({"key": pa.array(sums.keys, pa.string()), "quality": _float64_column(sums.quality),
                     "cost": _float64_column(sums.cost), "rows": pa.array(sums.rows, pa.float64())})  # fmt: skip


def _skip_note(error: Exception) -> None:
    log(f"{error}; routing with some rows left unanswered (status over_budget) instead")


def solve_group_plan(scored, budget: float, column: str, caps: dict[int, B.ModelCap]) -> tuple[B.GroupPlan, bool]:
    """One pass of per-batch group sums, merged on the driver (one row per group), and the group
    solve (with the caps, if any)."""
    total: B.GroupSums | None = None
    for t in per_batch(scored, _group_rows, column=column):
        if not t.num_rows:
            continue
        part = B.GroupSums(
            t["key"].to_numpy(zero_copy_only=False).astype(str), matrix_from_column(t["quality"]),
            matrix_from_column(t["cost"]), t["rows"].to_numpy(),
        )  # fmt: skip
        total = B.merge_group_sums([part] if total is None else [total, part])
    if total is None:  # no row any model can take
        return B.GroupPlan(np.zeros(0, str), np.zeros(0, np.int64), 0.0, 0.0, 0.0, 0.0), False
    log(f"group routing: {total.keys.size} groups over {int(total.rows.sum())} routable rows")
    try:
        return B.solve_groups(total, budget, caps=caps), False
    except (B.InfeasibleBudget, B.InfeasibleCaps) as e:
        _skip_note(e)
        return B.solve_groups(total, budget, caps=caps, allow_skip=True), True


def solve_capped_plan(scored, budget: float, caps: dict[int, B.ModelCap]) -> tuple[B.CappedPlan, bool]:
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
        plan, skip = B.solve_capped(read, budget, caps), False
    except (B.InfeasibleBudget, B.InfeasibleCaps) as e:
        _skip_note(e)
        plan, skip = B.solve_capped(read, budget, caps, allow_skip=True), True
    log(f"caps solved in {plan.passes} passes over the scored rows; cap prices "
        + ", ".join(f"{lim.describe()}: {p:.4g}" for lim, p in zip(plan.limits, plan.prices)))  # fmt: skip
    return plan, skip


def solve_route(cfg: JobConfig, scored, n_rows: int, summary: B.BudgetSummary | None) -> tuple[RoutePlan, bool]:
    """The driver's plan: per row under the budget, under the caps, or per group."""
    caps = model_caps(cfg)
    column = group_source(cfg)
    if column is not None:
        return solve_group_plan(scored, cfg.budget.total, column, caps)
    if caps:
        return solve_capped_plan(scored, cfg.budget.total, caps)
    # Every row must be in the summary once; if batches were keyed alike (duplicate ids), summarise again.
    return solve_plan(scored, cfg.budget.total, summary if summary is not None and summary.n_rows == n_rows else None)


def check_caps(cfg: JobConfig, by_model: list[dict[str, Any]]) -> None:
    """Say so if the routed rows break a cap (possible only if ids repeat: rows sharing an id move together)."""
    for m in cfg.models:
        row = next((r for r in by_model if r[S.MODEL] == m.name), None)
        if row is None:
            continue
        rows, spend = row["count_all"], row.get(f"{S.PREDICTED_COST}_sum") or 0.0
        over_spend = m.max_spend is not None and spend > m.max_spend * (1 + 1e-9)
        if (m.max_rows is not None and rows > m.max_rows) or over_spend:
            log(f"warning: model {m.name} got {rows} rows, {spend:.6g} USD predicted, over its cap "
                f"(max_rows {m.max_rows}, max_spend {m.max_spend}); ids in the input repeat?")  # fmt: skip


@dataclass(frozen=True)
class Engine:
    """What one engine pool is: pool models sharing it differ only in sampling settings and prices."""

    backend: str
    weights: str
    """What the engine loads (a Hugging Face id or a path), or the model's name at an endpoint."""
    tensor_parallel: int
    base_url: str | None = None
    api_key_env: str | None = None


def engine_groups(cfg: JobConfig, weights_of: Callable[[ModelSpec], str]) -> dict[Engine, list[ModelSpec]]:
    """Pool models that share an engine (backend, weights, parallelism, endpoint) share one engine
    pool. The stand-in is one tiny model: it never needs tensor parallelism."""
    groups: dict[Engine, list[ModelSpec]] = {}
    for m in cfg.models:
        backend = cfg.backend_of(m)
        if backend == "openai":
            engine = Engine(backend, m.weights, 1, m.base_url or cfg.generation.base_url,
                            m.api_key_env or cfg.generation.api_key_env)  # fmt: skip
        else:
            tp = 1 if cfg.generation.standin or backend == "transformers" else m.tensor_parallel
            engine = Engine(backend, weights_of(m), tp)
        groups.setdefault(engine, []).append(m)
    return groups


def _select(batch: pa.Table, models: list[str] | None) -> pa.Table:
    ok = pc.equal(batch[S.STATUS], S.OK)
    if models is None:  # the rows no engine will see
        return batch.filter(pc.invert(pc.fill_null(ok, False)))
    return batch.filter(pc.and_(ok, pc.is_in(batch[S.MODEL], pa.array(models, pa.string()))))


def finalize(batch: pa.Table, text_column: str) -> pa.Table:
    """The output's columns and types, whatever the row's fate: one schema across every file."""
    n = batch.num_rows
    types = {
        S.RESPONSE: pa.string(), S.INPUT_TOKENS: pa.int64(), S.OUTPUT_TOKENS: pa.int64(),
        S.ACTUAL_COST: pa.float64(), S.FINISH_REASON: pa.string(), S.GENERATION_SECONDS: pa.float64(),
    }  # fmt: skip
    for name, t in types.items():
        if name not in batch.column_names:
            batch = batch.append_column(name, pa.nulls(n, t))
    batch = batch.drop_columns([c for c in (S.EST_INPUT_TOKENS,) if c in batch.column_names])
    batch = batch.rename_columns([text_column if c == S.PROMPT else c for c in batch.column_names])
    first = [S.ID, text_column]
    ordered = first + [c for c in batch.column_names if c not in first and c not in S.OUTPUT_COLUMNS]
    return batch.select(ordered + list(S.OUTPUT_COLUMNS))


def validate_job(cfg: JobConfig):
    """Everything that can be checked before Ray starts: files, columns, profiles."""
    profiles = check_profiles(cfg)
    _, columns = plan_read(cfg.input, cfg.text_column, cfg.id_column)
    group = cfg.budget.group_column
    if group is not None and group not in (*columns, cfg.text_column, cfg.id_column):
        raise ConfigError(
            f"budget.group_column {group!r} is not a column of the input (columns: {', '.join(columns)}); "
            "name one of them, or leave it unset to route every row on its own"
        )
    return profiles


def route(cfg: JobConfig, result: RunResult, skip_ids: pa.Array | None = None):
    """Encode, score and solve the budget; returns the assigned dataset (materialised)."""
    import ray

    t0 = time.perf_counter()
    sink = summary_sink()
    scored = scored_dataset(cfg, sink, skip_ids)
    n = scored.count()
    result.n_rows = n
    result.phases.append(Phase("read+encode+score", n, time.perf_counter() - t0))
    log(f"encoded and scored {n} rows in {result.phases[-1].seconds:.1f}s ({result.phases[-1].rows_per_s:.0f} rows/s)")
    t0 = time.perf_counter()
    summary = ray.get(sink.get.remote())
    ray.kill(sink)
    plan, allow_skip = solve_route(cfg, scored, n, summary)
    result.plan, result.allow_skip = plan, allow_skip
    result.phases.append(Phase("budget solve", n, time.perf_counter() - t0))
    log(f"budget {cfg.budget.total:.6g} USD: lambda*={plan.lam:.6g}, predicted spend {plan.predicted_cost:.6g} USD "
        f"({result.phases[-1].seconds:.1f}s)")  # fmt: skip
    t0 = time.perf_counter()
    result.frontier = sampled_frontier(scored, n, cfg.budget.total)
    if result.frontier is not None:
        k = result.frontier["sample_rows"]
        result.phases.append(Phase(f"frontier (sample of {k} rows)", k, time.perf_counter() - t0))
        log(f"frontier: {len(result.frontier['points'])} budgets solved on {k} of {n} rows "
            f"({result.phases[-1].seconds:.1f}s)")  # fmt: skip
    t0 = time.perf_counter()
    assigned = assign_rows(cfg, scored, plan, allow_skip)
    result.phases.append(Phase("assign", n, time.perf_counter() - t0))
    log(f"assigned {n} rows in {result.phases[-1].seconds:.1f}s ({result.phases[-1].rows_per_s:.0f} rows/s)")
    # What each model got: the caps' check, the GPU schedule's loads and `router plan`'s summary.
    result.by_model, result.by_status = tally(assigned)
    if model_caps(cfg):
        check_caps(cfg, result.by_model)
    return assigned


def assign_rows(cfg: JobConfig, scored, plan: RoutePlan, allow_skip: bool):
    """The scored rows with their model under the plan (`Assigner`), materialised: in the driver
    for a small job (`small_job`), else as a Ray Data pass."""
    import ray

    how = dict(models=cfg.model_names, plan=plan, allow_skip=allow_skip, group_column=group_source(cfg))
    if scored.count() and small_job(scored):
        assigner = Assigner(**how)
        # from_blocks reads the blocks' metadata here (from_arrow starts a task for it).
        return ray.data.from_blocks([assigner(b) for b in driver_batches(scored)])
    return scored.map_batches(Assigner, fn_constructor_kwargs=how, compute=ray_actor_pool(1), batch_size=ROUTE_BATCH,
                              batch_format="pyarrow", num_cpus=0.25).materialize()  # fmt: skip


# Rows the frontier is solved on: enough for a smooth curve, a second or two of solving.
FRONTIER_SAMPLE = 20_000


def sampled_frontier(scored, n_rows: int, budget: float) -> dict[str, Any] | None:
    """The predicted quality-cost frontier from a random sample of at most FRONTIER_SAMPLE rows of
    the scored matrices (one cheap pass over two columns; nothing is re-encoded)."""
    import ray

    from router.report import predicted_frontier

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


def ray_actor_pool(size: int):
    import ray

    return ray.data.ActorPoolStrategy(size=size)


def standin_weights(cfg: JobConfig, build: bool = True) -> tuple[Callable[[ModelSpec], str], int | None]:
    """What each model's engine loads, and the longest context those weights allow (None: config).
    `build=False`: only where the stand-in would be (enough to tell which models share an engine)."""
    if not cfg.generation.standin:
        return (lambda m: m.weights), None
    import json

    from router.backends.standin import build_standin, default_standin_dir

    if not build:
        path = default_standin_dir()
        return (lambda m: m.weights if cfg.backend_of(m) == "openai" else str(path)), None
    path = build_standin(default_standin_dir())
    positions = int(json.loads((path / "config.json").read_text())["max_position_embeddings"])
    # A model behind an endpoint is whatever the endpoint serves: nothing to stand in for.
    return (lambda m: m.weights if cfg.backend_of(m) == "openai" else str(path)), positions


@dataclass(frozen=True)
class EnginePool:
    """One engine pool to run: what it loads, the pool models it serves, how many replicas."""

    engine: Engine
    members: tuple[ModelSpec, ...]
    replicas: int
    on_gpu: bool

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    @property
    def label(self) -> str:
        return ", ".join(self.names)


def pool_loads(cfg: JobConfig, groups: dict[Engine, list[ModelSpec]], by_model: list[dict[str, Any]]):
    """Each engine pool's predicted token load, from the routed rows' tally: prompt tokens from their
    UTF-8 length (as the `expected` budget mode counts them) plus each model's planned answer."""
    from router.cost import CHARS_PER_TOKEN, TEMPLATE_TOKENS, planned_output_tokens
    from router.job.schedule import PoolLoad

    tallied = {r[S.MODEL]: r for r in by_model if r[S.MODEL] is not None}
    loads = {}
    for engine, members in groups.items():
        tokens, rows = 0.0, 0
        for m in members:
            t = tallied.get(m.name, {})
            n = int(t.get("ok_rows", 0))
            answer = planned_output_tokens(m.expected_output_tokens, cfg.budget.default_output_tokens, m.max_tokens)
            tokens += t.get("ok_prompt_bytes", 0) / CHARS_PER_TOKEN + n * (TEMPLATE_TOKENS + answer)
            rows += n
        if rows == 0:
            continue
        rate = min(m.tokens_per_s or cfg.generation.tokens_per_s for m in members)
        load_s = max(cfg.generation.load_s if m.load_s is None else m.load_s for m in members)
        loads[engine] = PoolLoad(", ".join(m.name for m in members), engine.tensor_parallel, tokens, rate, load_s,
                                 max_replicas=max(1, math.ceil(rows / cfg.generation.batch_size)))  # fmt: skip
    return loads


def schedule_pools(cfg: JobConfig, by_model: list[dict[str, Any]], build: bool = True) -> tuple[list[EnginePool], Any]:
    """The engine pools with rows to answer, in the order and replica counts they run with, and the
    GPU schedule (None when no vLLM engine runs on GPUs, or the GPUs to plan for are unknown).
    `build=False` (planning only): the stand-in is not built."""
    from router.job.schedule import ScheduleError, plan_schedule

    weights_of, _ = standin_weights(cfg, build)
    groups = engine_groups(cfg, weights_of)
    loads = pool_loads(cfg, groups, by_model)
    on_gpu = wants_gpus(cfg.generation.device)
    gpu_engines = [e for e in loads if on_gpu and e.backend == "vllm"]
    gpus = cfg.generation.gpus or int(_gpus_available())
    schedule = None
    if gpu_engines and gpus > 0:
        try:
            schedule = plan_schedule([loads[e] for e in gpu_engines], gpus, cfg.generation.schedule)
        except ScheduleError as e:
            raise JobFailed(f"GPU schedule: {e}; lower models.NAME.tensor_parallel or add GPUs "
                            "(generation.gpus for an autoscaling cluster)") from None  # fmt: skip
    pools = []
    for engine, members in groups.items():
        if engine not in loads:
            continue
        gpu = engine in gpu_engines
        replicas = schedule.replicas(loads[engine].name) if gpu and schedule is not None else max(m.replicas for m in members)
        pools.append(EnginePool(engine, tuple(members), replicas, gpu))
    return pools, schedule


@dataclass
class Started:
    """Engine actors (`EngineActor`) started before routing, for the one engine pool they serve."""

    engine: Engine
    actors: list[Any]
    created: float
    """time.time() when they were created (an engine tells when it was ready in the same clock)."""

    def wait_ready(self, cfg: JobConfig, names: list[str]) -> dict[str, float]:
        """Block until every engine has started; a start that failed fails the job (its error is
        raised), one that takes longer than generation.start_timeout_s from creation too. Returns
        how long they took to start and how long before their rows they were ready (< 0: after)."""
        import ray

        timeout = cfg.generation.start_timeout_s
        asked = time.time()
        refs = [a.ready.remote() for a in self.actors]
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=max(1.0, timeout - (asked - self.created)))
        if pending:
            self.stop()  # a pass feeding them ends too
            raise JobFailed(f"generate {', '.join(names)}: the engine(s) for {self.engine.weights!r} did not start within "
                            f"{timeout:g} s (generation.start_timeout_s): the cluster may not have the GPUs, CPUs or "
                            "memory they ask for")  # fmt: skip
        ready_at = max(ray.get(refs))  # an engine that could not start raises its own error here
        early = asked - ready_at
        log(f"generate {', '.join(names)}: {len(self.actors)} engine(s) started in {ready_at - self.created:.1f}s, "
            + (f"ready {early:.1f}s before their rows" if early >= 0 else f"their rows waited {-early:.1f}s for them"))
        return {"engine_start_s": ready_at - self.created, "ready_before_rows_s": early}

    def usage(self, since: float, seconds: float) -> dict[str, float]:
        """For a pass that began at `since` (time.time()) and took `seconds`: how long until the
        first batch reached an engine, and the share of the engines' time spent answering."""
        import ray

        try:
            used = ray.get([a.usage.remote() for a in self.actors])
        except ray.exceptions.RayError:  # an engine that died for good: nothing to tell
            return {}
        if not used:
            return {}
        firsts = [u["first_call"] for u in used if u["first_call"] is not None]
        out = {"engine_busy_share": sum(u["busy_s"] for u in used) / (len(used) * seconds) if seconds > 0 else 0.0}
        if firsts:
            out["first_batch_after_s"] = min(firsts) - since
        return out

    def keep(self, n: int) -> None:
        import ray

        for a in self.actors[n:]:
            ray.kill(a)
        self.actors = self.actors[:n]

    def stop(self) -> None:
        self.keep(0)


def prestart_plan(cfg: JobConfig, gpus: float) -> tuple[Engine, list[ModelSpec], int, bool] | None:
    """Which engines to start before routing, given the cluster's GPUs: (engine, its pool models,
    replicas, on GPUs), or None. Only when the job has one local engine pool (endpoints need no
    start): which pool gets rows is known before routing then, and how many replicas too (on GPUs:
    the GPUs less the encoders', as the in-turn schedule of one pool gives)."""
    if cfg.generation.prestart is False:
        return None
    weights_of, _ = standin_weights(cfg, build=False)
    groups = engine_groups(cfg, weights_of)
    local = [e for e in groups if e.backend != "openai"]
    if len(local) != 1:
        return None
    engine, members = local[0], groups[local[0]]
    if not (engine.backend == "vllm" and wants_gpus(cfg.generation.device, gpus)):
        return engine, members, max(m.replicas for m in members), False
    free = int(gpus) - (cfg.encoder.replicas if wants_gpus(cfg.encoder.device, gpus) else 0)
    n = min(free, cfg.generation.gpus or free) // engine.tensor_parallel
    return (engine, members, n, True) if n >= 1 else None


def start_engines(cfg: JobConfig) -> Started | None:
    """Start the engines before routing (`prestart_plan`), so that their start (model load: seconds
    to minutes) overlaps encoding, scoring and the budget solve. `generation.prestart=false` turns
    it off."""
    plan = prestart_plan(cfg, _gpus_available())
    if plan is None:
        return None
    import ray

    from router.stages.generate import EngineActor

    engine, members, n, on_gpu = plan
    kwargs, resources = engine_settings(cfg, engine, members, on_gpu, standin_weights(cfg)[1])
    if not on_gpu:
        # A quarter CPU while the encoders run beside it (the CPU stages' actors take the rest of a
        # 2-CPU node); its rows come after encoding, when those actors are gone.
        resources["num_cpus"] = 0.25
    actor = ray.remote(EngineActor).options(**resources, **engine_restarts(cfg))
    started = Started(engine, [actor.remote(engine.backend, kwargs) for _ in range(n)], time.time())
    log(f"generate: starting {n} engine(s) of {engine.weights} ({engine.backend}) while the prompts are encoded")
    return started


def generate_and_write(cfg: JobConfig, assigned, result: RunResult, started: Started | None = None) -> None:
    """Answer the routed rows engine pool by engine pool, committing shards as they come: models in
    turn, or (a `shared` GPU schedule) every pool at once on its share of the GPUs. `started`: the
    engines started before routing (`start_engines`), used by their pool."""
    pools, schedule = schedule_pools(cfg, result.by_model)
    result.schedule = schedule
    if started is not None:
        at = next((i for i, p in enumerate(pools) if p.engine == started.engine), None)
        if at is None:
            started.stop()  # no rows for it
        else:
            started.keep(min(len(started.actors), pools[at].replicas))
            pools[at] = dataclasses.replace(pools[at], replicas=len(started.actors))

    def hosts(p: EnginePool) -> Started | None:
        return started if started is not None and p.engine == started.engine else None

    if schedule is not None:
        from router.job.schedule import format_schedule

        for line in format_schedule(schedule):
            log(line)
    for engine, members in engine_groups(cfg, standin_weights(cfg)[0]).items():
        if engine not in [p.engine for p in pools]:
            log(f"generate {', '.join(m.name for m in members)}: no rows routed here, engine not started")
    t0 = time.perf_counter()
    if schedule is not None and schedule.strategy == "shared":
        # One thread per pool, each driving its own Ray Data execution. A pool that fails (an engine
        # that cannot start) fails the job once the others finish: what they wrote is committed.
        with ThreadPoolExecutor(max_workers=len(pools)) as ex:
            futures = [ex.submit(_answer_pool, cfg, p, assigned, result, t0, hosts(p)) for p in pools]
            runs = [f.result() for f in futures]  # the first failure (in pool order) fails the job
        rows = sum(r["rows"] for r in runs)
        result.phases.append(Phase(f"generate ({len(pools)} engine pools at once)", rows, time.perf_counter() - t0))
    else:
        runs = []
        for p in pools:
            runs.append(_answer_pool(cfg, p, assigned, result, t0, hosts(p)))
            if hosts(p) is not None:
                started.stop()  # its GPUs go to the next pool
            label = p.names[0] if len(p.names) == 1 else f"{len(p.names)} models on one engine"
            result.phases.append(Phase(f"generate ({label})", runs[-1]["rows"], runs[-1]["seconds"]))
    result.generation = runs
    earlier = result.resumed.spend if result.resumed is not None else 0.0
    spent = earlier + sum(r["spend"] for r in runs)
    planned = earlier + (result.plan.predicted_cost if result.plan is not None else math.nan)
    log(f"generation: spent {spent:.6g} USD of {planned:.6g} USD predicted" + (" (earlier runs included)" if earlier else ""))
    rest = assigned.map_batches(_select, fn_kwargs=dict(models=None), batch_format="pyarrow", num_cpus=0.25)
    write_shards(cfg, rest)


def engine_settings(cfg: JobConfig, engine: Engine, members: Sequence[ModelSpec], on_gpu: bool,
                    context_limit: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The generator's constructor arguments for one engine pool, and the Ray resources of each of
    its engine actors."""
    settings = {
        m.name: dict(max_tokens=m.max_tokens, temperature=m.temperature, top_p=m.top_p,
                     input_price=m.input_price, output_price=m.output_price)
        for m in members
    }  # fmt: skip
    if cfg.generation.standin and engine.backend != "openai":  # each model's stand-in answers at its own lengths
        from router.backends.standin import standin_eos_bias

        for m in members:
            settings[m.name]["eos_bias"] = standin_eos_bias(m.name) if m.standin_eos_bias is None else m.standin_eos_bias
    max_len = min(m.max_context for m in members)
    if context_limit is not None:
        max_len = min(max_len, context_limit)
    dtype = "float32" if cfg.generation.standin else cfg.generation.dtype
    tp = engine.tensor_parallel
    kwargs: dict[str, Any] = dict(weights=engine.weights, models=settings, max_model_len=max_len)
    if engine.backend == "openai":  # an HTTP client with requests in flight: no GPU, little CPU
        kwargs.update(base_url=engine.base_url, api_key_env=engine.api_key_env,
                      concurrency=cfg.generation.concurrency)  # fmt: skip
        return kwargs, dict(num_gpus=0, num_cpus=0.25)
    kwargs.update(tensor_parallel_size=tp, dtype=dtype)
    if engine.backend == "vllm":
        in_process = cfg.generation.in_process
        kwargs["in_process"] = (not on_gpu and tp == 1) if in_process is None else in_process
    return kwargs, dict(num_gpus=tp if on_gpu else 0, num_cpus=1)  # transformers: CPUs only


def _in_thread(fn: Callable[..., Any], *args: Any) -> Future:
    """`fn(*args)` in a thread of its own; its result (or error) in the future."""
    ex = ThreadPoolExecutor(max_workers=1)
    try:
        return ex.submit(fn, *args)
    finally:
        ex.shutdown(wait=False)


def _answer_pool(cfg: JobConfig, pool: EnginePool, assigned, result: RunResult, t_start: float,
                 hosts: Started | None = None) -> dict[str, Any]:
    """Run one engine pool over its rows and commit them; returns what it did (rows, spend, tokens,
    errors, start and seconds, replicas, measured tokens per second per replica). `hosts`: its
    engines, started earlier (`start_engines`); else the pass starts them."""
    from router.backends.generators import BACKENDS
    from router.stages.generate import EngineFeeder

    engine, members, names = pool.engine, pool.members, pool.names
    weights, tp = engine.weights, engine.tensor_parallel
    rows = assigned.map_batches(_select, fn_kwargs=dict(models=names), batch_format="pyarrow", num_cpus=0.25)
    t0 = time.perf_counter()
    where = engine.base_url if engine.backend == "openai" else engine.backend
    gpus = f", {tp} GPU{'s' if tp > 1 else ''} each" if pool.on_gpu else ""
    log(f"generate {pool.label}: {pool.replicas} engine(s) of {weights} ({where}{gpus})")
    in_driver = hosts is not None and small_job(assigned)
    # Blocks of one engine call each: an actor task then answers one batch and hands it on, so
    # answers stream to the writer (and are committed) as they come, and replicas share the work.
    blocks = None if in_driver else rows.repartition(target_num_rows_per_block=cfg.generation.batch_size)
    if in_driver:
        out = None  # fed from the driver (`feed_started`)
    elif hosts is None:
        kwargs, resources = engine_settings(cfg, engine, members, pool.on_gpu, standin_weights(cfg)[1])
        out = blocks.map_batches(
            BACKENDS[engine.backend], fn_constructor_kwargs=kwargs, compute=ray_actor_pool(pool.replicas),
            batch_size=cfg.generation.batch_size, batch_format="pyarrow", **resources,
            ray_remote_args_fn=partial(engine_restarts, cfg),
        )  # fmt: skip
    else:
        # Two feeders per started engine: one batch in the engine, the next waiting at it.
        out = blocks.map_batches(
            EngineFeeder, fn_constructor_kwargs=dict(hosts=hosts.actors), compute=ray_actor_pool(2 * len(hosts.actors)),
            batch_size=cfg.generation.batch_size, batch_format="pyarrow", num_cpus=0,
        )  # fmt: skip
    fence = f"fence-{uuid.uuid4().hex}"
    early: dict[str, float] = {}
    began = time.time()
    # Started engines may still be starting: the pass starts its own workers meanwhile (its
    # batches wait at the engines), while a thread waits for them. A start that fails fails the
    # pass too, and one that times out stops the engines, which ends the pass.
    ready = _in_thread(hosts.wait_ready, cfg, names) if hosts is not None else None
    try:
        try:
            if in_driver:
                written = feed_started(cfg, (_select(b, names) for b in driver_batches(assigned)), hosts, fence)
            else:
                written = write_shards(cfg, out, fence)
        except Exception:
            if ready is not None:
                try:  # an engine that could not start is the reason: its error instead (it comes at once)
                    ready.result(timeout=10)
                except TimeoutError:  # still starting: the pass failed for a reason of its own
                    pass
            raise
        early = ready.result() if ready is not None else {}
    except Exception as e:
        failed = engine_failure(e, names, weights, cfg.generation.start_timeout_s)
        if failed is not None:
            raise failed from None
        if not engine_died(e):
            raise
        # Its engines kept dying: what this pool had not written is marked, and the job goes on.
        message = (f"the engine for {weights!r} died more than generation.engine_retries="
                   f"{cfg.generation.engine_retries} times while answering; not retried further")  # fmt: skip
        log(f"generate {pool.label}: {message}; marking the rows not yet written")
        raise_fence(cfg.output, fence)
        prior = read_prior(cfg.output, clear=False)  # pools running at once may be writing into _tmp
        done = prior.ids if prior is not None else pa.array([], pa.string())
        marked = rows.map_batches(_mark_failed, fn_kwargs=dict(done=done, message=message),
                                  batch_format="pyarrow", num_cpus=0.25)  # fmt: skip
        marking = write_shards(cfg, marked)
        # What this pool's models spent before their engines died: all they have written, less what
        # earlier runs of the job had (pools never share a model, so running at once is no matter).
        before = result.resumed.spend_of(names) if result.resumed is not None else 0.0
        after = prior.spend_of(names) if prior is not None else 0.0
        rows_done, tokens = written_rows_and_tokens(cfg.output, names, result.resumed)
        written = {**marking, "rows": rows_done, "spend": after - before, "tokens": tokens}
    seconds = time.perf_counter() - t0
    # What the engines spent answering: less the time the rows waited for engines started early.
    busy = seconds - max(0.0, -early.get("ready_before_rows_s", 0.0))
    if hosts is not None:
        early.update(hosts.usage(began, seconds))
    run = {
        "pool": pool.label, "backend": engine.backend, "replicas": pool.replicas,
        "gpus": tp * pool.replicas if pool.on_gpu else 0, "start_s": t0 - t_start, "seconds": seconds,
        "rows": written["rows"], "spend": written["spend"], "errors": written["errors"], "tokens": written["tokens"],
        "tokens_per_s_per_replica": written["tokens"] / busy / pool.replicas if busy > 0 else None,
        "prestarted": hosts is not None, **early,
    }  # fmt: skip
    log(f"generate {pool.label}: {run['rows']} rows in {seconds:.1f}s ({run['rows'] / max(seconds, 1e-9):.3g} rows/s, "
        f"{written['tokens'] / max(seconds, 1e-9):.4g} tokens/s), {run['spend']:.6g} USD"
        + (f", {run['errors']} generation errors" if run["errors"] else ""))  # fmt: skip
    return run


# Engine calls in flight per started engine when the driver feeds it: one answering, the next
# waiting at it, so the engine never waits for the driver.
CALLS_IN_FLIGHT = 2


def feed_started(cfg: JobConfig, rows: Iterable[pa.Table], hosts: Started, fence: str) -> dict[str, Any]:
    """A small job's rows for started engines, fed from the driver: calls of generation.batch_size
    rows, CALLS_IN_FLIGHT per engine, answers committed in shards of about generation.shard_rows as
    they come. A Ray Data pass here would first start its feeder actors and task workers (3-7 s
    before the first batch reached the engine on 2 cores); the engines' restarts and retries are
    the same either way (`engine_restarts`). Returns what `write_shards` returns."""
    import ray

    size = cfg.generation.batch_size
    calls = (t.slice(lo, size) for t in rows for lo in range(0, t.num_rows, size))
    flying: dict[Any, int] = {}  # call -> engine
    load = [0] * len(hosts.actors)
    commits: list[dict[str, Any]] = []
    answered: list[pa.Table] = []

    def send() -> None:
        for i, engine in enumerate(hosts.actors):
            while load[i] < CALLS_IN_FLIGHT:
                batch = next(calls, None)
                if batch is None:
                    return
                flying[engine.answer.remote(batch)] = i
                load[i] += 1

    def commit() -> None:
        commits.append(commit_shard(pa.concat_tables(answered), cfg.output, fence).to_pylist()[0])
        answered.clear()

    send()
    while flying:
        (done,), _ = ray.wait(list(flying), num_returns=1)
        load[flying.pop(done)] -= 1
        send()  # before reading the answer: the engine is never left without its next call
        answered.append(finalize(ray.get(done), cfg.text_column))
        if sum(t.num_rows for t in answered) >= cfg.generation.shard_rows:
            commit()
    if answered:
        commit()
    return commit_totals(commits)


def written_rows_and_tokens(output: str, models: list[str], resumed: Prior | None) -> tuple[int, int]:
    """Rows, and their prompt plus answer tokens, committed for these models in this run (earlier
    runs' left out)."""
    import pyarrow.dataset as pads

    from router.stages.read import filesystem

    files = committed_files(output)
    if not files:
        return 0, 0
    t = pads.dataset(files, filesystem=filesystem(output)[0], format="parquet").to_table(
        columns=[S.ID, S.MODEL, S.INPUT_TOKENS, S.OUTPUT_TOKENS],
        filter=pads.field(S.MODEL).isin(models),
    )
    if resumed is not None:
        t = t.filter(pc.invert(pc.is_in(t[S.ID].cast(pa.string()), resumed.ids)))
    return t.num_rows, int((pc.sum(t[S.INPUT_TOKENS]).as_py() or 0) + (pc.sum(t[S.OUTPUT_TOKENS]).as_py() or 0))


def write_shards(cfg: JobConfig, rows, fence: str | None = None) -> dict[str, Any]:
    """Finalise the rows and commit them to the output in whole shards of about
    `generation.shard_rows` rows, as they come; returns their rows, actual spend, generation
    errors and tokens. `fence`: see `router.job.output.raise_fence`."""
    out = rows.map_batches(finalize, fn_kwargs=dict(text_column=cfg.text_column), batch_format="pyarrow",
                           num_cpus=0.25)  # fmt: skip
    done = out.map_batches(commit_shard, fn_kwargs=dict(output=cfg.output, fence=fence),
                           batch_size=cfg.generation.shard_rows,
                           batch_format="pyarrow", num_cpus=0.25)  # fmt: skip
    return commit_totals(done.iter_rows())


def commit_totals(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The rows, actual spend, generation errors and tokens of committed shards (`commit_shard`'s
    one-row results), added up."""
    total = {"rows": 0, "spend": 0.0, "errors": 0, "tokens": 0}
    for part in parts:
        for k in total:
            total[k] += part[k]
    return total


TALLY_SUMS = (S.PREDICTED_COST, S.ACTUAL_COST, S.INPUT_TOKENS, S.OUTPUT_TOKENS, S.PREDICTED_QUALITY)


PROMPT_BYTES = "prompt_bytes"


def tally_batch(batch: pa.Table) -> pa.Table:
    """Per-batch partial sums by (model, status); the driver adds them up."""
    sums = [c for c in TALLY_SUMS if c in batch.column_names]
    t = batch.select([S.MODEL, S.STATUS, *sums])
    if S.PROMPT in batch.column_names:  # routed rows, not yet answered: their load, for the schedule
        t = t.append_column(PROMPT_BYTES, pc.fill_null(pc.binary_length(batch[S.PROMPT].cast(pa.string())), 0))
        sums.append(PROMPT_BYTES)
    t = t.group_by([S.MODEL, S.STATUS], use_threads=False)
    return t.aggregate([([], "count_all")] + [(c, "sum") for c in sums])


def tally(ds) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Rows and sums per model and rows per status, with driver memory independent of N. Each
    model also gets `ok_rows` (rows with status ok) and, for routed rows, `ok_prompt_bytes`.
    `ds` is materialised: a small one is read in the driver (`per_batch`)."""
    return tally_parts(p for t in per_batch(ds, tally_batch) for p in t.to_pylist())


def tally_parts(parts: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Add up `tally_batch`'s partial sums: per model (rows, rows per status, sums) and per status."""
    by_model: dict[Any, dict[str, Any]] = {}
    by_status: dict[str, int] = {}
    for part in parts:
        m = by_model.setdefault(part[S.MODEL], {S.MODEL: part[S.MODEL], "count_all": 0, "ok_rows": 0, "statuses": {}})
        m["count_all"] += part["count_all"]
        m["statuses"][part[S.STATUS]] = m["statuses"].get(part[S.STATUS], 0) + part["count_all"]
        by_status[part[S.STATUS]] = by_status.get(part[S.STATUS], 0) + part["count_all"]
        for c in TALLY_SUMS:
            if f"{c}_sum" in part:
                m[f"{c}_sum"] = (m.get(f"{c}_sum") or 0) + (part[f"{c}_sum"] or 0)
        if part[S.STATUS] == S.OK:
            m["ok_rows"] += part["count_all"]
            if f"{PROMPT_BYTES}_sum" in part:
                m["ok_prompt_bytes"] = m.get("ok_prompt_bytes", 0) + (part[f"{PROMPT_BYTES}_sum"] or 0)
    return sorted(by_model.values(), key=lambda r: (r[S.MODEL] is None, r[S.MODEL] or "")), by_status


def summarize_output(cfg: JobConfig, result: RunResult) -> dict[str, Any] | None:
    """Rows, spend and tokens per model and per status, read back from what was written
    (`router.report.scan_output`: the driver streams the few columns it needs, where a Ray Data pass
    cost 5-7 s of task start-up on a small job). Returns the scan, for the report folder."""
    from router.report import scan_output

    scan = scan_output(cfg.output) if committed_files(cfg.output) else None
    result.by_model, result.by_status = (scan["models"], scan["statuses"]) if scan else ([], {})
    result.n_rows = sum(result.by_status.values())
    return scan


def plan_job(cfg: JobConfig) -> tuple[RunResult, Any]:
    """Route only: the assignment and predicted spend. Returns the result and the assigned dataset."""
    validate_job(cfg)
    init_ray(cfg)
    result = RunResult(output=None, n_rows=0, plan=None, budget=cfg.budget.total, allow_skip=False)
    assigned = route(cfg, result)
    _, result.schedule = schedule_pools(cfg, result.by_model, build=False)
    return result, assigned


def run_job(cfg: JobConfig) -> RunResult:
    """Route and generate; writes the output folder and its report."""
    validate_job(cfg)
    prior = open_output(cfg)
    init_ray(cfg)
    result = RunResult(output=cfg.output, n_rows=0, plan=None, budget=cfg.budget.total, allow_skip=False,
                       standin=cfg.generation.standin, resumed=prior)  # fmt: skip
    todo = cfg
    if prior is not None:
        # The budget holds over every run of the job: this one gets what the earlier ones left.
        left = max(0.0, cfg.budget.total - prior.spend)
        todo = dataclasses.replace(cfg, budget=dataclasses.replace(cfg.budget, total=left))
        log(f"resuming: {prior.rows} rows already written in {prior.files} shards ({prior.spend:.6g} USD spent); "
            f"routing the rest with {left:.6g} USD")  # fmt: skip
    started = start_engines(todo)
    try:
        assigned = route(todo, result, None if prior is None else prior.ids)
        generate_and_write(todo, assigned, result, started)
    finally:
        if started is not None:
            started.stop()
    clear_tmp(cfg.output)
    scan = summarize_output(cfg, result)
    from router.report import write_report

    write_report(cfg, result)
    from router.report import write_report_folder

    folder, files = write_report_folder(cfg.output, scan=scan)
    log(f"report: {folder}/ ({', '.join(files)})")
    return result
