"""Predicted quality you can trust: the profile's score stacked with direct evidence of the
training rows, and calibrated, so that a predicted 0.7 means right about 70% of the time.

The budget's solver trades predicted quality against predicted cost between models, so a model
whose predictions run low (or high) against what it reaches is bought too rarely (or too often).
All parts are fitted on out-of-fold predictions of the training table (`router.method.fitting`
refits the profiles on the other folds for each fold), stored in the profile file and applied in
the routing stage (`Profiles.quality`):

- the calibration: one isotonic regression (pool adjacent violators) of the score on the profile's
  score, shared by every model (a monotone map of all cells alike keeps each row's order of
  models), kept as CALIBRATION_KNOTS points and applied with `np.interp`;
- the evidence heads: a ridge regression per model of the score on the prompt's embedding, its
  task (one-hot) and a bias, and one on the embedding and a bias alone for rows without a known
  task (alpha chosen out of fold from EVIDENCE_ALPHAS): what the training rows say directly, at
  the cost of one small matrix product per batch;
- the blend (the default): the calibrated score moved toward the evidence, with two weights per
  kind of row (task known or not): one for the evidence's differences between models within the
  row (from BLEND_WEIGHTS) and one for its level, the row's mean over models of evidence minus
  score (from LEVEL_WEIGHTS). Both are chosen together by the routing they give out of fold
  (`routing_area`), not by squared error: squared error trusts the evidence most (weights of
  0.75-0.93 on the shared tables), which routes worse than the profile alone at lambda = 0 on
  held-out rows; the profile ranks models within a row better, the evidence ranks rows better.
  The cap of 0.5 on the first keeps the profile at least half of every comparison of models; the
  level, which orders rows and not the models in one, may come from the evidence alone;
- or the stack (`--stack`): per model, least squares of the score on (profile score, evidence, 1),
  calibrated by the isotonic map after it.

The profiles stay what lets a model join without retraining: `router profile add-model` fits the
new model's evidence and stack columns from its own rows the same way.
"""

from __future__ import annotations

import numpy as np

CALIBRATION_KNOTS = 32
# Folds of the training table the out-of-fold scores come from.
CALIBRATION_FOLDS = 5
EVIDENCE_ALPHAS = (1.0, 10.0, 100.0)
# The blend's candidate weights of the evidence (module docstring): within a row, and its level.
BLEND_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
LEVEL_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def evidence_features(embeddings: np.ndarray, tasks: np.ndarray | None, n_tasks: int) -> np.ndarray:
    """[N, D + n_tasks + 1]: the embedding, a one-hot of the task (index into the profiles' tasks;
    -1 or None: none) and a bias."""
    n = len(embeddings)
    onehot = np.zeros((n, n_tasks), np.float32)
    if tasks is not None and n_tasks:
        known = np.flatnonzero(np.asarray(tasks) >= 0)
        onehot[known, np.asarray(tasks)[known]] = 1.0
    return np.hstack([np.asarray(embeddings, np.float32), onehot, np.ones((n, 1), np.float32)])


def evidence_scores(weights: np.ndarray, embeddings: np.ndarray, tasks: np.ndarray | None) -> np.ndarray:
    """The evidence head's scores [N, M]: embedding @ W + the task's row + the bias, without building
    the one-hot features."""
    d = embeddings.shape[1]
    out = embeddings @ weights[:d] + weights[-1]
    n_tasks = len(weights) - d - 1
    if tasks is not None and n_tasks:
        known = np.flatnonzero(np.asarray(tasks) >= 0)
        out[known] += weights[d + np.asarray(tasks)[known]]
    return out


def ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """[F, M]: per column of y (NaN: unknown), ridge weights on x, the last feature (the bias) not
    shrunk. Columns known on the same rows share one solve (a full table: one for all)."""
    w = np.zeros((x.shape[1], y.shape[1]), np.float32)
    shrink = alpha * np.eye(x.shape[1])
    shrink[-1, -1] = 0.0
    x64 = x.astype(np.float64)
    known = np.isfinite(y)
    alike: dict[bytes, list[int]] = {}
    for j in range(y.shape[1]):
        if known[:, j].any():
            alike.setdefault(np.packbits(known[:, j]).tobytes(), []).append(j)
    for cols in alike.values():
        k = known[:, cols[0]]
        xk = x64 if k.all() else x64[k]
        w[:, cols] = np.linalg.solve(xk.T @ xk + shrink, xk.T @ y[np.ix_(k, cols)].astype(np.float64))
    return w


def fit_stack(profile: np.ndarray, evidence: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """[3, M]: per model, least-squares weights of (profile score, evidence, 1) for the score, from
    out-of-fold predictions; the profile's score alone (1, 0, 0) where a model has too few rows."""
    out = np.zeros((3, scores.shape[1]), np.float32)
    out[0] = 1.0
    for j in range(scores.shape[1]):
        k = np.isfinite(scores[:, j]) & np.isfinite(profile[:, j]) & np.isfinite(evidence[:, j])
        if k.sum() >= 10:
            a = np.column_stack([profile[k, j], evidence[k, j], np.ones(int(k.sum()))])
            out[:, j] = np.linalg.lstsq(a, scores[k, j], rcond=None)[0]
    return out


def routing_area(quality: np.ndarray, scores: np.ndarray) -> float:
    """How well `quality` [N, M] routes rows whose `scores` [N, M] are known (NaN: not), with no
    prices: each row goes to its best predicted model, rows are answered in order of that
    prediction (best first), and the area under the curve of the score reached against the rows
    answered (1: every row right from the first). The within-row order of models and the order of
    rows both count, as they do for a budget between no spend and every row at its best model."""
    q = np.where(np.isfinite(scores), quality, -np.inf)
    choice = q.argmax(axis=1)
    rows = np.arange(len(q))
    best = q[rows, choice]
    keep = np.isfinite(best)
    if not keep.any():
        return 0.0
    got = np.nan_to_num(scores[rows, choice][keep])
    reached = np.cumsum(got[np.argsort(-best[keep], kind="stable")])
    return float(reached.mean() / len(reached))


def choose_blend(calibrated: np.ndarray, evidence: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """float32 [2]: the weights of the evidence in the blend, within a row (from BLEND_WEIGHTS) and
    of the row's level (from LEVEL_WEIGHTS), with the best `routing_area` of the out-of-fold
    calibrated profile scores moved toward the out-of-fold evidence (ties: the least evidence)."""
    pairs = [(w, v) for w in BLEND_WEIGHTS for v in LEVEL_WEIGHTS]
    areas = [routing_area(blended(calibrated, evidence, pair), scores) for pair in pairs]
    return np.array(pairs[int(np.argmax(areas))], np.float32)


def blended(calibrated: np.ndarray, evidence: np.ndarray, weights) -> np.ndarray:
    """The calibrated prediction [N, M] moved toward the evidence, in the prediction's dtype:
    `weights` (within, level) move each cell's difference from its row's mean difference by the
    first and that mean (the row's level) by the second; one number moves both alike (profile files
    written before the split)."""
    within, level = np.broadcast_to(np.asarray(weights, calibrated.dtype), (2,))
    gap = evidence - calibrated
    out = calibrated + within * gap
    if level != within and gap.shape[1]:
        out += (level - within) * gap.mean(axis=1, keepdims=True)
    return out


def stacked(stack: np.ndarray, profile: np.ndarray, evidence: np.ndarray) -> np.ndarray:
    return stack[0] * profile + stack[1] * evidence + stack[2]


def isotonic(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """The non-decreasing fit of y on x (pool adjacent violators), at the points sorted by x."""
    order = np.argsort(x, kind="stable")
    ys = y[order].astype(np.float64)
    ws = np.ones_like(ys) if w is None else w[order].astype(np.float64)
    level, weight, size = [], [], []
    for v, wt in zip(ys, ws):
        level.append(v)
        weight.append(wt)
        size.append(1)
        while len(level) > 1 and level[-2] > level[-1]:
            wsum = weight[-2] + weight[-1]
            level[-2] = (level[-2] * weight[-2] + level[-1] * weight[-1]) / wsum
            weight[-2] = wsum
            size[-2] += size[-1]
            level.pop(), weight.pop(), size.pop()
    return np.repeat(level, size)


def fit_calibration(raw: np.ndarray, scores: np.ndarray, knots: int = CALIBRATION_KNOTS) -> np.ndarray:
    """float32 [2, knots, M]: knots of the prediction (row 0, rising) and the calibrated score at
    each (row 1), one map for every model (the same in each column), from out-of-fold predictions
    [N, M] and the scores [N, M] (NaN: unknown); the identity where there is too little to fit."""
    n_models = raw.shape[1]
    out = np.empty((2, knots, n_models), np.float32)
    k = np.isfinite(raw) & np.isfinite(scores)
    if k.sum() < 2 or np.ptp(raw[k]) == 0:
        out[0] = out[1] = np.linspace(0.0, 1.0, knots)[:, None]
        return out
    x, y = raw[k], scores[k]
    fitted = isotonic(x, y)
    xs, inverse, counts = np.unique(np.sort(x), return_inverse=True, return_counts=True)
    level = np.bincount(inverse, fitted) / counts  # one level per distinct prediction
    at = np.quantile(np.sort(x), np.linspace(0.0, 1.0, knots))
    at = at + np.arange(knots) * 1e-9 * max(1.0, float(np.ptp(xs)))  # strictly rising for np.interp
    out[0] = at[:, None]
    out[1] = np.interp(at, xs, level)[:, None]
    return out


def apply_calibration(quality: np.ndarray, calibration: np.ndarray) -> np.ndarray:
    """Calibrated quality [N, M] (float32) from raw profile scores [N, M]."""
    out = np.empty(quality.shape, np.float32)
    for j in range(quality.shape[1]):
        out[:, j] = np.interp(quality[:, j], calibration[0, :, j], calibration[1, :, j])
    return out
