"""Evaluation tables: per-query, per-model scores that profiles are built from.

Read into one in-memory shape, `EvalTable`, from the long-format parquet (`query_id, query, model,
score` and optionally `cost`, `output_tokens`, `input_tokens`, `task`), from the
`[{"question", "scores": {model: score}}]` JSON that public routing datasets use, from RouterBench's
wide table, or from RouteProfile's records with each model's answer and token counts. Answer
lengths (for length profiles) come from the table's own counts, or, given prices, from a
RouterBench cost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

FORMATS = ("long", "scores-json", "routerbench", "routeprofile")
SCORE_READINGS = ("auto", "raw", "binary")
# A choice's probability is at least 1/choices when the model picked the right one; graded
# scores (F1, BLEU) go lower, sample fractions sit on a grid of k/n.
PROBABILITY_FLOOR = 0.2
GRID = 20
ONES_SHARE = 0.05


@dataclass(frozen=True)
class EvalTable:
    queries: list[str]
    models: tuple[str, ...]
    scores: np.ndarray  # float32 [N, M], NaN where a model was not evaluated on a query
    costs: np.ndarray | None = None  # float32 [N, M], the table's unit
    output_tokens: np.ndarray | None = None  # float32 [N, M]
    task: list[str] | None = None
    sources: tuple[str, ...] = ()
    # Parts whose scores were turned into 0/1, as (file, task or None for the whole file): read as
    # "the probability of the right choice when the model chose right" (`choice_probabilities`),
    # or all of them when asked.
    binarized: tuple[tuple[str, str | None], ...] = ()
    input_tokens: np.ndarray | None = None  # float32 [N, M]: prompt tokens as each model counted them

    def take(self, rows: np.ndarray) -> "EvalTable":
        """The table's rows `rows` (indices), every per-row field alike."""
        rows = np.asarray(rows, np.int64)
        cut = lambda a: None if a is None else a[rows]  # noqa: E731
        return replace(self, queries=[self.queries[i] for i in rows], scores=self.scores[rows], costs=cut(self.costs),
                       output_tokens=cut(self.output_tokens), input_tokens=cut(self.input_tokens),
                       task=None if self.task is None else [self.task[i] for i in rows])  # fmt: skip


def choice_probabilities(scores: np.ndarray) -> bool:
    """Whether a part's scores look like RouterDC's multiple-choice scores: 0 when wrong, else the
    model's probability on the right choice. Then hardly any score is 1 (only a confident choice
    that rounds to it: under `ONES_SHARE` of the positive ones, where a 0/1 or graded table has
    many), every positive one is at least `PROBABILITY_FLOOR`, and they are continuous: most are
    off the grid of k/`GRID` that fractions of samples sit on (gsm8k's "3 of 10 samples right"
    stays a fraction), and they take many values, where a rating out of n takes at most n."""
    s = scores[np.isfinite(scores)]
    pos = s[s > 0]
    if pos.size == 0 or (pos >= 1).mean() >= ONES_SHARE or pos.min() < PROBABILITY_FLOOR:
        return False
    on_grid = np.isclose(pos * GRID, np.round(pos * GRID), atol=1e-4)
    distinct = np.unique(np.round(pos, 4)).size
    return bool(on_grid.mean() < 0.5 and distinct > min(2 * GRID, pos.size // 2))


def _binarize(scores: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(scores), np.nan, (scores > 0).astype(np.float32)).astype(np.float32)


def read_scores(part: EvalTable, reading: str) -> EvalTable:
    """One file's scores as `reading` says: `raw` as in the table, `binary` any score > 0 counts as
    correct, `auto` binary only for the tasks of the file (the whole file when it has no task
    column) whose scores are choice probabilities (`choice_probabilities`)."""
    if reading not in SCORE_READINGS:
        raise ValueError(f"unknown score reading {reading!r}; known: {', '.join(SCORE_READINGS)}")
    where = part.sources[0] if part.sources else "table"
    if reading == "raw":
        return part
    if reading == "binary":
        return replace(part, scores=_binarize(part.scores), binarized=((where, None),))
    if part.task is None:
        groups = {(where, None): slice(None)}
    else:
        keys = np.asarray(part.task, dtype=object)
        groups = {(where, t): np.flatnonzero(keys == t) for t in dict.fromkeys(part.task)}
    scores = part.scores.copy()
    done = []
    for name, rows in groups.items():
        if choice_probabilities(scores[rows]):
            scores[rows] = _binarize(scores[rows])
            done.append(name)
    return replace(part, scores=scores, binarized=tuple(done)) if done else part


def _columns(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).schema_arrow.names
    if suffix == ".csv":
        import csv

        with open(path, newline="") as f:
            return next(csv.reader(f), [])
    return []


def detect_format(path: Path) -> str:
    """From the file itself: RouterBench's wide table has `<model>|total_cost` columns."""
    suffix = path.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        return "routerbench"
    if suffix in (".parquet", ".csv"):
        cols = _columns(path)
        if any(c.endswith("|total_cost") for c in cols):
            return "routerbench"
        if {"query_id", "query", "model", "score"} <= set(cols):
            return "long"
    if suffix == ".json":
        return "routeprofile" if _json_record_has(path, "model_performance") else "scores-json"
    raise ValueError(f"cannot tell the format of {str(path)!r}; pass --format ({', '.join(FORMATS)})")


def _json_record_has(path: Path, key: str, head: int = 1 << 20) -> bool:
    """Whether the first records of a JSON file (its first `head` bytes) have the key `key`; a
    string value holding the text would have its quotes escaped."""
    import re

    with open(path, "rb") as f:
        text = f.read(head).decode("utf-8", "ignore")
    return re.search(r'(?<!\\)"' + re.escape(key) + r'"\s*:', text) is not None


def _as_mapping(value) -> dict:
    """A scores record: a dict, or its Python or JSON text form."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        import ast

        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = ast.literal_eval(value)
        if isinstance(parsed, dict):
            return parsed
    raise ValueError(f"scores must be a mapping of model to score, got {str(value)[:60]!r}")


def prompt_text(value) -> str:
    """A prompt that may be a list of turns, or that list's Python or JSON text form: the turns
    joined by blank lines, so the question (the last turn) ends the text."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            import ast

            try:
                value = json.loads(stripped)
            except json.JSONDecodeError:
                try:
                    value = ast.literal_eval(stripped)
                except (ValueError, SyntaxError):
                    return value
        else:
            return value
    if isinstance(value, (list, tuple)):
        turns = [t.get("content", "") if isinstance(t, dict) else str(t) for t in value]
        return "\n\n".join(turns)
    return "" if value is None else str(value)


def _read_routerbench(path: Path) -> EvalTable:
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        df = pd.read_pickle(path)
    elif suffix == ".parquet":
        df = pd.read_parquet(path)
    else:
        df = pd.read_csv(path)
    models = tuple(sorted(c[: -len("|total_cost")] for c in df.columns if c.endswith("|total_cost")))
    missing = [m for m in models if m not in df.columns]
    if "prompt" not in df.columns or missing or not models:
        raise ValueError(f"{str(path)!r} is not a RouterBench table (needs prompt, <model>, <model>|total_cost)")
    scores = df[list(models)].to_numpy(dtype=np.float32)
    costs = df[[f"{m}|total_cost" for m in models]].to_numpy(dtype=np.float32)
    queries = [prompt_text(v) for v in df["prompt"].tolist()]
    task = df["eval_name"].astype(str).tolist() if "eval_name" in df.columns else None
    return EvalTable(queries, models, scores, costs, None, task, (str(path),))


def _read_routeprofile(path: Path) -> EvalTable:
    """RouteProfile's records: `{query, task_name, model_performance: {model: {task_performance,
    prompt_tokens, completion_tokens, success, ...}}}`, `model_performance` a mapping or its Python
    or JSON text. A model's failed call (`success` false) counts as not evaluated."""
    rows = json.loads(path.read_text())
    if not isinstance(rows, list) or not rows or "model_performance" not in rows[0]:
        raise ValueError(f"{str(path)!r} is not a list of RouteProfile records (query, model_performance)")
    perf = [_as_mapping(r["model_performance"]) for r in rows]
    models = tuple(sorted({m for p in perf for m in p}))
    col = {m: j for j, m in enumerate(models)}
    grids = {k: np.full((len(rows), len(models)), np.nan, np.float32)
             for k in ("task_performance", "prompt_tokens", "completion_tokens")}  # fmt: skip
    for i, p in enumerate(perf):  # file parsing: one pass over the records
        for m, v in p.items():
            if not isinstance(v, dict) or v.get("success") is False:
                continue
            for k, g in grids.items():
                if v.get(k) is not None:
                    g[i, col[m]] = float(v[k])
    queries = [prompt_text(r.get("query", r.get("question", ""))) for r in rows]
    task = [str(r["task_name"]) for r in rows] if all("task_name" in r for r in rows) else None
    return EvalTable(queries, models, grids["task_performance"], None, grids["completion_tokens"], task, (str(path),),
                     input_tokens=grids["prompt_tokens"])  # fmt: skip


def with_prices(part: EvalTable, prices: dict[str, dict[str, float]]) -> EvalTable:
    """Costs and answer lengths through prices (USD per 1M tokens; models without prices keep NaN):
    a table with token counts and no costs gets each answer's cost; one with costs and no answer
    lengths (RouterBench) gets each answer's length, (cost - prompt tokens x input price) / output
    price, with prompt tokens counted from the UTF-8 length as the `expected` mode does (never
    below 0)."""
    from router.cost import token_usd

    priced = [j for j, m in enumerate(part.models) if m in prices]
    if not priced:
        return part
    pin = np.full(len(part.models), np.nan)
    pout = np.full(len(part.models), np.nan)
    pin[priced] = [float(prices[part.models[j]]["input_price"]) for j in priced]
    pout[priced] = [float(prices[part.models[j]]["output_price"]) for j in priced]
    if part.costs is None and part.output_tokens is not None:
        tokens_in = part.input_tokens if part.input_tokens is not None else prompt_tokens(part.queries)[:, None]
        return replace(part, costs=token_usd(tokens_in, part.output_tokens, pin, pout).astype(np.float32))
    if part.costs is not None and part.output_tokens is None:
        tokens_in = part.input_tokens if part.input_tokens is not None else prompt_tokens(part.queries)[:, None]
        answer = (part.costs.astype(np.float64) * 1e6 - tokens_in * pin) / pout
        return replace(part, output_tokens=np.maximum(answer, 0).astype(np.float32))
    return part


def prompt_tokens(queries: Sequence[str]) -> np.ndarray:
    """Prompt tokens [N] as the job's `expected` mode counts them (from the UTF-8 length)."""
    from router.cost import estimate_input_tokens

    utf8 = np.fromiter((len(q.encode()) for q in queries), np.int64, len(queries))
    return estimate_input_tokens(utf8).astype(np.float64)


def task_from_file(path: Path) -> str:
    """`mmlu_train.json` -> `mmlu`: the task a file of one task holds, shared by its train and test."""
    stem = path.stem
    for suffix in ("_train", "_test", "-train", "-test"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _read_scores_json(path: Path) -> tuple[list[str], list[dict], list[str] | None]:
    rows = json.loads(path.read_text())
    if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict) or "scores" not in rows[0]:
        raise ValueError(f"{str(path)!r} is not a list of {{'question', 'scores'}} records")
    queries = [prompt_text(r.get("question", r.get("query", ""))) for r in rows]
    task = [str(r["task"]) for r in rows] if all("task" in r for r in rows) else None
    return queries, [_as_mapping(r["scores"]) for r in rows], task


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
    return EvalTable(queries, tuple(models.tolist()), grid("score"), grid("cost"), out, task, (str(path),),
                     input_tokens=grid("input_tokens"))  # fmt: skip


def read_eval_table(
    paths: Sequence[str | Path],
    fmt: str | None = None,
    *,
    tasks_from_files: bool = False,
    score_reading: str = "auto",
    prices: dict[str, dict[str, float]] | None = None,
) -> EvalTable:
    """Read and concatenate evaluation tables; models are the union, NaN where not evaluated.

    `tasks_from_files`: each file holds one task, named by the file (see `task_from_file`).
    `score_reading`: how scores are read, per file (`read_scores`); the result's `binarized` names the
    files (or tasks of a file) whose scores were turned into 0/1. `prices` (model -> input_price,
    output_price in USD per 1M tokens): costs from token counts, or answer lengths from costs, where a
    file has one and not the other (`with_prices`)."""
    parts: list[EvalTable] = []
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"evaluation table {str(p)!r} not found")
        f = fmt or detect_format(p)
        if f == "routerbench":
            parts.append(_read_routerbench(p))
        elif f == "long":
            parts.append(_read_long(p))
        elif f == "routeprofile":
            parts.append(_read_routeprofile(p))
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
    if tasks_from_files:
        parts = [replace(t, task=[task_from_file(Path(t.sources[0]))] * len(t.queries)) for t in parts]
    parts = [read_scores(t, score_reading) for t in parts]
    if prices:
        parts = [with_prices(t, prices) for t in parts]
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
        input_tokens=stack("input_tokens"),
        task=tasks,
        sources=tuple(s for t in parts for s in t.sources),
        binarized=tuple(b for t in parts for b in t.binarized),
    )
