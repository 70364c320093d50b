"""The output folder: whole shards committed as they finish, and resuming a job that stopped.

    OUTPUT/
      _job.json            what the job is (input, pool, budget, profiles): a rerun must match it
      part-<hex>.parquet   committed shards: each written under _tmp/, then moved into place
      _tmp/                shards being written (a killed job may leave some; they never count)
      _report.json         written at the end

Running a job again with the same output folder resumes it: rows whose ids are in a committed
shard are not read again, the rest are routed with what is left of the budget (the budget minus
the actual spend already committed), so every row is written once and, in the `hard` budget mode,
the actual spend of all runs together stays within the budget.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from router import schema as S
from router.config import JobConfig
from router.errors import ConfigError

MANIFEST = "_job.json"
TMP = "_tmp"
SHARD_PREFIX = "part-"


def _fs(output: str):
    from router.stages.read import filesystem

    fs, path = filesystem(output)
    return fs, path.rstrip("/")


def job_identity(cfg: JobConfig) -> dict[str, Any]:
    """What must not change between a job and its resumption: whatever decides a row's route,
    answer or cost. Replicas, batch sizes, devices and the encoder backend may change, and so may the
    token prices a model priced by GPU time derives from its throughput (a measured estimate)."""
    free = ("replicas", "tensor_parallel", "tokens_per_s", "load_s")
    models = [
        {k: v for k, v in dataclasses.asdict(m).items()
         if k not in free and not (m.gpu_hour_price is not None and k in ("input_price", "output_price"))}
        for m in cfg.models
    ]  # fmt: skip
    return {
        "input": cfg.input,
        "text_column": cfg.text_column,
        "id_column": cfg.id_column,
        "task_column": cfg.task_column,
        "profiles": cfg.profiles,
        "encoder": cfg.encoder.model,
        # How the answering is split into waves is no matter to a resumed job.
        "budget": {k: v for k, v in dataclasses.asdict(cfg.budget).items() if k != "waves"},
        "standin": cfg.generation.standin,
        "models": models,
    }


@dataclass(frozen=True)
class Prior:
    """What earlier runs of this job committed."""

    files: int
    rows: int
    ids: pa.Array
    """The committed rows' ids (strings), to leave out of this run."""
    spend: float
    """Their actual spend, USD."""
    predicted: float
    """Their predicted spend, USD."""
    spend_by_model: dict[str, float] = dataclasses.field(default_factory=dict)
    """Their actual spend per model, USD."""

    def spend_of(self, models: list[str]) -> float:
        return sum(self.spend_by_model.get(m, 0.0) for m in models)


@dataclass(frozen=True)
class Committed:
    """What committed shards hold (`commit_shard`'s one-row results, added up)."""

    rows: int = 0
    spend: float = 0.0
    """Actual spend, USD."""
    errors: int = 0
    """Rows with status generation_error."""
    tokens: int = 0
    """Prompt plus answer tokens."""

    @classmethod
    def total(cls, parts: Iterable[Mapping[str, Any]]) -> Committed:
        rows, spend, errors, tokens = 0, 0.0, 0, 0
        for part in parts:
            rows, spend = rows + part["rows"], spend + part["spend"]
            errors, tokens = errors + part["errors"], tokens + part["tokens"]
        return cls(rows, spend, errors, tokens)


def committed_files(output: str) -> list[str]:
    """The committed shards (paths on the output's filesystem), sorted."""
    import pyarrow.fs as pafs

    fs, path = _fs(output)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return sorted(
        e.path
        for e in fs.get_file_info(pafs.FileSelector(path, recursive=False))
        if e.type == pafs.FileType.File and e.base_name.startswith(SHARD_PREFIX) and e.base_name.endswith(".parquet")
    )


def _place(uri: str) -> tuple[str, str]:
    """(filesystem kind, absolute path) to compare two places."""
    import os

    fs, path = _fs(uri)
    if fs.type_name == "local":
        path = os.path.realpath(path)
    return fs.type_name, path.rstrip("/")


def refuse_input_overlap(output: str, input: str) -> None:
    """The output is never the input, inside it (its files would be read as prompts by the next
    run) or around it."""
    (out_fs, out), (in_fs, inp) = _place(output), _place(input)
    if out_fs != in_fs:
        return
    if out == inp or out.startswith(inp + "/"):
        raise ConfigError(
            f"output {output!r} is inside the input {input!r}: the next run would read it as prompts; "
            "choose a folder outside the input"
        )
    if inp.startswith(out + "/"):
        raise ConfigError(f"output {output!r} holds the input {input!r}; choose another folder")


def check_new_folder(output: str, input: str) -> None:
    """Where `router plan --out` writes: a new or empty folder, not the input nor inside it."""
    import pyarrow.fs as pafs

    refuse_input_overlap(output, input)
    fs, path = _fs(output)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise ConfigError(f"output {output!r} is a file; give a folder")
    if info.type == pafs.FileType.Directory and fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        raise ConfigError(f"output {output!r} is not empty; choose a new folder, or empty it")


def create_folder(output: str) -> None:
    fs, path = _fs(output)
    try:
        fs.create_dir(path, recursive=True)
    except OSError as e:
        raise ConfigError(f"cannot create the output folder {output!r}: {e}") from None


def open_output(cfg: JobConfig) -> Prior | None:
    """Before a run: a new or empty output folder gets the job's manifest (None: nothing done yet);
    one holding this same job's shards gives what they hold (resume). Anything else is an error."""
    import pyarrow.fs as pafs

    refuse_input_overlap(cfg.output, cfg.input)
    fs, path = _fs(cfg.output)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise ConfigError(f"output {cfg.output!r} is a file; give a folder")
    identity = json.loads(json.dumps(job_identity(cfg), default=str))
    manifest = f"{path}/{MANIFEST}"
    if info.type == pafs.FileType.Directory and fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if fs.get_file_info(manifest).type != pafs.FileType.File:
            raise ConfigError(f"output {cfg.output!r} is not empty and holds no router job; choose a new folder")
        with fs.open_input_stream(manifest) as f:
            earlier = json.loads(f.read())
        if earlier != identity and committed_files(cfg.output):
            changed = sorted(k for k in identity.keys() | earlier.keys() if identity.get(k) != earlier.get(k))
            raise ConfigError(
                f"output {cfg.output!r} holds another job (it differs in: {', '.join(changed)}); to resume that "
                "job run it with the same settings, else choose a new folder"
            )
        if earlier == identity:
            return read_prior(cfg.output)
        # Nothing was written under the old settings (say, an engine that could not start): start afresh.
        clear_tmp(cfg.output)
    create_folder(cfg.output)
    with fs.open_output_stream(manifest) as f:
        f.write(json.dumps(identity, indent=1).encode())
    return None


def read_prior(output: str, clear: bool = True) -> Prior | None:
    """The ids and spend of the committed shards; shards left half-written are cleared away
    (`clear=False` while other engine pools may be writing theirs)."""
    import pyarrow.dataset as pads

    fs, path = _fs(output)
    if clear:
        clear_tmp(output)
    files = committed_files(output)
    if not files:
        return None
    t = pads.dataset(files, filesystem=fs, format="parquet").to_table(
        columns=[S.ID, S.MODEL, S.ACTUAL_COST, S.PREDICTED_COST]
    )
    by_model = t.group_by(S.MODEL).aggregate([(S.ACTUAL_COST, "sum")]).to_pylist()
    return Prior(
        files=len(files),
        rows=t.num_rows,
        ids=t[S.ID].combine_chunks().cast(pa.string()),
        spend=float(pc.sum(t[S.ACTUAL_COST]).as_py() or 0.0),
        predicted=float(pc.sum(t[S.PREDICTED_COST]).as_py() or 0.0),
        spend_by_model={r[S.MODEL]: float(r[f"{S.ACTUAL_COST}_sum"] or 0.0) for r in by_model if r[S.MODEL]},
    )


def clear_tmp(output: str) -> None:
    import pyarrow.fs as pafs

    fs, path = _fs(output)
    if fs.get_file_info(f"{path}/{TMP}").type == pafs.FileType.Directory:
        fs.delete_dir(f"{path}/{TMP}")


def finalize(batch: pa.Table, text_column: str, keep_refused: bool = True) -> pa.Table:
    """The output's columns and types, whatever the row's fate: one schema across every file.
    `keep_refused` False: rows the hard budget refused (`schema.REFUSED`) are left out, to be routed
    again with what the budget has left."""
    if not keep_refused and S.ERROR in batch.column_names:
        batch = batch.filter(pc.invert(pc.fill_null(pc.equal(batch[S.ERROR], S.REFUSED), False)))
    n = batch.num_rows
    types = {
        S.RESPONSE: pa.string(), S.INPUT_TOKENS: pa.int64(), S.OUTPUT_TOKENS: pa.int64(),
        S.ACTUAL_COST: pa.float64(), S.FINISH_REASON: pa.string(), S.GENERATION_SECONDS: pa.float64(),
    }  # fmt: skip
    for name, t in types.items():
        if name not in batch.column_names:
            batch = batch.append_column(name, pa.nulls(n, t))
    batch = batch.drop_columns([c for c in (S.EST_INPUT_TOKENS, S.EST_OUTPUT_TOKENS) if c in batch.column_names])
    batch = batch.rename_columns([text_column if c == S.PROMPT else c for c in batch.column_names])
    first = [S.ID, text_column]
    ordered = first + [c for c in batch.column_names if c not in first and c not in S.OUTPUT_COLUMNS]
    return batch.select(ordered + list(S.OUTPUT_COLUMNS))


PLAN_COLUMNS = (S.MODEL, S.STATUS, S.ERROR, S.PREDICTED_QUALITY, S.PREDICTED_COST, S.CAPABILITIES, S.DOMAINS)


def routed_columns(batch: pa.Table, text_column: str) -> pa.Table:
    """A routed row as `router.Router.plan` gives it: `id`, the text column, the input's other
    columns, then the plan's (PLAN_COLUMNS); the scoring's own columns are dropped."""
    batch = batch.rename_columns([text_column if c == S.PROMPT else c for c in batch.column_names])
    first = [S.ID, text_column]
    internal = {*S.INTERNAL_COLUMNS, *S.OUTPUT_COLUMNS}
    ordered = first + [c for c in batch.column_names if c not in first and c not in internal]
    return batch.select(ordered + [c for c in PLAN_COLUMNS if c in batch.column_names])


# After raising a fence, the driver waits this long for shards that passed it to land.
FENCE_GRACE_S = 5.0


def commit_shard(batch: pa.Table, output: str, fence: str | None = None) -> pa.Table:
    """Ray Data stage: write the batch as one shard, under a temporary name first and then moved into
    place, so the folder only ever holds whole shards. Once the driver has raised `fence` (see
    `raise_fence`), shards are dropped instead of committed. Returns one row: rows, spend, errors, tokens (prompt + answer)."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    if not batch.num_rows:  # what a filter left of a block: nothing to commit
        return pa.table({"rows": [0], "spend": [0.0], "errors": [0], "tokens": [0]})
    fs, path = _fs(output)
    name = f"{SHARD_PREFIX}{uuid.uuid4().hex}.parquet"
    fs.create_dir(f"{path}/{TMP}", recursive=True)
    with fs.open_output_stream(f"{path}/{TMP}/{name}") as f:
        pq.write_table(batch, f)
    if fence is not None and fs.get_file_info(f"{path}/{TMP}/{fence}").type != pafs.FileType.NotFound:
        fs.delete_file(f"{path}/{TMP}/{name}")
        return pa.table({"rows": [0], "spend": [0.0], "errors": [0], "tokens": [0]})
    fs.move(f"{path}/{TMP}/{name}", f"{path}/{name}")
    errors = pc.sum(pc.equal(batch[S.STATUS], S.GENERATION_ERROR)).as_py()
    return pa.table({
        "rows": [batch.num_rows],
        "spend": [float(pc.sum(batch[S.ACTUAL_COST]).as_py() or 0.0)],
        "errors": [int(errors or 0)],
        "tokens": [int((pc.sum(batch[S.INPUT_TOKENS]).as_py() or 0) + (pc.sum(batch[S.OUTPUT_TOKENS]).as_py() or 0))],
    })  # fmt: skip


def raise_fence(output: str, fence: str) -> None:
    """Stop the commits of a failed pass (tasks Ray has not stopped yet may still be writing): after
    this returns, none of them commits a shard, so the committed ids can be read and trusted."""
    import time

    fs, path = _fs(output)
    fs.create_dir(f"{path}/{TMP}", recursive=True)
    with fs.open_output_stream(f"{path}/{TMP}/{fence}") as f:
        f.write(b"")
    time.sleep(FENCE_GRACE_S)  # a shard that passed the check before the fence was up lands meanwhile


def written_rows_and_tokens(output: str, models: list[str], resumed: Prior | None) -> tuple[int, int]:
    """Rows, and their prompt plus answer tokens, committed for these models in this run (earlier
    runs' left out)."""
    import pyarrow.dataset as pads

    files = committed_files(output)
    if not files:
        return 0, 0
    t = pads.dataset(files, filesystem=_fs(output)[0], format="parquet").to_table(
        columns=[S.ID, S.MODEL, S.INPUT_TOKENS, S.OUTPUT_TOKENS],
        filter=pads.field(S.MODEL).isin(models),
    )
    if resumed is not None:
        t = t.filter(pc.invert(pc.is_in(t[S.ID].cast(pa.string()), resumed.ids)))
    return t.num_rows, int((pc.sum(t[S.INPUT_TOKENS]).as_py() or 0) + (pc.sum(t[S.OUTPUT_TOKENS]).as_py() or 0))
