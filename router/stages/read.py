"""Reading and validating the prompt file: read units planned on the driver, read in Ray tasks.

The driver lists the input files and checks the text column before any work is scheduled, so a
wrong path or column name fails in one line. Each file (each row group, for parquet) becomes one
read unit whose first row number is known, which makes the ids made for an input without an id
column stable: `<file>:<row>`, the same on every run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from router import schema as S
from router.config import ConfigError

FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
# Columns the output adds: an input column of the same name would be overwritten, so it is refused.
RESERVED = set(S.OUTPUT_COLUMNS) | set(S.INTERNAL_COLUMNS)


@dataclass(frozen=True)
class ReadUnit:
    path: str  # as pyarrow's filesystem sees it
    name: str  # the file's name relative to the input, used in made ids
    fmt: str
    row_group: int  # -1: the whole file
    first_row: int


def filesystem(uri: str):
    """(pyarrow filesystem, path) for a local path or a URI (file://, s3://, gs://)."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, ValueError):
        return pafs.LocalFileSystem(), uri


def list_input_files(uri: str) -> tuple[object, list[tuple[str, str, str]]]:
    """(filesystem, [(path, display name, format)]) for a file or a folder of files."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"input {uri!r} not found")
    if info.type == pafs.FileType.File:
        entries = [info]
        root = path.rsplit("/", 1)[0] if "/" in path else ""
    else:
        entries = [
            e
            for e in fs.get_file_info(pafs.FileSelector(path, recursive=True))
            if e.type == pafs.FileType.File and not e.base_name.startswith(("_", "."))
        ]
        root = path
    files = []
    for e in sorted(entries, key=lambda e: e.path):
        suffix = "." + e.base_name.rsplit(".", 1)[-1].lower() if "." in e.base_name else ""
        if suffix not in FORMATS:
            if info.type == pafs.FileType.File:
                raise ConfigError(f"input {uri!r}: unknown format; use .parquet, .jsonl or .csv")
            continue
        name = e.path[len(root) :].lstrip("/") if root else e.path
        files.append((e.path, name, FORMATS[suffix]))
    if not files:
        raise ConfigError(f"input {uri!r} holds no .parquet, .jsonl or .csv file")
    return fs, files


def _first_columns(fs, path: str, fmt: str) -> list[str]:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(fs.open_input_file(path)).schema_arrow.names
    with fs.open_input_stream(path) as f:
        head = f.read(1 << 20).decode("utf-8", errors="replace")
    if fmt == "csv":
        import csv

        return next(csv.reader([head.splitlines()[0]])) if head else []
    for line in head.splitlines():
        if line.strip():
            try:
                return list(json.loads(line))
            except (json.JSONDecodeError, TypeError):
                raise ConfigError(f"input {path!r}: the first line is not a JSON object") from None
    return []


def plan_read(uri: str, text_column: str, id_column: str) -> tuple[list[ReadUnit], list[str]]:
    """Read units and the pass-through columns, checking the text column before any work starts."""
    fs, files = list_input_files(uri)
    units: list[ReadUnit] = []
    columns: list[str] = []
    for path, name, fmt in files:
        cols = _first_columns(fs, path, fmt)
        if text_column not in cols:
            raise ConfigError(
                f"input {name!r} has no text column {text_column!r} (columns: {', '.join(cols) or 'none'}); "
                "set text_column=NAME"
            )
        columns = columns or cols
        if fmt == "parquet":
            import pyarrow.parquet as pq

            md = pq.ParquetFile(fs.open_input_file(path)).metadata
            first = 0
            for rg in range(md.num_row_groups):
                units.append(ReadUnit(path, name, fmt, rg, first))
                first += md.row_group(rg).num_rows
        else:
            units.append(ReadUnit(path, name, fmt, -1, 0))
    passthrough = [c for c in columns if c != text_column]
    clash = sorted((set(passthrough) - {id_column}) & (RESERVED | {S.PROMPT, S.ID}))
    if clash:
        raise ConfigError(
            f"input column {clash[0]!r} has the name of a column the router writes; rename it in the input"
        )
    return units, passthrough


def _read_jsonl_lenient(data: bytes, text_column: str) -> pa.Table:
    """Line-by-line JSON for files whose columns change type between rows (a number among texts)."""
    rows = []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = {}
        if not isinstance(row, dict):
            row = {}
        for k, v in row.items():
            if isinstance(v, (dict, list)) or (k == text_column and not isinstance(v, str)):
                row[k] = None if k == text_column else json.dumps(v)
            elif not isinstance(v, str) and v is not None:
                row[k] = str(v) if k != text_column else None
        rows.append(row)
    return pa.Table.from_pylist(rows)


def read_table(unit: ReadUnit, text_column: str) -> pa.Table:
    fs, _ = filesystem(unit.path)
    if unit.fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(fs.open_input_file(unit.path)).read_row_group(unit.row_group)
    with fs.open_input_stream(unit.path) as f:
        data = f.read()
    if unit.fmt == "csv":
        import pyarrow.csv as pcsv

        return pcsv.read_csv(
            pa.BufferReader(data),
            convert_options=pcsv.ConvertOptions(
                column_types={text_column: pa.string()}, strings_can_be_null=False
            ),
        )
    import pyarrow.json as pj

    try:
        return pj.read_json(pa.BufferReader(data))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return _read_jsonl_lenient(data, text_column)


def validate(table: pa.Table, unit: ReadUnit, text_column: str, id_column: str) -> pa.Table:
    """Rename the text column to `prompt`, make ids where missing, and set each row's status."""
    n = table.num_rows
    text = table[text_column] if text_column in table.column_names else pa.nulls(n, pa.string())
    if not pa.types.is_string(text.type) and not pa.types.is_large_string(text.type):
        text = pa.nulls(n, pa.string())  # a column of numbers, lists...: no row of it is text
    text = text.cast(pa.string())
    blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(text), ""), True)
    status = pc.if_else(blank, S.INVALID_INPUT, S.OK)
    error = pc.if_else(blank, f"{text_column} is empty, null or not text", pa.scalar(None, pa.string()))
    if id_column in table.column_names:
        ids = table[id_column].cast(pa.string())
        rows = pa.array(np.arange(unit.first_row, unit.first_row + n).astype(str))
        ids = pc.coalesce(ids, pc.binary_join_element_wise(f"{unit.name}:", rows, ""))
    else:
        rows = pa.array(np.arange(unit.first_row, unit.first_row + n).astype(str))
        ids = pc.binary_join_element_wise(f"{unit.name}:", rows, "")
    out = table.drop_columns([c for c in (text_column, id_column) if c in table.column_names])
    return (
        out.add_column(0, S.ID, ids)
        .append_column(S.PROMPT, text)
        .append_column(S.STATUS, status)
        .append_column(S.ERROR, error.cast(pa.string()))
    )


class ReadUnits:
    """Ray Data stage over a dataset of read units: yields the validated rows of each unit."""

    def __init__(self, text_column: str, id_column: str, rows_per_batch: int = 8192, skip_ids: pa.Array | None = None):
        self.text_column = text_column
        self.id_column = id_column
        self.rows_per_batch = rows_per_batch
        # Rows an earlier run of the job already wrote (resume): left out here, before any work.
        self.skip_ids = skip_ids if skip_ids is not None and len(skip_ids) else None

    def __call__(self, units: pa.Table) -> Iterator[pa.Table]:
        for u in units.to_pylist():
            unit = ReadUnit(**u)
            table = validate(read_table(unit, self.text_column), unit, self.text_column, self.id_column)
            if self.skip_ids is not None:  # one set lookup per unit (a file or a row group), not per batch
                table = table.filter(pc.invert(pc.is_in(table[S.ID], value_set=self.skip_ids)))
            for batch in table.to_batches(max_chunksize=self.rows_per_batch):
                yield pa.Table.from_batches([batch])


def read_units(units: pa.Table, text_column: str, id_column: str, skip_ids: pa.Array | None = None) -> Iterator[pa.Table]:
    """`ReadUnits` as a function, for a Ray Data task stage (which Ray Data can fuse into the actor
    stage after it)."""
    yield from ReadUnits(text_column, id_column, skip_ids=skip_ids)(units)


def units_as_items(units: list[ReadUnit]) -> list[dict]:
    return [asdict(u) for u in units]
