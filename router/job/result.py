"""What a job did (`RunResult`) and the record it leaves in its output folder, `_report.json`: the
plan, the budget, the frontier, the phases' times and the engine pools' runs, which the rows
cannot tell (`router report` reads it back)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from router import schema as S
from router.config import JobConfig
from router.job.frontier import with_chosen
from router.job.output import Prior
from router.job.schedule import Schedule
from router.job.tally import ModelTally, OutputScan
from router.stages.route import RoutePlan

STANDIN_NOTE = (
    "generation used local random-weight stand-in models: the answers are noise; routing, "
    "grouping, token counts and costs are real"
)


@dataclass
class Phase:
    name: str
    rows: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else math.inf


@dataclass(frozen=True)
class PoolRun:
    """What one engine pool did (report.json's `generation`)."""

    pool: str
    """Its models' names."""
    backend: str
    replicas: int
    gpus: int
    start_s: float
    """When it began, in seconds after generation began."""
    seconds: float
    rows: int
    """Rows it committed (answered or marked generation_error)."""
    spend: float
    """Actual spend, USD."""
    errors: int
    tokens: int
    """Prompt plus answer tokens."""
    tokens_per_s_per_replica: float | None
    """Measured over the time its engines were answering (None: no time)."""
    prestarted: bool
    """Whether its engines started while the prompts were encoded."""
    engine_start_s: float | None = None
    """Prestarted engines: how long they took to start ..."""
    ready_before_rows_s: float | None = None
    """... how long before their rows they were ready (< 0: the rows waited) ..."""
    engine_busy_share: float | None = None
    """... the share of their time spent answering ..."""
    first_batch_after_s: float | None = None
    """... and how long after the pass began the first batch reached one."""

    def to_dict(self) -> dict[str, Any]:
        """As report.json holds it (what prestarted engines tell only where there is something)."""
        d = dataclasses.asdict(self)
        for k in ("engine_start_s", "ready_before_rows_s", "engine_busy_share", "first_batch_after_s"):
            if d[k] is None:
                del d[k]
        return d


@dataclass
class RunResult:
    output: str | None
    n_rows: int
    plan: RoutePlan | None
    budget: float
    allow_skip: bool
    phases: list[Phase] = field(default_factory=list)
    by_model: list[ModelTally] = field(default_factory=list)
    """Rows and sums per model: of the routed rows (`router plan`), then of the written ones."""
    by_status: dict[str, int] = field(default_factory=dict)
    standin: bool = False
    frontier: dict[str, Any] | None = None
    """Predicted quality against spend over a sweep of budgets (`router.job.frontier.predicted_frontier`)."""
    resumed: Prior | None = None
    """What earlier runs of the job had committed when this one started (None: a fresh start)."""
    schedule: Schedule | None = None
    """How the engines share the GPUs; None: no vLLM engine on GPUs."""
    generation: list[PoolRun] = field(default_factory=list)
    """Per engine pool as run: replicas, GPUs, start and seconds, rows, tokens, spend, errors."""
    scan: OutputScan | None = None
    """The written rows, counted once the run ends (None: nothing written, or only planned)."""
    prompt_tokens: dict[str, str] = field(default_factory=dict)
    """Per model, what the plan counted its prompt tokens with (`router.job.plan.prompt_token_sources`)."""
    answer_lengths: dict[str, str] = field(default_factory=dict)
    """Per model, what the plan took its answer lengths from (`router.job.plan.answer_lengths`)."""
    waves: list[Any] = field(default_factory=list)
    """The answering's waves (`router.job.waves.Wave`): each one's plan and its spend."""


def gpu_time(cfg: JobConfig, by_model: list[ModelTally]) -> dict[str, Any] | None:
    """GPU-seconds predicted and used, in all and per model, of the models priced by GPU time (their
    costs over their price per GPU-second); None when the pool has none."""
    per_s = {m.name: m.gpu_hour_price / 3600.0 for m in cfg.models if m.gpu_hour_price}
    if not per_s:
        return None

    def seconds(cost: float | None, price: float) -> float | None:
        return None if cost is None else cost / price

    models = {t.model: {"predicted_s": seconds(t.predicted_cost, per_s[t.model]),
                        "used_s": seconds(t.actual_cost, per_s[t.model])}
              for t in by_model if t.model in per_s}  # fmt: skip
    used = [m["used_s"] for m in models.values() if m["used_s"] is not None]
    return {
        "predicted_s": sum(m["predicted_s"] or 0.0 for m in models.values()),
        "used_s": sum(used) if used else None,
        "models": models,
    }


def report_dict(cfg: JobConfig, result: RunResult) -> dict[str, Any]:
    """`_report.json`: what the job did, as `router report` and the terminal summary read it."""
    plan = result.plan
    prior = result.resumed  # rows earlier runs of the job had written
    return {
        "input": cfg.input,
        "output": result.output,
        "rows": result.n_rows,
        "budget_usd": None if math.isinf(result.budget) else result.budget,
        "budget_mode": cfg.budget.mode,
        "cost_unit": cfg.cost_unit,
        "deadline_s": cfg.budget.deadline_s,
        "gpu_time": gpu_time(cfg, result.by_model),
        "lambda": None if plan is None else plan.lam,
        # Resumed: what the earlier runs spent plus this run's plan (which had only the rest of the budget).
        "predicted_spend_usd": None if plan is None else plan.predicted_cost + (prior.spend if prior else 0.0),
        "resumed": None if prior is None else {
            "rows": prior.rows, "shards": prior.files, "spend_usd": prior.spend, "predicted_usd": prior.predicted,
        },  # fmt: skip
        "actual_spend_usd": sum(t.actual_cost or 0.0 for t in result.by_model),
        "rows_skipped_for_budget": result.by_status.get(S.OVER_BUDGET, 0),
        "statuses": result.by_status,
        "models": [t.to_dict() for t in result.by_model],
        "phases": [
            {"phase": p.name, "rows": p.rows, "seconds": round(p.seconds, 3), "rows_per_s": round(p.rows_per_s, 1)}
            for p in result.phases
        ],
        "frontier": with_chosen(result.frontier, result.by_model, result.budget),
        "prompt_tokens": result.prompt_tokens,
        "answer_lengths": result.answer_lengths,
        "schedule": None if result.schedule is None else result.schedule.to_dict(),
        "generation": [g.to_dict() for g in result.generation],
        "waves": [w.to_dict() for w in result.waves],
        "note": STANDIN_NOTE if result.standin else None,
    }


def write_report(cfg: JobConfig, result: RunResult) -> str:
    """Write `_report.json` into the output folder; returns its path."""
    from router.stages.read import filesystem

    fs, path = filesystem(cfg.output)
    target = f"{path.rstrip('/')}/_report.json"
    with fs.open_output_stream(target) as f:
        f.write(json.dumps(report_dict(cfg, result), indent=1, default=float).encode())
    return target
