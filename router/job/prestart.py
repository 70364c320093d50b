"""Engines started before routing: when a job has one local engine pool, which pool gets rows is
known before the rows are routed, so its engines start while the prompts are encoded and their
start (model load: seconds to minutes) overlaps encoding, scoring and the budget solve.
`generation.prestart=false` turns it off."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from router.config import JobConfig
from router.errors import JobFailed
from router.job.cluster import gpus_available, log, wants_gpus
from router.job.engines import (
    Engine, EnginePool, engine_calls_in_flight, engine_groups, engine_restarts, engine_settings, standin_weights,
)  # fmt: skip


@dataclass(frozen=True)
class EngineStart:
    """How started engines' start went, told when their rows come."""

    seconds: float
    """From their creation until the last was ready."""
    ready_before_rows_s: float
    """How long before their rows they were ready (< 0: the rows waited for them)."""


@dataclass(frozen=True)
class EngineUsage:
    """How a pass used started engines."""

    busy_share: float
    """The share of the engines' time spent answering."""
    first_batch_after_s: float | None
    """How long after the pass began the first batch reached an engine (None: none did)."""


@dataclass
class StartedEngines:
    """Engine actors (`EngineActor`) started before routing, for the one engine pool they serve."""

    engine: Engine
    actors: list[Any]
    created: float
    """time.time() when they were created (an engine tells when it was ready in the same clock)."""
    calls: int = 1
    """Calls each engine can run at once (its threads: `engine_calls_in_flight`'s most)."""
    busy_told: float = 0.0
    """Seconds of answering that earlier passes' `usage` already told (a job answers in waves)."""
    start_told: bool = False

    def wait_ready(self, timeout: float, names: list[str]) -> EngineStart:
        """Block until every engine has started; a start that failed fails the job (its error is
        raised), one that takes longer than `timeout` (generation.start_timeout_s) from creation too."""
        import ray

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
        if self.start_told:  # a later wave: the start was told with the first
            return EngineStart(ready_at - self.created, early)
        self.start_told = True
        log(f"generate {', '.join(names)}: {len(self.actors)} engine(s) started in {ready_at - self.created:.1f}s, "
            + (f"ready {early:.1f}s before their rows" if early >= 0 else f"their rows waited {-early:.1f}s for them"))
        return EngineStart(ready_at - self.created, early)

    def usage(self, since: float, seconds: float) -> EngineUsage | None:
        """For a pass that began at `since` (time.time()) and took `seconds`: how long until the
        first batch reached an engine, and the share of the engines' time spent answering."""
        import ray

        try:
            used = ray.get([a.usage.remote() for a in self.actors])
        except ray.exceptions.RayError:  # an engine that died for good: nothing to tell
            return None
        if not used:
            return None
        firsts = [u["first_call"] for u in used if u["first_call"] is not None and u["first_call"] >= since]
        total = sum(u["busy_s"] for u in used)
        busy = (total - self.busy_told) / (len(used) * seconds) if seconds > 0 else 0.0
        self.busy_told = total
        return EngineUsage(min(busy, 1.0), min(firsts) - since if firsts else None)

    def keep(self, n: int) -> None:
        import ray

        for a in self.actors[n:]:
            ray.kill(a)
        self.actors = self.actors[:n]

    def stop(self) -> None:
        self.keep(0)


def prestart_plan(cfg: JobConfig, gpus: float) -> EnginePool | None:
    """Which engines to start before routing, given the cluster's GPUs (None: none). Only when the
    job has one local engine pool (endpoints need no start): which pool gets rows is known before
    routing then, and how many replicas too (on GPUs: the GPUs less the encoders', as the in-turn
    schedule of one pool gives)."""
    if cfg.generation.prestart is False:
        return None
    weights_of, _ = standin_weights(cfg, build=False)
    groups = engine_groups(cfg, weights_of)
    local = [e for e in groups if e.backend != "openai"]
    if len(local) != 1:
        return None
    engine, members = local[0], tuple(groups[local[0]])
    if not (engine.backend == "vllm" and wants_gpus(cfg.generation.device, gpus)):
        return EnginePool(engine, members, max(m.replicas for m in members), False)
    free = int(gpus) - (cfg.encoder.replicas if wants_gpus(cfg.encoder.device, gpus) else 0)
    n = min(free, cfg.generation.gpus or free) // engine.tensor_parallel
    return EnginePool(engine, members, n, True) if n >= 1 else None


def start_engines(cfg: JobConfig, ledger: Any = None) -> StartedEngines | None:
    """Start the engines of `prestart_plan`, if any; they load while the job routes. `ledger`: the
    hard budget's (`router.job.ledger`), which the engines ask before they generate."""
    pool = prestart_plan(cfg, gpus_available())
    if pool is None:
        return None
    import ray

    from router.stages.generate import EngineActor

    engine = pool.engine
    kwargs, resources = engine_settings(cfg, engine, pool.members, pool.on_gpu, standin_weights(cfg)[1], ledger,
                                        pool.replicas)  # fmt: skip
    if not pool.on_gpu:
        # A quarter CPU while the encoders run beside it (the CPU stages' actors take the rest of a
        # 2-CPU node); its rows come after encoding, when those actors are gone.
        resources["num_cpus"] = 0.25
    # Threads for as many calls as any routing may need: how many it needs is known once it is done.
    calls = engine_calls_in_flight(cfg.generation, engine.backend, pool.on_gpu, most=True)
    actor = ray.remote(EngineActor).options(**resources, **engine_restarts(cfg.generation.engine_retries),
                                            max_concurrency=calls)  # fmt: skip
    engines = [actor.remote(engine.backend, kwargs) for _ in range(pool.replicas)]
    started = StartedEngines(engine, engines, time.time(), calls=calls)
    log(f"generate: starting {pool.replicas} engine(s) of {engine.weights} ({engine.backend}) while the prompts are encoded")
    return started
