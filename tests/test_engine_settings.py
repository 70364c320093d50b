"""What each engine pool's generator is built with (`router.job.engines.engine_settings`): its
pool models as the config validated them, and the config's vLLM engine settings, which reach vLLM
engines only (the other backends never see them)."""

import pytest

from router.backends.generators import ModelSettings
from router.config import GenerationSpec, load_config
from router.errors import ConfigError
from router.job.engines import engine_groups, engine_settings

pytestmark = pytest.mark.timeout(60)

CONFIG = "jobs/configs/local.yaml"
VLLM_ONLY = {"enforce_eager", "engine_kwargs", "in_process"}


def settings_of(*overrides: str, on_gpu: bool = False) -> dict:
    cfg = load_config(CONFIG, ["input=x", "output=y", *overrides])
    engine, members = next(iter(engine_groups(cfg, lambda m: m.weights).items()))
    return engine_settings(cfg, engine, members, on_gpu, None)[0]


def test_defaults_leave_the_device_and_vllm_to_choose():
    kwargs = settings_of()
    assert kwargs["enforce_eager"] is None  # auto: the engine knows its device
    assert kwargs["engine_kwargs"] == {"enable_prefix_caching": True, "gpu_memory_utilization": 0.92}
    assert GenerationSpec().gpu_memory_utilization == 0.92  # vLLM 0.32's default


def test_the_configs_engine_settings_reach_vllm():
    kwargs = settings_of("generation.enforce_eager=false", "generation.enable_prefix_caching=false",
                         "generation.gpu_memory_utilization=0.5", "generation.max_num_batched_tokens=8192",
                         "generation.enable_chunked_prefill=true", on_gpu=True)  # fmt: skip
    assert kwargs["enforce_eager"] is False
    assert kwargs["engine_kwargs"] == {"enable_prefix_caching": False, "gpu_memory_utilization": 0.5,
                                       "max_num_batched_tokens": 8192, "enable_chunked_prefill": True}  # fmt: skip


@pytest.mark.parametrize("backend", [["generation.backend=transformers"],
                                     ["generation.backend=openai", "generation.base_url=http://127.0.0.1:9/v1"]])
def test_other_backends_get_no_vllm_settings(backend):
    kwargs = settings_of(*backend, "generation.enforce_eager=false", "generation.max_num_batched_tokens=8192")
    assert not VLLM_ONLY & set(kwargs), kwargs


def test_pool_models_reach_the_generator_as_the_config_checked_them():
    name = "qwen2.5-7b-instruct"  # the first engine pool's
    m = settings_of(f"models.{name}.temperature=0.7", f"models.{name}.max_tokens=12")["models"][name]
    assert isinstance(m, ModelSettings) and (m.temperature, m.max_tokens, m.input_price) == (0.7, 12, 0.20)


def test_settings_given_as_a_mapping_are_checked_by_the_configs_rules():
    # A generator used on its own (a benchmark, the annotator) gets the job config's message.
    with pytest.raises(ConfigError, match=r"models\.m\.top_p must be in \(0, 1\]"):
        ModelSettings.from_dict("m", {"max_tokens": 8, "input_price": 1, "output_price": 1, "top_p": 0})
    with pytest.raises(ConfigError, match=r"models\.m\.input_price must be a finite number >= 0"):
        ModelSettings.from_dict("m", {"max_tokens": 8, "input_price": float("inf"), "output_price": 1})


def test_engines_hold_enough_calls_to_stay_full():
    from router.job.engines import engine_calls_in_flight

    # vLLM: 16 running batches of rows in flight (256 sequences on the CPU build, 1024 on large GPUs).
    assert engine_calls_in_flight(GenerationSpec(), "vllm", on_gpu=False) == 16
    assert engine_calls_in_flight(GenerationSpec(), "vllm", on_gpu=True) == 64
    assert engine_calls_in_flight(GenerationSpec(batch_size=1024), "vllm", on_gpu=True) == 16
    assert engine_calls_in_flight(GenerationSpec(), "openai", on_gpu=False) == 2
    assert engine_calls_in_flight(GenerationSpec(), "transformers", on_gpu=False) == 1  # one call at a time
    assert engine_calls_in_flight(GenerationSpec(calls_in_flight=3), "vllm", on_gpu=True) == 3
    with pytest.raises(ConfigError, match="generation.calls_in_flight"):
        GenerationSpec(calls_in_flight=0)


def test_engines_are_fed_deeper_when_most_answers_are_far_shorter_than_max_tokens():
    from router.job.engines import AnswerLengths, engine_calls_in_flight

    spec = GenerationSpec()  # calls of 256 rows

    def calls(mean: float, most: int, on_gpu: bool = False, **kw) -> int:
        return engine_calls_in_flight(kw.pop("spec", spec), kw.pop("backend", "vllm"), on_gpu, AnswerLengths(mean, most))

    # A call holds its rows until its longest answer: 1 + max_tokens / mean running batches in flight.
    assert calls(9.0, 256) == 30  # 1 + 256 / 9 = 29.4 running batches of 256 on the CPU build
    assert calls(200.0, 256) == 16 and calls(256.0, 256) == 16  # never fewer than 16 running batches
    assert calls(1.0, 4096) == 64  # nor more than 64
    assert calls(1.0, 4096, on_gpu=True) == 128  # 64 x 1024 / 256 = 256 threads: capped at 128
    assert calls(100.0, 1024, on_gpu=True) == 64  # 11.2 running batches of 1024: the floor's 16 again
    # Engines started before routing hold threads for the most it may be; a setting or another backend wins.
    assert engine_calls_in_flight(spec, "vllm", False, most=True) == 64
    assert engine_calls_in_flight(spec, "vllm", True, most=True) == 128
    assert calls(9.0, 256, spec=GenerationSpec(calls_in_flight=5)) == 5
    assert calls(9.0, 256, backend="openai") == 2


def test_a_pools_answer_lengths_come_from_its_routed_rows():
    import pyarrow as pa

    from router import schema as S
    from router.cost import planned_output_tokens
    import dataclasses

    from router.job.engines import AnswerLengths, engine_calls_in_flight, pool_calls_in_flight, schedule_pools
    from router.job.tally import ModelTally, tally_batch, tally_parts

    cfg = load_config(CONFIG, ["input=x", "output=y", "generation.standin=true", "generation.device=cpu"])
    first, second = cfg.models[0].name, cfg.models[1].name
    routed = pa.table({
        S.PROMPT: ["a", "b", "c", "d", "e"],
        S.MODEL: [first, first, first, second, None],
        S.STATUS: [S.OK, S.OK, S.TOO_LONG, S.OK, S.OVER_BUDGET],
        S.EST_OUTPUT_TOKENS: pa.array([4.0, 10.0, 99.0, None, None], pa.float32()),
    })  # fmt: skip
    tallies = {t.model: t for t in tally_parts(tally_batch(routed).to_pylist())[0]}
    assert tallies[first].ok_answer_tokens == 14.0  # the ok rows' predictions only
    assert ModelTally.from_dict(tallies[first].to_dict()) == tallies[first]
    # A model whose rows carry no prediction (no length profile) counts at its planned answer.
    by_model = [tallies[first], ModelTally(second, rows=1, ok_rows=1), tallies[None]]
    (pool,) = schedule_pools(cfg, by_model, build=False)[0]  # the stand-in: every model on one engine
    m = cfg.models[1]
    planned = planned_output_tokens(m.expected_output_tokens, cfg.budget.default_output_tokens, m.max_tokens)
    assert pool.lengths == AnswerLengths((14.0 + planned) / 3, max(cfg.models[0].max_tokens, m.max_tokens), rows=3)
    # Fed no more calls at once than its rows make.
    assert pool_calls_in_flight(cfg, pool) == 1
    many = dataclasses.replace(pool, lengths=dataclasses.replace(pool.lengths, rows=100_000))
    assert pool_calls_in_flight(cfg, many) == engine_calls_in_flight(cfg.generation, "vllm", False, many.lengths)


def test_a_cpu_engine_takes_its_share_of_the_cores():
    import os

    cfg = load_config(CONFIG, ["input=x", "output=y"])
    engine, members = next(iter(engine_groups(cfg, lambda m: m.weights).items()))
    cores = os.cpu_count() or 1
    assert engine_settings(cfg, engine, members, False, None, replicas=1)[0]["cpu_threads"] == cores
    assert engine_settings(cfg, engine, members, False, None, replicas=2 * cores)[0]["cpu_threads"] == 1
    assert settings_of("generation.cpu_threads=3")["cpu_threads"] == 3
    assert "cpu_threads" not in settings_of(on_gpu=True)  # a GPU engine's threads are vLLM's business
