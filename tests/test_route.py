"""The routing stage's callables on Arrow batches, in-process: the hulls the Scorer keeps give the
plan and the models that walking every row again gives, on whole batches and on slices of them
(Ray Data hands a stage slices of blocks)."""

import numpy as np
import pyarrow as pa
import pytest

from router.budget import BudgetPlan, collect_bin, critical_bin, solve_lambda, summarize
from router import schema as S
from router.config import load_config
from router.backends.encoder import embeddings_to_arrow
from router.job.budget_passes import collect_rows
from router.stages.route import Assigner, PoolArrays, Scorer, budget_matrices, keys_of

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def scored():
    cfg = load_config("jobs/configs/local.yaml", ["input=unused", "output=unused", "budget.mode=expected"])
    rng = np.random.default_rng(3)
    n = 3000
    emb = rng.standard_normal((n, 384), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    prompts = ["x" * int(k) for k in rng.integers(1, 4000, n)]  # answers and prompts of many lengths
    status = np.where(rng.random(n) < 0.05, S.INVALID_INPUT, S.OK)  # some rows routed nowhere
    batch = pa.table({S.ID: [f"r{i:05d}" for i in range(n)], S.PROMPT: prompts, S.STATUS: status,
                      S.ERROR: pa.nulls(n, pa.string()), S.EMBEDDING: embeddings_to_arrow(emb)})  # fmt: skip
    batch = pa.concat_tables([batch, batch.slice(0, 200)])  # duplicate rows: ties at the critical price
    batch = batch.set_column(0, S.ID, pa.array([f"r{i:05d}" for i in range(batch.num_rows)]))
    return cfg, Scorer(cfg.profiles, PoolArrays.from_config(cfg))(batch)


def _walked_plan(t: pa.Table, budget: float) -> BudgetPlan:
    q, c = budget_matrices(t)  # as every pass of the budget reads them
    summary = summarize(q, c)
    return solve_lambda(summary, budget, *collect_bin(q, c, keys_of(t), critical_bin(summary, budget)))


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.95])
def test_kept_hulls_route_slices_as_walking_does(scored, fraction):
    cfg, t = scored
    q, c = budget_matrices(t)
    ok = ~np.isnan(c).all(axis=1)
    low = np.nanmin(c[ok], 1).sum()
    high = c[ok][np.arange(ok.sum()), np.nanargmax(q[ok], 1)].sum()
    budget = low + fraction * (high - low)
    plan = _walked_plan(t, budget)
    assert plan.lam > 0
    walked = t.drop_columns([S.HULL])
    for a, b in [(0, t.num_rows), (0, 1000), (1000, 2500), (2500, t.num_rows), (17, 18), (40, 40)]:
        part, bare = t.slice(a, b - a), walked.slice(a, b - a)
        bin = critical_bin(summarize(q, c), budget)
        kept, again = collect_rows(part, bin, False), collect_rows(bare, bin, False)
        assert kept.sort_by("key").equals(again.sort_by("key"))
        for tie_key in (plan.tie_key, None, "r01000"):
            at = BudgetPlan(plan.lam, tie_key, plan.predicted_cost)
            fast, slow = Assigner(cfg.model_names, at, False)(part), Assigner(cfg.model_names, at, False)(bare)
            assert S.HULL not in fast.column_names
            assert fast.equals(slow)
            assert fast[S.ID].equals(part[S.ID])  # every row once, in order
            statuses = zip(fast[S.MODEL].to_pylist(), fast[S.STATUS].to_pylist(), strict=True)
            assert all((model is None) == (status != S.OK) for model, status in statuses)
