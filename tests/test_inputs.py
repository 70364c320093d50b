"""Reading and validation: formats, made ids, statuses of bad rows, and early errors."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from router import schema as S
from router.config import ConfigError
from router.stages.read import ReadUnits, plan_read, units_as_items

pytestmark = pytest.mark.timeout(60)


def read_all(path, text_column="prompt", id_column="id"):
    units, _ = plan_read(str(path), text_column, id_column)
    stage = ReadUnits(text_column, id_column)
    return pa.concat_tables(t for u in units_as_items(units) for t in stage(pa.Table.from_pylist([u])))


def test_jsonl_with_bad_rows_keeps_every_row(tmp_path):
    p = tmp_path / "in.jsonl"
    rows = [{"prompt": "hello"}, {"prompt": ""}, {"prompt": None}, {"prompt": 42}, {"prompt": "  "}, {"prompt": "ok"}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    t = read_all(p)
    assert t.num_rows == 6
    assert t[S.STATUS].to_pylist() == ["ok", "invalid_input", "invalid_input", "invalid_input", "invalid_input", "ok"]
    assert t[S.ID].to_pylist() == [f"in.jsonl:{i}" for i in range(6)]


def test_parquet_row_groups_give_stable_made_ids_and_pass_through(tmp_path):
    p = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": [f"q{i}" for i in range(10)], "task": ["t"] * 10}), p, row_group_size=3)
    t = read_all(p, text_column="text")
    assert sorted(t[S.ID].to_pylist(), key=lambda s: int(s.split(":")[1])) == [f"in.parquet:{i}" for i in range(10)]
    assert t[S.PROMPT].to_pylist()[:3] == ["q0", "q1", "q2"] and "task" in t.column_names


def test_csv_and_given_ids(tmp_path):
    p = tmp_path / "in.csv"
    p.write_text("id,prompt\na,first\nb,\nc,third\n")
    t = read_all(p)
    assert t[S.ID].to_pylist() == ["a", "b", "c"]
    assert t[S.STATUS].to_pylist() == ["ok", "invalid_input", "ok"]


def test_a_folder_of_files(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text('{"prompt": "x"}\n')
    (tmp_path / "d" / "b.csv").write_text("prompt\ny\nz\n")
    t = read_all(tmp_path / "d")
    assert sorted(t[S.ID].to_pylist()) == ["a.jsonl:0", "b.csv:0", "b.csv:1"]


def test_errors_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        plan_read(str(tmp_path / "nope.jsonl"), "prompt", "id")
    p = tmp_path / "in.jsonl"
    p.write_text('{"question": "x"}\n')
    with pytest.raises(ConfigError, match="no text column 'prompt'"):
        plan_read(str(p), "prompt", "id")
    p.write_text('{"prompt": "x", "model": "mine"}\n')
    with pytest.raises(ConfigError, match="'model'"):
        plan_read(str(p), "prompt", "id")
