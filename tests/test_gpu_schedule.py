"""The GPU schedule on a local Ray instance that claims two GPUs (`ray.init(num_gpus=2)`): what
`router plan` prints and what `router run` does follow it. The engines are real vLLM (its CPU build
here: Ray hands each engine actor a GPU id, and the CPU build runs it on the CPU all the same)."""

import json
import shutil

import pyarrow.dataset as pads
import pytest

from router import schema as S
from router.config import load_config
from router.errors import JobFailed

pytestmark = pytest.mark.timeout(900)

CONFIG = "jobs/configs/local.yaml"
MODELS = [m.name for m in load_config(CONFIG, ["input=x", "output=y"]).models]


@pytest.fixture(scope="module")
def fake_gpus():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    # Four logical CPUs: two engine actors take one each, the small stages share the rest.
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def routed(fake_gpus) -> list[str]:
    """The models the example's budget routes rows to, busiest first."""
    from router.job.plan import plan_job

    result, _ = plan_job(load_config(CONFIG, ["output=unused", "encoder.device=cpu"]))
    rows = {t.model: t.ok_rows for t in result.by_model if t.model and t.ok_rows}
    assert len(rows) >= 2, rows
    return sorted(rows, key=lambda m: -rows[m])


def two_pools(routed: list[str], weights_a: str, weights_b: str) -> list[str]:
    """The busiest model on one set of weights, the rest of the pool on another, one GPU per
    replica: two engine pools."""
    return [f"models.{m}.{k}" for m in MODELS
            for k in (f"weights={weights_a if m == routed[0] else weights_b}", "tensor_parallel=1")]  # fmt: skip


def test_router_plan_prints_the_schedule_it_would_run(routed):
    from router.job.plan import plan_job
    from router.report import format_summary

    base = ["output=unused", "encoder.device=cpu", "generation.standin=false", "generation.batch_size=8",
            *two_pools(routed, "org/model-a", "org/model-b")]  # fmt: skip
    cfg = load_config(CONFIG, [*base, "generation.schedule=in_turn"])
    result, _ = plan_job(cfg)
    s = result.schedule
    assert s is not None and s.strategy == "in_turn" and s.gpus == 2
    assert sorted(p.name == routed[0] for p in s.placements) == [False, True]
    rows = {t.model: t.ok_rows for t in result.by_model if t.model}
    for p in s.placements:
        n = sum(rows.get(m, 0) for m in p.name.split(", "))
        assert p.replicas == min(2, -(-n // 8)) and p.gpus == p.replicas  # all GPUs, no more than its calls
    assert s.placements[1].start_s == pytest.approx(s.placements[0].seconds)
    text = format_summary(cfg, result)
    assert "schedule: in turn on 2 GPUs" in text and "shared" in text

    # The same routed rows under other settings (the schedule does not change the routes).
    from router.job.engines import schedule_pools

    def schedule(*overrides):
        return schedule_pools(load_config(CONFIG, [*base, *overrides]), result.by_model)[1]

    s = schedule("generation.schedule=shared")
    assert s.strategy == "shared"
    assert [(p.replicas, p.gpus, p.start_s) for p in s.placements] == [(1, 1, 0.0), (1, 1, 0.0)]
    # auto: engines slow to start against little work favour starting both at once, and the reverse
    assert schedule("generation.load_s=600").strategy == "shared"
    assert schedule("generation.load_s=0").strategy == "in_turn"
    with pytest.raises(JobFailed, match="needs 4 GPUs per engine .* only 2"):
        schedule(f"models.{routed[0]}.tensor_parallel=4")


@pytest.mark.slow
def test_router_run_follows_a_shared_schedule(routed, tmp_path):
    """Two engine pools, one GPU each, answering at the same time; every row once."""
    from router.job.run import run_job
    from router.backends.standin import build_standin, default_standin_dir

    a = build_standin(default_standin_dir())
    b = tmp_path / "standin-copy"
    shutil.copytree(a, b)
    out = tmp_path / "out"
    # One wave of the plan in expected mode: each pool runs once, with the rows the plan gave it.
    cfg = load_config(CONFIG, [f"output={out}", "encoder.device=cpu", "generation.standin=false",
                               "budget.mode=expected", "budget.waves=[1.0]",
                               "generation.dtype=float32", "generation.schedule=shared",
                               *[f"models.{m}.max_context=4096" for m in MODELS], *two_pools(routed, str(a), str(b))])  # fmt: skip
    result = run_job(cfg)
    rows = pads.dataset(str(out), format="parquet").to_table().to_pylist()
    ids = [json.loads(line)["id"] for line in open(cfg.input)]
    assert sorted(r[S.ID] for r in rows) == sorted(ids)
    answered = [r for r in rows if r[S.STATUS] == S.OK]
    assert {r[S.STATUS] for r in rows} == {S.OK, S.INVALID_INPUT}  # the example holds a few bad rows
    assert all(r[S.RESPONSE] is not None for r in answered)
    assert result.schedule.strategy == "shared"
    runs = result.generation
    assert len(runs) == 2 and all(g.gpus == 1 and g.replicas == 1 for g in runs)
    (s0, e0), (s1, e1) = [(g.start_s, g.start_s + g.seconds) for g in runs]
    assert s0 < e1 and s1 < e0, runs  # both pools were answering at once
    assert sum(g.rows for g in runs) == len(answered)
    assert {r[S.MODEL] for r in answered if r[S.MODEL] == routed[0]}, "the busiest model's pool answered nothing"
    report = json.loads((out / "_report.json").read_text())
    assert report["schedule"]["strategy"] == "shared" and len(report["generation"]) == 2
