"""Parsing one input file (or one parquet row group) into an Arrow table, by format.

What a parser settles: which records are rows (a jsonl line, a csv record after the header, a
parquet row; blank lines are not rows), the columns and their types, and the defects of single
rows, returned beside the table as one error message per row (None: none). What a whole file gets
wrong (a parquet file that cannot be read, two columns of one name, a ragged csv, UTF-16 text) is a
`ConfigError` naming the file, the line and the fix. Which rows are then answered is
`router.stages.read.validate`'s business.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pyarrow as pa

from router.errors import ConfigError

UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")  # UTF-32's marks start with these too
JSON_BLANK = b" \t\r\n"  # JSON's whitespace: a line of only these is no row (pyarrow's reader agrees)
RE_ENCODE = "re-encode the file as UTF-8 (e.g. iconv -f cp1252 -t utf-8)"


@dataclass(frozen=True)
class Parsed:
    """A parsed read unit: its rows, and per row what was wrong with it as read."""

    table: pa.Table
    errors: pa.Array | None = None
    """string, one per row: the defect that makes the row `invalid_input` (null: none found here)."""


def kind(value) -> str:
    """A JSON value's kind, in words."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def strip_bom(data: bytes, name: str) -> bytes:
    """Text without its UTF-8 byte-order mark; UTF-16 or UTF-32 text is refused."""
    if data.startswith(UTF8_BOM):
        return data[len(UTF8_BOM) :]
    if data.startswith(UTF16_BOMS):
        raise ConfigError(
            f"input {name!r} is UTF-16 or UTF-32 text (it starts with such a byte-order mark); save it as UTF-8"
        )
    return data


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def is_utf8(data: bytes) -> bool:
    """Whether the bytes are UTF-8 text, checked by Arrow without a copy into a Python str."""
    offsets = pa.array([0, len(data)], pa.int64())
    arr = pa.Array.from_buffers(pa.large_string(), 1, [None, offsets.buffers()[1], pa.py_buffer(data)])
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def repair_utf8(column: pa.Array, what: str) -> tuple[pa.Array, pa.Array | None]:
    """A string (or binary) column as valid UTF-8 text: values that are not get U+FFFD in place of
    their bad bytes and an error naming the byte and its offset in the value."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        try:
            column.validate(full=True)
            return column.cast(pa.string()), None
        except pa.ArrowInvalid:
            column = column.view(pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary())
    else:
        try:
            return column.cast(pa.string()), None
        except pa.ArrowInvalid:
            pass
    values, errors = [], []
    for b in column.to_pylist():
        try:
            values.append(None if b is None else b.decode("utf-8"))
            errors.append(None)
        except UnicodeDecodeError as e:
            values.append(b.decode("utf-8", errors="replace"))
            byte = f"byte 0x{b[e.start]:02x} at offset {e.start} of the value"
            errors.append(f"{what} is not UTF-8 ({byte}); {RE_ENCODE}")
    return pa.array(values, pa.string()), pa.array(errors, pa.string())


def merge_errors(*errors: pa.Array | None) -> pa.Array | None:
    """Per row, the first error found."""
    import pyarrow.compute as pc

    present = [e for e in errors if e is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else pc.coalesce(*present)


def decode_dictionaries(table: pa.Table) -> pa.Table:
    """Dictionary-encoded columns as plain ones: the encoding is storage, not meaning."""
    for i, field in enumerate(table.schema):
        if pa.types.is_dictionary(field.type):
            table = table.set_column(i, field.name, table.column(i).cast(field.type.value_type))
    return table


def refuse_duplicate_columns(names: list[str], name: str, where: str) -> None:
    seen = set()
    for c in names:
        if c in seen:
            raise ConfigError(f"input {name!r} has two columns named {c!r} ({where}); rename one of them")
        seen.add(c)


# ---- parquet ----


def read_parquet(fs, path: str, name: str, row_group: int | None) -> pa.Table:
    """One row group (None: only the footer, as an empty table with the file's columns)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(fs.open_input_file(path))
        table = pf.schema_arrow.empty_table() if row_group is None else pf.read_row_group(row_group)
    except (pa.ArrowException, OSError) as e:
        raise ConfigError(
            f"input {name!r} cannot be read as parquet ({first_line(e)}); write it again, or move it out of the input"
        ) from None
    refuse_duplicate_columns(table.column_names, name, "in its schema")
    return decode_dictionaries(table)


def parquet_row_groups(fs, path: str, name: str) -> list[int]:
    """Rows per row group, from the footer."""
    import pyarrow.parquet as pq

    try:
        md = pq.ParquetFile(fs.open_input_file(path)).metadata
        return [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    except (pa.ArrowException, OSError) as e:
        raise ConfigError(
            f"input {name!r} cannot be read as parquet ({first_line(e)}); write it again, or move it out of the input"
        ) from None


# ---- csv ----


def _csv_header(data: bytes, name: str) -> list[str]:
    import csv
    import io

    # Bytes that are not UTF-8 become lone surrogates here, so that only the header's are seen.
    reader = csv.reader(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="surrogateescape", newline=""))
    try:
        header = next((record for record in reader if record), [])  # empty lines before it are skipped
    except csv.Error as e:
        raise ConfigError(f"input {name!r}: the header (line 1) is not csv ({e})") from None
    try:
        "".join(header).encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"input {name!r}: the header (line 1) is not UTF-8; {RE_ENCODE}") from None
    return header


def _ragged_line(data: bytes, width: int) -> tuple[int, int] | None:
    """(line, fields) of the first record whose number of fields is not the header's."""
    import csv
    import io

    reader = csv.reader(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace", newline=""))
    try:
        start = 1
        for record in reader:
            if record and len(record) != width:
                return start, len(record)
            start = reader.line_num + 1
    except csv.Error:
        return None
    return None


def read_csv(data: bytes, name: str) -> Parsed:
    """Every column as text, exactly as written: an empty cell is an empty text, `NA` is `NA`,
    `007` is `007`. Quoted values may hold line breaks."""
    import pyarrow.csv as pcsv

    data = strip_bom(data, name)
    if not data.strip(JSON_BLANK):
        return Parsed(pa.table({}))
    header = _csv_header(data, name)
    refuse_duplicate_columns(header, name, "line 1")
    try:
        table = pcsv.read_csv(
            pa.BufferReader(data),
            parse_options=pcsv.ParseOptions(newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(
                column_types={c: pa.string() for c in header},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
                check_utf8=False,  # checked per value below: a bad byte spoils one row, not the file
            ),
        )
    except pa.ArrowInvalid as e:
        where = _ragged_line(data, len(header))
        if where is None:
            raise ConfigError(f"input {name!r} is not valid csv ({first_line(e)})") from None
        line, fields = where
        raise ConfigError(
            f"input {name!r} line {line} has {fields} fields where the header has {len(header)}; "
            'put double quotes around values holding a comma, or fix the line'
        ) from None
    if table.column_names != header or not all(pa.types.is_string(t) for t in table.schema.types):
        raise ConfigError(f"input {name!r}: its header (line 1) cannot be read as csv column names")
    columns, errors = [], []
    for c in header:
        column, err = repair_utf8(table[c].combine_chunks(), f"column {c!r}")
        columns.append(column)
        errors.append(err)
    return Parsed(pa.table(columns, names=header), merge_errors(*errors))


# ---- jsonl ----


def _lines(data: bytes):
    """(line number, offset in the file, line) of every line that is not blank. Line breaks are
    LF, CRLF or CR, as for pyarrow's reader."""
    offset = 0
    for number, raw in enumerate(data.splitlines(keepends=True), 1):
        line = raw.rstrip(b"\r\n")
        if line.strip(JSON_BLANK):
            yield number, offset, line
        offset += len(raw)


INNER_BLANK_LINE = re.compile(rb"\n[ \t]*\n")
NOT_BLANK = re.compile(rb"[^ \t\r\n]")


def _count_rows(data: bytes) -> int:
    """Lines that are not blank: without a Python object per line (nor a copy of the data) where
    no line is blank and every break is LF."""
    if not NOT_BLANK.search(data):
        return 0
    end = len(data) - data.endswith(b"\n")
    first_break, last_break = data.find(b"\n", 0, end), data.rfind(b"\n", 0, end)
    first = data[: first_break if first_break >= 0 else end]
    last = data[last_break + 1 : end]
    if b"\r" in data or not first.strip(b" \t") or not last.strip(b" \t") or INNER_BLANK_LINE.search(data, 0, end):
        return sum(1 for _ in _lines(data))
    return data.count(b"\n", 0, end) + 1


def read_jsonl(data: bytes, name: str, text_column: str, id_column: str) -> Parsed:
    """One JSON object per line. A file that is all well-formed UTF-8 JSON objects is read by
    pyarrow; any other is read line by line, with the same columns and rows."""
    data = strip_bom(data, name)
    rows = _count_rows(data)
    if not rows:
        return Parsed(pa.table({}))
    if data.lstrip(JSON_BLANK)[:1] == b"[":
        _refuse_json_array(data, name)
    if is_utf8(data) and len(data) < 2**31 - 1:
        table = _read_json_whole(data, text_column, id_column)
        if table is not None and table.num_rows == rows:
            return Parsed(table)
    return _read_jsonl_by_line(data, name, text_column, id_column)


def _refuse_json_array(data: bytes, name: str) -> None:
    """A file that is one JSON array (`[{...}, {...}]`) would be read as a row per line of it."""
    try:
        whole = json.loads(data)
    except (ValueError, RecursionError):
        return  # not one JSON document: lines, read as such
    if isinstance(whole, list):
        raise ConfigError(
            f"input {name!r} is one JSON array, not one JSON object per line; write it as jsonl "
            "(e.g. jq -c '.[]' FILE > FILE.jsonl)"
        )


def _has_timestamp(t: pa.DataType) -> bool:
    if pa.types.is_timestamp(t):
        return True
    return any(_has_timestamp(t.field(i).type) for i in range(t.num_fields))


def _read_json_whole(data: bytes, text_column: str, id_column: str) -> pa.Table | None:
    """pyarrow's reader, or None where its reading would differ from the line-by-line one."""
    import pyarrow.json as pj

    # One block: across blocks pyarrow turns a number into text where an earlier block held text
    # in that column, where within a block it stops.
    read = pj.ReadOptions(block_size=len(data) + 1)
    try:
        table = pj.read_json(pa.BufferReader(data), read_options=read)
        stamps = [f.name for f in table.schema if pa.types.is_timestamp(f.type)]
        if stamps:  # pyarrow reads texts that look like dates as timestamps: keep them text
            parse = pj.ParseOptions(explicit_schema=pa.schema([(c, pa.string()) for c in stamps]))
            table = pj.read_json(pa.BufferReader(data), read_options=read, parse_options=parse)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    types = table.schema
    if any(_has_timestamp(t) for t in types.types):
        return None
    if text_column in types.names and not _is(types.field(text_column).type, pa.types.is_string, pa.types.is_null):
        return None  # numbers or lists among the prompts: the line-by-line reading says which
    if id_column in types.names and not _is(types.field(id_column).type, pa.types.is_string, pa.types.is_integer,
                                            pa.types.is_null):  # fmt: skip
        return None
    return table


def _is(t: pa.DataType, *tests) -> bool:
    return any(test(t) for test in tests)


class _DuplicateKey(ValueError):
    pass


def _object_without_duplicates(pairs):
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise _DuplicateKey(k)
        obj[k] = v
    return obj


LONE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _parse_line(line: bytes, number: int, offset: int) -> tuple[dict, str | None]:
    """(the line's object, or {}; what is wrong with it, or None)."""
    error = None
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        text = line.decode("utf-8", errors="replace")
        byte = f"byte 0x{line[e.start]:02x} at offset {offset + e.start} of the file"
        error = f"line {number} is not UTF-8 ({byte}); {RE_ENCODE}"
    try:
        obj = json.loads(text, object_pairs_hook=_object_without_duplicates)
    except _DuplicateKey as e:
        return {}, error or f"line {number} has the key {e.args[0]!r} twice"
    except json.JSONDecodeError as e:
        return {}, error or f"line {number} is not a JSON object ({e.msg} at column {e.colno})"
    except RecursionError:
        return {}, error or f"line {number} is not a JSON object (nested too deeply)"
    if not isinstance(obj, dict):
        return {}, error or f"line {number} is {kind(obj)} in JSON, not an object"
    if LONE_SURROGATE.search(text):
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            fixed = json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass").decode("utf-8", "replace")
            why = f"line {number} holds a \\u escape that is no character (a lone surrogate)"
            return json.loads(fixed), error or why
    return obj, error


def _read_jsonl_by_line(data: bytes, name: str, text_column: str, id_column: str) -> Parsed:
    rows, errors, numbers = [], [], []
    for number, offset, line in _lines(data):
        row, error = _parse_line(line, number, offset)
        rows.append(row)
        errors.append(error)
        numbers.append(number)
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    columns = {}
    for key in keys:
        values = [row.get(key) for row in rows]
        if key == text_column:
            columns[key] = _text_values(values, errors, text_column)
        elif key == id_column:
            columns[key] = _id_values(values, numbers, name, id_column)
        else:
            columns[key] = _passthrough_values(values)
    table = pa.table(columns) if columns else pa.table({"": pa.nulls(len(rows))}).drop_columns([""])
    return Parsed(table, pa.array(errors, pa.string()))


def _text_values(values: list, errors: list, text_column: str) -> pa.Array:
    out = []
    for i, v in enumerate(values):
        if isinstance(v, str) or v is None:
            out.append(v)
        else:
            out.append(None)
            errors[i] = errors[i] or f"{text_column} is not text ({kind(v)})"
    return pa.array(out, pa.string())


def _id_values(values: list, numbers: list[int], name: str, id_column: str) -> pa.Array:
    out = []
    for v, number in zip(values, numbers):
        if isinstance(v, str) or v is None:
            out.append(v)
        elif isinstance(v, int) and not isinstance(v, bool):
            out.append(str(v))
        else:
            raise ConfigError(
                f"input {name!r} line {number}: the id {id_column!r} is {kind(v)}; ids must be text or whole numbers"
            )
    return pa.array(out, pa.string())


def _passthrough_values(values: list) -> pa.Array:
    """The column as pyarrow types it, or, when its values have no one type (a number among
    texts), as text: texts as they are, other values as their JSON."""
    try:
        return pa.array(values)
    except (pa.ArrowException, OverflowError, ValueError, TypeError):
        return pa.array(
            [v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in values], pa.string()
        )
