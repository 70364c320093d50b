"""Evaluation tables: per-query, per-model scores that profiles are built from (DESIGN.md 7).

Read into one in-memory shape, `EvalTable`, from the long-format parquet of DESIGN.md section 7
or from the `[{"question", "scores": {model: score}}]` JSON that public routing datasets use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

FORMATS = ("long", "scores-json")


@dataclass(frozen=True)
class EvalTable:
    queries: list[str]
    models: tuple[str, ...]
    scores: np.ndarray  # float32 [N, M], NaN where a model was not evaluated on a query
    costs: np.ndarray | None = None  # float32 [N, M], the table's unit
    output_tokens: np.ndarray | None = None  # float32 [N, M]
    task: list[str] | None = None
    sources: tuple[str, ...] = ()


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "long"
    if suffix == ".json":
        return "scores-json"
    raise ValueError(f"cannot tell the format of {str(path)!r}; pass --format ({', '.join(FORMATS)})")


def _read_scores_json(path: Path) -> tuple[list[str], list[dict], list[str] | None]:
    rows = json.loads(path.read_text())
    if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict) or "scores" not in rows[0]:
        raise ValueError(f"{str(path)!r} is not a list of {{'question', 'scores'}} records")
    queries = [str(r.get("question", r.get("query", ""))) for r in rows]
    task = [str(r["task"]) for r in rows] if all("task" in r for r in rows) else None
    return queries, [r["scores"] for r in rows], task


def _read_long(path: Path) -> EvalTable:
    import pyarrow.parquet as pq
    import pyarrow.compute as pc

    t = pq.read_table(path)
    missing = {"query_id", "query", "model", "score"} - set(t.column_names)
    if missing:
        raise ValueError(f"{str(path)!r} lacks the long-format column(s) {sorted(missing)}")
    qid = t["query_id"].cast("string").to_numpy(zero_copy_only=False)
    uq, first, qi = np.unique(qid, return_index=True, return_inverse=True)
    models, mi = np.unique(t["model"].cast("string").to_numpy(zero_copy_only=False), return_inverse=True)

    def grid(col: str) -> np.ndarray | None:
        if col not in t.column_names:
            return None
        g = np.full((len(uq), len(models)), np.nan, np.float32)
        g[qi, mi] = pc.fill_null(t[col].cast("float32"), float("nan")).to_numpy()
        return g

    queries = t["query"].cast("string").to_numpy(zero_copy_only=False)[first].tolist()
    task = t["task"].cast("string").to_numpy(zero_copy_only=False)[first].tolist() if "task" in t.column_names else None
    out = grid("output_tokens")
    return EvalTable(queries, tuple(models.tolist()), grid("score"), grid("cost"), out, task, (str(path),))


def read_eval_table(paths: Sequence[str | Path], fmt: str | None = None) -> EvalTable:
    """Read and concatenate evaluation tables; models are the union, NaN where not evaluated."""
    parts: list[EvalTable] = []
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"evaluation table {str(p)!r} not found")
        f = fmt or detect_format(p)
        if f == "long":
            parts.append(_read_long(p))
        elif f == "scores-json":
            queries, score_dicts, task = _read_scores_json(p)
            models = tuple(sorted({m for d in score_dicts for m in d}))
            col = {m: j for j, m in enumerate(models)}
            scores = np.full((len(queries), len(models)), np.nan, np.float32)
            for i, d in enumerate(score_dicts):  # file parsing: one pass over the JSON records
                for m, v in d.items():
                    scores[i, col[m]] = np.nan if v is None else float(v)
            parts.append(EvalTable(queries, models, scores, task=task, sources=(str(p),)))
        else:
            raise ValueError(f"unknown evaluation table format {f!r}; known: {', '.join(FORMATS)}")
    models = tuple(sorted({m for t in parts for m in t.models}))

    def stack(attr: str) -> np.ndarray | None:
        if all(getattr(t, attr) is None for t in parts):
            return None
        blocks = []
        for t in parts:
            g = np.full((len(t.queries), len(models)), np.nan, np.float32)
            src = getattr(t, attr)
            if src is not None:
                g[:, [models.index(m) for m in t.models]] = src
            blocks.append(g)
        return np.concatenate(blocks)

    tasks = None
    if all(t.task is not None for t in parts):
        tasks = [x for t in parts for x in t.task]
    return EvalTable(
        queries=[q for t in parts for q in t.queries],
        models=models,
        scores=stack("scores"),
        costs=stack("costs"),
        output_tokens=stack("output_tokens"),
        task=tasks,
        sources=tuple(s for t in parts for s in t.sources),
    )
