"""End to end on a local Ray instance: the example pool, real MiniLM, real vLLM stand-ins.

One job run per module (one engine start): the checks a user cares about are on its output.
"""

import json
import math

import pyarrow.dataset as pads
import pytest

from router import schema as S
from router.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CONFIG = "jobs/configs/local.yaml"
MODELS = [m.name for m in load_config(CONFIG, ["input=x", "output=y"]).models]
SHORT_CONTEXT = [f"models.{m}.max_context=1024" for m in MODELS]
# Its stand-in runs every answer to max_tokens, the most a row can cost; the others answer at their own lengths.
PINNED = "gemma-2-9b-it"
PROMPTS = [
    "What is 12 times 7?",
    "Write a Python function that reverses a list.",
    "Who wrote Hamlet?",
    "Translate 'good morning' into German.",
    "Explain why ice floats on water.",
    "List three primary colours.",
    "What is the capital of Japan?",
    "Solve 2x + 3 = 11.",
    "Summarise the plot of Cinderella in one sentence.",
    "What does DNA stand for?",
] * 3


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    d = tmp_path_factory.mktemp("job")
    rows = [{"id": f"r{i}", "prompt": p, "source": "t"} for i, p in enumerate(PROMPTS)]
    rows += [
        {"id": "empty", "prompt": "", "source": "t"},
        {"id": "null", "prompt": None, "source": "t"},
        {"id": "number", "prompt": 7, "source": "t"},
        {"id": "huge", "prompt": "tell me a story " * 400, "source": "t"},  # about 1600 tokens > every context
        {"id": "long-ok", "prompt": "please answer briefly. " * 20, "source": "t"},
    ]
    inp = d / "in.jsonl"
    inp.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    import ray

    from router.job.run import run_job

    # file:// URIs: the same pyarrow filesystem path that s3:// and gs:// take.
    cfg = load_config(
        CONFIG, [f"input=file://{inp}", f"output=file://{d / 'out'}", "budget.total=0.0006", *SHORT_CONTEXT,
                 f"models.{PINNED}.standin_eos_bias=-100"]
    )  # fmt: skip
    result = run_job(cfg)
    out = pads.dataset(str(d / "out"), format="parquet").to_table().to_pylist()
    yield cfg, rows, result, {r[S.ID]: r for r in out}, out, d
    ray.shutdown()


def test_every_input_row_appears_exactly_once(job):
    cfg, rows, result, by_id, out, _ = job
    assert len(out) == len(rows) == result.n_rows
    assert sorted(by_id) == sorted(r["id"] for r in rows)
    assert all(r["source"] == "t" for r in out)  # pass-through column kept


def test_the_engine_started_while_the_prompts_were_encoded(job):
    # One engine pool (the stand-in): its engine was started before routing and answered every
    # routed row, wave after wave.
    _, _, result, _, _, _ = job
    run = result.generation[0]
    assert len(result.generation) == len(result.waves) > 1
    assert all(r.prestarted and r.replicas == 1 and 0 <= r.engine_busy_share <= 1 for r in result.generation)
    assert run.engine_start_s > 0 and run.engine_busy_share > 0 and run.first_batch_after_s >= 0
    from router.report import format_summary

    assert "engines started during encoding" in format_summary(job[0], result)
    assert f"busy {run.engine_busy_share:.0%} of the pass" in format_summary(job[0], result)
    assert sum(r.rows for r in result.generation) == len(PROMPTS) + 1


def test_bad_rows_get_a_status_and_no_generation(job):
    _, _, _, by_id, _, _ = job
    for rid in ("empty", "null", "number"):
        assert by_id[rid][S.STATUS] == S.INVALID_INPUT and by_id[rid][S.RESPONSE] is None
    assert by_id["huge"][S.STATUS] == S.TOO_LONG and by_id["huge"][S.MODEL] is None
    assert by_id["long-ok"][S.STATUS] == S.OK


def refused(rows):
    """Rows the hard budget refused at the end: the budget left could not cover their worst case."""
    return [r for r in rows if r[S.STATUS] == S.OVER_BUDGET and r[S.ERROR] == S.REFUSED]


def test_answered_rows_have_tokens_and_the_cost_of_their_model(job):
    cfg, _, _, _, out, _ = job
    prices = {m.name: m for m in cfg.models}
    answered = [r for r in out if r[S.STATUS] == S.OK]
    assert len(answered) + len(refused(out)) == len(PROMPTS) + 1 and len(answered) > len(PROMPTS) // 2
    for r in answered:
        m = prices[r[S.MODEL]]
        assert r[S.RESPONSE] is not None and r[S.FINISH_REASON] in ("stop", "length")
        assert r[S.INPUT_TOKENS] > 0 and 1 <= r[S.OUTPUT_TOKENS] <= m.max_tokens
        expect = (r[S.INPUT_TOKENS] * m.input_price + r[S.OUTPUT_TOKENS] * m.output_price) / 1e6
        assert math.isclose(r[S.ACTUAL_COST], expect, rel_tol=1e-9)
        assert r[S.CAPABILITIES] and r[S.DOMAINS]


def test_spend_stays_under_the_budget_and_uses_most_of_it(job):
    cfg, _, result, _, out, d = job
    actual = sum(r[S.ACTUAL_COST] or 0 for r in out)
    # Hard mode: a row entered an engine only when its worst case fitted in what was left ...
    assert actual <= cfg.budget.total
    # ... and the waves re-solved on what was actually spent, so little of a binding budget is left.
    assert actual >= 0.9 * cfg.budget.total
    assert [w.number for w in result.waves] == list(range(1, len(result.waves) + 1))
    assert sum(w.rows for w in result.waves) == len(out)
    assert result.waves[-1].spent_after == pytest.approx(actual, rel=1e-9)
    # This holds on answers that run to max_tokens, the most a row can cost, beside answers of the
    # stand-ins' own, shorter lengths.
    limits = {m.name: m.max_tokens for m in cfg.models}
    pinned = [r for r in out if r[S.MODEL] == PINNED]
    assert pinned and all(r[S.FINISH_REASON] == "length" and r[S.OUTPUT_TOKENS] == limits[PINNED] for r in pinned)
    others = [r for r in out if r[S.MODEL] not in (None, PINNED)]
    assert any(r[S.OUTPUT_TOKENS] < limits[r[S.MODEL]] for r in others)
    # The budget binds: the plan is not simply every row's best model.
    assert result.plan.lam > 0 and len({r[S.MODEL] for r in out if r[S.MODEL]}) > 1
    report = json.loads((d / "out" / "_report.json").read_text())
    assert report["rows"] == len(out) and report["predicted_spend_usd"] <= cfg.budget.total


def test_a_budget_below_the_cheapest_assignment_leaves_rows_over_budget(job):
    cfg, rows, _, _, _, _ = job
    from router.job.plan import plan_job

    small = load_config(CONFIG, [f"input={cfg.input}", "output=unused", "budget.total=0.00005", *SHORT_CONTEXT])
    result, assigned = plan_job(small)
    planned = assigned.take_all()
    assert sorted(r[S.ID] for r in planned) == sorted(r["id"] for r in rows)
    statuses = [r[S.STATUS] for r in planned]
    assert 0 < statuses.count(S.OVER_BUDGET) < len(PROMPTS) + 1
    assert sum(r[S.PREDICTED_COST] or 0 for r in planned) <= 0.00005
    assert all(r[S.MODEL] is None for r in planned if r[S.STATUS] == S.OVER_BUDGET)


def test_the_summary_sent_while_scoring_equals_a_separate_pass(job):
    """Pass 1 of the budget rides on the Scorer; it must be the summary a pass of its own gives,
    every row counted once, and give the same plan."""
    import numpy as np

    from router.job.budget_passes import merged_summary, solve_plan, summary_sink
    from router.job.plan import assign_rows, scored_dataset

    cfg = job[0]
    sink = summary_sink()
    scored = scored_dataset(cfg, sink)
    sent = sink.merged()
    sink.close()
    separate = merged_summary(scored, allow_skip=False)
    assert sent.n_rows == separate.n_rows == scored.count()
    assert sent.base_cost == pytest.approx(separate.base_cost, rel=1e-12)
    assert sent.min_cost == pytest.approx(separate.min_cost, rel=1e-12)
    np.testing.assert_array_equal(sent.counts, separate.counts)
    np.testing.assert_allclose(sent.hist, separate.hist, rtol=1e-12)
    assert solve_plan(scored, cfg.budget.total, sent) == solve_plan(scored, cfg.budget.total)
    # Pass 2 and the Assigner read the hulls the Scorer kept: the same plan and models as walking.
    walked = scored.drop_columns([S.HULL]).materialize()
    plan, skip = solve_plan(scored, cfg.budget.total, sent)
    assert plan.lam > 0 and not skip and (plan, skip) == solve_plan(walked, cfg.budget.total, sent)

    def models(ds):
        rows = assign_rows(cfg, ds, plan, skip).take_all()
        assert all(S.HULL not in r for r in rows)
        return sorted((r[S.ID], r[S.MODEL], r[S.PREDICTED_COST]) for r in rows)

    assert models(scored) == models(walked)


def test_small_jobs_route_in_the_driver_as_large_ones_do_through_ray(job, monkeypatch):
    """A small job runs the passes after scoring in the driver; a large one runs them as Ray Data
    passes. Both must give the same plans (budget, caps, groups), assignment and tally."""
    import numpy as np

    from router.budget import ModelCap
    from router.job import cluster
    from router.job.budget_passes import solve_capped_plan, solve_group_plan, solve_plan
    from router.job.plan import assign_rows, scored_dataset
    from router.job.tally import tally

    cfg = job[0]
    scored = scored_dataset(cfg)
    assert cluster.small_job(scored)
    caps = {0: ModelCap(max_rows=3, max_cost=None)}

    def everything():
        plan, skip = solve_plan(scored, cfg.budget.total)
        assigned = assign_rows(cfg, scored, plan, skip)
        rows = sorted(assigned.select_columns([S.ID, S.MODEL, S.STATUS]).take_all(), key=lambda r: r[S.ID])
        capped = solve_capped_plan(scored, cfg.budget.total, caps)[0]
        group = solve_group_plan(scored, cfg.budget.total, "source", {})[0]
        return plan, rows, tally(assigned), capped.prices, group.choice

    small = everything()
    monkeypatch.setattr(cluster, "SMALL_JOB_ROWS", 0)
    assert not cluster.small_job(scored)
    large = everything()
    assert small[0] == large[0]  # the budget plan: lambda*, tie key, predicted spend
    assert small[1] == large[1] and len(small[1]) == scored.count()
    assert any(r[S.MODEL] is not None for r in small[1])
    assert small[2] == large[2]
    np.testing.assert_allclose(small[3], large[3])
    np.testing.assert_array_equal(small[4], large[4])


def _planned(cfg, *overrides):
    from router.job.plan import plan_job

    small = load_config(CONFIG, [f"input={cfg.input}", "output=unused", *SHORT_CONTEXT, *overrides])
    result, assigned = plan_job(small)
    return small, result, assigned.take_all()


def test_caps_limit_what_one_model_takes(job):
    """models.NAME.max_rows / max_spend: the capped models stay within their caps, the budget holds,
    every row is routed once, and the rows the cap pushes off go to other models, not to nowhere."""
    cfg, rows, result, by_id, _, _ = job
    counts = {}
    for r in by_id.values():
        if r[S.MODEL]:
            counts[r[S.MODEL]] = counts.get(r[S.MODEL], 0) + 1
    busiest = max(counts, key=counts.get)
    cap = counts[busiest] // 2
    spend_capped = next(m for m in counts if m != busiest)
    # Rows the caps push off go to dearer models too: a budget with room for that (the job's own
    # may be spent to the last row), which the caps still bind under.
    small, capped, planned = _planned(
        cfg, f"budget.total={1.5 * cfg.budget.total}", f"models.{busiest}.max_rows={cap}",
        f"models.{spend_capped}.max_spend=0.00001",
    )  # fmt: skip
    assert sorted(r[S.ID] for r in planned) == sorted(r["id"] for r in rows)
    ok = [r for r in planned if r[S.STATUS] == S.OK]
    assert len(ok) == len(PROMPTS) + 1  # the budget still covers every routable row
    assert sum(r[S.MODEL] == busiest for r in ok) <= cap
    uncapped = _planned(cfg, f"budget.total={1.5 * cfg.budget.total}")[2]
    assert sum(r[S.MODEL] == busiest for r in uncapped) > cap  # the cap binds
    assert sum(r[S.PREDICTED_COST] for r in ok if r[S.MODEL] == spend_capped) <= 0.00001 + 1e-15
    assert sum(r[S.PREDICTED_COST] for r in ok) <= small.budget.total
    assert capped.plan.predicted_cost == pytest.approx(sum(r[S.PREDICTED_COST] for r in ok), rel=1e-9)


def test_group_routing_gives_each_group_one_model(job, tmp_path):
    """budget.group_column: rows sharing a value go to one model; rows without one are routed alone."""
    cfg, _, _, _, _, _ = job
    topics = ["maths", "code", "facts"]
    rows = [{"id": f"g{i}", "prompt": p, "topic": topics[i % 3] if i % 5 else None} for i, p in enumerate(PROMPTS)]
    inp = tmp_path / "grouped.jsonl"
    inp.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    _, result, planned = _planned(cfg, f"input={inp}", "budget.total=0.0004", "budget.group_column=topic")
    assert sorted(r[S.ID] for r in planned) == sorted(r["id"] for r in rows)
    assert [r[S.STATUS] for r in planned] == [S.OK] * len(rows), [r[S.ERROR] for r in planned]
    by_topic = {}
    for r in planned:
        if r["topic"] is not None:
            by_topic.setdefault(r["topic"], set()).add(r[S.MODEL])
    assert sorted(by_topic) == sorted(topics) and all(len(models) == 1 for models in by_topic.values())
    spent = sum(r[S.PREDICTED_COST] for r in planned)
    assert spent <= 0.0004 and result.plan.predicted_cost == pytest.approx(spent, rel=1e-9)
    # Too small a budget for whole groups: some groups go unanswered, together, and the rest fit.
    _, _, tight = _planned(cfg, f"input={inp}", "budget.total=0.00003", "budget.group_column=topic")
    assert sorted(r[S.ID] for r in tight) == sorted(r["id"] for r in rows)
    assert sum(r[S.PREDICTED_COST] or 0 for r in tight) <= 0.00003
    skipped = {r["topic"] for r in tight if r[S.STATUS] == S.OVER_BUDGET and r["topic"] is not None}
    assert all(r[S.STATUS] == S.OVER_BUDGET for r in tight if r["topic"] in skipped)


def test_the_transformers_backend_runs_the_same_job(job, tmp_path):
    """generation.backend=transformers: the CPU fallback answers the routed rows in a real job, with
    the same accounting (tokens, actual cost within the budget, one row per input row). Its engine
    starts when its rows are routed (generation.prestart=false), the other way engines run."""
    cfg, rows, _, _, _, _ = job
    from router.job.run import run_job

    tf = load_config(CONFIG, [f"input={cfg.input}", f"output={tmp_path / 'out'}", "budget.total=0.0006",
                              "generation.backend=transformers", "generation.prestart=false", *SHORT_CONTEXT])  # fmt: skip
    result = run_job(tf)
    assert not result.generation[0].prestarted  # its engine started with its rows, in a Ray Data actor
    out = pads.dataset(str(tmp_path / "out"), format="parquet").to_table().to_pylist()
    assert sorted(r[S.ID] for r in out) == sorted(r["id"] for r in rows) and result.n_rows == len(rows)
    answered = [r for r in out if r[S.STATUS] == S.OK]
    assert len(answered) + len(refused(out)) == len(PROMPTS) + 1
    prices = {m.name: m for m in tf.models}
    for r in answered:
        m = prices[r[S.MODEL]]
        assert r[S.RESPONSE] is not None and 1 <= r[S.OUTPUT_TOKENS] <= m.max_tokens
        assert math.isclose(r[S.ACTUAL_COST], (r[S.INPUT_TOKENS] * m.input_price + r[S.OUTPUT_TOKENS] * m.output_price) / 1e6,
                            rel_tol=1e-9)  # fmt: skip
    assert sum(r[S.ACTUAL_COST] or 0 for r in out) <= 0.0006


def test_a_large_job_takes_the_ray_data_passes_and_routes_the_same(job, tmp_path, monkeypatch):
    """Over SMALL_JOB_ROWS a job routes through Ray Data passes and feeds its started engines
    through feeder actors (EngineFeeder) instead of the driver: the same rows must come out once
    each, on the models the plan gave them. (The transformers backend: a quicker engine start; one
    wave, so that the plan is the small job's.)"""
    from router.job import cluster
    from router.job.run import run_job

    cfg, rows, _, _, _, _ = job
    one_plan = ["budget.total=0.0006", "budget.mode=expected", "budget.waves=[1.0]"]
    by_id = {r[S.ID]: r for r in _planned(cfg, *one_plan)[2]}
    monkeypatch.setattr(cluster, "SMALL_JOB_ROWS", 0)
    big = load_config(CONFIG, [f"input={cfg.input}", f"output={tmp_path / 'out'}", *one_plan,
                               "generation.backend=transformers", *SHORT_CONTEXT])  # fmt: skip
    result = run_job(big)
    assert result.generation[0].prestarted and 0 < result.generation[0].engine_busy_share <= 1
    out = pads.dataset(str(tmp_path / "out"), format="parquet").to_table().to_pylist()
    assert sorted(r[S.ID] for r in out) == sorted(r["id"] for r in rows) and result.n_rows == len(rows)
    assert {r[S.ID]: r[S.MODEL] for r in out} == {i: r[S.MODEL] for i, r in by_id.items()}
    assert sum(r[S.STATUS] == S.OK for r in out) == len(PROMPTS) + 1
