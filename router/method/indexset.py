"""Profiling a model with no evaluation data: answer an index set that has gold answers with the
project's own generation stage, grade the answers, and return them (with their lengths) as an
evaluation table."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from router import schema as S
from router.method.evaldata import EvalTable
from router.method.grading import SKIPPED_METRICS, grade


def read_index_set(path: str, limit: int | None = None) -> list[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows[:limit] if limit else rows


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
    """(graded table with one model column, rows skipped because their metric is not gradable).
    `backend`: the generation stage that answers (`vllm`, or `transformers` for tiny CPU models)."""
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
    scores = []
    for r, response in zip(gradable, responses):
        g = grade(response, r.get("ground_truth", ""), r.get("metric", "em"))
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
    return table, skipped
