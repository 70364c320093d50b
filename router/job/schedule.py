"""Placing engine pools on a cluster's GPUs: models in turn on all GPUs, or GPUs shared out.

After routing, each engine pool (one set of weights; see `router.job.engines`) has a
predicted token load: its rows' predicted prompt tokens plus their planned answers. One replica of
it takes `tensor_parallel` GPUs, processes about `tokens_per_s` tokens a second and needs `load_s`
seconds to start (weights loaded, engine warmed up). With G GPUs there are two ways to run the pool:

- `in_turn`: one engine pool after another, each on as many replicas as the G GPUs hold
  (floor(G / tensor_parallel)). Predicted time: the sum over pools of load_s + tokens / (replicas
  x tokens_per_s). Every pool's start is paid in full, one after another, but no GPU idles while
  a pool runs.
- `shared`: every pool at once, the GPUs split in whole replicas in proportion to each pool's
  predicted load. Predicted time: the largest load_s + tokens / (replicas x tokens_per_s). Starts
  overlap, but a pool that finishes early leaves its GPUs idle. Needs one replica of every pool
  at once (the sum of tensor_parallel <= G).

`plan_schedule` predicts both and picks the shorter (or the one the config names). The split in
`shared` minimises the predicted makespan exactly: the smallest time T for which the replicas each
pool needs to finish by T fit in G GPUs (the finishing times are a finite set, searched in
order); GPUs left over then go, one replica at a time, to the pool predicted to finish last.

A pool never gets more replicas than it has engine calls (rows / batch size): more would idle.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

STRATEGIES = ("auto", "in_turn", "shared")


@dataclass(frozen=True)
class PoolLoad:
    """What the schedule knows of one engine pool."""

    name: str
    """The pool's label: its models' names."""
    tensor_parallel: int
    """GPUs per replica."""
    tokens: float
    """Predicted prompt plus answer tokens of the rows routed to it."""
    tokens_per_s: float
    """Tokens one replica processes per second."""
    load_s: float
    """Seconds from asking for a replica to its first answer (model load, warm-up)."""
    max_replicas: int
    """Replicas beyond this would have nothing to do (one engine call each)."""

    def seconds(self, replicas: int) -> float:
        return self.load_s + self.tokens / (replicas * self.tokens_per_s)


@dataclass(frozen=True)
class Placement:
    name: str
    replicas: int
    gpus: int
    start_s: float
    """Predicted start, seconds after generation begins."""
    seconds: float
    """Predicted time from start to the pool's last answer."""


@dataclass(frozen=True)
class Schedule:
    strategy: str
    """`in_turn` or `shared`."""
    gpus: int
    placements: tuple[Placement, ...]
    makespan_s: float
    """Predicted time from the first engine asked for to the last answer."""
    alternatives: dict[str, float | None]
    """Each strategy's predicted makespan (None: it cannot run on these GPUs)."""

    def replicas(self, name: str) -> int:
        return next(p.replicas for p in self.placements if p.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "placements": [asdict(p) for p in self.placements]}


class ScheduleError(ValueError):
    """The pools cannot run on these GPUs at all."""


def _check(pools: list[PoolLoad], gpus: int) -> None:
    if gpus < 1:
        raise ScheduleError(f"no GPUs to schedule on (got {gpus})")
    for p in pools:
        if p.tensor_parallel > gpus:
            raise ScheduleError(
                f"{p.name} needs {p.tensor_parallel} GPUs per engine (tensor_parallel) but only {gpus} are there"
            )
        if p.tokens < 0 or not math.isfinite(p.tokens) or p.tokens_per_s <= 0 or p.load_s < 0 or p.max_replicas < 1:
            raise ScheduleError(f"{p.name}: bad load {p}")


def in_turn(pools: list[PoolLoad], gpus: int) -> Schedule:
    """Each pool on all the GPUs its replicas fit in, one pool after another (in the given order)."""
    _check(pools, gpus)
    placements, t = [], 0.0
    for p in pools:
        r = min(gpus // p.tensor_parallel, p.max_replicas)
        s = p.seconds(r)
        placements.append(Placement(p.name, r, r * p.tensor_parallel, t, s))
        t += s
    return Schedule("in_turn", gpus, tuple(placements), t, {})


def shared(pools: list[PoolLoad], gpus: int) -> Schedule | None:
    """Every pool at once on its share of the GPUs; None when one replica of each does not fit."""
    _check(pools, gpus)
    if sum(p.tensor_parallel for p in pools) > gpus:
        return None

    def most(p: PoolLoad) -> int:
        return min(gpus // p.tensor_parallel, p.max_replicas)

    def needed(p: PoolLoad, t: float) -> int | None:
        """Fewest replicas that finish the pool by time t (None: none can)."""
        if p.tokens == 0:
            return 1 if p.load_s <= t else None
        if t <= p.load_s:
            return None
        r = max(1, math.ceil(p.tokens / ((t - p.load_s) * p.tokens_per_s) - 1e-9))
        r = min(r, most(p) + 1)  # beyond that it cannot finish by t anyway; keeps the steps below few
        while r > 1 and p.seconds(r - 1) <= t:  # ceil's rounding, either way
            r -= 1
        while r <= most(p) and p.seconds(r) > t:
            r += 1
        return r if r <= most(p) else None

    # The makespan is one pool's finishing time at some replica count: try them in order.
    candidates = sorted({p.seconds(r) for p in pools for r in range(1, most(p) + 1)})
    replicas = None
    for t in candidates:
        rs = [needed(p, t) for p in pools]
        if all(r is not None for r in rs) and sum(r * p.tensor_parallel for r, p in zip(rs, pools)) <= gpus:
            replicas = rs
            break
    assert replicas is not None  # the largest candidate is met by one replica of each, which fits
    # GPUs left over: one replica at a time to the pool predicted to finish last that can grow.
    left = gpus - sum(r * p.tensor_parallel for r, p in zip(replicas, pools))
    while True:
        growable = [i for i, p in enumerate(pools) if p.tensor_parallel <= left and replicas[i] < most(p)]
        if not growable:
            break
        i = max(growable, key=lambda i: pools[i].seconds(replicas[i]))
        replicas[i] += 1
        left -= pools[i].tensor_parallel
    placements = tuple(
        Placement(p.name, r, r * p.tensor_parallel, 0.0, p.seconds(r)) for r, p in zip(replicas, pools)
    )
    return Schedule("shared", gpus, placements, max(pl.seconds for pl in placements), {})


def plan_schedule(pools: list[PoolLoad], gpus: int, strategy: str = "auto") -> Schedule:
    """The schedule to run: the named strategy, or (`auto`) the one with the shorter predicted
    makespan; models in turn when they tie (fewer engines at once)."""
    if strategy not in STRATEGIES:
        raise ScheduleError(f"schedule must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    turn = in_turn(pools, gpus)
    share = shared(pools, gpus)
    options = {"in_turn": turn.makespan_s, "shared": None if share is None else share.makespan_s}
    if strategy == "shared" and share is None:
        need = sum(p.tensor_parallel for p in pools)
        raise ScheduleError(
            f"schedule shared needs one replica of every engine pool at once ({need} GPUs); there are {gpus}"
        )
    if strategy == "in_turn" or (strategy == "auto" and (share is None or turn.makespan_s <= share.makespan_s)):
        chosen = turn
    else:
        chosen = share
    return Schedule(chosen.strategy, gpus, chosen.placements, chosen.makespan_s, options)


def short_label(name: str, width: int = 40) -> str:
    """A pool's label for a table: its first model and how many more share the engine."""
    names = name.split(", ")
    return name if len(name) <= width else f"{names[0]} (+{len(names) - 1} more)"


def format_schedule(s: Schedule) -> list[str]:
    """Lines for the plan/run summary."""
    other = {k: v for k, v in s.alternatives.items() if k != s.strategy}
    alt = ", ".join(f"{k} {'not possible' if v is None else f'{v:.0f}s'}" for k, v in other.items())
    lines = [f"schedule: {s.strategy.replace('_', ' ')} on {s.gpus} GPUs, predicted {s.makespan_s:.0f}s"
             + (f" ({alt})" if alt else "")]  # fmt: skip
    for p in s.placements:
        lines.append(f"  {short_label(p.name):40} {p.replicas:>3} x {p.gpus // p.replicas} GPU  "
                     f"start {p.start_s:>7.0f}s  takes {p.seconds:>7.0f}s")  # fmt: skip
    return lines
