"""`router eval`: fit profiles on a training table, route a held-out test table, and compare the
router with the baselines a user would otherwise pick.

Budgets and lambda are chosen from predicted costs only; test scores are used for scoring the
result, never for choosing it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from router.budget import solve_budget
from router.cost import token_usd
from router.backends.encoder import MINILM, encode_cached
from router.method.calibration import evidence_features, ridge
from router.method.evaldata import EvalTable, prompt_tokens, read_eval_table
from router.method.fitting import ProfileSettings, fit_profiles

KNN_K = 10
# The strong simple baselines' settings, each chosen on a held-out part of the training rows.
STRONG_K = (10, 25, 50, 100, 200)
STRONG_BLEND = (0.0, 0.25, 0.5, 0.75, 1.0)  # weight of the neighbours' mean against the task mean
RIDGE_ALPHA = (0.1, 1.0, 10.0, 100.0)
TUNE_SHARE = 0.2  # of the training rows held out to choose those settings
# Budgets at which every predictor is compared, as fractions of the best single model's cost.
COMPARE_FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
CALIBRATION_BINS = 10


@dataclass(frozen=True)
class Costs:
    predicted: np.ndarray  # [N, M]: what the router plans with
    actual: np.ndarray  # [N, M]: what a choice is charged
    unit: str
    source: str
    actual_known: bool = False  # the table says what each answer cost (else actual is the prediction)


def load_prices(path: str) -> dict[str, dict[str, float]]:
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        prices = yaml.safe_load(text)
    else:
        prices = json.loads(text)
    if not isinstance(prices, dict):
        raise ValueError(f"prices file {path!r} must map each model name to input_price and output_price")
    return prices


def _price_arrays(prices: dict, models: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    missing = [m for m in models if m not in prices]
    if missing:
        raise ValueError(f"prices lack model {missing[0]!r}")
    return (np.array([float(prices[m]["input_price"]) for m in models]),
            np.array([float(prices[m]["output_price"]) for m in models]))  # fmt: skip


def table_costs(
    train: EvalTable,
    test: EvalTable,
    models: Sequence[str],
    prices: dict | None,
    output_tokens: float,
    predicted_lengths: np.ndarray | None = None,
) -> Costs:
    """The test table's costs, and the router's prediction of them from what it may know.
    `predicted_lengths` [N, M]: each row's expected answer tokens per model from the length
    profiles (NaN: no length data, `output_tokens` is planned instead)."""
    cols_tr = [train.models.index(m) for m in models]
    cols_te = [test.models.index(m) for m in models]
    tokens = prompt_tokens(test.queries)
    if prices and predicted_lengths is not None and np.isfinite(predicted_lengths).any():
        return _length_costs(test, cols_te, _price_arrays(prices, models), output_tokens, predicted_lengths)
    if test.costs is not None:
        actual = test.costs[:, cols_te].astype(np.float64)
        if train.costs is not None:
            # Per model, cost ~ a + b * prompt tokens, fitted on the training table.
            x = prompt_tokens(train.queries)
            design = np.stack([np.ones_like(x), x], axis=1)
            y = np.nan_to_num(train.costs[:, cols_tr].astype(np.float64))
            coef, *_ = np.linalg.lstsq(design, y, rcond=None)
            predicted = np.maximum(np.stack([np.ones_like(tokens), tokens], axis=1) @ coef, 1e-12)
            return Costs(predicted, actual, "table",
                         "the table's costs; predicted from prompt length (fit on train)", True)  # fmt: skip
        return Costs(actual, actual, "table", "the table's costs", True)
    if prices:
        pin, pout = _price_arrays(prices, models)
        c = token_usd(tokens[:, None], output_tokens, pin[None, :], pout[None, :])
        return Costs(c, c, "USD", f"prices x tokens (input from the text, {output_tokens:g} output tokens)")
    ones = np.ones((len(test.queries), len(models)))
    return Costs(ones, ones, "rows", "equal costs (no costs in the table and no --prices)")


def _length_costs(test: EvalTable, cols: list[int], prices, output_tokens: float, lengths: np.ndarray) -> Costs:
    """Predicted: prices x (prompt tokens + each row's predicted answer length). Prompt tokens as the
    table counted them where it has counts (as a job that counts them would know them), else from
    the UTF-8 length. Actual: the table's costs, else its answers' lengths at the same prices."""
    pin, pout = prices
    estimated = prompt_tokens(test.queries)[:, None]
    counted = test.input_tokens is not None
    tokens_in = estimated
    if counted:
        tokens_in = np.where(np.isnan(test.input_tokens[:, cols]), estimated, test.input_tokens[:, cols])
    planned = np.where(np.isnan(lengths), output_tokens, lengths)
    predicted = token_usd(tokens_in, planned, pin, pout)
    source = ("prices x tokens: prompt tokens " + ("as counted in the table" if counted else "from the text")
              + f", answers at each row's predicted length (length profiles; {output_tokens:g} without)")  # fmt: skip
    if test.costs is not None:
        actual = test.costs[:, cols].astype(np.float64)
        return Costs(predicted, actual, "USD", source + "; actual: the table's costs", True)
    if test.output_tokens is not None:
        actual = token_usd(tokens_in, test.output_tokens[:, cols].astype(np.float64), pin, pout)
        return Costs(predicted, actual, "USD", source + "; actual: the table's answer lengths", True)
    return Costs(predicted, predicted, "USD", source)


def _score_note(reading: str, binarized: tuple[tuple[str, str | None], ...]) -> str:
    if reading == "binary":
        return "binary: any score > 0 counts as correct"
    if not binarized:
        return "as in the tables"
    names = sorted({Path(path).name + (f" [{task}]" if task is not None else "") for path, task in binarized})
    return ("as in the tables, except choice probabilities (0 when wrong, else the probability of the right "
            f"choice), read as correct when > 0: {', '.join(names)}")  # fmt: skip


def _outcome(scores: np.ndarray, cost: np.ndarray, choice: np.ndarray) -> dict[str, float]:
    rows = np.arange(len(choice))
    picked = choice >= 0
    acc = float(np.nansum(np.where(picked, scores[rows, np.maximum(choice, 0)], 0.0)) / len(choice))
    spent = float(np.where(picked, cost[rows, np.maximum(choice, 0)], 0.0).sum())
    return {"accuracy": acc, "cost": spent}


def _knn_quality(train_emb, train_scores, test_emb, k: int = KNN_K) -> np.ndarray:
    """The k-nearest-neighbour router's quality: the mean score of each row's k most similar training rows."""
    return _neighbour_means(train_emb, train_scores, test_emb, (k,))[k]


def _random_at_budget(costs: Costs, scores: np.ndarray, budget: float, draws: int = 20) -> dict[str, float]:
    """Each row picks a uniformly random model, or its cheapest one with the probability that
    brings the expected predicted spend to the budget."""
    n, m = costs.predicted.shape
    uniform = costs.predicted.mean(axis=1).sum()
    cheapest = costs.predicted.min(axis=1).sum()
    p = 0.0 if uniform <= budget else min(1.0, (uniform - budget) / max(uniform - cheapest, 1e-300))
    rng = np.random.default_rng(0)
    acc, spent = [], []
    for _ in range(draws):
        choice = rng.integers(m, size=n)
        cheap = rng.random(n) < p
        choice = np.where(cheap, costs.predicted.argmin(axis=1), choice)
        o = _outcome(scores, costs.actual, choice)
        acc.append(o["accuracy"])
        spent.append(o["cost"])
    return {"accuracy": float(np.mean(acc)), "cost": float(np.mean(spent)), "p_cheapest": p}


def _task_means(scores: np.ndarray, tasks: Sequence[str] | None, test_tasks: Sequence[str] | None,
                n: int) -> np.ndarray:  # fmt: skip
    """Per test row (`n` of them), each model's mean score over the training rows of its task (its
    mean over all training rows where the task is unknown or unseen)."""
    overall = np.nanmean(scores, axis=0)
    if tasks is None or test_tasks is None:
        return np.broadcast_to(overall, (n, scores.shape[1])).copy()
    out = np.tile(overall, (n, 1))
    tasks, test_tasks = np.asarray(tasks, dtype=object), np.asarray(test_tasks, dtype=object)
    for t in np.unique(tasks):
        rows = test_tasks == t
        if rows.any():
            with np.errstate(all="ignore"):
                mean = np.nanmean(scores[tasks == t], axis=0)
            out[rows] = np.where(np.isnan(mean), overall, mean)
    return out


def _neighbour_means(train_emb, scores, test_emb, ks: Sequence[int]) -> dict[int, np.ndarray]:
    """For each k, per test row each model's mean score over its k most similar training rows."""
    filled = np.where(np.isnan(scores), np.nanmean(scores, axis=0), scores)
    kmax = min(max(ks), len(train_emb))
    out = {k: np.empty((len(test_emb), scores.shape[1]), np.float32) for k in ks}
    for lo in range(0, len(test_emb), 2048):
        sims = test_emb[lo : lo + 2048] @ train_emb.T
        nn = np.argpartition(-sims, kmax - 1, axis=1)[:, :kmax] if kmax < sims.shape[1] else np.tile(
            np.arange(sims.shape[1]), (len(sims), 1))  # fmt: skip
        order = np.take_along_axis(sims, nn, axis=1).argsort(axis=1)[:, ::-1]
        nn = np.take_along_axis(nn, order, axis=1)
        running = np.cumsum(filled[nn], axis=1)  # [n, kmax, M]
        for k in ks:
            out[k][lo : lo + 2048] = running[:, min(k, kmax) - 1] / min(k, kmax)
    return out


def _ridge_features(emb: np.ndarray, tasks: Sequence[str] | None, known: Sequence[str]) -> np.ndarray:
    """The embedding, a one-hot of the task (among the training tasks `known`) and a bias: the
    product's evidence features (`router.method.calibration.evidence_features`)."""
    index = {t: i for i, t in enumerate(known)}
    ids = None if tasks is None else np.array([index.get(t, -1) for t in tasks], np.int64)
    return evidence_features(emb, ids, len(known)).astype(np.float64)


def _mse(pred: np.ndarray, y: np.ndarray) -> float:
    k = np.isfinite(y)
    return float(((pred[k] - y[k]) ** 2).mean())


def strong_baselines(tr_emb, tr_scores, tr_tasks, te_emb, te_tasks, seed: int = 0) -> dict[str, Any]:
    """The strong simple baselines' predicted quality for the test rows [N, M], each with its
    settings chosen on TUNE_SHARE of the training rows (fitted on the rest), then refitted on all:

    - `task_mean`: each model's mean score on the row's task;
    - `knn_task`: the mean score of the k most similar training rows, blended with the task mean
      (k and the blend chosen);
    - `ridge`: a ridge regression per model on the embedding and the task (alpha chosen)."""
    n = len(tr_emb)
    rng = np.random.default_rng(seed)
    hold = rng.random(n) < TUNE_SHARE
    fit, val = np.flatnonzero(~hold), np.flatnonzero(hold)
    task = lambda rows: None if tr_tasks is None else [tr_tasks[i] for i in rows]  # noqa: E731
    known = sorted(set(tr_tasks)) if tr_tasks is not None else []
    y_val = tr_scores[val]
    # kNN blended with the task mean
    tm_val = _task_means(tr_scores[fit], task(fit), task(val), len(val))
    nb_val = _neighbour_means(tr_emb[fit], tr_scores[fit], tr_emb[val], STRONG_K)
    k, w = min(((k, w) for k in STRONG_K for w in STRONG_BLEND),
               key=lambda kw: _mse(kw[1] * nb_val[kw[0]] + (1 - kw[1]) * tm_val, y_val))  # fmt: skip
    # ridge on embedding + task
    x_fit, x_val = _ridge_features(tr_emb[fit], task(fit), known), _ridge_features(tr_emb[val], task(val), known)
    alpha = min(RIDGE_ALPHA, key=lambda a: _mse(x_val @ ridge(x_fit, tr_scores[fit], a), y_val))
    task_mean = _task_means(tr_scores, tr_tasks, te_tasks, len(te_emb))
    knn = _neighbour_means(tr_emb, tr_scores, te_emb, (k,))[k]
    x_tr, x_te = _ridge_features(tr_emb, tr_tasks, known), _ridge_features(te_emb, te_tasks, known)
    return {
        "task_mean": task_mean,
        "knn_task": w * knn + (1 - w) * task_mean,
        "ridge": x_te @ ridge(x_tr, tr_scores, alpha),
        "settings": {"knn_task": {"k": int(k), "blend": float(w)}, "ridge": {"alpha": float(alpha)}},
    }


def calibration(pred: np.ndarray, scores: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Predicted quality against realised score over every (row, model) with a score: per bin of
    predicted quality (equal widths over [0, 1]) the mean prediction, the mean score and the count,
    and the expected calibration error (the bins' |mean prediction - mean score|, weighted by count)."""
    k = np.isfinite(scores) & np.isfinite(pred)
    p, y = np.clip(pred[k], 0.0, 1.0), scores[k]
    b = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(b, minlength=bins)
    mean_p = np.bincount(b, p, minlength=bins) / np.maximum(count, 1)
    mean_y = np.bincount(b, y, minlength=bins) / np.maximum(count, 1)
    ece = float((count * np.abs(mean_p - mean_y)).sum() / max(count.sum(), 1))
    return {"ece": ece, "bins": [{"predicted": float(a), "realised": float(c), "count": int(n)}
                                 for a, c, n in zip(mean_p, mean_y, count) if n]}  # fmt: skip


def aiq(points: Sequence[dict[str, float]], lo: float, hi: float) -> float:
    """RouterBench's average improvement in quality: the area under the best accuracy reached at each
    cost (the frontier's non-decreasing envelope) from `lo` to `hi`, over `hi - lo`."""
    if hi <= lo:
        return float("nan")
    pts = sorted((p["cost"], p["accuracy"]) for p in points)
    grid = np.linspace(lo, hi, 513)
    cost = np.array([c for c, _ in pts])
    best = np.maximum.accumulate(np.array([a for _, a in pts]))
    at = np.searchsorted(cost, grid, side="right") - 1
    env = np.where(at >= 0, best[np.maximum(at, 0)], 0.0)
    return float(np.trapezoid(env, grid) / (hi - lo))


@dataclass(frozen=True)
class Predictions:
    """What the router predicts for test rows from training rows it was not fitted on."""

    quality: np.ndarray  # [N, M]
    knn_quality: np.ndarray  # [N, M]
    task_mean: np.ndarray  # [N, M]: the strong simple baselines (`strong_baselines`)
    knn_task: np.ndarray  # [N, M]
    ridge: np.ndarray  # [N, M]
    output_tokens: np.ndarray  # [N, M]: expected answer tokens (length profiles); NaN: no length data
    mean_output_tokens: np.ndarray  # [N, M]: each model's mean answer length on the training rows
    length_source: tuple[str, ...]  # per model, Profiles.length_source
    meta: dict[str, Any]  # the profiles' meta


def _fit_and_predict(
    train: EvalTable, tr_emb: np.ndarray, test: EvalTable, te_emb: np.ndarray, models: Sequence[str], *,
    encoder: str, settings: ProfileSettings, annotator,
) -> Predictions:  # fmt: skip
    cols = [train.models.index(m) for m in models]
    full = np.full((len(train.queries), len(train.models)), np.nan, np.float32)
    full[:, cols] = train.scores[:, cols]
    profiles = fit_profiles(train, tr_emb, encoder=encoder, settings=settings, models=models, scores=full,
                            annotator=annotator)  # fmt: skip
    te_tasks = test.task if settings.use_tasks else None
    if settings.annotator == "llm":
        from dataclasses import replace

        ann = replace(annotator.annotate(test.queries, te_emb), tasks=profiles.task_index(te_tasks))
    else:
        ann = profiles.annotate(te_emb, te_tasks)
    mean = np.full(len(models), np.nan)
    if train.output_tokens is not None:
        lengths = train.output_tokens[:, cols].astype(np.float64)
        seen = np.isfinite(lengths)
        mean = np.where(seen.any(0), np.where(seen, lengths, 0).sum(0) / np.maximum(seen.sum(0), 1), np.nan)
    strong = strong_baselines(tr_emb, full[:, cols], train.task, te_emb, test.task, settings.seed)
    return Predictions(
        quality=profiles.quality(te_emb, ann),
        knn_quality=_knn_quality(tr_emb, full[:, cols], te_emb),
        task_mean=strong["task_mean"], knn_task=strong["knn_task"], ridge=strong["ridge"],
        output_tokens=profiles.expected_output_tokens(ann).astype(np.float64),
        mean_output_tokens=np.broadcast_to(mean, (len(test.queries), len(models))),
        length_source=profiles.length_source,
        meta=profiles.meta,
    )


def _cross_fitted(table: EvalTable, emb: np.ndarray, models: Sequence[str], folds: int, seed: int,
                  **fit) -> Predictions:  # fmt: skip
    """Every row predicted by profiles fitted on the other folds; rows with the same query text share
    a fold, so no query is both fitted on and predicted."""
    from router.method.lengths import query_folds

    fold = query_folds(table.queries, folds, seed)
    parts = {}
    for f in range(folds):
        test, train = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        parts[f] = (test, _fit_and_predict(table.take(train), emb[train], table.take(test), emb[test], models, **fit))
    shape = (len(table.queries), len(models))
    out = {k: np.empty(shape) for k in ("quality", "knn_quality", "task_mean", "knn_task", "ridge", "output_tokens",
                                        "mean_output_tokens")}  # fmt: skip
    for rows, p in parts.values():
        for k, a in out.items():
            a[rows] = getattr(p, k)
    last = parts[folds - 1][1]
    return Predictions(**out, length_source=last.length_source, meta=last.meta)


def _spend(cost: np.ndarray, choice: np.ndarray) -> float:
    picked = choice >= 0
    return float(np.where(picked, cost[np.arange(len(choice)), np.maximum(choice, 0)], 0.0).sum())


def cost_prediction(costs: Costs, models: Sequence[str]) -> dict[str, Any]:
    """Predicted against actual cost of sending every row to each model (rows where the actual is
    known), per model and in all."""

    def entry(p: float, a: float) -> dict[str, float]:
        return {"predicted": p, "actual": a, "ratio": p / a if a > 0 else float("nan")}

    known = np.isfinite(costs.actual)
    p = np.where(known, costs.predicted, 0).sum(axis=0)
    a = np.where(known, costs.actual, 0).sum(axis=0)
    return {"total": entry(float(p.sum()), float(a.sum())),
            "per_model": {m: entry(float(p[j]), float(a[j])) for j, m in enumerate(models)}}  # fmt: skip


def length_prediction(pred: Predictions, actual: np.ndarray, models: Sequence[str], planned: float,
                      validation: str) -> dict[str, Any]:  # fmt: skip
    """Per-row error of the answer lengths the plan uses (the length profiles', `planned` where a
    model has none) against the baseline of each model's mean length on its training rows: mean
    absolute and root-mean-square error in tokens and mean absolute log ratio, per model and over
    all answers; and predicted against actual total tokens."""
    used = np.where(np.isnan(pred.output_tokens), planned, pred.output_tokens)
    base = np.where(np.isnan(pred.mean_output_tokens), planned, pred.mean_output_tokens)
    known = np.isfinite(actual)

    def errors(cols) -> dict[str, float]:
        k = known[:, cols]
        y, p, b = actual[:, cols][k], used[:, cols][k], base[:, cols][k]
        log = lambda v: np.log(np.maximum(v, 1.0))  # noqa: E731
        return {"answers": int(k.sum()),
                "mae": float(np.abs(p - y).mean()), "mae_model_mean": float(np.abs(b - y).mean()),
                "rmse": float(np.sqrt(((p - y) ** 2).mean())), "rmse_model_mean": float(np.sqrt(((b - y) ** 2).mean())),
                "log_mae": float(np.abs(log(p) - log(y)).mean()),
                "log_mae_model_mean": float(np.abs(log(b) - log(y)).mean()),
                "predicted_tokens": float(p.sum()), "actual_tokens": float(y.sum()),
                "total_ratio": float(p.sum() / y.sum()) if y.sum() > 0 else float("nan")}  # fmt: skip

    per_model = {m: {"source": pred.length_source[j], **errors([j])} for j, m in enumerate(models)}
    return {"validation": validation, "all": errors(list(range(len(models)))), "per_model": per_model}


def evaluate(
    train_paths: Sequence[str],
    test_paths: Sequence[str] | None = None,
    *,
    folds: int | None = None,
    fmt: str | None = None,
    prices_path: str | None = None,
    budget_fraction: float | None = None,
    output_tokens: float = 256.0,
    score_reading: str = "auto",
    tasks_from_files: bool = False,
    encoder: str = MINILM,
    settings: ProfileSettings = ProfileSettings(),
    annotator=None,
) -> dict[str, Any]:
    """Fit on `train_paths`, route `test_paths`; or, with `folds` and no test tables,
    cross-validate over the training tables' queries: each fold routed by profiles fitted on the
    others, then all rows routed together (the best single model is then the best on the whole
    table). `annotator`: the `router.method.annotate.LLMAnnotator` of an `llm` or `distilled`
    setting; with `llm` it also annotates the test queries (a generation each), with `distilled`
    the heads do."""
    if (folds is None) == (not test_paths):
        raise ValueError("give test tables or a number of folds (cross-validation over the training tables), not both")
    if folds is not None and folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    prices = load_prices(prices_path) if prices_path else None
    read = dict(tasks_from_files=tasks_from_files, score_reading=score_reading, prices=prices)
    train = read_eval_table(train_paths, fmt, **read)
    test = train if folds else read_eval_table(test_paths, fmt, **read)
    models = [m for m in train.models if m in test.models]
    if not models:
        raise ValueError("the training and test tables share no model")
    tr_scores = train.scores[:, [train.models.index(m) for m in models]]
    te_scores_raw = test.scores[:, [test.models.index(m) for m in models]]
    te_scores = np.nan_to_num(te_scores_raw)

    tr_emb = encode_cached(encoder, train.queries, window=settings.window)
    fit = dict(encoder=encoder, settings=settings, annotator=annotator)
    if folds:
        pred = _cross_fitted(train, tr_emb, models, folds, settings.seed, **fit)
        validation = f"{folds}-fold cross-validation over the queries"
    else:
        te_emb = encode_cached(encoder, test.queries, window=settings.window)
        pred = _fit_and_predict(train, tr_emb, test, te_emb, models, **fit)
        validation = "fitted on the training tables, measured on the test tables"
    costs = table_costs(train, test, models, prices, output_tokens, pred.output_tokens)
    quality = pred.quality

    best = int(np.nanargmax(np.nanmean(tr_scores, axis=0)))
    best_single = {"model": models[best], **_outcome(te_scores, costs.actual, np.full(len(te_scores), best))}
    best_cost = best_single["cost"]
    oracle_choice = np.where(
        te_scores == te_scores.max(axis=1, keepdims=True), costs.actual, np.inf
    ).argmin(axis=1)  # the cheapest of the models that scored best on the row
    cheapest_model = int(costs.predicted.sum(axis=0).argmin())

    def route(q: np.ndarray, budget: float) -> tuple[dict[str, float], float]:
        sol = solve_budget(q, costs.predicted, budget, allow_skip=True)
        outcome = _outcome(te_scores, costs.actual, sol.choice)
        return {**outcome, "predicted_cost": _spend(costs.predicted, sol.choice)}, sol.lam

    router, _ = route(quality, math.inf)
    fractions = np.round(np.arange(0.02, 1.5001, 0.02), 4)
    sweep = []
    for f in fractions:
        o, lam = route(quality, f * best_cost)
        sweep.append({"fraction": float(f), "lambda": lam, **o})
    at_best_cost, _ = route(quality, best_cost)
    matches = [s["fraction"] for s in sweep if s["accuracy"] >= best_single["accuracy"]]
    result: dict[str, Any] = {
        "n_train": len(train.queries),
        "n_test": len(test.queries),
        "models": models,
        "validation": validation,
        "cost_unit": costs.unit,
        "cost_source": costs.source,
        "actual_costs": costs.actual_known,
        "scores": _score_note(score_reading, train.binarized + test.binarized),
        "best_single": best_single,
        "oracle": _outcome(te_scores, costs.actual, oracle_choice),
        "router": router,
        "frontier": [{"lambda": s["lambda"], "accuracy": s["accuracy"], "cost": s["cost"],
                      "predicted_cost": s["predicted_cost"]} for s in sweep],
        "accuracy_at_best_single_cost": at_best_cost["accuracy"],
        "cost_fraction_to_match_best_single": min(matches) if matches else None,
        "single_models": {
            m: _outcome(te_scores, costs.actual, np.full(len(te_scores), j)) for j, m in enumerate(models)
        },
        "baselines": {
            "cheapest": {"model": models[cheapest_model],
                         **_outcome(te_scores, costs.actual, np.full(len(te_scores), cheapest_model))},
            "knn": {"k": KNN_K, **route(pred.knn_quality, math.inf)[0]},
        },
        "length_source": dict(zip(models, pred.length_source)),
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
    }  # fmt: skip
    result["comparison"] = compare(pred, te_scores_raw, fractions, best_cost, route, sweep)
    if costs.actual_known:
        result["cost_prediction"] = cost_prediction(costs, models)
        result["budget_use"] = _budget_use(sweep, best_cost)
    if test.output_tokens is not None and np.isfinite(pred.output_tokens).any():
        actual = test.output_tokens[:, [test.models.index(m) for m in models]].astype(np.float64)
        result["length_prediction"] = length_prediction(pred, actual, models, output_tokens, validation)
    if "annotation" in pred.meta:
        result["annotation"] = {**pred.meta["annotation"], "llm_all_calls": dict(annotator.stats)}
    if budget_fraction is not None:
        budget = budget_fraction * best_cost
        o, lam = route(quality, budget)
        share = (lambda spend: spend / budget) if budget > 0 else (lambda spend: float("nan"))
        result["at_budget"] = {"fraction": budget_fraction, "budget": budget, "lambda": lam, **o,
                               "budget_used": share(o["cost"]),
                               "predicted_budget_used": share(o["predicted_cost"])}  # fmt: skip
        result["baselines"]["random_at_budget"] = _random_at_budget(costs, te_scores, budget)
        result["baselines"]["knn_at_budget"] = route(pred.knn_quality, budget)[0]
    return result


PREDICTORS = {"router": "quality", "task_mean": "task_mean", "knn_task": "knn_task", "ridge": "ridge"}


def compare(pred: Predictions, scores: np.ndarray, fractions: np.ndarray, best_cost: float, route,
            router_sweep: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """The router against the strong simple baselines, each routed by the same solver on the same
    predicted costs over the budgets `fractions` x `best_cost` (the router's: `router_sweep`, already
    routed): accuracy and cost at COMPARE_FRACTIONS of them, the area under the quality-cost
    frontier (`aiq`, from no spend to the best single model's cost) and the calibration of the
    predicted quality (`calibration`)."""
    at_index = {f: int(np.argmin(np.abs(fractions - f))) for f in COMPARE_FRACTIONS}
    assert all(np.isclose(fractions[i], f) for f, i in at_index.items()), "COMPARE_FRACTIONS must be swept"
    out = {}
    for name, attr in PREDICTORS.items():
        q = getattr(pred, attr)
        sweep = router_sweep if name == "router" else [route(q, f * best_cost)[0] for f in fractions]
        at = {f"{f:g}": sweep[i] for f, i in at_index.items()}
        out[name] = {"at": at, "aiq": aiq(sweep, 0.0, best_cost), "calibration": calibration(q, scores)}
    return out


def _budget_use(sweep: list[dict[str, Any]], best_cost: float) -> dict[str, Any]:
    """Actual spend over the budget across the sweep's budgets that bind (the plan's predicted spend
    reaches 99% of them): what the plan buys with the money it is given."""
    used = [s["cost"] / (s["fraction"] * best_cost) for s in sweep
            if best_cost > 0 and s["predicted_cost"] >= 0.99 * s["fraction"] * best_cost]  # fmt: skip
    if not used:
        return {"binding_budgets": 0}
    return {"binding_budgets": len(used), "median": float(np.median(used)), "min": float(min(used)),
            "max": float(max(used))}  # fmt: skip


def format_eval(r: dict[str, Any]) -> str:
    lines = [f"train {r['n_train']} rows -> test {r['n_test']} rows, {len(r['models'])} models; "
             f"cost: {r['cost_source']} [{r['cost_unit']}]", f"scores: {r['scores']}"]  # fmt: skip

    def row(name: str, d: dict[str, Any]) -> str:
        return f"  {name:34} accuracy {d['accuracy']:.4f}   cost {d['cost']:.6g}"

    lines.append(row(f"best single ({r['best_single']['model']})", r["best_single"]))
    lines.append(row("router (lambda=0)", r["router"]))
    if "at_budget" in r:
        lines.append(row(f"router at {r['at_budget']['fraction']:g} x best cost", r["at_budget"]))
        lines.append(row("random at that budget", r["baselines"]["random_at_budget"]))
        lines.append(row("knn at that budget", r["baselines"]["knn_at_budget"]))
    lines.append(row(f"cheapest ({r['baselines']['cheapest']['model']})", r["baselines"]["cheapest"]))
    lines.append(row(f"knn (k={KNN_K}, lambda=0)", r["baselines"]["knn"]))
    lines.append(row("oracle", r["oracle"]))
    lines.append(f"  accuracy at the best single model's cost: {r['accuracy_at_best_single_cost']:.4f}")
    frac = r["cost_fraction_to_match_best_single"]
    lines.append("  smallest cost fraction matching the best single model: "
                 + ("never (up to 1.5)" if frac is None else f"{frac:g}"))  # fmt: skip
    return "\n".join(lines + _comparison_lines(r) + _cost_lines(r))


def _comparison_lines(r: dict[str, Any]) -> list[str]:
    """The router against the strong simple baselines: accuracy at budgets, AIQ, calibration error."""
    c = r.get("comparison")
    if not c:
        return []
    fr = list(next(iter(c.values()))["at"])
    lines = ["against strong simple baselines (the same solver and predicted costs; accuracy at each fraction "
             "of the best single model's cost, the area under the quality-cost frontier, calibration error):",
             f"  {'predictor':10}" + "".join(f"{'x' + f:>9}" for f in fr) + f"{'AIQ':>9}{'ECE':>8}"]  # fmt: skip
    for name, d in c.items():
        lines.append(f"  {name:10}" + "".join(f"{d['at'][f]['accuracy']:9.4f}" for f in fr)
                     + f"{d['aiq']:9.4f}{d['calibration']['ece']:8.3f}")  # fmt: skip
    at, area = router_margins(c)
    lines.append("  router - best baseline: " + ", ".join(f"x{f} {d:+.4f}" for f, d in at.items())
                 + f"; AIQ {area:+.4f}")  # fmt: skip
    return lines


def router_margins(comparison: dict[str, Any]) -> tuple[dict[str, float], float]:
    """The router against the best of the strong simple baselines in `compare`'s result: its
    accuracy minus theirs at each budget fraction, and its AIQ minus theirs."""
    others = [d for name, d in comparison.items() if name != "router"]
    router = comparison["router"]
    at = {f: router["at"][f]["accuracy"] - max(d["at"][f]["accuracy"] for d in others) for f in router["at"]}
    return at, router["aiq"] - max(d["aiq"] for d in others)


def plot_reliability(r: dict[str, Any], path: str) -> None:
    """Reliability diagram: per bin of predicted quality, the mean realised score, for the router and
    the strong baselines (on the diagonal: calibrated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=120)
    ax.plot([0, 1], [0, 1], ":", color="0.5", label="calibrated")
    for name, d in r["comparison"].items():
        bins = d["calibration"]["bins"]
        ax.plot([b["predicted"] for b in bins], [b["realised"] for b in bins], "o-", ms=3,
                label=f"{name} (ECE {d['calibration']['ece']:.3f})")  # fmt: skip
    ax.set_xlabel("predicted quality (bin mean)")
    ax.set_ylabel("realised score (bin mean)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability on {r['n_test']} held-out rows x {len(r['models'])} models")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _cost_lines(r: dict[str, Any]) -> list[str]:
    """What `router eval` says about spend: the budget used, predicted against actual cost, and
    the answer-length predictions' error."""
    lines = []
    if "at_budget" in r:
        a = r["at_budget"]
        if r.get("actual_costs"):
            lines.append(f"  at {a['fraction']:g} x best cost: budget {a['budget']:.6g}, actual spend "
                         f"{a['cost']:.6g} = {a['budget_used']:.1%} of it "
                         f"(predicted {a['predicted_budget_used']:.1%})")  # fmt: skip
        else:
            lines.append(f"  at {a['fraction']:g} x best cost: budget {a['budget']:.6g}, spend {a['cost']:.6g} = "
                         f"{a['budget_used']:.1%} of it (as predicted: the tables have no actual costs)")  # fmt: skip
    if r.get("budget_use", {}).get("binding_budgets"):
        u = r["budget_use"]
        lines.append(f"  budget used over the {u['binding_budgets']} binding budgets of the sweep: median "
                     f"{u['median']:.1%} (from {u['min']:.1%} to {u['max']:.1%})")  # fmt: skip
    if "cost_prediction" in r:
        c = r["cost_prediction"]
        per = ", ".join(f"{m} {e['ratio']:.3f}" for m, e in c["per_model"].items())
        lines.append(f"cost predicted / actual, every row to one model: total {c['total']['predicted']:.6g} / "
                     f"{c['total']['actual']:.6g} = {c['total']['ratio']:.3f}; per model: {per}")  # fmt: skip
    if "length_prediction" in r:
        lp = r["length_prediction"]
        a = lp["all"]
        lines.append(f"answer lengths ({lp['validation']}), per answer: mean absolute error {a['mae']:.1f} tokens "
                     f"against {a['mae_model_mean']:.1f} for each model's mean length "
                     f"({a['mae'] / a['mae_model_mean'] - 1:+.0%}); mean |log ratio| {a['log_mae']:.2f} "
                     f"against {a['log_mae_model_mean']:.2f}")  # fmt: skip
        for m, e in lp["per_model"].items():
            lines.append(f"  {m:36} [{e['source']:7}] error {e['mae']:7.1f} against {e['mae_model_mean']:7.1f} "
                         f"tokens; total predicted / actual {e['total_ratio']:.3f}")  # fmt: skip
    none = [m for m, s in r.get("length_source", {}).items() if s == "none"]
    if none and "length_prediction" in r:
        lines.append(f"  no length data for {', '.join(none)}: planned at --output-tokens")
    return lines


def plot_eval(r: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    f = r["frontier"]
    ax.plot([p["cost"] for p in f], [p["accuracy"] for p in f], "-", color="tab:blue", label="router (budget swept)")
    for name, d in r["single_models"].items():
        ax.plot(d["cost"], d["accuracy"], "o", color="0.7", ms=4)
    marks = [("best single", r["best_single"], "s", "k"), ("router, lambda=0", r["router"], "D", "tab:blue"),
             ("oracle", r["oracle"], "*", "tab:green"), ("cheapest", r["baselines"]["cheapest"], "v", "tab:brown"),
             ("knn, lambda=0", r["baselines"]["knn"], "^", "tab:purple")]  # fmt: skip
    if "at_budget" in r:
        marks += [("router at budget", r["at_budget"], "o", "tab:red"),
                  ("random at budget", r["baselines"]["random_at_budget"], "x", "tab:orange"),
                  ("knn at budget", r["baselines"]["knn_at_budget"], "P", "tab:purple")]  # fmt: skip
    for name, d, marker, color in marks:
        ax.plot(d["cost"], d["accuracy"], marker, color=color, ms=8, label=name)
    ax.set_xlabel(f"total cost on the test set [{r['cost_unit']}]")
    ax.set_ylabel("accuracy (mean score)")
    ax.set_title(f"Routing quality on {r['n_test']} held-out rows (grey: single models)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
