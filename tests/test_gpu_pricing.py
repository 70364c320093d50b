"""Self-hosted pools priced by GPU time (`gpu_hour_price`) and budgets given as a deadline
(`budget.deadline_s`): the config's rules, and both kinds of job end to end."""

import json
import math

import pyarrow.dataset as pads
import pytest

from router import schema as S
from router.config import load_config
from router.errors import ConfigError

pytestmark = pytest.mark.timeout(600)

CONFIG = "jobs/configs/local.yaml"
MODELS = [m.name for m in load_config(CONFIG, ["input=x", "output=y"]).models]
NO_TOKEN_PRICES = [f"models.{m}.{p}=null" for m in MODELS for p in ("input_price", "output_price")]


def cfg(*overrides):
    return load_config(CONFIG, ["input=x", "output=y", "budget.mode=expected", *overrides])


def test_a_gpu_hour_price_prices_each_token_by_the_gpu_time_it_takes():
    c = cfg(*NO_TOKEN_PRICES, "generation.gpu_hour_price=3.6", "generation.tokens_per_s=2000",
            f"models.{MODELS[0]}.tensor_parallel=2", f"models.{MODELS[1]}.tokens_per_s=500")  # fmt: skip
    by = {m.name: m for m in c.models}
    # 3.6 USD per GPU-hour is 0.001 USD per GPU-second; 2000 tokens/s: 0.5 USD per 1M tokens per GPU.
    assert by[MODELS[0]].input_price == pytest.approx(1.0) and by[MODELS[0]].output_price == pytest.approx(1.0)
    assert by[MODELS[1]].input_price == pytest.approx(2.0)
    assert by[MODELS[2]].input_price == pytest.approx(0.5) and by[MODELS[2]].gpu_hour_price == 3.6
    assert c.cost_unit == "USD"
    # A model with token prices keeps them beside a pool-wide GPU-hour price (an API model, say).
    mixed = cfg(*NO_TOKEN_PRICES[2:], "generation.gpu_hour_price=3.6")
    assert mixed.models[0].gpu_hour_price is None and mixed.models[0].input_price == 0.20
    # Pricing is idempotent: a priced config rebuilt (as a resumed budget is) prices alike.
    import dataclasses

    again = dataclasses.replace(c, budget=dataclasses.replace(c.budget, total=1.0))
    assert [m.input_price for m in again.models] == [m.input_price for m in c.models]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (NO_TOKEN_PRICES, "has no price"),
        ([f"models.{MODELS[0]}.gpu_hour_price=2"], "not both"),
        ([f"models.{MODELS[0]}.input_price=null"], "give both input_price and output_price"),
        ([*NO_TOKEN_PRICES, "generation.gpu_hour_price=2", "budget.mode=hard"], "budget.mode=expected"),
        ([*NO_TOKEN_PRICES, "generation.gpu_hour_price=2", f"models.{MODELS[0]}.backend=openai",
          "generation.base_url=http://localhost:1/v1"], "not by GPU-hour"),
        (["budget.deadline_s=60", "budget.total=5"], "two budgets"),
        (["budget.deadline_s=60", "budget.mode=hard"], "budget.mode=expected"),
        (["budget.deadline_s=0"], "budget.deadline_s must be > 0"),
        (["budget.deadline_s=60", f"models.{MODELS[0]}.backend=openai", "generation.base_url=http://localhost:1/v1"],
         "endpoint"),
        (["generation.gpu_hour_price=-1"], "generation.gpu_hour_price must be a finite number >= 0"),
    ],
)
def test_pricing_mistakes_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        cfg("budget.total=inf", *overrides)


def test_a_deadline_prices_every_model_in_gpu_seconds():
    c = cfg("budget.total=inf", "budget.deadline_s=60", "generation.tokens_per_s=1000")
    assert c.cost_unit == "GPU-s"
    for m in c.models:  # one GPU-second per second: tensor_parallel / tokens_per_s per token
        assert m.input_price == m.output_price == pytest.approx(m.tensor_parallel / 1000 * 1e6)


PROMPTS = [
    "What is 12 times 7?",
    "Write a Python function that reverses a list.",
    "Who wrote Hamlet?",
    "Explain why ice floats on water.",
    "Solve 2x + 3 = 11.",
    "Summarise the plot of Cinderella in one sentence.",
] * 2


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    inp = tmp_path_factory.mktemp("gpu") / "in.jsonl"
    inp.write_text("\n".join(json.dumps({"id": f"r{i}", "prompt": p}) for i, p in enumerate(PROMPTS)) + "\n")
    yield inp
    import ray

    ray.shutdown()


def _run(inp, out, *overrides):
    from router.job.run import run_job

    # The transformers backend: the quickest engine start; the same accounting as vLLM's.
    c = load_config(CONFIG, [f"input={inp}", f"output={out}", "budget.mode=expected", "generation.backend=transformers",
                             "generation.prestart=false", "generation.load_s=0", "budget.waves=[0.5, 1.0]",
                             *overrides])  # fmt: skip
    result = run_job(c)
    rows = pads.dataset(str(out), format="parquet").to_table().to_pylist()
    assert sorted(r[S.ID] for r in rows) == sorted(f"r{i}" for i in range(len(PROMPTS)))
    return c, result, rows


@pytest.mark.slow
def test_a_pool_priced_by_gpu_hour_is_charged_the_engine_time_it_used(prompts, tmp_path):
    from router.job.result import report_dict
    from router.report import format_summary

    c, result, rows = _run(prompts, tmp_path / "out", *NO_TOKEN_PRICES, "generation.gpu_hour_price=3.6",
                           "generation.tokens_per_s=400", "budget.total=0.002")  # fmt: skip
    answered = [r for r in rows if r[S.STATUS] == S.OK]
    assert answered and all(r[S.ACTUAL_COST] > 0 for r in answered)
    g = report_dict(c, result)["gpu_time"]
    spend = sum(r[S.ACTUAL_COST] for r in answered)
    # A GPU-second is 0.001 USD here: the spend is the GPU time used, which the engines' calls took
    # (never more than the generation passes lasted, one replica on one device).
    assert g["used_s"] == pytest.approx(spend / 0.001, rel=1e-9)
    assert 0 < g["used_s"] <= sum(run.seconds * run.replicas for run in result.generation)
    assert g["predicted_s"] == pytest.approx(sum(r[S.PREDICTED_COST] or 0 for r in rows) / 0.001, rel=1e-6)
    summary = format_summary(c, result)
    assert "GPU time: predicted" in summary and "used" in summary


@pytest.mark.slow
def test_a_deadline_is_a_budget_of_gpu_seconds(prompts, tmp_path):
    from router.job.result import report_dict
    from router.report import format_summary

    # 1 device (one engine replica on this CPU) x 1.5 s: less than the best models would take.
    c, result, rows = _run(prompts, tmp_path / "out", "budget.total=inf", "budget.deadline_s=1.5",
                           "generation.tokens_per_s=300")  # fmt: skip
    d = report_dict(c, result)
    assert d["cost_unit"] == "GPU-s" and d["budget_usd"] == pytest.approx(1.5) and d["deadline_s"] == 1.5
    assert d["predicted_spend_usd"] <= 1.5 * (1 + 1e-6)
    assert d["gpu_time"]["used_s"] == pytest.approx(d["actual_spend_usd"], rel=1e-9) and d["actual_spend_usd"] > 0
    assert math.isclose(d["gpu_time"]["predicted_s"], sum(r[S.PREDICTED_COST] or 0 for r in rows), rel_tol=1e-6)
    summary = format_summary(c, result)
    assert "GPU-s" in summary and "deadline: 1.5s" in summary
