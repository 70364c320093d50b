"""Which engines start while the prompts are encoded (`router.job.prestart.prestart_plan`): the one
local engine pool of a job, on as many replicas as it would get, never GPUs the encoders need."""

import pytest

from router.config import load_config
from router.job.engines import engine_groups, standin_weights
from router.job.prestart import prestart_plan

pytestmark = pytest.mark.timeout(60)

CONFIG = "jobs/configs/local.yaml"
MODELS = [m.name for m in load_config(CONFIG, ["input=x", "output=y"]).models]
REAL = ["generation.standin=false"]  # each model its own weights: one engine pool per model


def cfg(*overrides: str):
    return load_config(CONFIG, ["input=x", "output=y", *overrides])


def only(*keep: str) -> list[str]:
    """Overrides that leave only these models in the pool (the others behind one endpoint)."""
    return [f"models.{m}.backend=openai" for m in MODELS if m not in keep] + [
        "generation.base_url=http://127.0.0.1:9/v1"
    ]


def test_the_stand_in_engine_starts_early_on_its_configured_replicas():
    c = cfg("models.qwen2.5-7b-instruct.replicas=2")
    pool = prestart_plan(c, gpus=0)
    assert [m.name for m in pool.members] == MODELS and pool.replicas == 2 and not pool.on_gpu
    # The engine the pool will run on once its rows are routed, the stand-in built.
    assert pool.engine in engine_groups(c, standin_weights(c)[0])


def test_nothing_starts_early_with_several_local_pools_or_when_turned_off():
    assert prestart_plan(cfg(*REAL), gpus=0) is None  # nine weights: which get rows is known after routing
    assert prestart_plan(cfg("generation.prestart=false"), gpus=0) is None
    assert prestart_plan(cfg(*only()), gpus=0) is None  # endpoints only: nothing to start


def test_one_local_model_beside_endpoints_starts_early():
    keep = MODELS[0]
    pool = prestart_plan(cfg(*REAL, *only(keep)), gpus=0)
    assert [m.name for m in pool.members] == [keep] and pool.engine.backend == "vllm" and pool.replicas == 1


def test_on_gpus_the_engines_take_what_the_encoders_leave():
    keep = MODELS[0]
    gpu = [*REAL, *only(keep), "generation.device=cuda", f"models.{keep}.tensor_parallel=2"]
    pool = prestart_plan(cfg(*gpu, "encoder.device=cuda", "encoder.replicas=1"), gpus=8)
    assert pool.on_gpu and pool.replicas == 3  # (8 - 1 encoder GPU) // 2
    assert prestart_plan(cfg(*gpu, "encoder.device=cpu"), gpus=8).replicas == 4
    assert prestart_plan(cfg(*gpu, "encoder.device=cpu", "generation.gpus=4"), gpus=8).replicas == 2
    # One GPU, and the encoder holds it: the engine starts after routing, as without prestart.
    assert prestart_plan(cfg(*gpu, "encoder.device=cuda", f"models.{keep}.tensor_parallel=1"), gpus=1) is None


def test_stand_ins_get_their_models_lengths_and_real_engines_no_bias():
    from router.backends.standin import standin_eos_bias
    from router.job.engines import engine_settings

    *local, remote = MODELS
    c = cfg(f"models.{local[0]}.standin_eos_bias=-100", *only(*local))
    for engine, members in engine_groups(c, standin_weights(c, build=False)[0]).items():
        settings = engine_settings(c, engine, members, False, None)[0]["models"]
        biases = {name: s.eos_bias for name, s in settings.items()}
        if engine.backend == "openai":  # an endpoint serves what it serves
            assert biases == {remote: 0.0}
        else:  # the configured bias, else the one fixed by the model's name
            assert biases == {m: -100.0 if m == local[0] else standin_eos_bias(m) for m in local}
    real = cfg(*REAL, f"models.{local[0]}.standin_eos_bias=-100")
    for engine, members in engine_groups(real, standin_weights(real, build=False)[0]).items():
        assert all(s.eos_bias == 0.0 for s in engine_settings(real, engine, members, False, None)[0]["models"].values())
