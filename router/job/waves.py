"""Answering in waves, the plan re-solved on what was actually spent (`budget.waves`).

    wave 1: a random share of the planned rows, spread over every model in the plan (at least
            WAVE_MIN_ROWS of each model's rows where it has them), answered under the first plan
    then, wave by wave: the rows not yet written (the scored rows less every id in the output)
            their predicted costs scaled per model by what its answers have cost against their
            prediction so far (`CostCorrection`), re-solved with the budget minus the actual spend
            in the output (and caps less what their models already took), and a random share of
            them answered (the last wave: all); rows already answered keep their model
    rows a plan leaves over budget are not written before the last wave: each re-solve may find
            the money for them

In `hard` mode every engine asks the job's spend ledger (`router.job.ledger`) before each call:
a row whose worst case does not fit in what is left is refused and, until the waves end, not
written but routed again in the next wave with what the budget still has (in the REFUSED_WAVES
after the last share, planned by their worst case: a model whose worst case fits is chosen). A
wave before the last may also spend at most WAVE_SLACK times its planned share of what is left:
when the answers run far longer than predicted, the first rows cannot spend what the rest need
(they are routed again, with the correction the wave has learnt). Whatever the answers do, the
actual spend never exceeds the budget. A resumed job re-solves from the actual spend on disk; its
cost correction is learnt afresh from its own waves.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from router import schema as S
from router.config import JobConfig
from router.cost import token_usd
from router.job.answer import generate_and_write
from router.job.budget_passes import solve_route
from router.job.cluster import ROUTE_BATCH, driver_batches, log, small_job
from router.job.output import committed_files, read_prior
from router.job.plan import assign_rows
from router.job.prestart import StartedEngines
from router.job.result import RunResult
from router.job.tally import tally
from router.stages.read import without_ids
from router.stages.route import matrix_from_column

# The first wave gives each model in the plan at least this many rows (all of them where it has fewer).
WAVE_MIN_ROWS = 3
# A model's cost correction is shrunk toward the pool's as if it had this many more rows answered
# exactly as the pool's were: a handful of answers moves it only part of the way.
SHRINK_ROWS = 4
# Hard mode: a wave before the last may spend at most this many times its plan's share of what is left.
WAVE_SLACK = 2.0
# Waves after the last share, for rows the hard budget refused (routed again with what is left).
REFUSED_WAVES = 2


@dataclass
class CostCorrection:
    """Per model, the factor its predicted costs are scaled by: its answered rows' actual cost over
    their cost as first predicted (before any correction), shrunk toward the pool's factor."""

    models: tuple[str, ...]
    actual: dict[str, float] = field(default_factory=dict)
    predicted: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    def add(self, model: str, rows: int, actual: float, predicted: float, scale: float) -> None:
        """A wave's answered rows of `model`: their actual and predicted cost as planned (under `scale`)."""
        self.rows[model] = self.rows.get(model, 0) + rows
        self.actual[model] = self.actual.get(model, 0.0) + actual
        self.predicted[model] = self.predicted.get(model, 0.0) + predicted / scale

    def factors(self) -> dict[str, float]:
        a, p = sum(self.actual.values()), sum(self.predicted.values())
        pool = a / p if p > 0 and a > 0 else 1.0
        out = {}
        for m in self.models:
            n, pm = self.rows.get(m, 0), self.predicted.get(m, 0.0)
            if n == 0 or pm <= 0:
                out[m] = pool
                continue
            prior = SHRINK_ROWS * pm / n  # SHRINK_ROWS rows of this model's mean prediction
            out[m] = (self.actual.get(m, 0.0) + pool * prior) / (pm + prior)
        return out


@dataclass(frozen=True)
class Wave:
    """One wave as the report shows it."""

    number: int
    share: float
    """The share of the job's rows answered once this wave is done (as planned)."""
    rows: int
    """Rows written in this wave (answered, refused at the end, or marked)."""
    budget_left: float
    """USD its plan had: the budget less the actual spend before it."""
    lam: float | None
    """The plan's price of quality in USD (None: not a price plan: caps or groups)."""
    predicted: float
    """Predicted cost of its written rows, USD (as re-solved)."""
    actual: float
    """Their actual cost, USD."""
    spent_after: float
    """The job's actual spend once it was done (earlier runs included), USD."""
    refused: int
    """Rows the hard budget refused in it (routed again in the next wave, if any)."""
    factors: dict[str, float]
    """The cost correction per model its plan used."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Written:
    """What the output holds, per model (ok rows: their actual and predicted cost), and its spend."""

    ids: pa.Array
    spend: float
    rows: dict[str, int]
    actual: dict[str, float]
    predicted: dict[str, float]
    total_rows: int


def _written(output: str) -> _Written:
    import pyarrow.dataset as pads

    from router.job.output import _fs

    files = committed_files(output)
    if not files:
        return _Written(pa.array([], pa.string()), 0.0, {}, {}, {}, 0)
    t = pads.dataset(files, filesystem=_fs(output)[0], format="parquet").to_table(
        columns=[S.ID, S.MODEL, S.STATUS, S.ACTUAL_COST, S.PREDICTED_COST]
    )
    ok = t.filter(pc.and_(pc.equal(t[S.STATUS], S.OK), pc.is_valid(t[S.ACTUAL_COST])))
    by = ok.group_by(S.MODEL).aggregate([(S.ACTUAL_COST, "sum"), (S.PREDICTED_COST, "sum"), (S.ID, "count")])
    rows = by.to_pylist()
    return _Written(
        ids=t[S.ID].combine_chunks().cast(pa.string()),
        spend=float(pc.sum(t[S.ACTUAL_COST]).as_py() or 0.0),
        rows={r[S.MODEL]: int(r[f"{S.ID}_count"]) for r in rows},
        actual={r[S.MODEL]: float(r[f"{S.ACTUAL_COST}_sum"] or 0.0) for r in rows},
        predicted={r[S.MODEL]: float(r[f"{S.PREDICTED_COST}_sum"] or 0.0) for r in rows},
        total_rows=t.num_rows,
    )


def _over(fn, ds, **kwargs):
    """`fn` over a materialised dataset's batches, materialised: in the driver for a small job, else
    a Ray Data pass."""
    import ray

    if small_job(ds):
        blocks = [fn(b, **kwargs) for b in driver_batches(ds)]
        kept = [b for b in blocks if b.num_rows] or blocks[:1]
        return ray.data.from_blocks(kept) if kept else ds.limit(0).materialize()
    return ds.map_batches(fn, fn_kwargs=kwargs, batch_size=ROUTE_BATCH, batch_format="pyarrow", num_cpus=0.5).materialize()


def rows_left(batch: pa.Table, done: pa.Array, factors: np.ndarray, worst: tuple | None = None) -> pa.Table:
    """The scored rows not yet written, their predicted costs scaled per model (the walk each row's
    hull took under the old costs goes: the next solve walks the new ones). `worst` (hard mode's
    last waves: each model's max_tokens, input and output price): each row's worst case instead,
    its planned prompt tokens plus max_tokens, which is what the ledger admits it by."""
    batch = without_ids(batch, done)  # ids are text (router.stages.read.validate)
    if S.HULL in batch.column_names:
        batch = batch.drop_columns([S.HULL])
    cost = matrix_from_column(batch[S.COST]).astype(np.float64) * factors
    if worst is not None:
        max_tokens, price_in, price_out = worst
        prompt = batch[S.EST_INPUT_TOKENS].to_numpy(zero_copy_only=False).astype(np.float64)[:, None]
        cost = np.where(np.isnan(cost), np.nan, token_usd(prompt, max_tokens, price_in, price_out))
    column = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(cost, np.float32).ravel()), factors.size)
    return batch.set_column(batch.schema.get_field_index(S.COST), S.COST, column)


def wave_share(batch: pa.Table, share: dict[str, float], seed: int) -> pa.Table:
    """The wave's rows, and every row no engine will see (their status is written as it is), but
    the rows the plan left over budget: they are routed again in the next wave.

    Of each model's routed rows in the batch, `share[model]` of them (rounded at random, so that it
    holds on average over batches) are drawn at random, seeded by the wave and the batch's first id
    (a rerun draws alike): a random draw, so that every model's cost correction learns from rows
    like the ones still to come. (Rows chosen by any property of theirs, the cheapest first, say,
    would teach a correction that is wrong for the rest.)"""
    if not batch.num_rows:
        return batch
    first = str(batch[S.ID][0].as_py()).encode()
    rng = np.random.default_rng([seed, zlib.crc32(first)])
    models = np.asarray(batch[S.MODEL].to_pylist(), dtype=object)
    ok = pc.fill_null(pc.equal(batch[S.STATUS], S.OK), False).to_numpy(zero_copy_only=False)
    take = np.zeros(batch.num_rows, bool)
    for m in sorted({str(m) for m in models[ok]}):
        rows = np.flatnonzero(ok & (models == m))
        k = min(rows.size, int(share.get(m, 1.0) * rows.size + rng.random()))
        take[rng.permutation(rows)[:k]] = True
    # Rows this plan leaves out for the budget wait for the next one (what the answers actually cost
    # may leave the money for them); the other rows no engine will see are written now.
    waiting = pc.fill_null(pc.equal(batch[S.STATUS], S.OVER_BUDGET), False).to_numpy(zero_copy_only=False)
    return batch.filter(pa.array(take | (~ok & ~waiting)))


def first_shares(by_model, share: float) -> dict[str, float]:
    """Each model's probability of a row in the first wave: the wave's share, or enough for
    WAVE_MIN_ROWS of its rows."""
    return {t.model: min(1.0, max(share, WAVE_MIN_ROWS / t.ok_rows)) for t in by_model if t.model and t.ok_rows}


def with_caps_left(cfg: JobConfig, written: _Written, before: _Written) -> JobConfig:
    """The caps less what this run has already given their models (rows, predicted USD)."""
    models = []
    for m in cfg.models:
        rows = written.rows.get(m.name, 0) - before.rows.get(m.name, 0)
        spend = written.predicted.get(m.name, 0.0) - before.predicted.get(m.name, 0.0)
        models.append(dataclasses.replace(
            m, max_rows=None if m.max_rows is None else max(0, m.max_rows - rows),
            max_spend=None if m.max_spend is None else max(0.0, m.max_spend - spend)))  # fmt: skip
    return dataclasses.replace(cfg, models=tuple(models) if isinstance(cfg.models, tuple) else models)


def wave_limit(ledger: Any, left: float, wave: list, plan: list) -> float:
    """What hard mode lets a wave before the last spend in all: what the job has spent, plus
    WAVE_SLACK times the wave's share of the plan's predicted spend of what is left."""
    planned = sum(t.predicted_cost or 0.0 for t in plan if t.model)
    share = sum(t.predicted_cost or 0.0 for t in wave if t.model) / planned if planned > 0 else 1.0
    return ledger.state()["spent"] + WAVE_SLACK * share * left


def answer_in_waves(cfg: JobConfig, scored, assigned, result: RunResult, started: StartedEngines | None,
                    ledger: Any = None) -> list[Wave]:
    """Answer the routed rows in `budget.waves`, re-solving between waves (see the module). `cfg`'s
    budget is what this run has (the rest of it, when resumed); `assigned`: the first plan's rows.
    Records the runs and phases in `result`; returns the waves."""
    shares = (1.0,) if cfg.budget.group_column is not None else cfg.budget.waves
    names = cfg.model_names
    correction = CostCorrection(names)
    factors = {m: 1.0 for m in names}
    start = before = _written(cfg.output)  # earlier runs' rows (resume)
    budget = cfg.budget.total
    waves: list[Wave] = []
    rows, by_model, lam, done_share = assigned, result.by_model, getattr(result.plan, "lam", None), 0.0
    last_wave = len(shares) - 1 + REFUSED_WAVES
    for k in range(last_wave + 1):
        share = shares[min(k, len(shares) - 1)]
        if k > 0:
            # Hard mode, once the shares are done: the rows left were refused for their worst case,
            # so the plan prices them by it, and a model whose worst case fits is chosen.
            worst = None if ledger is None or k < len(shares) else tuple(
                np.array([getattr(m, f) for m in cfg.models], np.float64)
                for f in ("max_tokens", "input_price", "output_price"))  # fmt: skip
            todo = _over(rows_left, scored, done=before.ids, worst=worst,
                         factors=np.array([factors[m] for m in names], np.float64))  # fmt: skip
            n = todo.count()
            if n == 0:
                break
            left = max(0.0, budget - (before.spend - start.spend))
            wave_cfg = dataclasses.replace(with_caps_left(cfg, before, start),
                                           budget=dataclasses.replace(cfg.budget, total=left))  # fmt: skip
            plan, allow_skip = solve_route(wave_cfg, todo, n, None)
            lam = getattr(plan, "lam", None)
            rows = assign_rows(wave_cfg, todo, plan, allow_skip)
            by_model, _ = tally(rows)
            log(f"wave {k + 1}: {n} rows left, {left:.6g} {cfg.cost_unit} left; re-solved with costs x "
                + ", ".join(f"{m} {f:.3g}" for m, f in factors.items() if any(t.model == m for t in by_model))
                + (f"; lambda {lam:.6g}" if lam is not None else ""))  # fmt: skip
        else:
            left = budget
        final = share >= 1.0
        if final:
            chosen = rows
        else:
            # The share of what is left that brings the job to `share` of its rows.
            p = (share - done_share) / (1.0 - done_share)
            probs = first_shares(by_model, p) if k == 0 else {t.model: p for t in by_model if t.model}
            chosen = _over(wave_share, rows, share=probs, seed=k)
        done_share = share
        sent = chosen.count()
        if ledger is not None:
            limit = None if final else wave_limit(ledger, left, tally(chosen)[0], by_model)
            ledger.set_limit(limit)
            if limit is not None:
                log(f"wave {k + 1}: hard budget: this wave may spend up to {limit:.6g} {cfg.cost_unit} in all")
        generate_and_write(cfg, chosen, result, started, by_model=by_model, ledger=ledger,
                           keep_refused=k == last_wave, last=False, wave=f"wave {k + 1}")  # fmt: skip
        after = _written(cfg.output)
        for m in names:
            d_rows = after.rows.get(m, 0) - before.rows.get(m, 0)
            if d_rows:
                correction.add(m, d_rows, after.actual.get(m, 0.0) - before.actual.get(m, 0.0),
                               after.predicted.get(m, 0.0) - before.predicted.get(m, 0.0), factors[m])  # fmt: skip
        written_rows = after.total_rows - before.total_rows
        predicted = sum(after.predicted.values()) - sum(before.predicted.values())
        refused = sent - written_rows  # rows the ledger refused are left unwritten, to route again
        waves.append(Wave(k + 1, share, written_rows, left, lam, predicted, after.spend - before.spend,
                          after.spend, refused, dict(factors)))  # fmt: skip
        log(f"wave {k + 1}: {written_rows} rows written, {predicted:.6g} {cfg.cost_unit} predicted, "
            f"{after.spend - before.spend:.6g} {cfg.cost_unit} spent ({after.spend:.6g} in all)"
            + (f", {refused} rows refused by the budget" if refused else ""))  # fmt: skip
        factors = correction.factors()
        before = after
        if final and not refused:
            break
    if started is not None:
        started.stop()
    return waves
