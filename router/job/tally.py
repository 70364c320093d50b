"""Rows and sums per model and per status: of the routed rows (the caps' check, the GPU schedule's
loads, `router plan`'s summary) and of the written output (the report). Partial sums per batch,
added up in the driver: its memory does not grow with the rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from router import schema as S
from router.errors import ConfigError
from router.job.cluster import per_batch
from router.job.output import committed_files

# The columns summed per model, where a batch has them (routed rows have no tokens yet).
TALLY_SUMS = (S.PREDICTED_COST, S.ACTUAL_COST, S.INPUT_TOKENS, S.OUTPUT_TOKENS, S.PREDICTED_QUALITY)
PROMPT_BYTES = "prompt_bytes"
ANSWER_TOKENS = "predicted_answer_tokens"
ROWS = "count_all"
"""Arrow's name for a group's row count (`count_all`), also report.json's."""


def _sum(column: str) -> str:
    """Arrow's name for a column's sum in a group-by, also report.json's."""
    return f"{column}_sum"


@dataclass(frozen=True)
class ModelTally:
    """One model's rows in a job (model None: rows no model takes) and sums over them. A sum is
    None where the rows have no such column (routed rows have no tokens or actual cost yet)."""

    model: str | None
    rows: int = 0
    ok_rows: int = 0
    """Rows with status ok: routed, to be answered (or answered)."""
    statuses: dict[str, int] = field(default_factory=dict)
    """Rows per status."""
    predicted_cost: float | None = None
    actual_cost: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    predicted_quality: float | None = None
    ok_prompt_bytes: int | None = None
    """The UTF-8 length of the ok rows' prompts (routed rows): their load, for the GPU schedule."""
    ok_answer_tokens: float | None = None
    """The ok rows' predicted answer tokens (routed rows whose profile predicts answer lengths):
    how many calls each engine is fed at once (`router.job.engines.engine_calls_in_flight`)."""

    def add(self, part: Mapping[str, Any]) -> ModelTally:
        """This tally plus one of `tally_batch`'s rows (this model, one status)."""
        n, status = part[ROWS], part[S.STATUS]
        ok = status == S.OK

        def plus(total, column: str):
            return total if _sum(column) not in part else (total or 0) + (part[_sum(column)] or 0)

        return dataclasses.replace(
            self, rows=self.rows + n, ok_rows=self.ok_rows + n if ok else self.ok_rows,
            statuses={**self.statuses, status: self.statuses.get(status, 0) + n},
            predicted_cost=plus(self.predicted_cost, S.PREDICTED_COST), actual_cost=plus(self.actual_cost, S.ACTUAL_COST),
            input_tokens=plus(self.input_tokens, S.INPUT_TOKENS), output_tokens=plus(self.output_tokens, S.OUTPUT_TOKENS),
            predicted_quality=plus(self.predicted_quality, S.PREDICTED_QUALITY),
            ok_prompt_bytes=plus(self.ok_prompt_bytes, PROMPT_BYTES) if ok else self.ok_prompt_bytes,
            ok_answer_tokens=plus(self.ok_answer_tokens, ANSWER_TOKENS) if ok else self.ok_answer_tokens,
        )  # fmt: skip

    def sums(self) -> dict[str, Any]:
        """The sums by column name (None: no such column)."""
        return {S.PREDICTED_COST: self.predicted_cost, S.ACTUAL_COST: self.actual_cost,
                S.INPUT_TOKENS: self.input_tokens, S.OUTPUT_TOKENS: self.output_tokens,
                S.PREDICTED_QUALITY: self.predicted_quality}  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """As report.json holds it (sums under `<column>_sum`, only where the rows have the column)."""
        d = {S.MODEL: self.model, ROWS: self.rows, "ok_rows": self.ok_rows, "statuses": dict(self.statuses)}
        d.update({_sum(c): total for c, total in self.sums().items() if total is not None})
        if self.ok_prompt_bytes is not None:
            d["ok_prompt_bytes"] = self.ok_prompt_bytes
        if self.ok_answer_tokens is not None:
            d["ok_answer_tokens"] = self.ok_answer_tokens
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelTally:
        """A model of report.json's `models` (a report of an older version may lack `ok_rows`)."""
        return cls(
            d[S.MODEL], d[ROWS], d.get("ok_rows", 0), dict(d.get("statuses", {})),
            d.get(_sum(S.PREDICTED_COST)), d.get(_sum(S.ACTUAL_COST)), d.get(_sum(S.INPUT_TOKENS)),
            d.get(_sum(S.OUTPUT_TOKENS)), d.get(_sum(S.PREDICTED_QUALITY)), d.get("ok_prompt_bytes"),
            d.get("ok_answer_tokens"),
        )  # fmt: skip

    @classmethod
    def total(cls, tallies: Iterable[ModelTally]) -> ModelTally:
        """Every model's rows and sums together (model "total"; a sum of no rows is 0)."""
        out = cls("total", predicted_cost=0, actual_cost=0, input_tokens=0, output_tokens=0)
        for t in tallies:
            out = dataclasses.replace(
                out, rows=out.rows + t.rows, predicted_cost=out.predicted_cost + (t.predicted_cost or 0),
                actual_cost=out.actual_cost + (t.actual_cost or 0), input_tokens=out.input_tokens + (t.input_tokens or 0),
                output_tokens=out.output_tokens + (t.output_tokens or 0),
            )  # fmt: skip
        return out


def tally_batch(batch: pa.Table) -> pa.Table:
    """Per-batch partial sums by (model, status); the driver adds them up."""
    sums = [c for c in TALLY_SUMS if c in batch.column_names]
    t = batch.select([S.MODEL, S.STATUS, *sums])
    if S.PROMPT in batch.column_names:  # routed rows, not yet answered: their load, for the schedule
        t = t.append_column(PROMPT_BYTES, pc.fill_null(pc.binary_length(batch[S.PROMPT].cast(pa.string())), 0))
        sums.append(PROMPT_BYTES)
    if S.EST_OUTPUT_TOKENS in batch.column_names:  # routed rows' predicted answers: how deep engines are fed
        t = t.append_column(ANSWER_TOKENS, pc.fill_null(batch[S.EST_OUTPUT_TOKENS].cast(pa.float64()), 0.0))
        sums.append(ANSWER_TOKENS)
    t = t.group_by([S.MODEL, S.STATUS], use_threads=False)
    return t.aggregate([([], ROWS)] + [(c, "sum") for c in sums])


def tally_parts(parts: Iterable[Mapping[str, Any]]) -> tuple[list[ModelTally], dict[str, int]]:
    """Add up `tally_batch`'s partial sums: per model (rows, rows per status, sums) and per status.
    Models in name order, the rows of no model last."""
    by_model: dict[str | None, ModelTally] = {}
    by_status: dict[str, int] = {}
    for part in parts:
        model, status = part[S.MODEL], part[S.STATUS]
        by_model[model] = by_model.get(model, ModelTally(model)).add(part)
        by_status[status] = by_status.get(status, 0) + part[ROWS]
    return sorted(by_model.values(), key=lambda t: (t.model is None, t.model or "")), by_status


def tally(ds) -> tuple[list[ModelTally], dict[str, int]]:
    """Rows and sums per model and rows per status of a materialised dataset (a small one is read
    in the driver: `per_batch`)."""
    return tally_parts(p for t in per_batch(ds, tally_batch) for p in t.to_pylist())


@dataclass(frozen=True)
class OutputScan:
    """What a job's written rows hold, counted from the rows."""

    models: list[ModelTally]
    statuses: dict[str, int]
    """Rows per status, by status name."""
    capabilities: dict[str, int]
    """Rows per top capability (each row's first-ranked), most common first."""
    domains: dict[str, int]
    """Rows per top knowledge domain, most common first."""


def scan_output(output: str) -> OutputScan:
    """Rows and sums per model and status, and counts of each row's top capability and top domain,
    from the written rows: a polars query over the few columns it needs, streamed from the files in
    the driver (a Ray Data pass would cost seconds of task start-up on a small job)."""
    import polars as pl
    import pyarrow.dataset as pads

    from router.stages.read import filesystem

    fs, _ = filesystem(output)
    files = committed_files(output)  # the one rule for what the answers are (resume uses it too)
    if not files:
        raise ConfigError(f"{output!r} holds no answers (no part-*.parquet files): give the output folder of a `router run`")
    ds = pads.dataset(files, filesystem=fs, format="parquet")
    names = set(ds.schema.names)
    if not {S.MODEL, S.STATUS} <= names:
        raise ConfigError(f"{output!r} is not a router output: it has no {S.MODEL!r} and {S.STATUS!r} columns")
    rows = pl.scan_pyarrow_dataset(ds)
    sums = [pl.col(c).sum().alias(_sum(c)) for c in TALLY_SUMS if c in names]
    parts = rows.group_by(S.MODEL, S.STATUS).agg(pl.len().alias(ROWS), *sums).collect(engine="streaming")
    by_model, by_status = tally_parts(parts.to_dicts())

    def top_counts(column: str) -> dict[str, int]:
        if column not in names:
            return {}
        top = rows.select(pl.col(column).list.first()).drop_nulls().group_by(column).len()
        top = top.sort(["len", column], descending=[True, False]).collect(engine="streaming")
        return dict(zip(top[column].to_list(), top["len"].to_list()))

    return OutputScan(by_model, dict(sorted(by_status.items())), top_counts(S.CAPABILITIES), top_counts(S.DOMAINS))
