"""Routing a job: the rows' plan under the budget (`router plan` stops here; `router run` goes on
to answer).

    read -> validate -> encode -> score & cost  (one streaming pass, materialised: N x M floats;
                                                 the budget's pass 1 rides on scoring)
    the budget's solve (router.job.budget_passes) -> the frontier's sample -> assign -> tally
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc

from router import schema as S
from router.backends.tokens import PromptCalibration, calibrate, load_tokenizer
from router.config import JobConfig
from router.cost import planned_output_tokens
from router.job import build
from router.job.budget_passes import SummarySink, group_source, model_caps, solve_route, summary_sink
from router.job.cluster import driver_batches, init_ray, log, small_job, wants_gpus
from router.job.engines import schedule_pools, standin_weights, with_deadline
from router.job.frontier import sampled_frontier
from router.job.result import Phase, RunResult
from router.job.tally import ModelTally, tally
from router.job.validate import check_group_column, validate_job
from router.method.profiles import load_profiles
from router.stages.read import plan_read, read_unit, units_as_items, without_ids
from router.stages.route import RoutePlan


# Prompts each model family's tokenizer counts to calibrate the plan's prompt tokens: enough for a
# ratio within a percent or so, a fraction of a second of tokenizing.
CALIBRATION_PROMPTS = 2000


def prompt_sample(cfg: JobConfig, source=None) -> list[str]:
    """The job's first CALIBRATION_PROMPTS answerable prompts: of the input's files, or of `source`
    (a validated Dataset, `router.stages.read.read_dataset`)."""
    if source is not None:
        from ray.data.expressions import col

        batch = source.filter(expr=col(S.STATUS) == S.OK).limit(CALIBRATION_PROMPTS).select_columns([S.PROMPT])
        return [r[S.PROMPT] for r in batch.take_all()]
    sample: list[str] = []
    for unit in plan_read(cfg.input, cfg.text_column, cfg.id_column)[0]:
        t = read_unit(unit, cfg.text_column, cfg.id_column)
        ok = pc.equal(t[S.STATUS], S.OK)
        sample += t[S.PROMPT].filter(ok).to_pylist()[: CALIBRATION_PROMPTS - len(sample)]
        if len(sample) >= CALIBRATION_PROMPTS:
            break
    return sample


def calibrate_prompts(cfg: JobConfig, sample: list[str]) -> dict[str, PromptCalibration | None]:
    """Per pool model, its family's prompt tokens fitted on a sample of the job's prompts, counted by
    the tokenizer of the weights its engine loads (None: no tokenizer at hand)."""
    weights_of = standin_weights(cfg)[0]
    fits: dict[str, PromptCalibration | None] = {}
    out = {}
    for m in cfg.models:
        weights = weights_of(m)
        if cfg.backend_of(m) == "openai":  # the endpoint's tokenizer is not known here
            out[m.name] = None
            continue
        if weights not in fits:
            tokenizer = load_tokenizer(weights)
            fits[weights] = None if tokenizer is None else calibrate(tokenizer, sample, weights)
        out[m.name] = fits[weights]
    return out


def prompt_token_sources(cfg: JobConfig, fits: dict[str, PromptCalibration | None]) -> dict[str, str]:
    """Per model, what the plan counts its prompt tokens with, as the summary says it."""
    fallback = "UTF-8 bytes / 4 (no tokenizer at hand)"
    return {name: fallback if fit is None else fit.describe() for name, fit in fits.items()}


def scored_dataset(cfg: JobConfig, summary_sink: SummarySink | None = None, skip_ids: pa.Array | None = None,
                   prompts: dict[str, PromptCalibration | None] | None = None, source=None):
    """read -> validate -> encode -> score & cost, materialised once (the text is never re-encoded).
    With a `summary_sink`, the Scorer sends it the budget summary of every batch; rows whose id is
    in `skip_ids` (written by an earlier run of the job) are left out as they are read. `prompts`:
    each model's prompt-token calibration (`calibrate_prompts`). `source`: the validated rows of a
    Dataset input (`router.stages.read.read_dataset`) instead of the input's files."""
    import ray

    # Embed what the profiles were built from: the same part of a long prompt.
    window = load_profiles(cfg.profiles).meta.get("window", "head")
    on_gpu = wants_gpus(cfg.encoder.device)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    encode = build.encode(cfg, window, on_gpu)
    tokenize = build.tokenize(cfg, window, cpus) if build.tokenizes_apart(cfg, on_gpu) else None
    if source is not None:
        ds = source if skip_ids is None or not len(skip_ids) else source.map_batches(
            without_ids, fn_kwargs=dict(ids=skip_ids), batch_format="pyarrow", num_cpus=0.25)  # fmt: skip
    else:
        units, _ = plan_read(cfg.input, cfg.text_column, cfg.id_column)
        ds = ray.data.from_items(units_as_items(units), override_num_blocks=len(units))
        ds = build.read(cfg, skip_ids, fused_with=tokenize or encode).apply(ds)
    if tokenize is not None:
        ds = tokenize.apply(ds)
    ds = encode.apply(ds)
    ds = build.score(cfg, cpus, summary_sink, prompts).apply(ds)
    return ds.materialize()


def dataset_input(cfg: JobConfig, source):
    """A Dataset input's validated rows (None: the job reads its files), with the group column checked."""
    if source is None:
        return None
    from router.stages.read import read_dataset

    rows, columns = read_dataset(source, cfg.text_column, cfg.id_column)
    check_group_column(cfg, columns)
    return rows


def assign_rows(cfg: JobConfig, scored, plan: RoutePlan, allow_skip: bool):
    """The scored rows with their model under the plan (`Assigner`), materialised: in the driver
    for a small job (`small_job`), else as a Ray Data pass."""
    import ray

    assign = build.assign(cfg, plan, allow_skip, group_source(cfg))
    if scored.count() and small_job(scored):
        assigner = assign.instance()
        # from_blocks reads the blocks' metadata here (from_arrow starts a task for it).
        return ray.data.from_blocks([assigner(b) for b in driver_batches(scored)])
    return assign.apply(scored).materialize()


def check_caps(cfg: JobConfig, by_model: list[ModelTally]) -> None:
    """Say so if the routed rows break a cap (possible only if ids repeat: rows sharing an id move together)."""
    for m in cfg.models:
        t = next((t for t in by_model if t.model == m.name), None)
        if t is None:
            continue
        rows, spend = t.rows, t.predicted_cost or 0.0
        over_spend = m.max_spend is not None and spend > m.max_spend * (1 + 1e-9)
        if (m.max_rows is not None and rows > m.max_rows) or over_spend:
            log(f"warning: model {m.name} got {rows} rows, {spend:.6g} {cfg.cost_unit} predicted, over its cap "
                f"(max_rows {m.max_rows}, max_spend {m.max_spend}); ids in the input repeat?")  # fmt: skip


def answer_lengths(cfg: JobConfig) -> dict[str, str]:
    """Per pool model, what its answers are planned at: its length profile, per-cluster means, or
    the config's length where the profiles have no length data (both budget modes: `hard` mode
    keeps its guarantee while answering, `router.job.ledger`)."""
    sources = load_profiles(cfg.profiles).select(cfg.model_names).length_source
    planned = {
        "profile": "length profile",
        "clusters": "per-cluster means (the config's length elsewhere)",
    }
    return {
        m.name: planned.get(src) or "config ({} tokens: no length data in the profiles)".format(
            planned_output_tokens(m.expected_output_tokens, cfg.budget.default_output_tokens, m.max_tokens))
        for m, src in zip(cfg.models, sources)
    }


def encode_and_route(cfg: JobConfig, result: RunResult, skip_ids: pa.Array | None = None, source=None):
    """Encode, score and solve the budget; returns the assigned and the scored datasets
    (materialised: the waves re-solve on the scored one) and records the plan, the frontier, the
    phases and what each model got in `result`. `source`: a Dataset input's validated rows."""
    t0 = time.perf_counter()
    fits = calibrate_prompts(cfg, prompt_sample(cfg, source))
    result.prompt_tokens = prompt_token_sources(cfg, fits)
    sink = summary_sink()
    scored = scored_dataset(cfg, sink, skip_ids, fits, source)
    n = scored.count()
    result.n_rows = n
    result.answer_lengths = answer_lengths(cfg)
    result.phases.append(Phase("read+encode+score", n, time.perf_counter() - t0))
    log(f"encoded and scored {n} rows in {result.phases[-1].seconds:.1f}s ({result.phases[-1].rows_per_s:.0f} rows/s)")
    t0 = time.perf_counter()
    summary = sink.merged()
    sink.close()
    plan, allow_skip = solve_route(cfg, scored, n, summary)
    result.plan, result.allow_skip = plan, allow_skip
    result.phases.append(Phase("budget solve", n, time.perf_counter() - t0))
    log(f"budget {cfg.budget.total:.6g} {cfg.cost_unit}: lambda*={plan.lam:.6g}, predicted spend {plan.predicted_cost:.6g} "
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
    return assigned, scored


def plan_job(cfg: JobConfig, source=None) -> tuple[RunResult, object]:
    """Route only: the assignment and predicted spend. Returns the result and the assigned dataset.
    `source`: a Ray Dataset to route instead of the input's files (`router.Router.plan`)."""
    validate_job(cfg, source is not None)
    init_ray(cfg)
    cfg = with_deadline(cfg)
    source = dataset_input(cfg, source)
    result = RunResult(output=None, n_rows=0, plan=None, budget=cfg.budget.total, allow_skip=False)
    assigned, _ = encode_and_route(cfg, result, source=source)
    _, result.schedule = schedule_pools(cfg, result.by_model, build=False)
    return result, assigned
