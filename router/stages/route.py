"""The routing stage: embeddings to predicted quality and cost per model, and the final assignment.

`Scorer` runs inside Ray Data on whole Arrow batches (annotate, score, cost: a few matrix products
per batch); `Assigner` applies the budget plan found on the driver. Neither loops over rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from router.budget import (
    BudgetPlan,
    BudgetSummary,
    CappedPlan,
    GroupPlan,
    Hulls,
    assign,
    assign_capped,
    assign_hulls,
    summarize_hulls,
)
from router import schema as S
from router.config import JobConfig
from router.cost import cost_matrix, estimate_input_tokens, planned_output_tokens
from router.backends.encoder import embeddings_from_arrow
from router.backends.tokens import PromptCalibration
from router.method.profiles import Profiles, load_profiles


@dataclass(frozen=True)
class PoolArrays:
    """The pool's per-model numbers as arrays in the profile's column order."""

    models: tuple[str, ...]
    input_price: np.ndarray  # USD per 1M tokens
    output_price: np.ndarray
    max_context: np.ndarray
    max_tokens: np.ndarray
    expected_output: np.ndarray  # planning answer length when the profile has none
    # Per model, prompt tokens per UTF-8 byte and the chat template's tokens, as its family's
    # tokenizer counted a sample of the job's prompts (`router.backends.tokens`); NaN: no tokenizer
    # at hand, the UTF-8 estimate instead. Both budget modes plan on these expected counts: `hard`
    # mode's guarantee is kept while answering (`router.budget.SpendLedger`), not by the plan.
    prompt_per_byte: np.ndarray | None = None
    prompt_template: np.ndarray | None = None

    @classmethod
    def from_config(cls, cfg: JobConfig, prompts: dict[str, PromptCalibration | None] | None = None) -> "PoolArrays":
        """`prompts`: the calibration of each model's prompt tokens, where one was made."""
        ms = cfg.models
        fits = [(prompts or {}).get(m.name) for m in ms]
        return cls(
            models=cfg.model_names,
            input_price=np.array([m.input_price for m in ms], np.float64),
            output_price=np.array([m.output_price for m in ms], np.float64),
            max_context=np.array([m.max_context for m in ms], np.int64),
            max_tokens=np.array([m.max_tokens for m in ms], np.int64),
            expected_output=np.array(
                [planned_output_tokens(m.expected_output_tokens, cfg.budget.default_output_tokens, m.max_tokens)
                 for m in ms],
                np.float64,
            ),
            prompt_per_byte=np.array([np.nan if f is None else f.per_byte for f in fits], np.float64),
            prompt_template=np.array([np.nan if f is None else f.template for f in fits], np.float64),
        )

    def prompt_tokens(self, utf8_bytes: np.ndarray) -> np.ndarray:
        """Planned prompt tokens: [N] (the same for every model: no calibration at all) or [N, M]
        (each model's calibration, the UTF-8 estimate where none)."""
        estimate = estimate_input_tokens(utf8_bytes)
        if self.prompt_per_byte is None or np.isnan(self.prompt_per_byte).all():
            return estimate
        counted = np.ceil(np.multiply.outer(utf8_bytes.astype(np.float64), self.prompt_per_byte)) + self.prompt_template
        return np.where(np.isnan(counted), estimate[:, None], counted)


def _names_column(names: tuple[str, ...], idx: np.ndarray) -> pa.ListArray:
    """list<dictionary<string>> column: row i holds names[idx[i, :]]; the strings are stored once
    (vectorised, no Python per row)."""
    n, r = idx.shape
    values = pa.DictionaryArray.from_arrays(pa.array(idx.ravel().astype(np.int32)), pa.array(names, pa.string()))
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * r + 1, r, dtype=np.int32)), values)


def _matrix_column(x: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x, np.float32).ravel()), x.shape[1])


def matrix_from_column(column) -> np.ndarray:
    return embeddings_from_arrow(column)


def _hull_column(hulls: Hulls) -> pa.ListArray:
    """list<struct<lam: float64, model: int16>>: each row's hull walk (`router.budget.Hulls`)."""
    entries = pa.StructArray.from_arrays([pa.array(hulls.lam), pa.array(hulls.model)], names=["lam", "model"])
    return pa.ListArray.from_arrays(pa.array(hulls.offsets.astype(np.int32)), entries)


def hulls_from_column(column) -> Hulls:
    """The `Hulls` a Scorer stored (no copy when the column is one chunk)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    # The offsets of a slice of a column index the values of the whole column: keep this slice's.
    offsets = column.offsets.to_numpy().astype(np.int64)
    lam, model = column.values.flatten()
    first, end = (int(offsets[0]), int(offsets[-1])) if offsets.size else (0, 0)
    return Hulls(offsets - first, lam.to_numpy()[first:end], model.to_numpy()[first:end])


class Scorer:
    """Ray Data stage: predicted quality [M] and cost [M] per row, plus the row's top capabilities
    and domains. Sets `too_long` on rows no model's context can hold. Drops the embedding.

    It also walks every row's price hull once (`router.budget.summarize_hulls`): the budget's
    first pass (the summary, handed with its batch to `summary_sink` when one is given: the job's
    `router.job.budget_passes.SummarySink`) and the hull itself, kept as a column so that the
    critical-bin pass and the Assigner read it instead of walking again."""

    def __init__(self, profiles: str, pool: PoolArrays, task_column: str | None = None,
                 summary_sink: Callable[[pa.Table, BudgetSummary], None] | None = None):
        self.profiles: Profiles = load_profiles(profiles).select(pool.models)
        self.pool = pool
        self.task_column = task_column
        self.summary_sink = summary_sink

    def __call__(self, batch: pa.Table) -> pa.Table:
        p, pool = self.profiles, self.pool
        emb = embeddings_from_arrow(batch[S.EMBEDDING])
        tasks = None
        if self.task_column in batch.column_names:
            tasks = batch[self.task_column].cast(pa.string()).to_numpy(zero_copy_only=False)
        ann = p.annotate(emb, tasks)
        quality = p.quality(emb, ann)
        nbytes = pc.fill_null(pc.binary_length(batch[S.PROMPT]), 0).to_numpy()
        in_tokens = pool.prompt_tokens(nbytes)
        predicted = p.expected_output_tokens(ann).astype(np.float64)
        out_tokens = np.minimum(np.where(np.isnan(predicted), pool.expected_output, predicted), pool.max_tokens)
        cost = cost_matrix(in_tokens, out_tokens, pool.input_price, pool.output_price, pool.max_context)
        status = batch[S.STATUS]
        ok = pc.equal(status, S.OK).to_numpy(zero_copy_only=False)
        # A cell is NaN only where the prompt outruns that model's context (`cost_matrix`): a row
        # no model can take outruns the largest one.
        no_fit = ok & (in_tokens >= pool.max_context.max() if in_tokens.ndim == 1
                       else (in_tokens >= pool.max_context).all(axis=1))
        if no_fit.any():
            status = pc.if_else(pa.array(no_fit), S.TOO_LONG, status)
            msg = f"prompt longer than every model's context (largest {int(pool.max_context.max())} tokens)"
            error = pc.if_else(pa.array(no_fit), msg, batch[S.ERROR])
            batch = batch.set_column(batch.schema.get_field_index(S.ERROR), S.ERROR, error)
        # Rows that are not routable get no model at all: NaN everywhere keeps them out of the budget.
        routable = ok & ~no_fit
        if not routable.all():
            cost[~routable] = np.nan
        cost32 = cost.astype(np.float32)
        # The budget's first pass rides on this one: the summary (and hulls) of exactly the
        # numbers the later passes read back (`budget_matrices`).
        summary, hulls = summarize_hulls(quality, cost32)
        if self.summary_sink is not None:
            self.summary_sink(batch, summary)
        out = batch.drop_columns([S.EMBEDDING, S.STATUS])
        return (
            out.append_column(S.STATUS, status)
            .append_column(S.EST_INPUT_TOKENS, pa.array(in_tokens if in_tokens.ndim == 1 else in_tokens.max(axis=1).astype(np.int64)))
            .append_column(S.QUALITY, _matrix_column(quality))
            .append_column(S.COST, _matrix_column(cost32))
            .append_column(S.OUTPUT_MATRIX, _matrix_column(np.broadcast_to(out_tokens, cost.shape).astype(np.float32)))
            .append_column(S.CAPABILITIES, _names_column(p.capability_names, ann.capabilities))
            .append_column(S.DOMAINS, _names_column(p.domain_names, ann.domains))
            .append_column(S.HULL, _hull_column(hulls))
        )


def keys_of(batch: pa.Table) -> np.ndarray:
    return batch[S.ID].to_numpy(zero_copy_only=False).astype(str)


def keys_at(batch: pa.Table) -> Callable[[np.ndarray], np.ndarray]:
    """`rows -> keys_of(batch)[rows]`, converting only the rows asked for."""
    return lambda rows: batch[S.ID].take(pa.array(rows, pa.int64())).to_numpy(zero_copy_only=False).astype(str)


def group_keys(batch: pa.Table, column: str) -> np.ndarray:
    """Each row's group under group routing: "v:" and its value in `column` as text; a row with
    no value there (null, or a file without the column) is a group of its own, "r:" and its id."""
    own = pc.binary_join_element_wise("r:", batch[S.ID].cast(pa.string()), "")  # the last argument: separator
    if column in batch.column_names:
        values = pc.binary_join_element_wise("v:", batch[column].cast(pa.string()), "")  # null stays null
        own = pc.if_else(pc.is_null(values), own, values)
    return own.to_numpy(zero_copy_only=False).astype(str)


def cost_from_batch(batch: pa.Table) -> np.ndarray:
    """The batch's predicted cost matrix [N, M] in float64 (NaN: the model cannot take the row)."""
    return matrix_from_column(batch[S.COST]).astype(np.float64)


def budget_matrices(batch: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Quality and cost [N, M] as stored (float32), as every pass of the plain budget reads them:
    the hull is walked in float32 (twice numpy's vector width), the same in every pass, so that
    the passes' breakpoints agree exactly. Costs are still summed in float64."""
    return matrix_from_column(batch[S.QUALITY]), matrix_from_column(batch[S.COST])


RoutePlan = BudgetPlan | CappedPlan | GroupPlan
"""What the driver decided: a price (and tie rule), prices under caps, or one model per group."""


class Assigner:
    """Ray Data stage: each row's model under the driver's plan, with predicted quality and cost."""

    def __init__(self, models: tuple[str, ...], plan: RoutePlan, allow_skip: bool, group_column: str | None = None):
        self.models = models
        self.plan = plan
        self.allow_skip = allow_skip
        self.group_column = group_column
        if isinstance(plan, GroupPlan):
            self.skipped = "the budget (or a model's cap) cannot pay for this row's group"
        elif isinstance(plan, CappedPlan):
            self.skipped = "no model for this row within the budget and the models' caps"
        else:
            self.skipped = "the budget cannot pay for this row"

    def choices(self, batch: pa.Table, quality: np.ndarray, cost: np.ndarray) -> np.ndarray:
        """Each row's model (-1: none). `cost` is the stored float32 matrix: a budget plan's hull is
        walked in float32, as every pass of the plain budget walks it (`budget_matrices`); caps and
        groups read it in float64, as their passes do (`cost_from_batch`)."""
        plan = self.plan
        if isinstance(plan, BudgetPlan):
            if not self.allow_skip and S.HULL in batch.column_names:
                return assign_hulls(hulls_from_column(batch[S.HULL]), plan, keys_at(batch))
            # Row keys break ties at the critical price only: no plan with a tie key, no keys needed.
            keys = keys_of(batch) if plan.tie_key is not None else np.broadcast_to(np.str_(""), len(quality))
            return assign(quality, cost, plan, keys, allow_skip=self.allow_skip)
        cost = cost.astype(np.float64)
        if isinstance(plan, GroupPlan):
            assert self.group_column is not None
            return plan.assign(quality, cost, group_keys(batch, self.group_column))
        return assign_capped(quality, cost, plan, keys_of(batch))

    def __call__(self, batch: pa.Table) -> pa.Table:
        quality, cost = budget_matrices(batch)
        choice = self.choices(batch, quality, cost)
        chosen = choice >= 0
        safe = np.where(chosen, choice, 0)
        cells = np.arange(0, len(choice) * quality.shape[1], quality.shape[1]) + safe
        q = quality.ravel().take(cells).astype(np.float64)
        c = cost.ravel().take(cells).astype(np.float64)
        # The chosen model's predicted answer length: its engine starts the longest first.
        answer = matrix_from_column(batch[S.OUTPUT_MATRIX]).ravel().take(cells) if S.OUTPUT_MATRIX in batch.column_names else None
        status = batch[S.STATUS]
        skipped = pc.and_(pc.equal(status, S.OK), pa.array(~chosen))
        status = pc.if_else(skipped, S.OVER_BUDGET, status)
        error = pc.if_else(skipped, self.skipped, batch[S.ERROR])
        model = pa.array(list(self.models), pa.string()).take(pa.array(safe))
        model = pc.if_else(pa.array(chosen), model, pa.scalar(None, pa.string()))
        working = [S.QUALITY, S.COST, S.STATUS, S.ERROR, S.HULL, S.OUTPUT_MATRIX]
        out = batch.drop_columns([c for c in working if c in batch.column_names])
        out = (
            out.append_column(S.MODEL, model)
            .append_column(S.STATUS, status)
            .append_column(S.ERROR, error)
            .append_column(S.PREDICTED_QUALITY, pa.array(q, pa.float64(), mask=~chosen))
            .append_column(S.PREDICTED_COST, pa.array(c, pa.float64(), mask=~chosen))
        )
        if answer is not None:
            out = out.append_column(S.EST_OUTPUT_TOKENS, pa.array(answer, pa.float32(), mask=~chosen))
        return out
