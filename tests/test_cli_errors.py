"""Mistakes a user can make get one clear line on stderr, a non-zero exit and no traceback,
before any work starts."""

import json

import pytest

from conftest import run_cli

pytestmark = pytest.mark.timeout(120)

CONFIG = "jobs/configs/local.yaml"


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    p = tmp_path_factory.mktemp("in") / "p.jsonl"
    p.write_text(json.dumps({"prompt": "hi"}) + "\n")
    return str(p)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["input=does/not/exist.jsonl"], "not found"),
        (["text_column=question"], "no text column 'question'"),
        (["colour=blue"], "unknown config key `colour`"),
        (["budget.colour=blue"], "unknown key `budget.colour`"),
        (["budget.total=-1"], "budget.total must be >= 0"),
        (["budget.total=nan"], "budget.total must be >= 0"),
        (["models.gemma-2-9b-it.input_price=nan"], "input_price must be a finite number >= 0"),
        (["models.gemma-2-9b-it.output_price=-0.1"], "output_price must be a finite number >= 0"),
        (["models.gemma-2-9b-it.name=gpt-17"], "unknown model 'gpt-17'"),
        (["models.nobody.max_tokens=3"], "unknown model 'nobody'"),
        (["budget.mode=soft"], "budget.mode must be expected or hard"),
        (["encoder.backend=tensorrt"], "encoder.backend must be one of auto, torch, onnx, onnx-int8, sentence-transformers"),
        (["encoder.tokenizers=-2"], "encoder.tokenizers must be a whole number >= 0"),
        (["models.gemma-2-9b-it.max_rows=-1"], "models.gemma-2-9b-it.max_rows must be a whole number >= 0"),
        (["models.gemma-2-9b-it.max_spend=lots"], "models.gemma-2-9b-it.max_spend must be a number"),
        (["models.gemma-2-9b-it.standin_eos_bias=1000"], "models.gemma-2-9b-it.standin_eos_bias must be a number in [-100, 100]"),
        (["budget.group_column=topic"], "budget.group_column 'topic' is not a column of the input"),
        (["generation.gpu_memory_utilization=1.5"], "generation.gpu_memory_utilization must be in (0, 1]"),
        (["generation.enforce_eager=sometimes"], "generation.enforce_eager must be true, false or null"),
    ],
)
def test_bad_config_or_input_fails_in_one_line(prompts, overrides, message):
    args = [f"input={prompts}", *overrides] if not overrides[0].startswith("input=") else overrides
    r = run_cli("plan", CONFIG, *args)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_missing_config_file():
    r = run_cli("run", "nope.yaml")
    assert r.returncode != 0 and "config file 'nope.yaml' not found" in r.stderr and "Traceback" not in r.stderr


def test_output_must_be_new(prompts, tmp_path):
    (tmp_path / "x.parquet").write_text("")
    r = run_cli("run", CONFIG, f"input={prompts}", f"output={tmp_path}")
    assert r.returncode != 0 and "is not empty" in r.stderr and "Traceback" not in r.stderr


def test_help_explains_the_commands():
    r = run_cli("--help")
    assert r.returncode == 0 and "plan" in r.stdout and "run" in r.stdout and "profile" in r.stdout
    r = run_cli("run", "--help")
    assert r.returncode == 0 and "budget.total" in r.stdout and "output" in r.stdout


def test_an_output_holding_another_job_is_refused(prompts, tmp_path):
    """Resuming needs the same job: a folder holding a different job's answers is not written into."""
    (tmp_path / "_job.json").write_text(json.dumps({"input": "elsewhere.jsonl"}))
    (tmp_path / "part-0.parquet").write_bytes(b"")
    r = run_cli("run", CONFIG, f"input={prompts}", f"output={tmp_path}")
    assert r.returncode != 0 and "holds another job" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_job.json", "part-0.parquet"]
