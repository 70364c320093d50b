"""`router eval`: fit profiles on a training table, route a held-out test table, and compare the
router with the baselines a user would otherwise pick (DESIGN.md 3, "Quality bar").

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
from router.cost import estimate_input_tokens, token_usd
from router.backends.encoder import MINILM, encode_cached
from router.method.evaldata import EvalTable, read_eval_table
from router.method.fitting import ProfileSettings, fit_profiles

KNN_K = 10


@dataclass(frozen=True)
class Costs:
    predicted: np.ndarray  # [N, M]: what the router plans with
    actual: np.ndarray  # [N, M]: what a choice is charged
    unit: str
    source: str


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


def _token_estimate(queries: Sequence[str]) -> np.ndarray:
    """Prompt tokens as the job's `expected` mode counts them (from the UTF-8 length)."""
    utf8 = np.fromiter((len(q.encode()) for q in queries), np.int64, len(queries))
    return estimate_input_tokens(utf8, "expected").astype(np.float64)


def table_costs(
    train: EvalTable, test: EvalTable, models: Sequence[str], prices: dict | None, output_tokens: float
) -> Costs:
    """The test table's costs, and the router's prediction of them from what it may know."""
    cols_tr = [train.models.index(m) for m in models]
    cols_te = [test.models.index(m) for m in models]
    tokens = _token_estimate(test.queries)
    if test.costs is not None:
        actual = test.costs[:, cols_te].astype(np.float64)
        if train.costs is not None:
            # Per model, cost ~ a + b * prompt tokens, fitted on the training table.
            x = _token_estimate(train.queries)
            design = np.stack([np.ones_like(x), x], axis=1)
            y = np.nan_to_num(train.costs[:, cols_tr].astype(np.float64))
            coef, *_ = np.linalg.lstsq(design, y, rcond=None)
            predicted = np.maximum(np.stack([np.ones_like(tokens), tokens], axis=1) @ coef, 1e-12)
            return Costs(predicted, actual, "table", "the table's costs; predicted from prompt length (fit on train)")
        return Costs(actual, actual, "table", "the table's costs")
    if prices:
        missing = [m for m in models if m not in prices]
        if missing:
            raise ValueError(f"prices lack model {missing[0]!r}")
        pin = np.array([float(prices[m]["input_price"]) for m in models])
        pout = np.array([float(prices[m]["output_price"]) for m in models])
        c = token_usd(tokens[:, None], output_tokens, pin[None, :], pout[None, :])
        return Costs(c, c, "USD", f"prices x tokens (input from the text, {output_tokens:g} output tokens)")
    ones = np.ones((len(test.queries), len(models)))
    return Costs(ones, ones, "rows", "equal costs (no costs in the table and no --prices)")


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
    filled = np.where(np.isnan(train_scores), np.nanmean(train_scores, axis=0), train_scores)
    out = np.empty((len(test_emb), train_scores.shape[1]), np.float32)
    for lo in range(0, len(test_emb), 2048):
        sims = test_emb[lo : lo + 2048] @ train_emb.T
        nn = np.argpartition(-sims, min(k, sims.shape[1] - 1), axis=1)[:, :k]
        out[lo : lo + 2048] = filled[nn].mean(axis=1)
    return out


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


def evaluate(
    train_paths: Sequence[str],
    test_paths: Sequence[str],
    *,
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
    """`annotator`: the `router.method.annotate.LLMAnnotator` of an `llm` or `distilled` setting; with
    `llm` it also annotates the test queries (a generation each), with `distilled` the heads do."""
    train = read_eval_table(train_paths, fmt, tasks_from_files=tasks_from_files, score_reading=score_reading)
    test = read_eval_table(test_paths, fmt, tasks_from_files=tasks_from_files, score_reading=score_reading)
    models = [m for m in train.models if m in test.models]
    if not models:
        raise ValueError("the training and test tables share no model")
    tr_scores = train.scores[:, [train.models.index(m) for m in models]]
    te_scores = test.scores[:, [test.models.index(m) for m in models]]
    te_scores = np.nan_to_num(te_scores)
    prices = load_prices(prices_path) if prices_path else None
    costs = table_costs(train, test, models, prices, output_tokens)

    tr_emb = encode_cached(encoder, train.queries, window=settings.window)
    te_emb = encode_cached(encoder, test.queries, window=settings.window)
    full = np.full((len(train.queries), len(train.models)), np.nan, np.float32)
    full[:, [train.models.index(m) for m in models]] = tr_scores
    profiles = fit_profiles(train, tr_emb, encoder=encoder, settings=settings, models=models, scores=full,
                            annotator=annotator)  # fmt: skip
    te_tasks = test.task if settings.use_tasks else None
    if settings.annotator == "llm":
        from dataclasses import replace

        ann = annotator.annotate(test.queries, te_emb)
        quality = profiles.score_annotated(replace(ann, tasks=profiles.task_index(te_tasks)))
    else:
        quality = profiles.score(te_emb, te_tasks)

    best = int(np.nanargmax(np.nanmean(tr_scores, axis=0)))
    best_single = {"model": models[best], **_outcome(te_scores, costs.actual, np.full(len(te_scores), best))}
    best_cost = best_single["cost"]
    oracle_choice = np.where(
        te_scores == te_scores.max(axis=1, keepdims=True), costs.actual, np.inf
    ).argmin(axis=1)  # the cheapest of the models that scored best on the row
    cheapest_model = int(costs.predicted.sum(axis=0).argmin())

    def route(q: np.ndarray, budget: float) -> tuple[dict[str, float], float]:
        sol = solve_budget(q, costs.predicted, budget, allow_skip=True)
        return _outcome(te_scores, costs.actual, sol.choice), sol.lam

    router, _ = route(quality, math.inf)
    fractions = np.round(np.arange(0.02, 1.5001, 0.02), 4)
    sweep = []
    for f in fractions:
        o, lam = route(quality, f * best_cost)
        sweep.append({"fraction": float(f), "lambda": lam, **o})
    at_best_cost, _ = route(quality, best_cost)
    matches = [s["fraction"] for s in sweep if s["accuracy"] >= best_single["accuracy"]]
    knn_q = _knn_quality(tr_emb, full[:, [train.models.index(m) for m in models]], te_emb)
    result: dict[str, Any] = {
        "n_train": len(train.queries),
        "n_test": len(test.queries),
        "models": models,
        "cost_unit": costs.unit,
        "cost_source": costs.source,
        "scores": _score_note(score_reading, train.binarized + test.binarized),
        "best_single": best_single,
        "oracle": _outcome(te_scores, costs.actual, oracle_choice),
        "router": router,
        "frontier": [{"lambda": s["lambda"], "accuracy": s["accuracy"], "cost": s["cost"]} for s in sweep],
        "accuracy_at_best_single_cost": at_best_cost["accuracy"],
        "cost_fraction_to_match_best_single": min(matches) if matches else None,
        "single_models": {
            m: _outcome(te_scores, costs.actual, np.full(len(te_scores), j)) for j, m in enumerate(models)
        },
        "baselines": {
            "cheapest": {"model": models[cheapest_model],
                         **_outcome(te_scores, costs.actual, np.full(len(te_scores), cheapest_model))},
            "knn": {"k": KNN_K, **route(knn_q, math.inf)[0]},
        },
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
    }  # fmt: skip
    if "annotation" in profiles.meta:
        result["annotation"] = {**profiles.meta["annotation"], "llm_all_calls": dict(annotator.stats)}
    if budget_fraction is not None:
        budget = budget_fraction * best_cost
        o, lam = route(quality, budget)
        result["at_budget"] = {"fraction": budget_fraction, "budget": budget, "lambda": lam, **o}
        result["baselines"]["random_at_budget"] = _random_at_budget(costs, te_scores, budget)
        result["baselines"]["knn_at_budget"] = route(knn_q, budget)[0]
    return result


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
    return "\n".join(lines)


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
