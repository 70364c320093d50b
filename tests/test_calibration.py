"""Calibrated predicted quality (router.method.calibration) and router eval's strong baselines,
frontier area and calibration error."""

import numpy as np
import pytest

from dataclasses import replace

from router.method.calibration import (
    BLEND_WEIGHTS,
    LEVEL_WEIGHTS,
    apply_calibration,
    choose_blend,
    evidence_scores,
    fit_calibration,
    isotonic,
    routing_area,
)
from router.method.evaluate import aiq, calibration, strong_baselines
from router.method.profiles import load_profiles

pytestmark = pytest.mark.timeout(300)


def test_isotonic_is_the_least_squares_monotone_fit():
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(0)
    x = rng.random(500)
    y = (rng.random(500) < x**2).astype(float)
    ours = isotonic(x, y)
    theirs = IsotonicRegression().fit(x, y).predict(np.sort(x))
    np.testing.assert_allclose(ours, theirs, atol=1e-9)
    assert np.all(np.diff(ours) >= 0)


def test_a_calibrated_prediction_means_what_it_says():
    """Predictions that run low (the truth is sqrt of them) get an expected calibration error near
    zero once mapped, on rows the map was not fitted on; and one map keeps each row's order."""
    rng = np.random.default_rng(1)
    raw = rng.random((20000, 3)) * 0.5
    truth = np.sqrt(raw * 2)  # a predicted 0.125 is right half the time
    y = (rng.random(raw.shape) < truth).astype(float)
    fit, held = slice(0, 10000), slice(10000, None)
    cal = fit_calibration(raw[fit], y[fit])
    before = calibration(raw[held], y[held])["ece"]
    after = calibration(apply_calibration(raw[held], cal), y[held])["ece"]
    assert before > 0.15 and after < 0.02
    mapped = apply_calibration(raw[held], cal)
    assert np.mean(mapped.argmax(1) == raw[held].argmax(1)) > 0.97  # all but ties at the map's flat steps


def test_the_packaged_profiles_are_calibrated_and_keep_it_through_select_and_save(tmp_path):
    p = load_profiles("open9")
    assert p.calibration is not None and p.calibration.shape[2] == len(p.models)
    assert p.blend is not None and p.evidence is not None  # no tasks in open9: one head for every row
    emb = np.random.default_rng(2).normal(size=(300, p.dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ann = p.annotate(emb)
    q = p.quality(emb, ann)
    # The map alone is monotone and shared: a row's best model is the raw score's best model.
    raw = p.score_annotated(ann)
    mapped = replace(p, blend=None).quality(emb, ann)
    assert mapped.min() >= 0 and mapped.max() <= 1
    assert np.mean(mapped.argmax(1) == raw.argmax(1)) > 0.95
    # The blend moves it toward the evidence by the weights the file holds: within a row and the
    # row's level (its mean over the pool's models of evidence minus map).
    within, level = (float(w) for w in p.blend[1])
    assert 0 < within <= max(BLEND_WEIGHTS) and 0 <= level <= max(LEVEL_WEIGHTS)
    gap = evidence_scores(p.evidence, emb, None) - mapped
    want = mapped + within * gap + (level - within) * gap.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(q, want, atol=1e-5)
    # A pool of some of the models compares them within each row as the whole pool does; only the
    # row's level is its own pool's.
    sub = p.select(list(p.models[::-1][:4]))
    shift = sub.quality(emb, sub.annotate(emb)) - q[:, [8, 7, 6, 5]]
    np.testing.assert_allclose(shift, np.repeat(shift[:, :1], 4, axis=1), atol=1e-6)
    p.save(tmp_path / "p.npz")
    np.testing.assert_array_equal(load_profiles(str(tmp_path / "p.npz")).quality(emb, ann), q)


def test_aiq_is_the_mean_accuracy_of_the_best_frontier_over_the_cost_range():
    flat = [{"cost": c, "accuracy": 0.6} for c in np.linspace(0, 10, 11)]
    assert aiq(flat, 0.0, 10.0) == pytest.approx(0.6)
    # A frontier that dips is held at its best so far; costs above the range do not count.
    dip = [{"cost": 0.0, "accuracy": 0.2}, {"cost": 5.0, "accuracy": 0.8}, {"cost": 6.0, "accuracy": 0.5},
           {"cost": 20.0, "accuracy": 1.0}]  # fmt: skip
    assert aiq(dip, 0.0, 10.0) == pytest.approx(0.5, abs=0.01)


def test_the_strong_baselines_learn_what_the_training_rows_say():
    """Task means, neighbours blended with them and ridge all recover a score that depends on the
    task and on the embedding, far better than a constant."""
    rng = np.random.default_rng(3)
    n, d = 3000, 16
    emb = rng.normal(size=(n, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    tasks = [f"t{i % 4}" for i in range(n)]
    p = np.clip(0.2 + 0.15 * (np.arange(n) % 4)[:, None] + 0.3 * emb[:, :2], 0, 1)  # [n, 2]: two models
    y = (rng.random(p.shape) < p).astype(np.float32)
    tr, te = slice(0, 2000), slice(2000, None)
    b = strong_baselines(emb[tr], y[tr], tasks[tr], emb[te], tasks[te])
    const = np.mean((y[tr].mean(0) - p[te]) ** 2)
    for name in ("task_mean", "knn_task", "ridge"):
        assert np.mean((b[name] - p[te]) ** 2) < 0.6 * const, name
    assert np.mean((b["ridge"] - p[te]) ** 2) < np.mean((b["task_mean"] - p[te]) ** 2)  # it sees the embedding


def test_the_blend_takes_the_evidence_that_routes_better_and_leaves_noise_out():
    """The profile here knows which model is best within a row but not which rows are easy; an
    evidence head that knows how easy a row is gets a weight, a head of noise gets none."""
    rng = np.random.default_rng(4)
    n, m = 6000, 3
    ease = rng.random((n, 1))
    edge = rng.normal(0, 0.15, (n, m))
    truth = np.clip(0.3 * ease + 0.35 + edge, 0, 1)
    y = (rng.random((n, m)) < truth).astype(float)
    profile = 0.5 + edge  # within rows right, every row alike
    assert routing_area(truth, y) > routing_area(profile, y) > routing_area(rng.random((n, m)), y)
    easy_rows = np.repeat(0.3 * ease + 0.35, m, axis=1) + rng.normal(0, 0.02, (n, m))
    assert choose_blend(profile, easy_rows, y)[1] > 0  # the row's level: it knows which rows are easy
    assert choose_blend(profile, rng.random((n, m)), y).tolist() == [0.0, 0.0]


def test_blended_profiles_use_the_tasks_head_for_rows_with_a_known_task(tmp_path):
    """A profile fitted from a table with tasks blends rows with a known task by the task's head and
    the others by the head on the embedding alone; a row routes alike in any batch; select, save and
    load keep it; a model added later gets its own columns of both heads."""
    from router.method.evaldata import EvalTable
    from router.method.fitting import add_model, fit_profiles, remove_model

    rng = np.random.default_rng(5)
    n, m = 600, 3
    emb = rng.normal(size=(n, 384)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    tasks = [("easy", "hard")[i % 2] for i in range(n)]
    truth = np.where(np.array(tasks)[:, None] == "easy", 0.8, 0.3) + 0.1 * np.arange(m) * emb[:, :1]
    scores = (rng.random((n, m)) < np.clip(truth, 0, 1)).astype(np.float32)
    table = EvalTable(queries=[f"q{i}" for i in range(n)], models=("a", "b", "c"), scores=scores, task=tasks)
    fitted = fit_profiles(table, emb)
    assert fitted.blend is not None and fitted.blend.shape == (2, 2)
    assert set(fitted.blend[:, 0].tolist()) <= set(BLEND_WEIGHTS)
    assert set(fitted.blend[:, 1].tolist()) <= set(np.float32(LEVEL_WEIGHTS).tolist())
    # One weight per kind of row (files written before the split) moves a row's level with the rest.
    p = replace(fitted, blend=np.array([0.3, 0.5], np.float32))  # weights that show which head a row took
    assert p.evidence.shape == (384 + 2 + 1, m) and p.evidence_free.shape == (384 + 1, m)

    known, unknown = p.annotate(emb[:4], ["easy", "hard", "easy", "hard"]), p.annotate(emb[:4], None)
    mapped = apply_calibration(p.score_annotated(known), p.calibration)
    want = mapped + p.blend[0] * (evidence_scores(p.evidence, emb[:4], known.tasks) - mapped)
    np.testing.assert_allclose(p.quality(emb[:4], known), want, atol=1e-6)
    mapped = apply_calibration(p.score_annotated(unknown), p.calibration)
    want = mapped + p.blend[1] * (evidence_scores(p.evidence_free, emb[:4], None) - mapped)
    np.testing.assert_allclose(p.quality(emb[:4], unknown), want, atol=1e-6)
    mixed = p.annotate(emb[:4], ["easy", "a task never seen", None, "hard"])
    alone = [p.quality(emb[i : i + 1], p.annotate(emb[i : i + 1], [t])) for i, t in
             enumerate(["easy", "a task never seen", None, "hard"])]  # fmt: skip
    np.testing.assert_allclose(p.quality(emb[:4], mixed), np.vstack(alone), atol=1e-6)

    sub = p.select(["c", "a"])
    np.testing.assert_allclose(sub.quality(emb[:4], sub.annotate(emb[:4], None)),
                               p.quality(emb[:4], unknown)[:, [2, 0]], atol=1e-6)  # fmt: skip
    p.save(tmp_path / "p.npz")
    again = load_profiles(str(tmp_path / "p.npz"))
    np.testing.assert_array_equal(again.quality(emb[:4], mixed), p.quality(emb[:4], mixed))

    readded = add_model(remove_model(p, "b"), table, "b", emb)
    assert readded.models == ("a", "c", "b")
    assert readded.evidence.shape == p.evidence.shape and readded.evidence_free.shape == p.evidence_free.shape
    np.testing.assert_allclose(readded.evidence[:, 2], p.evidence[:, 1], atol=1e-4)  # the same rows, alpha
    np.testing.assert_allclose(readded.evidence_free[:, 2], p.evidence_free[:, 1], atol=1e-4)


def test_ridge_fits_each_model_on_the_rows_that_have_its_score():
    """Models scored on every row share one solve; a model missing rows is fitted on its own rows."""
    from router.method.calibration import ridge

    rng = np.random.default_rng(6)
    x = np.hstack([rng.normal(size=(400, 5)), np.ones((400, 1))])
    y = x @ rng.normal(size=(6, 4))
    y[::3, 2] = np.nan
    w = ridge(x, y, 1.0)
    shrink = np.eye(6)
    shrink[-1, -1] = 0
    for j in range(4):
        k = np.isfinite(y[:, j])
        want = np.linalg.solve(x[k].T @ x[k] + shrink, x[k].T @ y[k, j])
        np.testing.assert_allclose(w[:, j], want, rtol=1e-4, atol=1e-5)
