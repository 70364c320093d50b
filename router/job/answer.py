"""Answering the routed rows, engine pool by engine pool, and committing them to the output in
whole shards as they come. A pool's rows reach its engines one of three ways:

- `answer_with_own_engines`: a Ray Data pass starts the pool's engines in its actors;
- `feed_through_feeders`: engines started during routing (`router.job.prestart`), fed by a Ray
  Data pass of light feeder actors;
- `feed_from_driver`: the same started engines, fed from the driver (a small job: no Ray Data
  pass to start).

An engine that could not start fails the job with its one-line reason; engines that keep dying
leave their pool's unwritten rows marked generation_error, and the job goes on.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from router.config import JobConfig
from router.job import build
from router.job.cluster import driver_batches, in_thread, log, small_job
from router.job.engines import (
    EnginePool, engine_died, engine_failure, engine_groups, pool_calls_in_flight, schedule_pools, standin_weights,
)  # fmt: skip
from router.job.output import (
    Committed, Prior, commit_shard, finalize, raise_fence, read_prior, written_rows_and_tokens,
)  # fmt: skip
from router.job.prestart import EngineStart, StartedEngines
from router.job.result import Phase, PoolRun, RunResult
from router.job.schedule import format_schedule

def generate_and_write(cfg: JobConfig, assigned, result: RunResult, started: StartedEngines | None = None, *,
                       by_model: list | None = None, ledger: Any = None, keep_refused: bool = True,
                       last: bool = True, wave: str = "") -> list[PoolRun]:
    """Answer the routed rows engine pool by engine pool, committing shards as they come: models in
    turn, or (a `shared` GPU schedule) every pool at once on its share of the GPUs. `started`: the
    engines started before routing (`start_engines`), used by their pool and stopped after the
    `last` wave. `by_model`: the rows' tally (the schedule's loads; default the plan's). `ledger`:
    the hard budget's, which each engine asks before it generates; `keep_refused` False leaves the
    rows it refused unwritten, for the next wave. Records the schedule, the pools' runs and their
    phases in `result` and returns the runs."""
    pools, schedule = schedule_pools(cfg, result.by_model if by_model is None else by_model)
    result.schedule = schedule if schedule is not None or result.schedule is None else result.schedule
    if started is not None:
        at = next((i for i, p in enumerate(pools) if p.engine == started.engine), None)
        if at is None:
            if last:
                started.stop()  # no rows for it
        else:
            started.keep(min(len(started.actors), pools[at].replicas))
            pools[at] = dataclasses.replace(pools[at], replicas=len(started.actors))

    def started_for(p: EnginePool) -> StartedEngines | None:
        return started if started is not None and p.engine == started.engine else None

    if schedule is not None:
        for line in format_schedule(schedule):
            log(line)
    for engine, members in engine_groups(cfg, standin_weights(cfg)[0]).items():
        if engine not in [p.engine for p in pools] and not wave:
            log(f"generate {', '.join(m.name for m in members)}: no rows routed here, engine not started")
    answer = functools.partial(answer_pool, ledger=ledger, keep_refused=keep_refused)
    tag = f"{wave}: " if wave else ""
    t0 = time.perf_counter()
    if schedule is not None and schedule.strategy == "shared":
        # One thread per pool, each driving its own Ray Data execution. A pool that fails (an engine
        # that cannot start) fails the job once the others finish: what they wrote is committed.
        with ThreadPoolExecutor(max_workers=len(pools)) as ex:
            futures = [ex.submit(answer, cfg, p, assigned, result.resumed, t0, started_for(p)) for p in pools]
            runs = [f.result() for f in futures]  # the first failure (in pool order) fails the job
        rows = sum(r.rows for r in runs)
        result.phases.append(Phase(f"{tag}generate ({len(pools)} engine pools at once)", rows, time.perf_counter() - t0))
    else:
        runs = []
        for p in pools:
            runs.append(answer(cfg, p, assigned, result.resumed, t0, started_for(p)))
            if started_for(p) is not None and last:
                started.stop()  # its GPUs go to the next pool
            label = p.names[0] if len(p.names) == 1 else f"{len(p.names)} models on one engine"
            result.phases.append(Phase(f"{tag}generate ({label})", runs[-1].rows, runs[-1].seconds))
    result.generation += runs
    if not wave:
        earlier = result.resumed.spend if result.resumed is not None else 0.0
        spent = earlier + sum(r.spend for r in runs)
        planned = earlier + (result.plan.predicted_cost if result.plan is not None else math.nan)
        log(f"generation: spent {spent:.6g} {cfg.cost_unit} of {planned:.6g} {cfg.cost_unit} predicted"
            + (" (earlier runs included)" if earlier else ""))  # fmt: skip
    write_shards(cfg, build.rows_for(None).apply(assigned))
    return runs


def answer_pool(cfg: JobConfig, pool: EnginePool, assigned, resumed: Prior | None, t_start: float,
                started: StartedEngines | None = None, ledger: Any = None, keep_refused: bool = True) -> PoolRun:
    """Run one engine pool over its rows and commit them; returns what it did. `started`: its
    engines, started earlier (`start_engines`); else a Ray Data pass starts them. `resumed`: what
    earlier runs of the job had committed. `ledger`, `keep_refused`: see `generate_and_write`."""
    engine = pool.engine
    rows = build.rows_for(pool.names).apply(assigned)
    t0 = time.perf_counter()
    where = engine.base_url if engine.backend == "openai" else engine.backend
    gpus = f", {engine.tensor_parallel} GPU{'s' if engine.tensor_parallel > 1 else ''} each" if pool.on_gpu else ""
    calls = pool_calls_in_flight(cfg, pool)
    if started is not None:
        calls = min(calls, started.calls)
    fed = f", up to {calls} calls of {cfg.generation.batch_size} rows at once each" if calls > 1 else ""
    if fed and pool.lengths is not None and cfg.generation.calls_in_flight is None and engine.backend == "vllm":
        fed += f" (answers predicted {pool.lengths.mean:.3g} tokens on average, up to {pool.lengths.most})"
    log(f"generate {pool.label}: {pool.replicas} engine(s) of {engine.weights} ({where}{gpus}){fed}")
    fence = f"fence-{uuid.uuid4().hex}"
    began = time.time()
    start: EngineStart | None = None
    try:
        if started is None:
            written = answer_with_own_engines(cfg, pool, rows, fence, ledger, keep_refused)
        else:
            written, start = answer_with_started_engines(cfg, pool, assigned, rows, started, calls, fence, keep_refused)
    except Exception as e:
        written = after_failure(cfg, pool, rows, e, fence, resumed)
    seconds = time.perf_counter() - t0
    # What the engines spent answering: less the time the rows waited for engines started early.
    busy = seconds - max(0.0, -start.ready_before_rows_s if start is not None else 0.0)
    usage = started.usage(began, seconds) if started is not None else None
    run = PoolRun(
        pool=pool.label, backend=engine.backend, replicas=pool.replicas,
        gpus=engine.tensor_parallel * pool.replicas if pool.on_gpu else 0, start_s=t0 - t_start, seconds=seconds,
        rows=written.rows, spend=written.spend, errors=written.errors, tokens=written.tokens,
        tokens_per_s_per_replica=written.tokens / busy / pool.replicas if busy > 0 else None,
        prestarted=started is not None,
        engine_start_s=start.seconds if start is not None else None,
        ready_before_rows_s=start.ready_before_rows_s if start is not None else None,
        engine_busy_share=usage.busy_share if usage is not None else None,
        first_batch_after_s=usage.first_batch_after_s if usage is not None else None,
    )  # fmt: skip
    log(f"generate {pool.label}: {run.rows} rows in {seconds:.1f}s ({run.rows / max(seconds, 1e-9):.3g} rows/s, "
        f"{run.tokens / max(seconds, 1e-9):.4g} tokens/s), {run.spend:.6g} {cfg.cost_unit}"
        + (f", {run.errors} generation errors" if run.errors else ""))  # fmt: skip
    return run


def answer_with_own_engines(cfg: JobConfig, pool: EnginePool, rows, fence: str, ledger: Any = None,
                            keep_refused: bool = True) -> Committed:
    """A Ray Data pass whose actors start the pool's engines and answer its rows."""
    return write_shards(cfg, build.generate(cfg, pool, ledger).apply(engine_calls(cfg, rows)), fence, keep_refused)


def answer_with_started_engines(cfg: JobConfig, pool: EnginePool, assigned, rows, started: StartedEngines, calls: int,
                                fence: str, keep_refused: bool = True) -> tuple[Committed, EngineStart]:
    """Feed engines started earlier, `calls` batches in flight per engine (`pool_calls_in_flight`): from the driver for a small job, else through feeder actors.
    The engines may still be starting: the rows wait at them, while a thread waits for their
    start. A start that fails fails the pass too, and one that times out stops the engines,
    which ends the pass."""
    ready = in_thread(started.wait_ready, cfg.generation.start_timeout_s, pool.names)
    try:
        if small_job(assigned):
            pool_rows = (build.select_rows(b, pool.names) for b in driver_batches(assigned))
            written = feed_from_driver(cfg, pool_rows, started, calls, fence, keep_refused)
        else:
            written = feed_through_feeders(cfg, rows, started, calls, fence, keep_refused)
    except Exception:
        raise_start_error(ready)
        raise
    return written, ready.result()


def raise_start_error(ready: Future) -> None:
    """After a pass over started engines failed: raise the error of an engine that could not start,
    the reason for the failure (it comes at once); if they are still starting, the pass failed for
    a reason of its own."""
    try:
        ready.result(timeout=10)
    except TimeoutError:
        pass


def engine_calls(cfg: JobConfig, rows):
    """The rows in blocks of one engine call each: an actor task then answers one batch and hands
    it on, so answers stream to the writer (and are committed) as they come, and replicas share
    the work."""
    return rows.repartition(target_num_rows_per_block=cfg.generation.batch_size)


def feed_through_feeders(cfg: JobConfig, rows, started: StartedEngines, calls: int, fence: str,
                         keep_refused: bool = True) -> Committed:  # fmt: skip
    """A Ray Data pass of feeder actors handing the rows to the started engines, `calls` batches in
    flight per engine."""
    return write_shards(cfg, build.feed(cfg, started.actors, calls).apply(engine_calls(cfg, rows)), fence, keep_refused)


def feed_from_driver(cfg: JobConfig, rows: Iterable[pa.Table], started: StartedEngines, calls: int, fence: str,
                     keep_refused: bool = True) -> Committed:
    """A small job's rows for started engines, fed from the driver: calls of generation.batch_size
    rows, `calls` in flight per engine (at most its threads, `StartedEngines.calls`), answers
    committed in shards of about generation.shard_rows as they come. A Ray Data pass here would
    first start its feeder actors and task workers (seconds before the first batch reached the
    engine); the engines' restarts and retries are the same either way (`engine_restarts`)."""
    import ray

    size = cfg.generation.batch_size
    batches = (t.slice(lo, size) for t in rows for lo in range(0, t.num_rows, size))
    flying: dict[Any, int] = {}  # call -> engine
    load = [0] * len(started.actors)
    commits: list[dict[str, Any]] = []
    answered: list[pa.Table] = []

    def send() -> None:
        for i, engine in enumerate(started.actors):
            while load[i] < calls:
                batch = next(batches, None)
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
        answered.append(finalize(ray.get(done), cfg.text_column, keep_refused))
        if sum(t.num_rows for t in answered) >= cfg.generation.shard_rows:
            commit()
    if answered:
        commit()
    return Committed.total(commits)


def after_failure(cfg: JobConfig, pool: EnginePool, rows, error: Exception, fence: str,
                  resumed: Prior | None) -> Committed:
    """A pool's pass failed. An engine that could not start fails the job with its reason; engines
    that kept dying (after generation.engine_retries restarts) leave the rows this pool had not
    written marked generation_error, and the job goes on. Returns what the pool committed."""
    failed = engine_failure(error, pool.names, pool.engine.weights, cfg.generation.start_timeout_s)
    if failed is not None:
        raise failed from None
    if not engine_died(error):
        raise error
    message = (f"the engine for {pool.engine.weights!r} died more than generation.engine_retries="
               f"{cfg.generation.engine_retries} times while answering; not retried further")  # fmt: skip
    log(f"generate {pool.label}: {message}; marking the rows not yet written")
    raise_fence(cfg.output, fence)
    prior = read_prior(cfg.output, clear=False)  # pools running at once may be writing into _tmp
    done = prior.ids if prior is not None else pa.array([], pa.string())
    marking = write_shards(cfg, build.mark_unwritten(done, message).apply(rows))
    # What this pool's models spent before their engines died: all they have written, less what
    # earlier runs of the job had (pools never share a model, so running at once is no matter).
    before = resumed.spend_of(pool.names) if resumed is not None else 0.0
    after = prior.spend_of(pool.names) if prior is not None else 0.0
    rows_done, tokens = written_rows_and_tokens(cfg.output, pool.names, resumed)
    return Committed(rows=rows_done, spend=after - before, errors=marking.errors, tokens=tokens)


def write_shards(cfg: JobConfig, rows, fence: str | None = None, keep_refused: bool = True) -> Committed:
    """Finalise the rows and commit them to the output in whole shards of about
    `generation.shard_rows` rows, as they come; returns what was committed. `fence`: see
    `router.job.output.raise_fence`; `keep_refused`: see `generate_and_write`."""
    out = build.finalize_rows(cfg, keep_refused).apply(rows)
    return Committed.total(build.commit(cfg, fence).apply(out).iter_rows())

