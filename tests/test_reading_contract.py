"""The reading contract (README, "Input and output") on any file a user may have: random jsonl, csv
and parquet files and folders of them, malformed in the ways files are, either read with every
row exactly once (its id, its status, its text unchanged) or refused in one line naming the file.
The property runs the driver's reading and the read stage in-process; a few cases go through
`router plan --out` and `router run` as a user runs them."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import run_cli
from router import schema as S
from router.errors import ConfigError
from router.stages.read import ReadUnits, plan_read, units_as_items

pytestmark = pytest.mark.timeout(300)

CONFIG = "jobs/configs/local.yaml"
BAD_BYTE = "\ue000"  # written as the byte 0xe9 (latin-1 é), which is not UTF-8
BLANKS = [" ", "\t", "\n", "\u00a0", "\u3000", "\u200b", "\u200d", "\u2060", "\ufeff", "\x00", "\x1f"]
VISIBLE = st.characters(categories=("L", "N", "P", "S"), exclude_characters="\u115f\u1160\u3164\uffa0\u2800")
NOISE = st.sampled_from([" ", "\t", "\n", "\r\n", ",", '"', "'", ";", "\u200b", "é", "中", "😀", "\\", "{", "}"])


@st.composite
def texts(draw, kind: str) -> str:
    if kind == "blank":
        return "".join(draw(st.lists(st.sampled_from(BLANKS), max_size=4)))
    before = "".join(draw(st.lists(NOISE, max_size=3)))
    after = "".join(draw(st.lists(NOISE, max_size=3)))
    core = draw(st.text(VISIBLE, min_size=1, max_size=6))
    return before + core + (BAD_BYTE if kind == "bad_byte" else "") + after


ROW_KINDS = {
    "jsonl": ["ok", "ok", "ok", "blank", "null", "missing", "number", "list", "not_json", "not_object", "dup_key",
              "bad_byte"],
    "csv": ["ok", "ok", "ok", "blank", "bad_byte"],
    "parquet": ["ok", "ok", "ok", "blank", "null"],
}
# Row kinds whose line is no JSON object: the row keeps no field of its own (its id is made).
LOST = {"not_json", "not_object", "dup_key"}


@dataclass
class Row:
    kind: str
    text: str | None
    id: object  # str, int or None
    x: object


@dataclass
class File:
    name: str
    fmt: str
    rows: list[Row]
    x_family: str  # int, float, str, mixed (jsonl), absent
    defect: str | None = None
    text_type: str = "string"  # parquet: string, large_string, dictionary, binary, int64
    extras: dict = field(default_factory=dict)


X_VALUES = {"int": st.integers(-(2**40), 2**40), "float": st.floats(-1e9, 1e9, allow_nan=False),
            "str": st.text(max_size=5), "mixed": st.one_of(st.integers(0, 9), st.text(max_size=3))}  # fmt: skip
DEFECTS = {
    "jsonl": [None] * 3 + ["bom", "crlf", "blank_lines"] * 2 + ["utf16", "json_array"],
    "csv": [None] * 3 + ["bom", "lf", "blank_lines"] * 2 + ["dup_header", "ragged"],
    "parquet": [None] * 3 + ["row_groups"] * 2 + ["truncated"],
}
# What each defect does by the contract: True refuses the file.
REFUSING = {"utf16", "json_array", "dup_header", "ragged", "truncated"}


@st.composite
def files(draw, name: str, id_mode: str, next_id) -> File:
    fmt = draw(st.sampled_from(["jsonl", "csv", "parquet"]))
    name = f"{name}.{fmt}"
    families = ["str", "absent"] if fmt == "csv" else ["int", "float", "str"] + ["mixed"] * (fmt == "jsonl")
    family = draw(st.sampled_from(families + ["absent"] * 3))  # csv cells are text
    text_type = "string"
    if fmt == "parquet":
        text_type = draw(st.sampled_from(["string", "large_string", "dictionary", "binary", "int64"]))
    kinds = ROW_KINDS[fmt] + (["bad_byte"] if text_type == "binary" else [])
    rows = []
    for _ in range(draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 8]))):
        kind = draw(st.sampled_from(kinds))
        text = draw(texts(kind)) if kind in ("ok", "blank", "bad_byte") else None
        if text_type == "int64":
            kind, text = "number", None
        rid = None
        if id_mode != "none" and draw(st.booleans() if id_mode == "some" else st.just(True)):
            rid = next_id(fmt)
        x = draw(st.one_of(st.none(), X_VALUES[family])) if family != "absent" else None
        rows.append(Row(kind, text, rid, x))
    return File(name, fmt, rows, family, draw(st.sampled_from(DEFECTS[fmt])), text_type)


@st.composite
def inputs(draw):
    id_mode = draw(st.sampled_from(["none", "given", "some"]))
    counter = iter(range(10**6))
    int_ids = draw(st.booleans())

    def next_id(fmt):
        n = next(counter)
        return n if int_ids and fmt != "csv" else f"q{n}"

    fs = [draw(files(f"f{i}", id_mode, next_id)) for i in range(draw(st.integers(1, 3)))]
    if id_mode != "none" and draw(st.integers(0, 9)) == 0:  # one id given to two rows
        given_ids = [r for f in fs for r in f.rows if r.id is not None and r.kind not in LOST]
        if len(given_ids) >= 2:
            given_ids[-1].id = given_ids[0].id
    return fs


# ---- writing the files ----


def _jsonl_line(row: Row) -> bytes:
    obj = {}
    if row.id is not None:
        obj["id"] = row.id
    if row.kind in ("ok", "blank", "bad_byte"):
        obj["prompt"] = row.text
    elif row.kind == "null":
        obj["prompt"] = None
    elif row.kind == "number":
        obj["prompt"] = 42
    elif row.kind == "list":
        obj["prompt"] = ["a"]
    if row.x is not None:
        obj["x"] = row.x
    line = json.dumps(obj, ensure_ascii=False)
    if row.kind == "not_json":
        line = line[: max(1, len(line) // 2)]
    elif row.kind == "not_object":
        line = "[1, 2]"
    elif row.kind == "dup_key":
        line = '{"prompt": "a", "prompt": "b"}'
    return line.encode().replace(BAD_BYTE.encode(), b"\xe9")


def write(f: File, folder: str) -> str:
    path = os.path.join(folder, f.name)
    if f.fmt == "jsonl":
        sep = b"\r\n" if f.defect == "crlf" else b"\n\n  \n" if f.defect == "blank_lines" else b"\n"
        data = b"".join(_jsonl_line(r) + sep for r in f.rows)
        if f.defect == "bom":
            data = b"\xef\xbb\xbf" + data
        if f.defect == "utf16":
            data = data.decode("utf-8", "replace").encode("utf-16")
        if f.defect == "json_array":  # a JSON file, not jsonl
            data = json.dumps([{"prompt": r.text} for r in f.rows], indent=1).encode()
    elif f.fmt == "csv":
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n" if f.defect == "lf" else "\r\n")
        x = f.x_family != "absent"
        w.writerow(["prompt", "id"] + ["x"] * x + ["prompt"] * (f.defect == "dup_header"))
        for r in f.rows:
            w.writerow([r.text, "" if r.id is None else r.id] + ["" if r.x is None else r.x] * x)
        if f.defect == "ragged":
            w.writerow(["a", "b", "c", "d"])
        data = out.getvalue().encode().replace(BAD_BYTE.encode(), b"\xe9")
        if f.defect == "blank_lines":  # before the header and between records: no rows
            data = b"\n\n" + data.replace(b"\r\nq", b"\r\n\r\nq")
        if f.defect == "bom":
            data = b"\xef\xbb\xbf" + data
    else:
        data = _parquet_bytes(f)
        if f.defect == "truncated":
            data = data[: len(data) // 2]
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def _parquet_bytes(f: File) -> bytes:
    texts_ = [r.text for r in f.rows]
    if f.text_type == "int64":
        text = pa.array([7] * len(f.rows), pa.int64())
    elif f.text_type == "binary":
        text = pa.array([None if t is None else t.encode().replace(BAD_BYTE.encode(), b"\xe9") for t in texts_],
                        pa.binary())
    else:
        text = pa.array(texts_, pa.large_string() if f.text_type == "large_string" else pa.string())
        if f.text_type == "dictionary":
            text = text.dictionary_encode()
    cols = {"prompt": text}
    if any(r.id is not None for r in f.rows):
        ids = [r.id for r in f.rows]
        ints = all(isinstance(i, int) for i in ids if i is not None)
        if not ints:
            ids = [None if i is None else str(i) for i in ids]
        cols["id"] = pa.array(ids, pa.int64() if ints else pa.string())
    if f.x_family != "absent":
        types = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}
        cols["x"] = pa.array([r.x for r in f.rows], types[f.x_family])
    sink = io.BytesIO()
    pq.write_table(pa.table(cols), sink, row_group_size=2 if f.defect == "row_groups" else None)
    return sink.getvalue()


# ---- what the contract says ----

REASONS = ["holds no rows", "ids must be unique", "as parquet", "fields where the header", "two columns named",
           "UTF-16", "JSON array", "no text column", "one type in every file"]  # fmt: skip


def expected(fs: list[File]) -> tuple[bool, dict]:
    """(whether the input must be refused, {id: (status, text)} of its rows otherwise)."""
    rows = {}
    refuse = False
    for f in fs:
        if f.defect in REFUSING:
            refuse = True
        if f.fmt == "jsonl" and f.rows and not any(r.kind not in LOST | {"missing"} for r in f.rows):
            refuse = True  # no line names the text column
        for i, r in enumerate(f.rows):
            given = r.id if r.kind not in LOST and r.id not in (None, "") else None
            rid = str(given) if given is not None else f"{f.name}:{i}"
            if rid in rows:
                refuse = True  # an id given to two rows
            ok = r.kind == "ok"
            rows[rid] = (S.OK if ok else S.INVALID_INPUT, r.text if ok else None)
    return refuse or not rows, rows


def x_conflict(fs: list[File]) -> bool:
    """Whether column x is text in one file and numbers in another: those may be refused."""
    present = set()
    for f in fs:
        if not f.rows:
            continue
        if f.fmt in ("csv", "parquet") and f.x_family != "absent":
            present.add(f.x_family)
        elif f.fmt == "jsonl":
            kinds = {type(r.x) for r in f.rows if r.x is not None and r.kind not in LOST}
            present |= {"str"} if str in kinds else {"number"} if kinds else set()
    return "str" in present and len(present) > 1


def read_all(path: str) -> pa.Table:
    units, _ = plan_read(path, "prompt", "id")
    stage = ReadUnits("prompt", "id")
    parts = [t for u in units_as_items(units) for t in stage(pa.Table.from_pylist([u]))]
    assert len({p.schema for p in parts}) <= 1, "read units of one input must share one schema"
    return pa.concat_tables(parts)


def check_promise(fs: list[File], folder: str) -> None:
    paths = [write(f, folder) for f in fs]
    target = paths[0] if len(paths) == 1 else folder
    must_refuse, rows = expected(fs)
    try:
        table = read_all(target)
    except ConfigError as e:
        msg = str(e)
        event("refused: " + next((k for k in REASONS if k in msg), msg))
        assert "\n" not in msg, msg
        assert any(f.name in msg for f in fs) or target in msg, msg
        assert must_refuse or (x_conflict(fs) and "one type in every file" in msg), msg
        return
    assert not must_refuse, f"should have been refused: {[(f.name, f.defect) for f in fs]}"
    got = table.to_pylist()
    event(f"read: {sum(r[S.STATUS] == S.OK for r in got)} ok of {len(got)}" if len(got) < 3 else "read: 3+ rows")
    assert sorted(r[S.ID] for r in got) == sorted(rows), "every input row exactly once"
    for r in got:
        status, text = rows[r[S.ID]]
        assert r[S.STATUS] == status, (r, status)
        if status == S.OK:
            assert r[S.PROMPT] == text and r[S.ERROR] is None, (r, text)
        else:
            assert r[S.ERROR] and "\n" not in r[S.ERROR], r


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(inputs())
def test_any_input_is_read_whole_or_refused_in_one_line(fs):
    with tempfile.TemporaryDirectory() as folder:
        check_promise(fs, folder)


# ---- the promise through the command line ----


def one_line_error(r, message: str) -> None:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(lines) == 1 and message in lines[0], r.stderr[-3000:]


@pytest.fixture(scope="module")
def malformed(tmp_path_factory):
    """A folder holding the malformed files of issue reports, and {id: status} of its rows."""
    d = tmp_path_factory.mktemp("malformed")
    big = json.dumps({"prompt": "word " * 400_000, "id": "big"})  # a valid 2 MB first line
    (d / "a.jsonl").write_bytes(
        big.encode() + b'\n{"prompt": "cut off\n{"prompt": "caf\xe9", "id": "latin"}\n{"prompt": 7, "id": "number"}\n'
        b'{"prompt": "late column", "id": "late", "late": "kept"}\n{"prompt": "\\u200b\\u200b", "id": "zero-width"}\n'
        b'{"prompt": "\\u0000", "id": "nul"}\n'
    )
    (d / "b.csv").write_bytes(b'\xef\xbb\xbfprompt,id,note\r\n"two\r\nlines",007,x\r\ncaf\xe9,c2,y\r\nplain,c3,\r\n')
    topics = pa.array(["math", "code"], pa.large_string())
    pq.write_table(pa.table({"prompt": pa.array(["What is 2+2?", "Sort a list"]).dictionary_encode(), "topic": topics}),
                   d / "c.parquet")  # fmt: skip
    statuses = {"big": "too_long", "a.jsonl:1": "invalid_input", "latin": "invalid_input", "number": "invalid_input",
                "late": "ok", "zero-width": "invalid_input", "nul": "invalid_input", "007": "ok", "c2": "invalid_input",
                "c3": "ok", "c.parquet:0": "ok", "c.parquet:1": "ok"}  # fmt: skip
    return d, statuses


@pytest.mark.timeout(600)
def test_plan_out_writes_every_row_of_malformed_files_once(malformed, tmp_path):
    folder, statuses = malformed
    out = tmp_path / "plan"
    r = run_cli("plan", CONFIG, f"input={folder}", "--out", str(out), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = pads.dataset(str(out), format="parquet").to_table().to_pylist()
    assert sorted(row[S.ID] for row in got) == sorted(statuses)  # every row, exactly once
    assert {row[S.ID]: row[S.STATUS] for row in got} == statuses
    written = sorted(p.name for p in out.iterdir())
    # Run again into the same folder: refused, the folder left as it was (never every row twice).
    one_line_error(run_cli("plan", CONFIG, f"input={folder}", "--out", str(out)), "is not empty; choose a new folder")
    assert sorted(p.name for p in out.iterdir()) == written


def _corrupt_parquet(d):
    (d / "in.parquet").write_bytes(b"PAR1 and then nothing")
    return d / "in.parquet"


def _ragged_csv(d):
    (d / "in.csv").write_text("prompt,id\na,1\nb,2,3\n")
    return d / "in.csv"


def _unreconciled_folder(d):
    (d / "a.jsonl").write_text('{"prompt": "x", "n": 1}\n')
    (d / "b.jsonl").write_text('{"prompt": "y", "n": "one"}\n')
    return d


def _empty_parquet(d):
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), d / "in.parquet")
    return d / "in.parquet"


def _prompts(d):
    (d / "in.jsonl").write_text('{"prompt": "a", "id": "1"}\n')
    return d / "in.jsonl"


@pytest.mark.parametrize(
    "make, overrides, message",
    [
        (_corrupt_parquet, [], "input 'in.parquet' cannot be read as parquet"),
        (_ragged_csv, [], "input 'in.csv' line 3 has 3 fields where the header has 2"),
        (_unreconciled_folder, [], "input column 'n' is int64 in 'a.jsonl' but string in 'b.jsonl'"),
        (_empty_parquet, [], "holds no rows"),
        (_prompts, ["id_column=nope"], "id_column 'nope' is not a column of input 'in.jsonl'"),
    ],
)
def test_a_file_that_cannot_be_read_is_refused_in_one_line(tmp_path, make, overrides, message):
    d = tmp_path / "in"
    d.mkdir()
    out = tmp_path / "plan"
    one_line_error(run_cli("plan", CONFIG, f"input={make(d)}", *overrides, "--out", str(out)), message)
    assert not out.exists()  # nothing announced, nothing created


def test_repeated_ids_refuse_a_run_before_it_writes(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text('{"prompt": "a", "id": "x"}\n{"prompt": "b", "id": "x"}\n')
    out = tmp_path / "out"
    r = run_cli("run", CONFIG, f"input={p}", f"output={out}")
    one_line_error(r, "ids must be unique, but 'x' is the id of two")
    assert not out.exists()


def test_plan_out_has_the_guards_of_run_output(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    prompts = _prompts(d)
    one_line_error(run_cli("plan", CONFIG, f"input={d}", "--out", str(d / "plan")), "is inside the input")
    one_line_error(run_cli("plan", CONFIG, f"input={prompts}", "--out", str(d)), "holds the input")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    one_line_error(run_cli("plan", CONFIG, f"input={prompts}", "--out", str(other)), "is not empty")
    one_line_error(run_cli("plan", CONFIG, f"input={prompts}", "--out", str(other / "notes.txt")), "is a file")
    one_line_error(run_cli("run", CONFIG, f"input={d}", f"output={d / 'out'}"), "is inside the input")
    assert sorted(p.name for p in d.iterdir()) == ["in.jsonl"]
