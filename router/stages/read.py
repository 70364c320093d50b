"""Reading and validating the prompt file: read units planned on the driver, read in Ray tasks.

Before any work is scheduled, the driver reads every file once (`plan_read`): anything that would
stop the job later (a corrupt file, an ambiguous column, columns that cannot be reconciled across
files, repeated ids) is refused there in one line, and the columns of every file are reconciled
into the one set each read unit is given. Each file (each row group, for parquet) becomes one read
unit whose first row number is known, which makes the ids made for rows without one stable:
`<file>:<row>`, the same on every run. The reading contract itself is in the README ("Input and
output").
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from router import schema as S
from router.errors import ConfigError
from router.stages import formats as F

FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
# Columns the output adds: an input column of the same name would be overwritten, so it is refused.
RESERVED = set(S.OUTPUT_COLUMNS) | set(S.INTERNAL_COLUMNS)
# The id column when the config names none; a job whose input lacks it gets made ids.
DEFAULT_ID_COLUMN = "id"
# Characters that show nothing: white space, control and format characters (NUL, zero-width
# space and joiners, byte-order marks, bidi marks), variation selectors and the blank letters
# (Hangul fillers, the braille blank). A prompt made of these alone is not answered.
BLANK = r"^[\s\p{Z}]*$"
INVISIBLE = (
    r"^[\s\p{Z}\p{Cc}\p{Cf}\x{034F}\x{115F}\x{1160}\x{17B4}\x{17B5}\x{180B}-\x{180F}\x{2800}\x{3164}"
    r"\x{FE00}-\x{FE0F}\x{FFA0}\x{E0100}-\x{E01EF}]*$"
)


@dataclass(frozen=True)
class ReadUnit:
    path: str  # as pyarrow's filesystem sees it
    name: str  # the file's name relative to the input, used in made ids
    fmt: str
    row_group: int  # -1: the whole file
    first_row: int
    columns: bytes = b""
    """The pass-through columns every unit of the input is given (an Arrow schema, serialized):
    a column a file lacks is added as nulls, so that all units have one schema."""


def filesystem(uri: str):
    """(pyarrow filesystem, path) for a local path or a URI (file://, s3://, gs://)."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, ValueError):
        return pafs.LocalFileSystem(), uri


def list_input_files(uri: str) -> tuple[object, list[tuple[str, str, str]]]:
    """(filesystem, [(path, display name, format)]) for a file or a folder of files."""
    fs, entries = _input_entries(uri)
    return fs, [(path, name, fmt) for path, name, fmt, _ in entries]


def _input_entries(uri: str):
    """(filesystem, [(path, display name, format, (size, mtime))]) of the input's files."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    try:
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
    except OSError as e:
        raise ConfigError(f"cannot list input {uri!r}: {F.first_line(e)}") from None
    files = []
    for e in sorted(entries, key=lambda e: e.path):
        suffix = "." + e.base_name.rsplit(".", 1)[-1].lower() if "." in e.base_name else ""
        if suffix not in FORMATS:
            if info.type == pafs.FileType.File:
                raise ConfigError(f"input {uri!r}: unknown format; use .parquet, .jsonl or .csv")
            continue
        name = e.path[len(root) :].lstrip("/") if root else e.path
        files.append((e.path, name, FORMATS[suffix], (e.size, e.mtime_ns)))
    if not files:
        raise ConfigError(f"input {uri!r} holds no .parquet, .jsonl or .csv file")
    return fs, files


def _check_column_settings(text_column: str, id_column: str) -> None:
    if text_column == id_column:
        raise ConfigError(
            f"text_column and id_column are both {text_column!r}; the prompts and the ids are two columns"
        )
    if text_column in RESERVED or text_column == S.ID:
        raise ConfigError(
            f"text_column {text_column!r} has the name of a column the router writes; rename it in the input"
        )


# ---- one read unit: parse, validate, conform ----


def read_table(unit: ReadUnit, text_column: str, id_column: str) -> F.Parsed:
    """The unit's rows as its format's parser reads them."""
    fs, _ = filesystem(unit.path)
    if unit.fmt == "parquet":
        return F.Parsed(F.read_parquet(fs, unit.path, unit.name, unit.row_group))
    try:
        with fs.open_input_stream(unit.path) as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read input {unit.name!r}: {F.first_line(e)}") from None
    if unit.fmt == "csv":
        return F.read_csv(data, unit.name)
    return F.read_jsonl(data, unit.name, text_column, id_column)


def _text(table: pa.Table, text_column: str) -> tuple[pa.Array, pa.Array | None]:
    """The text column as UTF-8 strings, and per row why it is not text (null: it is, or it is null)."""
    n = table.num_rows
    if text_column not in table.column_names:
        return pa.nulls(n, pa.string()), None
    text = table[text_column].combine_chunks()
    t = text.type
    if pa.types.is_large_string(t) or (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t)):
        text, t = text.cast(pa.large_string()), pa.large_string()
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return F.repair_utf8(text, text_column)  # binary UTF-8 text is text
    if pa.types.is_null(t):
        return pa.nulls(n, pa.string()), None
    why = pc.if_else(text.is_valid(), f"{text_column} is not text ({t})", pa.scalar(None, pa.string()))
    return pa.nulls(n, pa.string()), why


def _row_errors(text: pa.Array, text_column: str) -> pa.Array:
    """Why a row's text is not answered: null, empty, or nothing visible (null: it is answered)."""
    none = pa.scalar(None, pa.string())
    missing = pc.if_else(text.is_null(), f"{text_column} is missing or null", none)
    blank = pc.fill_null(pc.match_substring_regex(text, BLANK), False)
    empty = pc.if_else(blank, f"{text_column} is empty", none)
    invisible = pc.if_else(
        pc.and_(pc.fill_null(pc.match_substring_regex(text, INVISIBLE), False), pc.invert(blank)),
        f"{text_column} shows nothing (only zero-width, control or other invisible characters)",
        none,
    )
    return pc.coalesce(missing, empty, invisible)


def _ids(table: pa.Table, unit: ReadUnit, id_column: str) -> pa.Array:
    """The id column as text, rows without one (null or empty) given `<file>:<row>`."""
    n = table.num_rows
    rows = pa.array(np.arange(unit.first_row, unit.first_row + n).astype(str))
    made = pc.binary_join_element_wise(f"{unit.name}:", rows, "")
    if id_column not in table.column_names:
        return made
    ids = table[id_column].combine_chunks()
    t = ids.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t) or pa.types.is_null(t):
        ids = ids.cast(pa.string())
    else:
        raise ConfigError(
            f"input {unit.name!r}: the id column {id_column!r} holds {t} values; ids must be text or whole numbers"
        )
    ids = pc.if_else(pc.fill_null(pc.equal(pc.utf8_length(ids), 0), False), pa.scalar(None, pa.string()), ids)
    return pc.coalesce(ids, made)


def validate(parsed: F.Parsed, unit: ReadUnit, text_column: str, id_column: str) -> pa.Table:
    """Rename the text column to `prompt`, give every row an id and a status: `invalid_input`,
    with the reason in `error`, for a row whose text cannot be answered."""
    table = parsed.table
    text, not_text = _text(table, text_column)
    error = F.merge_errors(parsed.errors, not_text, _row_errors(text, text_column))
    status = pc.if_else(error.is_valid(), S.INVALID_INPUT, S.OK)
    ids = _ids(table, unit, id_column)
    out = table.drop_columns([c for c in (text_column, id_column) if c in table.column_names])
    return (
        out.add_column(0, S.ID, ids)
        .append_column(S.PROMPT, text)
        .append_column(S.STATUS, status)
        .append_column(S.ERROR, error.cast(pa.string()))
    )


def passthrough_schema(table: pa.Table) -> pa.Schema:
    """The pass-through columns of a validated table."""
    fixed = {S.ID, S.PROMPT, S.STATUS, S.ERROR}
    return pa.schema([f for f in table.schema if f.name not in fixed])


def conform(table: pa.Table, columns: pa.Schema, name: str) -> pa.Table:
    """The validated table with exactly the input's pass-through columns, in order and type."""
    names = [S.ID, *columns.names, S.PROMPT, S.STATUS, S.ERROR]
    if not table.num_rows:  # its columns, whatever they are, were not reconciled: no row holds them
        return pa.schema([table.schema.field(S.ID), *columns, *table.select(names[-3:]).schema]).empty_table()
    out = [table[S.ID]]
    for field in columns:
        if field.name not in table.column_names:
            out.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table[field.name]
        if column.type != field.type:
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
                raise ConfigError(
                    f"input column {field.name!r} of {name!r} cannot be read as {field.type}, its type in other "
                    f"files ({F.first_line(e)}); give it one type in every file"
                ) from None
        out.append(column)
    return pa.table([*out, table[S.PROMPT], table[S.STATUS], table[S.ERROR]], names=names)


def read_unit(unit: ReadUnit, text_column: str, id_column: str) -> pa.Table:
    """A read unit's validated rows, with the input's pass-through columns."""
    table = validate(read_table(unit, text_column, id_column), unit, text_column, id_column)
    if not unit.columns:
        return table
    return conform(table, pa.ipc.read_schema(pa.py_buffer(unit.columns)), unit.name)


# ---- planning: the driver reads every file once ----


@dataclass
class _Seen:
    """What the driver's reading of the input found."""

    rows: int = 0
    columns: dict = dataclasses.field(default_factory=dict)
    """column name -> (field, the first file holding it): the pass-through columns, reconciled."""
    ids: list = dataclasses.field(default_factory=list)
    """(unit, its ids) per unit."""
    schemas: list = dataclasses.field(default_factory=list)
    """(unit, its pass-through columns) per unit."""


def _units_of(fs, path: str, name: str, fmt: str) -> list[ReadUnit]:
    if fmt != "parquet":
        return [ReadUnit(path, name, fmt, -1, 0)]
    units, first = [], 0
    for rg, rows in enumerate(F.parquet_row_groups(fs, path, name)):
        units.append(ReadUnit(path, name, fmt, rg, first))
        first += rows
    return units


def _reconcile(seen: _Seen, schema: pa.Schema, name: str) -> None:
    for field in schema:
        if field.name not in seen.columns:
            seen.columns[field.name] = (field, name)
            continue
        before, where = seen.columns[field.name]
        if before.type == field.type:
            continue
        try:
            merged = pa.unify_schemas([pa.schema([before]), pa.schema([field])], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            raise ConfigError(
                f"input column {field.name!r} is {before.type} in {where!r} but {field.type} in {name!r}; "
                "give it one type in every file, or rename it in one of them"
            ) from None
        seen.columns[field.name] = (merged.field(0), where)


def _check_columns(names: list[str], unit: ReadUnit, text_column: str, id_column: str) -> None:
    """A unit holding rows: its text column, its id column if one is named, no column the router writes."""
    if text_column not in names:
        shown = ", ".join(names) if names else "none: no line is a JSON object" if unit.fmt == "jsonl" else "none"
        raise ConfigError(
            f"input {unit.name!r} has no text column {text_column!r} (columns: {shown}); set text_column=NAME"
        )
    if id_column not in names and id_column != DEFAULT_ID_COLUMN:
        raise ConfigError(
            f"id_column {id_column!r} is not a column of input {unit.name!r} (columns: {', '.join(names)}); name its "
            "column of ids, or leave id_column unset to have ids made from file and row"
        )
    clash = sorted((set(names) - {text_column, id_column}) & (RESERVED | {S.PROMPT, S.ID}))
    if clash:
        raise ConfigError(
            f"input column {clash[0]!r} of {unit.name!r} has the name of a column the router writes; "
            "rename it in the input"
        )


def _scan_unit(unit: ReadUnit, text_column: str, id_column: str, seen: _Seen) -> None:
    parsed = read_table(unit, text_column, id_column)
    if not parsed.table.num_rows:
        return  # a unit without rows adds nothing, not even its columns
    _check_columns(parsed.table.column_names, unit, text_column, id_column)
    table = validate(parsed, unit, text_column, id_column)
    seen.rows += table.num_rows
    seen.ids.append((unit, table[S.ID]))
    schema = passthrough_schema(table)
    _reconcile(seen, schema, unit.name)
    seen.schemas.append((unit, schema))


def _refuse_duplicate_ids(ids: list) -> None:
    every = pa.chunked_array([i for _, i in ids], pa.string()).combine_chunks()
    if len(pc.unique(every)) == len(every):
        return
    counts = pc.value_counts(every)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
    where = []
    for unit, unit_ids in ids:
        for i in np.flatnonzero(pc.fill_null(pc.equal(unit_ids, dup), False).to_numpy(zero_copy_only=False)):
            where.append(f"{unit.name}:{unit.first_row + int(i)}")
            if len(where) == 2:
                raise ConfigError(
                    f"ids must be unique, but {dup!r} is the id of two rows ({where[0]} and {where[1]}; file:row "
                    "counts rows from 0); make the ids unique, or drop the id column to have ids made from file and row"
                )


_PLANS: dict = {}


def plan_read(uri: str, text_column: str, id_column: str) -> tuple[list[ReadUnit], list[str]]:
    """Read units and the pass-through columns, after reading every file once: whatever in the
    input would stop the job raises `ConfigError` here, before any work starts."""
    _check_column_settings(text_column, id_column)
    fs, entries = _input_entries(uri)
    key = (uri, text_column, id_column, tuple(entries))
    if key in _PLANS:  # the job plans twice (its checks, then its read): the files are read once
        return _PLANS[key]
    seen = _Seen()
    units = [u for path, name, fmt, _ in entries for u in _units_of(fs, path, name, fmt)]
    for unit in units:
        _scan_unit(unit, text_column, id_column, seen)
    if not seen.rows:
        raise ConfigError(f"input {uri!r} holds no rows; give it at least one prompt")
    columns = pa.schema([field for field, _ in seen.columns.values()])
    for unit, schema in seen.schemas:  # a type promoted across files: check that every value converts
        if any(f.type != columns.field(f.name).type for f in schema):
            table = validate(read_table(unit, text_column, id_column), unit, text_column, id_column)
            conform(table, columns, unit.name)
    _refuse_duplicate_ids(seen.ids)
    blob = columns.serialize().to_pybytes()
    plan = [ReadUnit(u.path, u.name, u.fmt, u.row_group, u.first_row, blob) for u in units], columns.names
    _PLANS.clear()
    _PLANS[key] = plan
    return plan


def without_ids(table: pa.Table, ids: pa.Array) -> pa.Table:
    """The rows whose id is not in `ids` (string ids: those an earlier run of the job wrote)."""
    return table.filter(pc.invert(pc.is_in(table[S.ID], value_set=ids)))


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
            table = read_unit(unit, self.text_column, self.id_column)
            if self.skip_ids is not None:  # one set lookup per unit (a file or a row group), not per batch
                table = without_ids(table, self.skip_ids)
            for batch in table.to_batches(max_chunksize=self.rows_per_batch):
                yield pa.Table.from_batches([batch])


def read_units(units: pa.Table, text_column: str, id_column: str, skip_ids: pa.Array | None = None) -> Iterator[pa.Table]:
    """`ReadUnits` as a function, for a Ray Data task stage (which Ray Data can fuse into the actor
    stage after it)."""
    yield from ReadUnits(text_column, id_column, skip_ids=skip_ids)(units)


def units_as_items(units: list[ReadUnit]) -> list[dict]:
    return [asdict(u) for u in units]


# ---- a Ray Dataset as the input (`router.Router`) ----

DATASET_NAME = "dataset"
"""The name a Dataset input's rows are known by in errors and in made ids (`dataset:<row>`)."""


def validate_block(table: pa.Table, first_row: int, text_column: str, id_column: str) -> pa.Table:
    """One block of a Dataset input, validated as a file's rows are (`validate`): rows without an id
    get `dataset:<row>`, counting rows over the whole Dataset from 0."""
    unit = ReadUnit(path="", name=DATASET_NAME, fmt="dataset", row_group=-1, first_row=first_row)
    return validate(F.Parsed(table), unit, text_column, id_column)


def _block_rows(table: pa.Table) -> int:
    return table.num_rows


def _block_ids(table: pa.Table) -> pa.Array:
    return table[S.ID].combine_chunks()


def read_dataset(ds, text_column: str, id_column: str) -> tuple[object, list[str]]:
    """A user's Ray Dataset as the job's validated rows (a Dataset of one Arrow block per input
    block), and its pass-through columns. The Dataset is executed once here: each block is
    validated in a task that knows where its rows start, so that made ids are stable for the same
    Dataset in the same block order. What would stop the job later (no text column, a column the
    router writes, repeated ids, no rows) raises `ConfigError` here."""
    import ray

    _check_column_settings(text_column, id_column)
    names = list(ds.schema().names) if ds.schema() is not None else []
    unit = ReadUnit(path="", name=DATASET_NAME, fmt="dataset", row_group=-1, first_row=0)
    _check_columns(names, unit, text_column, id_column)
    refs = ds.to_arrow_refs()
    counts = ray.get([ray.remote(num_cpus=0.25)(_block_rows).remote(r) for r in refs])
    if not sum(counts):
        raise ConfigError("the Dataset holds no rows; give it at least one prompt")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
    validate_remote = ray.remote(num_cpus=0.25)(validate_block)
    blocks = [validate_remote.remote(r, s, text_column, id_column) for r, s in zip(refs, starts)]
    ids = ray.get([ray.remote(num_cpus=0.25)(_block_ids).remote(b) for b in blocks])
    _refuse_duplicate_ids([(dataclasses.replace(unit, first_row=s), i) for s, i in zip(starts, ids)])
    columns = [n for n in names if n not in (text_column, id_column)]
    return ray.data.from_arrow_refs(blocks), columns
