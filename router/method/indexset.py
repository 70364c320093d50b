"""Profiling a model with no evaluation data: answer an index set that has gold answers with the
project's own generation stage, grade the answers, and return them (with their lengths) as an
evaluation table.

The packaged index set (`INDEX_SET`, built by `build_index_set`, `make indexset`) holds about 1,000
queries with gold answers drawn from the MIT-licensed LLMRouter queries (its licence ships beside
it): the same number from each task whose answers are graded automatically here (not the code
tasks, whose metric runs the code), spread over maths, science, commonsense, reading, open
questions, constrained writing and logic puzzles.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from router import schema as S
from router.method.evaldata import EvalTable
from router.method.grading import SKIPPED_METRICS, grade


INDEX_SET = Path(__file__).resolve().parent.parent / "profiles" / "indexset.jsonl"
"""The packaged index set: `router profile add-model --weights W` answers it when given no --queries."""
INDEX_FIELDS = ("task_name", "query", "ground_truth", "metric", "choices", "task_id")


def build_index_set(queries: str | Path, out: str | Path, size: int = 1000, seed: int = 0) -> dict[str, int]:
    """Draw the index set from LLMRouter's `queries_*.jsonl`: `size` queries, as many from each
    gradable task as it has up to an equal share (the share of tasks with fewer goes to the
    others), at random with `seed`; written as jsonl in task order. Returns the queries per task."""
    rows = [json.loads(line) for line in open(queries) if line.strip()]
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("metric") not in SKIPPED_METRICS and str(r.get("ground_truth", "")).strip():
            by_task.setdefault(r["task_name"], []).append(r)
    rng = np.random.default_rng(seed)
    counts, left, tasks = {}, size, sorted(by_task, key=lambda t: len(by_task[t]))
    for i, task in enumerate(tasks):  # the smallest tasks first: what they cannot fill goes to the rest
        counts[task] = min(len(by_task[task]), left // (len(tasks) - i))
        left -= counts[task]
    with open(out, "w") as f:
        for task in sorted(counts):
            for j in sorted(rng.choice(len(by_task[task]), counts[task], replace=False)):
                f.write(json.dumps({k: by_task[task][j].get(k) for k in INDEX_FIELDS}) + "\n")
    return counts


def read_index_set(path: str, limit: int | None = None) -> list[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    if not limit or limit >= len(rows):
        return rows
    # Evenly over the file (the packaged set is in task order): every task keeps its share.
    return [rows[i] for i in np.linspace(0, len(rows) - 1, limit).round().astype(int)]


def answer_and_grade(
    path: str,
    model: str,
    weights: str,
    *,
    max_tokens: int = 256,
    max_model_len: int | None = None,
    dtype: str = "auto",
    limit: int | None = None,
    backend: str = "vllm",
) -> tuple[EvalTable, int]:
    """(graded table with one model column, counts: `queries` read, `answered` by the engine, `graded`,
    `skipped`: a metric not graded here (code), or no answer). `backend`: the generation stage that
    answers (`vllm`, or `transformers` for tiny CPU models)."""
    from router.backends.generators import BACKENDS

    rows = read_index_set(path, limit)
    gradable = [r for r in rows if r.get("metric") not in SKIPPED_METRICS]
    skipped = len(rows) - len(gradable)
    batch = pa.table(
        {
            S.ID: [str(i) for i in range(len(gradable))],
            S.PROMPT: [str(r["query"]) for r in gradable],
            S.MODEL: [model] * len(gradable),
            S.STATUS: [S.OK] * len(gradable),
        }
    )
    engine = BACKENDS[backend](
        weights, models={model: {"max_tokens": max_tokens, "temperature": 0.0, "input_price": 0.0, "output_price": 0.0}},
        max_model_len=max_model_len, dtype=dtype,
    )  # fmt: skip
    try:
        out = engine(batch)
    finally:
        engine.close()
    responses = out[S.RESPONSE].to_pylist()
    # The answers' lengths and prompt tokens as the engine counted them: the model's length profile.
    counted = {c: np.asarray(out[c].to_pylist(), dtype=np.float64)[:, None] for c in (S.OUTPUT_TOKENS, S.INPUT_TOKENS)}
    # A row the engine could not answer (a prompt longer than its context, say) is not graded.
    answered = [status == S.OK for status in out[S.STATUS].to_pylist()]
    scores = []
    for r, response, ok in zip(gradable, responses, answered):
        g = grade(response, r.get("ground_truth", ""), r.get("metric", "em")) if ok else None
        scores.append(np.nan if g is None else g)
    score = np.asarray(scores, np.float32)[:, None]
    known = ~np.isnan(score[:, 0])
    skipped += int((~known).sum())
    table = EvalTable(
        queries=[str(r["query"]) for r, k in zip(gradable, known) if k],
        models=(model,),
        scores=score[known],
        task=[str(r.get("task_name", "")) for r, k in zip(gradable, known) if k],
        sources=(path,),
        output_tokens=counted[S.OUTPUT_TOKENS][known].astype(np.float32),
        input_tokens=counted[S.INPUT_TOKENS][known].astype(np.float32),
    )
    counts = {"queries": len(rows), "answered": int(sum(answered)), "graded": int(known.sum()), "skipped": skipped}
    return table, counts
