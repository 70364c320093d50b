"""Killing a job half-way and running it again: every row written once, the budget held over both
runs, and the rows the first run committed left as they were."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from conftest import ROOT, run_cli, unshare_works
from router import schema as S

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CONFIG = "jobs/configs/local.yaml"
BUDGET = 0.002
# Small engine calls and shards, so that the job is killed between commits.
SMALL = ["generation.batch_size=2", "generation.shard_rows=2", f"budget.total={BUDGET}"]


def shards(out: Path) -> list[Path]:
    return sorted(out.glob("part-*.parquet")) if out.is_dir() else []


def test_a_killed_job_resumes_where_it_stopped(tmp_path):
    why_not = unshare_works()
    if why_not:
        pytest.skip(why_not + "; the killed job's Ray processes must end with it")
    out = tmp_path / "out"
    log = (tmp_path / "first.log").open("w")
    # A private PID namespace: killing its first process ends the driver and every Ray process it started.
    first = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
         sys.executable, "-m", "router.cli", "run", CONFIG, f"output={out}", *SMALL],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "ROUTER_PROGRESS": "0"},
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while not shards(out) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    log.close()
    committed = shards(out)
    assert committed, (tmp_path / "first.log").read_text()[-3000:]
    before = pads.dataset([str(p) for p in committed], format="parquet").to_table().to_pylist()
    inputs = [json.loads(line) for line in (ROOT / "examples" / "prompts.jsonl").read_text().splitlines()]
    assert 0 < len(before) < len(inputs), "the job was not stopped half-way"
    assert not (out / "_report.json").exists()

    r = run_cli("run", CONFIG, f"output={out}", *SMALL, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming: {len(before)} rows already written" in r.stdout

    after = pads.dataset(str(out), format="parquet").to_table().to_pylist()
    ids = [row[S.ID] for row in after]
    assert sorted(ids) == sorted(row["id"] for row in inputs)  # every row, exactly once
    by_id = {row[S.ID]: row for row in after}
    for row in before:  # what the first run committed is kept as it was
        assert by_id[row[S.ID]][S.RESPONSE] == row[S.RESPONSE] and by_id[row[S.ID]][S.MODEL] == row[S.MODEL]
    # Hard mode: actual spend never exceeds the plan, and the two runs' plans share one budget.
    spent = sum(row[S.ACTUAL_COST] or 0 for row in after)
    assert spent <= BUDGET
    report = json.loads((out / "_report.json").read_text())
    assert report["rows"] == len(inputs) and report["resumed"]["rows"] == len(before)
    assert report["predicted_spend_usd"] <= BUDGET
    assert not (out / "_tmp").exists()
