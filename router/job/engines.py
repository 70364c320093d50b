"""The engines a job runs: which pool models share one (an engine pool), what each loads (the
stand-in, or the model's weights), how many replicas each pool gets and in what order (the GPU
schedule, from the routed rows' load), each engine's settings and Ray resources, and what to tell
the user when engines fail to start or die."""

from __future__ import annotations

import dataclasses

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

from router.config import GenerationSpec, JobConfig, ModelSpec
from router.errors import JobFailed
from router.job.cluster import gpus_available, log, wants_gpus
from router.job.schedule import PoolLoad, Schedule, ScheduleError, plan_schedule
from router.job.tally import ModelTally


@dataclass(frozen=True)
class Engine:
    """What one engine pool is: pool models sharing it differ only in sampling settings and prices."""

    backend: str
    weights: str
    """What the engine loads (a Hugging Face id or a path), or the model's name at an endpoint."""
    tensor_parallel: int
    base_url: str | None = None
    api_key_env: str | None = None


@dataclass(frozen=True)
class EnginePool:
    """One engine pool to run: what it loads, the pool models it serves, how many replicas."""

    engine: Engine
    members: tuple[ModelSpec, ...]
    replicas: int
    on_gpu: bool
    lengths: AnswerLengths | None = None
    """Its rows' predicted answers (None: not known yet, before routing)."""

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    @property
    def label(self) -> str:
        return ", ".join(self.names)


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


def pool_loads(cfg: JobConfig, groups: dict[Engine, list[ModelSpec]], by_model: list[ModelTally]) -> dict[Engine, PoolLoad]:
    """Each engine pool's predicted token load, from the routed rows' tally: prompt tokens from their
    UTF-8 length (as the `expected` budget mode counts them) plus each model's planned answer."""
    from router.cost import CHARS_PER_TOKEN, TEMPLATE_TOKENS, planned_output_tokens

    tallied = {t.model: t for t in by_model if t.model is not None}
    loads = {}
    for engine, members in groups.items():
        tokens, rows = 0.0, 0
        for m in members:
            t = tallied.get(m.name, ModelTally(m.name))
            n = int(t.ok_rows)
            answer = planned_output_tokens(m.expected_output_tokens, cfg.budget.default_output_tokens, m.max_tokens)
            tokens += (t.ok_prompt_bytes or 0) / CHARS_PER_TOKEN + n * (TEMPLATE_TOKENS + answer)
            rows += n
        if rows == 0:
            continue
        rate = min(m.tokens_per_s or cfg.generation.tokens_per_s for m in members)
        load_s = max(cfg.generation.load_s if m.load_s is None else m.load_s for m in members)
        loads[engine] = PoolLoad(", ".join(m.name for m in members), engine.tensor_parallel, tokens, rate, load_s,
                                 max_replicas=max(1, math.ceil(rows / cfg.generation.batch_size)))  # fmt: skip
    return loads


def schedule_pools(cfg: JobConfig, by_model: list[ModelTally], build: bool = True) -> tuple[list[EnginePool], Schedule | None]:
    """The engine pools with rows to answer, in the order and replica counts they run with, and the
    GPU schedule (None when no vLLM engine runs on GPUs, or the GPUs to plan for are unknown).
    `build=False` (planning only): the stand-in is not built."""
    weights_of, _ = standin_weights(cfg, build)
    groups = engine_groups(cfg, weights_of)
    loads = pool_loads(cfg, groups, by_model)
    on_gpu = wants_gpus(cfg.generation.device)
    gpu_engines = [e for e in loads if on_gpu and e.backend == "vllm"]
    gpus = (cfg.generation.gpus or int(gpus_available())) if gpu_engines else 0
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
        pools.append(EnginePool(engine, tuple(members), replicas, gpu, answer_lengths(cfg, members, by_model)))
    return pools, schedule


def with_deadline(cfg: JobConfig) -> JobConfig:
    """Under `budget.deadline_s`, the job's budget in GPU-seconds: the devices it has (the GPUs to
    schedule on; without GPUs, the most replicas an engine pool runs, one device each) times the
    deadline less every engine pool's start (`load_s`, counted in full, as when pools run in turn).
    Unchanged without a deadline."""
    if cfg.budget.deadline_s is None:
        return cfg
    groups = engine_groups(cfg, standin_weights(cfg, build=False)[0])
    gpus = (cfg.generation.gpus or int(gpus_available())) if wants_gpus(cfg.generation.device) else 0
    devices = gpus or max(max(m.replicas for m in members) for members in groups.values())
    load = sum(max(cfg.generation.load_s if m.load_s is None else m.load_s for m in members)
               for members in groups.values())  # fmt: skip
    total = max(0.0, devices * (cfg.budget.deadline_s - load))
    log(f"deadline {cfg.budget.deadline_s:g}s on {devices} {'GPUs' if gpus else 'engine replicas'}, less "
        f"{load:g}s of engine starts: a budget of {total:.6g} GPU-seconds")  # fmt: skip
    return dataclasses.replace(cfg, budget=dataclasses.replace(cfg.budget, total=total))


def engine_settings(cfg: JobConfig, engine: Engine, members: Sequence[ModelSpec], on_gpu: bool,
                    context_limit: int | None, ledger: Any = None,
                    replicas: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """The generator's constructor arguments for one engine pool, and the Ray resources of each of
    its engine actors. `ledger`: the hard budget's (`router.job.ledger.LedgerClient`), or None."""
    from router.backends.generators import ModelSettings

    settings = {m.name: ModelSettings.of(m) for m in members}  # validated once, by the config
    if cfg.generation.standin and engine.backend != "openai":  # each model's stand-in answers at its own lengths
        from router.backends.standin import standin_eos_bias

        for m in members:
            bias = standin_eos_bias(m.name) if m.standin_eos_bias is None else m.standin_eos_bias
            settings[m.name] = dataclasses.replace(settings[m.name], eos_bias=bias)
    max_len = min(m.max_context for m in members)
    if context_limit is not None:
        max_len = min(max_len, context_limit)
    dtype = "float32" if cfg.generation.standin else cfg.generation.dtype
    tp = engine.tensor_parallel
    kwargs: dict[str, Any] = dict(weights=engine.weights, models=settings, max_model_len=max_len)
    if ledger is not None:
        kwargs["ledger"] = ledger
    if engine.backend == "openai":  # an HTTP client with requests in flight: no GPU, little CPU
        kwargs.update(base_url=engine.base_url, api_key_env=engine.api_key_env,
                      concurrency=cfg.generation.concurrency)  # fmt: skip
        return kwargs, dict(num_gpus=0, num_cpus=0.25)
    kwargs.update(tensor_parallel_size=tp, dtype=dtype)
    if engine.backend == "vllm":
        in_process = cfg.generation.in_process
        kwargs["in_process"] = (not on_gpu and tp == 1) if in_process is None else in_process
        kwargs.update(enforce_eager=cfg.generation.enforce_eager, engine_kwargs=cfg.generation.vllm_engine_args())
        if not on_gpu:
            import os

            # A CPU engine answers after encoding is done: it takes its share of the cores, not the
            # one thread Ray gives an actor of one CPU (half the tokens/s on a 2-core machine).
            threads = cfg.generation.cpu_threads or max(1, (os.cpu_count() or 1) // max(1, replicas))
            kwargs["cpu_threads"] = threads
    return kwargs, dict(num_gpus=tp if on_gpu else 0, num_cpus=1)  # transformers: CPUs only


# vLLM's default running batch (max_num_seqs) for offline use: on large GPUs (H100, H200, B200)
# and on the CPU build; other GPUs take 256, which this covers too.
VLLM_RUNNING_BATCH = {"gpu": 1024, "cpu": 256}
# Rows in flight per engine, in running batches: where the pool's answer lengths are not predicted,
# and the fewest where they are; and the most (`batches_in_flight`).
ROWS_IN_FLIGHT = 16
MOST_ROWS_IN_FLIGHT = 64
MOST_CALLS_IN_FLIGHT = 128
"""Threads one engine actor runs calls in, at most."""


@dataclass(frozen=True)
class AnswerLengths:
    """An engine pool's predicted answers: the mean over its rows, and the longest any may run."""

    mean: float
    most: int
    """The pool's largest max_tokens."""
    rows: int = 0
    """How many rows the pool answers (0: not known)."""


def batches_in_flight(lengths: AnswerLengths | None) -> float:
    """Rows one engine holds at once, in running batches, so that its batch stays full.

    A call returns only with its longest answer, so an open call holds its rows' slots until that
    one is done: about `most` engine steps after its rows start, while the engine finishes about a
    running batch of rows every `mean` steps. By Little's law the engine then needs about
    1 + most / mean running batches of rows in flight (one running, the rest in calls waiting for
    their longest answer); with heavy-tailed lengths, many (answers of 9 tokens on average and up
    to 256: 29). Never fewer than ROWS_IN_FLIGHT (lengths mispredicted, or not predicted: None),
    nor more than MOST_ROWS_IN_FLIGHT (bench/feeding.py: 16,384 rows on the CPU build, 943 engine
    steps with 16 running batches in flight, 790 with 32, as with every row in one call)."""
    if lengths is None or not lengths.mean > 0:
        return ROWS_IN_FLIGHT
    return min(MOST_ROWS_IN_FLIGHT, max(ROWS_IN_FLIGHT, 1 + lengths.most / lengths.mean))


def engine_calls_in_flight(generation: GenerationSpec, backend: str, on_gpu: bool,
                           lengths: AnswerLengths | None = None, *, most: bool = False) -> int:  # fmt: skip
    """Calls one engine actor runs at once (`generation.calls_in_flight`; auto: calls of batch_size
    rows holding `batches_in_flight(lengths)` of vLLM's running batches, so that the engine's batch
    stays full while open calls wait for their longest answers; 2 for an endpoint, whose requests
    in flight are bounded apart; 1 where the engine answers a call at a time). `most`: the most
    it may be for any lengths (an engine started before its rows are routed runs that many threads)."""
    from router.backends.generators import BACKENDS

    if not BACKENDS[backend].CONCURRENT:
        return 1
    if generation.calls_in_flight is not None:
        return generation.calls_in_flight
    if backend != "vllm":
        return 2
    running = VLLM_RUNNING_BATCH["gpu" if on_gpu else "cpu"]
    batches = MOST_ROWS_IN_FLIGHT if most else batches_in_flight(lengths)
    return min(MOST_CALLS_IN_FLIGHT, math.ceil(batches * running / generation.batch_size))


def answer_lengths(cfg: JobConfig, members: Sequence[ModelSpec],
                   by_model: Sequence[ModelTally]) -> AnswerLengths | None:  # fmt: skip
    """The pool's predicted answers, from the routed rows' tally: each row's predicted answer where
    its profile predicts one, else its model's planned answer (`planned_output_tokens`). None: no rows."""
    from router.cost import planned_output_tokens

    tallied = {t.model: t for t in by_model if t.model is not None}
    tokens, rows, most = 0.0, 0, 0
    for m in members:
        t = tallied.get(m.name)
        if t is None or not t.ok_rows:
            continue
        if t.ok_answer_tokens is not None:
            tokens += t.ok_answer_tokens
        else:
            tokens += t.ok_rows * planned_output_tokens(m.expected_output_tokens, cfg.budget.default_output_tokens,
                                                        m.max_tokens)  # fmt: skip
        rows += t.ok_rows
        most = max(most, m.max_tokens)
    return AnswerLengths(tokens / rows, most, rows) if rows else None


def pool_calls_in_flight(cfg: JobConfig, pool: EnginePool) -> int:
    """Calls each of the pool's engines is fed at once: `engine_calls_in_flight` for its rows'
    predicted answers, and no more than the calls its rows make."""
    calls = engine_calls_in_flight(cfg.generation, pool.engine.backend, pool.on_gpu, pool.lengths)
    if pool.lengths is not None and pool.lengths.rows:
        calls = min(calls, math.ceil(pool.lengths.rows / cfg.generation.batch_size))
    return max(1, calls)


def engine_restarts(retries: int) -> dict[str, Any]:
    """Ray options of each engine actor: a dead engine is replaced and its batch retried, a bounded
    number of times (generation.engine_retries; Ray Data's default is forever)."""
    return {"max_restarts": retries, "max_task_retries": retries}


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
