"""Calibrated predicted quality (router.method.calibration) and router eval's strong baselines,
frontier area and calibration error."""

import numpy as np
import pytest

from router.method.calibration import apply_calibration, fit_calibration, isotonic
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
    emb = np.random.default_rng(2).normal(size=(300, p.dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ann = p.annotate(emb)
    q = p.quality(emb, ann)
    assert q.min() >= 0 and q.max() <= 1
    # The map is monotone and shared: a row's best model is the raw score's best model.
    raw = p.score_annotated(ann)
    assert np.mean(q.argmax(1) == raw.argmax(1)) > 0.95
    sub = p.select(list(p.models[::-1][:4]))
    np.testing.assert_array_equal(sub.quality(emb, sub.annotate(emb)), q[:, [8, 7, 6, 5]])
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
