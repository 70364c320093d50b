"""Reading and validation: formats, made ids, statuses of bad rows, and early errors."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from router import schema as S
from router.errors import ConfigError
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


# ---- the reading contract (README, "Input and output"), one class of case at a time ----


def rows_of(path, **kw):
    return {r[S.ID]: r for r in read_all(path, **kw).to_pylist()}


def refused(path, match, text_column="prompt", id_column="id"):
    with pytest.raises(ConfigError, match=match) as e:
        plan_read(str(path), text_column, id_column)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_a_line_that_is_no_json_object_is_a_row_of_its_own_first_line_or_not(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text('{"prompt": "cut sho\n{"prompt": "fine", "id": "b"}\n[1, 2]\n7\n{"prompt": "a", "prompt": "b"}\n'
                 '{"prompt": "cut again\n')  # fmt: skip
    t = rows_of(p)
    assert list(t) == ["in.jsonl:0", "b", "in.jsonl:2", "in.jsonl:3", "in.jsonl:4", "in.jsonl:5"]
    assert [r[S.STATUS] for r in t.values()] == ["invalid_input", "ok", *["invalid_input"] * 4]
    assert t["in.jsonl:0"][S.ERROR].startswith("line 1 is not a JSON object")
    assert t["in.jsonl:2"][S.ERROR] == "line 3 is a list in JSON, not an object"
    assert t["in.jsonl:4"][S.ERROR] == "line 5 has the key 'prompt' twice"
    assert t["in.jsonl:5"][S.ERROR].startswith("line 6 is not a JSON object")


def test_a_valid_2mb_first_line_is_read_like_any_other(tmp_path):
    big = "word " * 400_000
    p = tmp_path / "in.jsonl"
    p.write_text(json.dumps({"prompt": big}) + "\n" + json.dumps({"prompt": "small"}) + "\n")
    assert [(r[S.STATUS], len(r[S.PROMPT])) for r in read_all(p).to_pylist()] == [("ok", len(big)), ("ok", 5)]
    p.write_text(json.dumps({"prompt": big}) + "\n" + '{"prompt": 5}\n')  # read line by line: the same
    assert [r[S.STATUS] for r in read_all(p).to_pylist()] == ["ok", "invalid_input"]


def test_values_that_are_not_text_are_rows_with_the_reason(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text('{"prompt": 5}\n{"prompt": [1]}\n{"prompt": {"a": 1}}\n{"prompt": true}\n{"prompt": null}\n{"x": 1}\n'
                 '{"prompt": "ok"}\n')  # fmt: skip
    errors = [r[S.ERROR] for r in read_all(p).to_pylist()]
    assert errors == ["prompt is not text (a number)", "prompt is not text (a list)", "prompt is not text (an object)",
                      "prompt is not text (true or false)", "prompt is missing or null", "prompt is missing or null",
                      None]  # fmt: skip
    q = tmp_path / "n.parquet"
    pq.write_table(pa.table({"prompt": [1, 2]}), q)
    assert {r[S.ERROR] for r in read_all(q).to_pylist()} == {"prompt is not text (int64)"}


def test_bytes_that_are_not_utf8_mark_their_row_with_the_offset(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_bytes(b'{"prompt": "ok", "id": "a"}\n{"prompt": "caf\xe9", "id": "b"}\n')
    t = rows_of(p)
    assert t["a"][S.STATUS] == "ok" and t["b"][S.STATUS] == "invalid_input"
    assert t["b"][S.ERROR].startswith("line 2 is not UTF-8 (byte 0xe9 at offset 43 of the file); re-encode")
    assert t["b"][S.PROMPT] == "caf\ufffd"  # kept, visibly replaced, and not answered
    c = tmp_path / "in.csv"
    c.write_bytes(b"id,prompt,note\na,caf\xe9,x\nb,fine,\xe9t\xe9\nc,fine,x\n")
    t = rows_of(c)
    assert [t[i][S.STATUS] for i in "abc"] == ["invalid_input", "invalid_input", "ok"]
    assert t["a"][S.ERROR].startswith("column 'prompt' is not UTF-8 (byte 0xe9 at offset 3 of the value)")
    assert t["b"][S.ERROR].startswith("column 'note' is not UTF-8 (byte 0xe9 at offset 0 of the value)")
    q = tmp_path / "b.parquet"
    pq.write_table(pa.table({"prompt": pa.array([b"fine", b"caf\xe9"], pa.binary())}), q)
    assert [r[S.STATUS] for r in read_all(q).to_pylist()] == ["ok", "invalid_input"]


def test_empty_or_invisible_text_is_not_answered(tmp_path):
    texts = ["", "  \t\n", "\u3000\u00a0", "\u200b\u200c\u200d", "\x00\x00", "\ufeff", "\u2060\u180e", "\u3164",
             "a\u200b", "\x00a", "中"]  # fmt: skip
    p = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": texts}), p)
    got = read_all(p).to_pylist()
    assert [r[S.STATUS] for r in got] == ["invalid_input"] * 8 + ["ok"] * 3
    assert got[0][S.ERROR] == "prompt is empty" and got[1][S.ERROR] == "prompt is empty"
    assert got[3][S.ERROR].startswith("prompt shows nothing (only zero-width, control")
    assert [r[S.PROMPT] for r in got] == texts  # unchanged, answered or not


def test_whole_file_defects_are_refused_naming_the_file_line_and_fix(tmp_path):
    g = tmp_path / "garbage.parquet"
    g.write_bytes(b"not parquet at all")
    refused(g, r"input 'garbage.parquet' cannot be read as parquet \(.*magic bytes.*\); write it again")
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"prompt": ["a"] * 100}), good)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[:-20])
    refused(cut, "input 'cut.parquet' cannot be read as parquet")
    c = tmp_path / "dup.csv"
    c.write_text("prompt,x,x\na,1,2\n")
    refused(c, r"input 'dup.csv' has two columns named 'x' \(line 1\); rename one of them")
    d = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["a"]), pa.array([1]), pa.array([2])], names=["prompt", "x", "x"]), d)
    refused(d, "input 'dup.parquet' has two columns named 'x'")
    r = tmp_path / "ragged.csv"
    r.write_text('prompt,id\n"two\nlines",1\nb,2\nc,3,extra\n')
    refused(r, r"input 'ragged.csv' line 5 has 3 fields where the header has 2; put double quotes around values")
    u = tmp_path / "u16.jsonl"
    u.write_bytes('{"prompt": "a"}\n'.encode("utf-16"))
    refused(u, "input 'u16.jsonl' is UTF-16 or UTF-32 text .*; save it as UTF-8")


def test_columns_that_cannot_be_reconciled_across_files_are_refused(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.jsonl").write_text('{"prompt": "x", "score": 1}\n')
    (d / "b.jsonl").write_text('{"prompt": "y", "score": "high"}\n')
    refused(d, r"input column 'score' is int64 in 'a.jsonl' but string in 'b.jsonl'; give it one type in every file")
    (d / "b.jsonl").write_text('{"prompt": "y", "score": 0.5}\n')  # numbers: reconciled
    assert sorted(r["score"] for r in read_all(d).to_pylist()) == [0.5, 1.0]
    (d / "a.jsonl").write_text('{"prompt": "x", "score": %d}\n' % (2**60))  # not without a loss
    refused(d, r"input column 'score' of 'a.jsonl' cannot be read as double, its type in other files")


def test_no_rows_refused_alike_for_every_format(tmp_path):
    empty_parquet = tmp_path / "e.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), empty_parquet)
    (tmp_path / "e.jsonl").write_text("\n  \n")
    (tmp_path / "e.csv").write_text("prompt,id\n")
    for name in ("e.parquet", "e.jsonl", "e.csv"):
        refused(tmp_path / name, "holds no rows; give it at least one prompt")


def test_column_settings_are_checked_against_the_input(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text('{"prompt": "x", "id": "1", "qid": "k"}\n')
    refused(p, r"id_column 'nope' is not a column of input 'in.jsonl' \(columns: prompt, id, qid\)", id_column="nope")
    refused(p, "text_column and id_column are both 'prompt'", id_column="prompt")
    refused(p, "text_column 'model' has the name of a column the router writes", text_column="model")
    refused(p, "input column 'id' of 'in.jsonl' has the name of a column the router writes", id_column="qid")
    (tmp_path / "none.jsonl").write_text("not json\nnor this\n")
    refused(tmp_path / "none.jsonl", r"has no text column 'prompt' \(columns: none: no line is a JSON object\)")


def test_what_is_normalised_and_what_is_kept_as_written(tmp_path):
    c = tmp_path / "bom.csv"
    c.write_bytes(b'\xef\xbb\xbfprompt,id,code,note\r\n"line one\r\nline two",007,NA,\r\n')
    (r,) = read_all(c).to_pylist()
    assert (r[S.PROMPT], r[S.ID], r["code"], r["note"], r[S.STATUS]) == ("line one\r\nline two", "007", "NA", "", "ok")
    j = tmp_path / "bom.jsonl"
    j.write_bytes(b'\xef\xbb\xbf{"prompt": "a", "day": "2024-01-01"}\n\n{"prompt": "b", "day": "2024-01-02"}\n')
    assert [(r[S.PROMPT], r["day"]) for r in read_all(j).to_pylist()] == [("a", "2024-01-01"), ("b", "2024-01-02")]
    q = tmp_path / "dict.parquet"
    pq.write_table(pa.table({"prompt": pa.array(["hi", "yo", "hi"]).dictionary_encode(),
                             "topic": pa.array(["t", "u", "t"]).dictionary_encode(),
                             "big": pa.array(["x", "y", "z"], pa.large_string())}), q)  # fmt: skip
    t = read_all(q)
    assert t[S.PROMPT].to_pylist() == ["hi", "yo", "hi"] and t[S.STATUS].to_pylist() == ["ok"] * 3
    assert t.schema.field("topic").type == pa.string() and t["topic"].to_pylist() == ["t", "u", "t"]
    b = tmp_path / "bin.parquet"
    pq.write_table(pa.table({"prompt": pa.array(["é".encode(), b"x"], pa.binary())}), b)
    assert read_all(b)[S.PROMPT].to_pylist() == ["é", "x"]


def test_pass_through_columns_survive_whatever_the_rows_hold(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text('{"prompt": 5}\n{"prompt": "b", "late": "x", "mixed": 1}\n{"prompt": "c", "mixed": "two"}\n'
                 '{"prompt": "d", "mixed": [3]}\n')  # fmt: skip
    got = read_all(p).to_pylist()
    assert [r["late"] for r in got] == [None, "x", None, None]
    assert [r["mixed"] for r in got] == [None, "1", "two", "[3]"]  # no one type: as JSON text
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.csv").write_text("prompt,only_a\nx,1\n")
    pq.write_table(pa.table({"prompt": ["y"], "only_b": [2]}), d / "b.parquet")
    units, columns = plan_read(str(d), "prompt", "id")
    assert columns == ["only_a", "only_b"]
    stage = ReadUnits("prompt", "id")
    parts = [t for u in units_as_items(units) for t in stage(pa.Table.from_pylist([u]))]
    assert parts[0].schema == parts[1].schema  # one schema across units: Ray Data never has to merge
    assert pa.concat_tables(parts).select(["only_a", "only_b"]).to_pylist() == [
        {"only_a": "1", "only_b": None}, {"only_a": None, "only_b": 2}]  # fmt: skip


def test_ids_repeated_are_refused_naming_two_rows(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text('{"prompt": "a", "id": "x"}\n{"prompt": "b", "id": "y"}\n{"prompt": "c", "id": "x"}\n')
    refused(p, r"ids must be unique, but 'x' is the id of two rows \(in.jsonl:0 and in.jsonl:2; .*make the ids unique")
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.jsonl").write_text('{"prompt": "a", "id": 5}\n')
    (d / "b.csv").write_text("prompt,id\nb,5\n")
    refused(d, r"'5' is the id of two rows \(a.jsonl:0 and b.csv:0")
    (d / "b.csv").write_text("prompt,id\nb,\nc,a.jsonl:0\n")  # a given id equal to a made one
    (d / "a.jsonl").write_text('{"prompt": "a"}\n')
    refused(d, r"'a.jsonl:0' is the id of two rows")
    (d / "b.csv").write_text("prompt,id\nb,\nc,\n")  # empty ids: made ones
    assert sorted(read_all(d)[S.ID].to_pylist()) == ["a.jsonl:0", "b.csv:0", "b.csv:1"]
    (d / "a.jsonl").write_text('{"prompt": "a", "id": [1]}\n')
    refused(d, r"input 'a.jsonl' line 1: the id 'id' is a list; ids must be text or whole numbers")


def test_a_resumed_read_gives_every_row_once(tmp_path):
    """Resume leaves out the rows already written by their ids: with ids unique (given or made),
    the rows of the two runs are the input's, each once."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.jsonl").write_text("".join(json.dumps({"prompt": f"p{i}", "id": f"k{i}"}) + "\n" for i in range(6)))
    (d / "b.csv").write_text("prompt,id\n" + "".join(f"q{i},\n" for i in range(5)))
    every = read_all(d)[S.ID].to_pylist()
    first = pa.array(every[::2])
    units, _ = plan_read(str(d), "prompt", "id")
    stage = ReadUnits("prompt", "id", skip_ids=first)
    rest = [i for u in units_as_items(units) for t in stage(pa.Table.from_pylist([u])) for i in t[S.ID].to_pylist()]
    assert sorted(first.to_pylist() + rest) == sorted(every) and len(every) == 11


def test_a_json_array_file_is_refused_not_read_as_lines(tmp_path):
    p = tmp_path / "in.json"
    p.write_text(json.dumps([{"prompt": "a"}, {"prompt": "b"}], indent=1))
    refused(p, r"input 'in.json' is one JSON array, not one JSON object per line; write it as jsonl")
    p.write_text('[1, 2]\n{"prompt": "b"}\n')  # an array on one line of many: that line's row
    assert [r[S.STATUS] for r in read_all(p).to_pylist()] == ["invalid_input", "ok"]
