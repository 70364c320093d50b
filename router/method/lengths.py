"""Answer-length profiles: how long each model's answer to a prompt will be, predicted from the
prompt's ranked capabilities and knowledge elements as quality is, so that the plan prices each
(prompt, model) pair at its own length instead of one length per model.

Lengths are heavy-tailed (one model answers a multiple-choice question in 2 tokens, another a
logic puzzle in 500), so the profile is linear in log space:

    E[L_t(x)] = exp(b_t + sum_j w_j Cap_t(c_j) + sum_j w_j Know_t(k_j)) * F_t(task)

with the rank weights w_j of the quality profiles, and F_t(task) = 1 for a row without a known task.
Cap and Know are fitted per model by Poisson regression with a log link (the quasi-likelihood of
the mean: it needs no Poisson counts), so what is fitted is the mean length, not the geometric
mean a least-squares fit of log lengths gives: with a free intercept the fitted lengths of the
index queries sum to their actual total, and predicted dollars are unbiased without a separate
correction. A ridge penalty kappa/2 |Cap, Know|^2 on lengths scaled to the model's mean shrinks an
element seen in few answers toward the model's mean: it keeps about n r / (n r + kappa) of its own
log deviation, n its answers and r their mean length over the model's (empirical Bayes' n / (n +
kappa) for an element of typical length; an element of long answers, which decide the bill, keeps more).
A row's task, when known, multiplies by what the capabilities and clusters leave unexplained on
that task: the ratio of actual to predicted lengths over the task's n answers, shrunk toward 1 with
the weight n / (n + kappa). Rows without a task are predicted by the first part alone, which is
fitted without tasks, so both kinds of row are calibrated.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from router.method.profiles import Annotation, list_codes, rank_sum_table, rank_weighted_rows, rank_weights

# Shrinkage strengths tried by cross-validation (out-of-fold Poisson deviance, per model), and the
# one used for a model with too few answers for folds: the value cross-validation picks most on
# routeprofile-8models (5 folds over its queries, 32 clusters: 1 or 3 for 38 of 40 model-folds).
KAPPA_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
DEFAULT_KAPPA = 3.0
FOLDS = 5
MIN_ROWS_PER_FOLD = 4
# Kappa is chosen on a seeded sample of at most this many answers per model (the fit uses all).
CV_MAX_ROWS = 4000
NEWTON_STEPS = 50


@dataclass(frozen=True)
class LengthProfile:
    """Per-model answer-length profiles over the quality profiles' taxonomy (columns: models)."""

    intercept: np.ndarray  # float32 [M]: b_t, log of the base length; NaN: no length data
    cap: np.ndarray  # float32 [C, M]: log-length deviation per capability
    know: np.ndarray  # float32 [K, M]: log-length deviation per knowledge element
    task: np.ndarray | None  # float32 [T, M]: log F_t of each task; None: fitted without tasks
    kappa: np.ndarray  # float32 [M]: the shrinkage strength each model was fitted with
    rows: np.ndarray  # int64 [M]: answers fitted on

    @property
    def known(self) -> np.ndarray:
        """bool [M]: which models have a length profile."""
        return np.isfinite(self.intercept)

    def predict(self, ann: Annotation, alpha: float) -> np.ndarray:
        """Expected answer tokens [N, M] (float32; NaN for models without length data), as quality
        is scored: one gather per row from a table of every top-r list's exp(b + rank-weighted sum)
        for capabilities and one for clusters, multiplied (exp of a sum is a product), times the
        task's factor; no exp per row. Where a table would be too large (rank_sum_table), the
        rank-weighted sums are gathered r times and exponentiated."""
        cap = self._exp_table("cap", ann.capabilities.shape[1], alpha)
        know = self._exp_table("know", ann.domains.shape[1], alpha)
        if cap is not None and know is not None:
            out = np.take(cap, list_codes(ann.capabilities, len(self.cap)), axis=0)
            out *= np.take(know, list_codes(ann.domains, len(self.know)), axis=0)
        else:
            log = rank_weighted_rows(self.cap, ann.capabilities, alpha, None)
            log += rank_weighted_rows(self.know, ann.domains, alpha, None)
            log += self.intercept
            out = np.exp(log, out=log)
        if ann.tasks is not None and self.task is not None:
            factors = self.__dict__.get("_task_factors")
            if factors is None:  # exp of each task's factor, and a last row of ones for rows without one
                factors = self.__dict__["_task_factors"] = np.vstack([np.exp(self.task), np.ones((1, len(self.rows)))])
            out *= np.take(factors.astype(np.float32), np.where(ann.tasks >= 0, ann.tasks, len(self.task)), axis=0)
        return out.astype(np.float32, copy=False)

    def _exp_table(self, which: str, r: int, alpha: float) -> np.ndarray | None:
        """exp of `rank_sum_table` of the `which` profile (the intercept added to the capabilities'),
        built once per object (frozen dataclass: cached in __dict__); None where too large."""
        key = f"_exp_{which}_{r}"
        if key not in self.__dict__:
            table = rank_sum_table(getattr(self, which), r, alpha)
            if table is not None:
                table = np.exp(table + self.intercept) if which == "cap" else np.exp(table)
            self.__dict__[key] = table
        return self.__dict__[key]

    def select(self, cols: list[int]) -> "LengthProfile":
        return replace(
            self, intercept=self.intercept[cols], cap=self.cap[:, cols], know=self.know[:, cols],
            task=None if self.task is None else self.task[:, cols], kappa=self.kappa[cols], rows=self.rows[cols],
        )  # fmt: skip

    def append(self, other: "LengthProfile") -> "LengthProfile":
        """These models' columns followed by `other`'s, both untouched (same taxonomy). A side
        fitted without tasks gets factors of 1 for the other side's tasks."""
        a, b = self.task, other.task
        if a is not None and b is None:
            b = np.zeros((len(a), len(other.rows)), np.float32)
        elif b is not None and a is None:
            a = np.zeros((len(b), len(self.rows)), np.float32)
        return LengthProfile(
            intercept=np.concatenate([self.intercept, other.intercept]),
            cap=np.hstack([self.cap, other.cap]),
            know=np.hstack([self.know, other.know]),
            task=None if a is None else np.hstack([a, b]),
            kappa=np.concatenate([self.kappa, other.kappa]),
            rows=np.concatenate([self.rows, other.rows]),
        )

    @classmethod
    def empty(cls, n_cap: int, n_know: int, n_tasks: int | None, n_models: int) -> "LengthProfile":
        """No length data for any of `n_models` models."""
        return cls(
            intercept=np.full(n_models, np.nan, np.float32), cap=np.zeros((n_cap, n_models), np.float32),
            know=np.zeros((n_know, n_models), np.float32),
            task=None if n_tasks is None else np.zeros((n_tasks, n_models), np.float32),
            kappa=np.full(n_models, np.nan, np.float32), rows=np.zeros(n_models, np.int64),
        )  # fmt: skip

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays a profile file stores (`from_arrays` reads them back)."""
        out = {"length_intercept": self.intercept, "length_cap": self.cap, "length_know": self.know,
               "length_kappa": self.kappa, "length_rows": self.rows}  # fmt: skip
        if self.task is not None:
            out["length_task"] = self.task
        return out

    @classmethod
    def from_arrays(cls, z) -> "LengthProfile | None":
        """From a profile file's arrays (a mapping); None when it has no length profile."""
        if "length_intercept" not in z:
            return None
        f32 = lambda name: np.asarray(z[name], np.float32)  # noqa: E731
        return cls(
            intercept=f32("length_intercept"), cap=f32("length_cap"), know=f32("length_know"),
            task=f32("length_task") if "length_task" in z else None, kappa=f32("length_kappa"),
            rows=np.asarray(z["length_rows"], np.int64),
        )  # fmt: skip


def design(ann: Annotation, n_cap: int, n_know: int, alpha: float) -> np.ndarray:
    """[N, C + K] float64: each row's rank weights on its capabilities, then on its clusters."""
    n = len(ann.capabilities)
    x = np.zeros((n, n_cap + n_know))
    rows = np.arange(n)[:, None]
    x[rows, ann.capabilities] = rank_weights(ann.capabilities.shape[1], alpha)
    x[rows, n_cap + ann.domains] = rank_weights(ann.domains.shape[1], alpha)
    return x


def poisson_ridge(x: np.ndarray, y: np.ndarray, kappa: float) -> tuple[float, np.ndarray]:
    """Intercept and coefficients of log E[y] = b0 + x b: the maximum of the Poisson
    log-likelihood of y / mean(y) minus kappa/2 |b|^2 (b0 free). Newton steps, each halved until
    the objective improves (it is concave, so this converges from the mean)."""
    scale = float(y.mean())
    y = y / scale
    n, d = x.shape
    b0, b = 0.0, np.zeros(d)

    def objective(b0: float, b: np.ndarray) -> float:
        eta = b0 + x @ b
        return float((y * eta - np.exp(eta)).sum() - 0.5 * kappa * (b @ b))

    now = objective(b0, b)
    xm = np.hstack([np.ones((n, 1)), x])
    for _ in range(NEWTON_STEPS):
        mu = np.exp(b0 + x @ b)
        grad = xm.T @ (y - mu)
        grad[1:] -= kappa * b
        hess = xm.T @ (xm * mu[:, None])
        hess[np.diag_indices(d + 1)] += np.r_[0.0, np.full(d, kappa)]
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while (new := objective(b0 + t * step[0], b + t * step[1:])) < now and t > 1e-6:
            t /= 2
        if new < now:  # no step improves: at the maximum, to rounding
            break
        b0, b = b0 + t * step[0], b + t * step[1:]
        if new - now < 1e-10 * n:
            break
        now = new
    return b0 + np.log(scale), b


def task_factors(tasks: np.ndarray, y: np.ndarray, predicted: np.ndarray, n_tasks: int, kappa: float) -> np.ndarray:
    """log F [T]: per task, the ratio of actual to predicted lengths over its n answers, shrunk
    toward 1: F = n/(n + kappa) * (mean L / mean predicted) + kappa/(n + kappa). 0 for a task
    without answers."""
    known = tasks >= 0
    n = np.bincount(tasks[known], minlength=n_tasks)
    actual = np.bincount(tasks[known], weights=y[known], minlength=n_tasks)
    fitted = np.bincount(tasks[known], weights=predicted[known], minlength=n_tasks)
    ratio = actual / np.maximum(fitted, 1e-300)
    return np.log(np.where(n > 0, (n * ratio + kappa) / (n + kappa), 1.0))


def deviance(y: np.ndarray, mu: np.ndarray) -> float:
    """Mean Poisson deviance of lengths y against predictions mu, both over mean(y): unit-free."""
    s = float(y.mean())
    y, mu = y / s, mu / s
    return float(2 * (np.where(y > 0, y * np.log(np.where(y > 0, y, 1) / mu), 0) - (y - mu)).mean())


def fold_of(n: int, folds: int, seed: int) -> np.ndarray:
    """Each of n rows' fold (0..folds-1), seeded and balanced."""
    return np.random.default_rng(seed).permutation(n) % folds


def query_folds(queries, folds: int, seed: int) -> np.ndarray:
    """Each row's fold (`fold_of` over the distinct query texts): rows with the same query share a
    fold, so no query is both fitted on and predicted."""
    _, query = np.unique(np.asarray(queries, dtype=object).astype(str), return_inverse=True)
    return fold_of(int(query.max()) + 1, folds, seed)[query]


def choose_kappa(x: np.ndarray, y: np.ndarray, *, folds: int = FOLDS, seed: int = 0) -> tuple[float, dict[str, float]]:
    """The kappa of KAPPA_GRID with the least out-of-fold deviance of the capability and cluster
    part, on a sample of at most CV_MAX_ROWS answers; DEFAULT_KAPPA (and no errors) when there are
    fewer than MIN_ROWS_PER_FOLD answers per fold."""
    if len(y) < folds * MIN_ROWS_PER_FOLD:
        return DEFAULT_KAPPA, {}
    if len(y) > CV_MAX_ROWS:
        keep = np.random.default_rng(seed).choice(len(y), CV_MAX_ROWS, replace=False)
        x, y = x[keep], y[keep]
    fold = fold_of(len(y), folds, seed)
    errors = {}
    for kappa in KAPPA_GRID:
        predicted = np.empty_like(y)
        for f in range(folds):
            test = fold == f
            b0, b = poisson_ridge(x[~test], y[~test], kappa)
            predicted[test] = np.exp(b0 + x[test] @ b)
        errors[f"{kappa:g}"] = deviance(y, predicted)
    best = min(KAPPA_GRID, key=lambda k: errors[f"{k:g}"])
    return float(best), errors


def fit_length_profile(
    ann: Annotation,
    output_tokens: np.ndarray,
    *,
    n_cap: int,
    n_know: int,
    n_tasks: int | None,
    alpha: float,
    kappa: float | None = None,
    folds: int = FOLDS,
    seed: int = 0,
) -> tuple[LengthProfile, dict[str, Any]]:
    """Length profiles of every model from the index queries' annotation and their answers'
    lengths [N, M] (NaN: no answer length; a model without any has none). `kappa` None: chosen
    per model by `folds`-fold cross-validation over the queries (`choose_kappa`). `n_tasks`: the
    profiles' task count, None without tasks. Returns the profile and how kappa was chosen."""
    lengths = np.asarray(output_tokens, np.float64)
    x = design(ann, n_cap, n_know, alpha)
    tasks = ann.tasks if (n_tasks and ann.tasks is not None) else None
    out = LengthProfile.empty(n_cap, n_know, n_tasks if tasks is not None else None, lengths.shape[1])
    errors: dict[int, dict[str, float]] = {}
    for t in range(lengths.shape[1]):
        rows = np.flatnonzero(np.isfinite(lengths[:, t]) & (lengths[:, t] >= 0))
        y = lengths[rows, t]
        if len(y) == 0 or y.sum() <= 0:
            continue
        k = kappa
        if k is None:
            k, errors[t] = choose_kappa(x[rows], y, folds=folds, seed=seed)
        b0, b = poisson_ridge(x[rows], y, k)
        out.intercept[t], out.cap[:, t], out.know[:, t] = b0, b[:n_cap], b[n_cap:]
        if tasks is not None:
            out.task[:, t] = task_factors(tasks[rows], y, np.exp(b0 + x[rows] @ b), n_tasks, k)
        out.kappa[t], out.rows[t] = k, len(y)
    how = ("given" if kappa is not None else
           f"per model by {folds}-fold cross-validation over the queries (Poisson deviance), "
           f"{DEFAULT_KAPPA:g} where a model has under {folds * MIN_ROWS_PER_FOLD} answers")  # fmt: skip
    return out, {"kappa_chosen_by": how, "cv_deviance": errors}
