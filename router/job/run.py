"""`router run`: route a job and answer it, into an output folder that a rerun resumes.

    open the output (resume: the rows already written are left out, the budget is what is left)
    hard mode: the spend ledger every engine asks before it generates (router.job.ledger)
    start the engines while routing, when the job has one local engine pool (router.job.prestart)
    route (router.job.plan) -> answer in waves, re-solving on actual spend between them
        (router.job.waves), each pool by pool, committing shards (router.job.answer)
    count what was written -> _report.json (router.job.result)

The report folder beside the output (pictures) is `router.report`'s, written by the caller.
"""

from __future__ import annotations

import dataclasses

from router.config import JobConfig
from router.job.cluster import init_ray, log
from router.job.engines import with_deadline
from router.job.ledger import start_ledger
from router.job.output import Prior, clear_tmp, committed_files, open_output
from router.job.plan import dataset_input, encode_and_route
from router.job.prestart import start_engines
from router.job.result import RunResult, write_report
from router.job.tally import scan_output
from router.job.validate import validate_job
from router.job.waves import answer_in_waves


def run_job(cfg: JobConfig, source=None) -> RunResult:
    """Route and generate; writes the output folder and its `_report.json`. `source`: a Ray Dataset
    to answer instead of the input's files (`router.Router.run`)."""
    validate_job(cfg, source is not None)
    prior = open_output(cfg)
    init_ray(cfg)
    cfg = with_deadline(cfg)
    source = dataset_input(cfg, source)
    result = RunResult(output=cfg.output, n_rows=0, plan=None, budget=cfg.budget.total, allow_skip=False,
                       standin=cfg.generation.standin, resumed=prior)  # fmt: skip
    todo = cfg if prior is None else with_budget_left(cfg, prior)
    ledger = start_ledger(todo.budget.total) if cfg.budget.mode == "hard" else None
    started = start_engines(todo, ledger)
    try:
        assigned, scored = encode_and_route(todo, result, None if prior is None else prior.ids, source)
        result.waves = answer_in_waves(todo, scored, assigned, result, started, ledger)
    finally:
        if started is not None:
            started.stop()
        if ledger is not None:
            ledger.close()
    clear_tmp(cfg.output)
    count_output(cfg, result)
    write_report(cfg, result)
    return result


def with_budget_left(cfg: JobConfig, prior: Prior) -> JobConfig:
    """The budget holds over every run of the job: this one gets what the earlier ones left."""
    left = max(0.0, cfg.budget.total - prior.spend)
    unit = cfg.cost_unit
    log(f"resuming: {prior.rows} rows already written in {prior.files} shards ({prior.spend:.6g} {unit} spent); "
        f"routing the rest with {left:.6g} {unit}")  # fmt: skip
    return dataclasses.replace(cfg, budget=dataclasses.replace(cfg.budget, total=left))


def count_output(cfg: JobConfig, result: RunResult) -> None:
    """Rows, spend and tokens per model and per status, read back from what was written (every
    run's rows, a resumed job's included) into `result`."""
    result.scan = scan_output(cfg.output) if committed_files(cfg.output) else None
    scan = result.scan
    result.by_model, result.by_status = (scan.models, scan.statuses) if scan is not None else ([], {})
    result.n_rows = sum(result.by_status.values())
