"""The job's Ray Data stages, built from the config: each a `StageSpec` (the callable, its
arguments, and what each of its tasks or actors asks of the cluster), as Ray Data LLM's processor
builder makes them. `router.job.plan` and `router.job.answer` compose them; each stage's resources
are on the line that builds it.

    read -> [tokenize] -> encode -> score                   (router.job.plan.scored_dataset)
    assign                                                  (router.job.plan.assign_rows)
    pool rows -> generate | feed started engines -> finalize -> commit   (router.job.answer)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc

from router import schema as S
from router.config import JobConfig
from router.job.cluster import ROUTE_BATCH
from router.job.engines import EnginePool, engine_restarts, engine_settings, pool_calls_in_flight, standin_weights
from router.job.output import commit_shard, finalize
from router.stages.route import RoutePlan


@dataclass(frozen=True)
class StageSpec:
    """One Ray Data stage over pyarrow batches."""

    fn: Callable[..., Any]
    """A function of a batch (run as Ray tasks) or a callable class (run in a pool of actors)."""
    num_cpus: float
    """CPUs each task or actor asks for."""
    num_gpus: float | None = None
    """GPUs each task or actor asks for (None: Ray's default, none)."""
    fn_kwargs: dict[str, Any] | None = None
    fn_constructor_kwargs: dict[str, Any] | None = None
    batch_size: int | None = None
    """Rows per call (None: a block per call)."""
    actors: dict[str, int] | None = None
    """A class's actor pool (`ActorPoolStrategy`: size, or min_size and max_size)."""
    calls: int = 1
    """Calls each actor runs at once, in threads of its own (the class must be thread-safe)."""
    ray_remote_args_fn: Callable[[], dict[str, Any]] | None = None

    def apply(self, ds):
        """`ds` with this stage added (lazily, as Ray Data adds stages)."""
        import ray

        compute = None
        if self.actors is not None:
            at_once = {}
            if self.calls > 1:
                at_once = dict(max_concurrent_calls_per_actor=self.calls, max_tasks_in_flight_per_actor=self.calls,
                               enable_true_multi_threading=True)  # fmt: skip
            compute = ray.data.ActorPoolStrategy(**self.actors, **at_once)
        return ds.map_batches(
            self.fn, fn_kwargs=self.fn_kwargs, fn_constructor_kwargs=self.fn_constructor_kwargs, compute=compute,
            batch_size=self.batch_size, batch_format="pyarrow", num_cpus=self.num_cpus, num_gpus=self.num_gpus,
            ray_remote_args_fn=self.ray_remote_args_fn,
        )  # fmt: skip

    def instance(self) -> Callable[[pa.Table], pa.Table]:
        """The stage's callable class made here, for batches the driver runs through it."""
        return self.fn(**(self.fn_constructor_kwargs or {}))


# ---------------------------------------------------------------- routing


def tokenizes_apart(cfg: JobConfig, encoder_on_gpu: bool) -> bool:
    """GPU encoders get their rows tokenized by CPU actors, so the GPU only embeds. A CPU encoder
    tokenizes its own batches: tokenizing is a few percent of its time (bench/encode.py), where a
    process of its own costs seconds of a small job."""
    return cfg.encoder.backend != "sentence-transformers" and encoder_on_gpu


def read(cfg: JobConfig, skip_ids: pa.Array | None, fused_with: StageSpec) -> StageSpec:
    """The input's rows, leaving out those whose id is in `skip_ids`. Reading runs as tasks asking
    for what the next stage's actors ask for (`fused_with`), so that Ray Data fuses the two: each
    tokenizer (or CPU encoder) actor reads the units it then works on. No reader process of its
    own, and reads run as wide as that stage."""
    from router.stages.read import read_units

    return StageSpec(read_units, num_cpus=fused_with.num_cpus, num_gpus=fused_with.num_gpus, batch_size=1,
                     fn_kwargs=dict(text_column=cfg.text_column, id_column=cfg.id_column, skip_ids=skip_ids))  # fmt: skip


def tokenize(cfg: JobConfig, window: str, cpus: int) -> StageSpec:
    from router.stages.encode import Tokenize

    enc = cfg.encoder
    return StageSpec(Tokenize, num_cpus=0.25, actors=dict(min_size=1, max_size=enc.tokenizers or max(1, cpus // 2)),
                     batch_size=enc.batch_size, fn_constructor_kwargs=dict(model=enc.model, window=window))  # fmt: skip


def encode(cfg: JobConfig, window: str, on_gpu: bool) -> StageSpec:
    from router.stages.encode import Encoder

    enc = cfg.encoder
    return StageSpec(
        Encoder, num_gpus=1 if on_gpu else 0, num_cpus=1, actors=dict(size=enc.replicas), batch_size=enc.batch_size,
        fn_constructor_kwargs=dict(model=enc.model, device="cuda" if on_gpu else "cpu", backend=enc.backend,
                                   window=window, threads=enc.threads or None),
    )  # fmt: skip


def score(cfg: JobConfig, cpus: int, summary_sink: Callable | None, prompts: dict | None = None) -> StageSpec:
    """The Scorer; with a `summary_sink`, it sends the budget's pass 1 there as it scores. `prompts`:
    each model's prompt-token calibration (`router.job.plan.calibrate_prompts`), where one was made."""
    from router.stages.route import PoolArrays, Scorer

    routers = max(1, cpus // 4)  # Scorer actors: each keeps up with about one GPU encoder (bench/route.py)
    return StageSpec(
        Scorer, num_cpus=0.25, actors=dict(min_size=1, max_size=routers), batch_size=ROUTE_BATCH,
        fn_constructor_kwargs=dict(profiles=cfg.profiles, pool=PoolArrays.from_config(cfg, prompts),
                                   task_column=cfg.task_column, summary_sink=summary_sink),
    )  # fmt: skip


def assign(cfg: JobConfig, plan: RoutePlan, allow_skip: bool, group_column: str | None) -> StageSpec:
    from router.stages.route import Assigner

    return StageSpec(Assigner, num_cpus=0.25, actors=dict(size=1), batch_size=ROUTE_BATCH,
                     fn_constructor_kwargs=dict(models=cfg.model_names, plan=plan, allow_skip=allow_skip,
                                                group_column=group_column))  # fmt: skip


# ---------------------------------------------------------------- answering and writing


def select_rows(batch: pa.Table, models: list[str] | None) -> pa.Table:
    """The batch's ok rows routed to `models`; `models=None`: the rows no engine will see."""
    ok = pc.equal(batch[S.STATUS], S.OK)
    if models is None:
        return batch.filter(pc.invert(pc.fill_null(ok, False)))
    return batch.filter(pc.and_(ok, pc.is_in(batch[S.MODEL], pa.array(models, pa.string()))))


def mark_failed(batch: pa.Table, done: pa.Array, message: str) -> pa.Table:
    """The rows not written yet (id not in `done`), marked generation_error with `message`."""
    batch = batch.filter(pc.invert(pc.is_in(batch[S.ID], value_set=done)))
    n = batch.num_rows
    batch = batch.set_column(batch.schema.get_field_index(S.STATUS), S.STATUS, pa.array([S.GENERATION_ERROR] * n))
    return batch.set_column(batch.schema.get_field_index(S.ERROR), S.ERROR, pa.array([message] * n, pa.string()))


def rows_for(models: list[str] | None) -> StageSpec:
    """`select_rows` as a stage."""
    return StageSpec(select_rows, num_cpus=0.25, fn_kwargs=dict(models=models))


def generate(cfg: JobConfig, pool: EnginePool, ledger: Any = None) -> StageSpec:
    """The pool's generator in Ray Data actors (Ray Data starts the engines), each running
    `pool_calls_in_flight` calls at once; a dead engine is replaced and its batch retried
    (`engine_restarts`). `ledger`: the hard budget's, or None."""
    from router.backends.generators import BACKENDS

    engine = pool.engine
    kwargs, resources = engine_settings(cfg, engine, pool.members, pool.on_gpu, standin_weights(cfg)[1], ledger,
                                        pool.replicas)  # fmt: skip
    return StageSpec(
        BACKENDS[engine.backend], **resources, actors=dict(size=pool.replicas), batch_size=cfg.generation.batch_size,
        calls=pool_calls_in_flight(cfg, pool), fn_constructor_kwargs=kwargs,
        ray_remote_args_fn=partial(engine_restarts, cfg.generation.engine_retries),
    )  # fmt: skip


def feed(cfg: JobConfig, engines: list[Any], calls: int) -> StageSpec:
    """Feeders of engines started earlier (`EngineFeeder`): one per engine, each with `calls`
    batches in flight (the calls each engine runs at once), so that the engines always hold their
    next batches. They only wait on the engines: no CPU of their own."""
    from router.stages.generate import EngineFeeder

    return StageSpec(EngineFeeder, num_cpus=0, actors=dict(size=len(engines)), calls=calls,
                     batch_size=cfg.generation.batch_size, fn_constructor_kwargs=dict(hosts=engines))  # fmt: skip


def finalize_rows(cfg: JobConfig, keep_refused: bool = True) -> StageSpec:
    """`router.job.output.finalize` as a stage: the output's columns and types (`keep_refused`
    False: rows the ledger refused are left out, to be routed again in the next wave)."""
    return StageSpec(finalize, num_cpus=0.25, fn_kwargs=dict(text_column=cfg.text_column, keep_refused=keep_refused))


def commit(cfg: JobConfig, fence: str | None) -> StageSpec:
    """Shards of about generation.shard_rows rows committed to the output (`commit_shard`)."""
    return StageSpec(commit_shard, num_cpus=0.25, batch_size=cfg.generation.shard_rows,
                     fn_kwargs=dict(output=cfg.output, fence=fence))  # fmt: skip


def mark_unwritten(done: pa.Array, message: str) -> StageSpec:
    """`mark_failed` as a stage."""
    return StageSpec(mark_failed, num_cpus=0.25, fn_kwargs=dict(done=done, message=message))
