"""Engines that fail: one that cannot start fails the job in one line, in bounded time; one that
dies mid-batch is replaced and its rows retried; one that keeps dying gets its rows marked while
the job goes on. Every row is written exactly once in each case."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.dataset as pads
import pytest

from conftest import ROOT, run_cli
from router import schema as S

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CONFIG = "jobs/configs/local.yaml"
INPUTS = [json.loads(line)["id"] for line in (ROOT / "examples" / "prompts.jsonl").read_text().splitlines()]
MODELS = [m.name for m in __import__("router.config").config.load_config(CONFIG, ["input=x", "output=y"]).models]
SMALL = ["generation.batch_size=2", "generation.shard_rows=2"]
# Long answers (every stand-in runs to max_tokens), so that the engine is still busy when it is killed.
# A budget that does not bind: every row is answered unless its engine fails.
SLOW = [*SMALL, *(f"models.{m}.max_tokens=256" for m in MODELS), *(f"models.{m}.standin_eos_bias=-100" for m in MODELS),
        "budget.total=1"]


def last_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_an_engine_that_cannot_start_fails_the_job_in_one_line(tmp_path):
    config = tmp_path / "one.yaml"
    config.write_text(
        f"input: {ROOT / 'examples' / 'prompts.jsonl'}\noutput: {tmp_path / 'out'}\n"
        "generation: {standin: false, dtype: float32}\n"
        "models:\n  - {name: qwen2.5-7b-instruct, weights: /no-such-weights, input_price: 0.2,"
        " output_price: 0.2, max_context: 2048, max_tokens: 8}\n"
    )
    r = run_cli("run", str(config), timeout=600)
    assert r.returncode == 2, r.stderr[-2000:]
    line = last_error_line(r.stderr)
    assert line.startswith("router: error: generate qwen2.5-7b-instruct: the vLLM engine for '/no-such-weights'")
    assert "could not start" in line
    # Nothing was written, so the same folder takes the corrected job.
    assert not list((tmp_path / "out").glob("part-*"))


def test_an_engine_that_never_gets_its_resources_fails_within_the_timeout(tmp_path):
    started = time.monotonic()
    r = run_cli("run", CONFIG, f"output={tmp_path / 'out'}", "generation.device=cuda", "generation.start_timeout_s=20",
                timeout=600)  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    assert "did not start within 20 s (generation.start_timeout_s)" in last_error_line(r.stderr)
    assert time.monotonic() - started < 300


def engine_actors(root: int) -> list[psutil.Process]:
    """The engine actor processes among the descendants of our own job's driver (never by name alone)."""
    found = []
    for p in psutil.Process(root).children(recursive=True):
        try:
            title = " ".join(p.cmdline())
            if "VLLMGenerator" in title or "EngineActor" in title:
                found.append(p)
        except psutil.Error:
            continue
    return found


def run_and_kill_an_engine(tmp_path: Path, *overrides: str) -> tuple[int, list[dict], list[str], bool, str]:
    """Run the example job; once its first shard is committed, SIGKILL the engine actor. Returns the
    exit code, the rows written, the ids committed before the kill, whether a new engine actor
    started after it, and the job's log."""
    out = tmp_path / "out"
    log = tmp_path / "job.log"
    replaced = False
    with log.open("w") as f:
        job = subprocess.Popen([sys.executable, "-m", "router.cli", "run", CONFIG, f"output={out}", *SLOW, *overrides],
                               cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            deadline = time.monotonic() + 600
            while not list(out.glob("part-*.parquet")) and job.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            actors = engine_actors(job.pid)
            assert actors, log.read_text()[-3000:]
            before = [r[S.ID] for r in pads.dataset(str(out), format="parquet").to_table([S.ID]).to_pylist()]
            for p in actors:
                p.send_signal(signal.SIGKILL)
            killed = {p.pid for p in actors}
            while job.poll() is None and time.monotonic() < deadline:
                replaced = replaced or any(p.pid not in killed for p in engine_actors(job.pid))
                time.sleep(0.5)
            rc = job.wait(timeout=60)
        finally:
            if job.poll() is None:
                job.kill()
    rows = pads.dataset(str(out), format="parquet").to_table().to_pylist()
    return rc, rows, before, replaced, log.read_text()


def test_a_killed_engine_is_replaced_and_its_rows_retried(tmp_path):
    rc, rows, before, replaced, log = run_and_kill_an_engine(tmp_path)
    assert rc == 0, log[-3000:]
    assert 0 < len(before) < len(INPUTS) - 4 and replaced  # killed mid-generation, and a new engine took over
    assert sorted(r[S.ID] for r in rows) == sorted(INPUTS)  # every row once
    statuses = [r[S.STATUS] for r in rows]
    assert S.GENERATION_ERROR not in statuses, [r[S.ERROR] for r in rows if r[S.ERROR]]
    assert statuses.count(S.OK) == len(INPUTS) - statuses.count(S.INVALID_INPUT)


def test_an_engine_that_keeps_dying_marks_its_rows_and_the_job_goes_on(tmp_path):
    rc, rows, before, _, log = run_and_kill_an_engine(tmp_path, "generation.engine_retries=0")
    assert rc == 0, log[-3000:]
    assert sorted(r[S.ID] for r in rows) == sorted(INPUTS)  # every row once
    by_id = {r[S.ID]: r for r in rows}
    assert all(by_id[i][S.STATUS] == S.OK for i in before)  # what was written stays
    failed = [r for r in rows if r[S.STATUS] == S.GENERATION_ERROR]
    assert failed and all("died more than generation.engine_retries=0" in r[S.ERROR] for r in failed)
    assert all(r[S.RESPONSE] is None and r[S.ACTUAL_COST] is None for r in failed)
