"""The Python API (`router.Router`) on Ray Datasets: the README's example as written, user stages
before and after, Datasets from items and from parquet, every row once, and its one-line errors."""

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import router
from router import schema as S
from conftest import ROOT

pytestmark = pytest.mark.timeout(900)

CONFIG = "jobs/configs/local.yaml"
PROMPTS = ["What is 17 times 23?", "Name a prime number above 100.", "Translate 'thank you' into French.",
           "Write a haiku about rain.", "What is the boiling point of water in Kelvin?", "Who painted the Mona Lisa?"]  # fmt: skip


@pytest.fixture(scope="module")
def ray_local():
    import ray

    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_the_readme_example_runs_as_written(ray_local, tmp_path, monkeypatch, capsys):
    text = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S).group(1)
    # As written, but into this test's folder.
    code = code.replace('"out/api-example', f'"{tmp_path}/api-example')
    monkeypatch.chdir(ROOT)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    rows = [json.loads(line) for line in open(ROOT / "examples/prompts.jsonl")]
    kept = {r["id"] for r in rows if isinstance(r["prompt"], str) and r["id"] != "ex-000"}
    routed = scope["routed"].take_all()
    assert sorted(r[S.ID] for r in routed) == sorted(kept)
    assert all(r[S.STATUS] in (S.OK, S.INVALID_INPUT, S.OVER_BUDGET) for r in routed)
    copy = pq.read_table(tmp_path / "api-example-copy").to_pylist()
    assert sorted(r[S.ID] for r in copy) == sorted(kept)  # every row once, through a user's sink
    answered = [r for r in copy if r[S.STATUS] == S.OK]
    assert answered and all(r[S.RESPONSE] is not None and r[S.ACTUAL_COST] > 0 for r in answered)
    assert all(r["source"] == "example" for r in copy)  # the input's columns kept
    assert sum(r[S.ACTUAL_COST] or 0 for r in copy) <= 0.001  # the config's hard mode
    assert "budget used" in capsys.readouterr().out


def test_plan_composes_with_user_stages_on_a_parquet_dataset(ray_local, tmp_path):
    """Read from parquet, a stage that adds a column and a filter before, a stage after: every row
    the user's stages kept comes out once, with their columns, routed; no id column: ids made."""
    ray = ray_local
    table = pa.table({"question": PROMPTS * 3, "topic": ["t"] * 18, "n": list(range(18))})
    pq.write_table(table, tmp_path / "in.parquet")
    ds = ray.data.read_parquet(str(tmp_path / "in.parquet"))
    ds = ds.map_batches(lambda b: {**b, "doubled": b["n"] * 2}).filter(lambda row: row["n"] % 3 != 0)
    r = router.Router.from_config(CONFIG, text_column="question", budget={"total": 0.0002, "mode": "expected"})
    routed = r.plan(ds).map_batches(lambda b: {**b, "after": b["doubled"] + 1})
    rows = routed.take_all()
    assert sorted(r["n"] for r in rows) == [n for n in range(18) if n % 3 != 0]
    assert len({r[S.ID] for r in rows}) == len(rows) and all(r[S.ID].startswith("dataset:") for r in rows)
    assert all(r["after"] == 2 * r["n"] + 1 and r["question"] == PROMPTS[r["n"] % 6] for r in rows)
    assert all(r[S.STATUS] in (S.OK, S.OVER_BUDGET) for r in rows)
    ok = [r for r in rows if r[S.STATUS] == S.OK]
    assert ok and all(r[S.MODEL] and r[S.PREDICTED_COST] > 0 for r in ok)
    assert sum(r[S.PREDICTED_COST] or 0 for r in rows) <= 0.0002
    assert r.result.n_rows == len(rows)


def test_mistakes_are_one_line_errors(ray_local, tmp_path):
    import yaml

    ray = ray_local
    bare = {k: v for k, v in yaml.safe_load(open(ROOT / CONFIG)).items() if k not in ("input", "output")}
    r = router.Router.from_config(bare)
    with pytest.raises(router.ConfigError, match="no text column 'prompt'"):
        r.plan(ray.data.from_items([{"question": "hi"}]))
    with pytest.raises(router.ConfigError, match="ids must be unique"):
        r.plan(ray.data.from_items([{"id": "a", "prompt": "hi"}, {"id": "a", "prompt": "ho"}]))
    with pytest.raises(router.ConfigError, match="run needs an output folder"):
        r.run(ray.data.from_items([{"prompt": "hi"}]))
    with pytest.raises(router.ConfigError, match="no input file"):
        r.plan()
    with pytest.raises(router.ConfigError, match="budget.mode must be expected or hard"):
        router.Router.from_config(CONFIG, budget={"mode": "soft"})
    with pytest.raises(router.ConfigError, match="unknown key `budget.totl`"):
        router.Router.from_config({"models": [], "budget": {"totl": 1}})
