"""Cross-validation of the profile settings on a training table (never on a test table).

    python bench/profile_cv.py --train ../shared/data/llmrouter-9models/scores_train.json \
        --prices ../shared/data/llmrouter-9models/models.json [--folds 5] [--scores auto] [--tasks-from-files]

For each setting (what of a long prompt is embedded, number of clusters, list length r, whether
the task column is used) it fits profiles on k-1 folds and routes the held-out fold, and prints
mean accuracy at lambda=0 and at half of the best single model's cost, with the baseline of the
best single model measured on the same folds. Embeddings are cached, so reruns are quick.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.budget import solve_budget  # noqa: E402
from router.backends.encoder import encode_cached# noqa: E402
from router.method.evaldata import read_eval_table  # noqa: E402
from router.method.evaluate import load_prices, table_costs  # noqa: E402
from router.method.fitting import ProfileSettings, fit_profiles  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", nargs="+", required=True)
    ap.add_argument("--prices")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--scores", choices=["auto", "raw", "binary"], default="auto", help="as router eval --scores")
    ap.add_argument("--tasks-from-files", action="store_true")
    ap.add_argument("--windows", nargs="+", default=["head", "tail"])
    ap.add_argument("--clusters", nargs="+", type=int, default=[16, 32, 64])
    ap.add_argument("--top", nargs="+", type=int, default=[1, 3])
    args = ap.parse_args()

    table = read_eval_table(args.train, tasks_from_files=args.tasks_from_files, score_reading=args.scores)
    scores = table.scores
    costs = table_costs(table, table, table.models, load_prices(args.prices) if args.prices else None, 256.0)
    n = len(table.queries)
    fold = np.random.default_rng(0).permutation(n) % args.folds
    embs = {w: encode_cached("minilm", table.queries, window=w) for w in args.windows}
    use_tasks = [False, True] if table.task else [False]
    print(f"{n} rows, {len(table.models)} models, {args.folds} folds")
    print(f"{'window':6} {'k':>4} {'r':>2} {'tasks':>5}  {'acc@lambda=0':>12} {'acc@0.5 cost':>12} {'best single':>11}")
    for window, k, r, tasks in itertools.product(args.windows, args.clusters, args.top, use_tasks):
        settings = ProfileSettings(n_clusters=k, r_know=r, r_cap=r, window=window, use_tasks=tasks)
        acc0, acc_half, acc_best = [], [], []
        for f in range(args.folds):
            tr, te = fold != f, fold == f
            sub = replace(
                table,
                queries=[q for q, keep in zip(table.queries, tr) if keep],
                task=None if table.task is None else [t for t, keep in zip(table.task, tr) if keep],
                scores=scores[tr],
                costs=None,
                output_tokens=None,
                sources=(),
            )
            p = fit_profiles(sub, embs[window][tr], settings=settings)
            te_tasks = None if not tasks else [t for t, keep in zip(table.task, te) if keep]
            q = p.score(embs[window][te], te_tasks)
            s = np.nan_to_num(scores[te])
            c = costs.predicted[te]
            rows = np.arange(len(s))
            best = int(np.nanargmax(np.nanmean(scores[tr], axis=0)))
            acc_best.append(s[:, best].mean())
            acc0.append(s[rows, solve_budget(q, c, math.inf).choice].mean())
            half = 0.5 * c[:, best].sum()
            choice = solve_budget(q, c, half, allow_skip=True).choice
            acc_half.append(np.where(choice >= 0, s[rows, choice.clip(0)], 0.0).mean())
        print(f"{window:6} {k:>4} {r:>2} {str(tasks):>5}  {np.mean(acc0):>12.4f} {np.mean(acc_half):>12.4f} "
              f"{np.mean(acc_best):>11.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
