"""Answer-length profiles: recovering lengths that depend on capability, cluster and task, shrinking
thin elements toward the model's mean, files with and without them, and `router eval`'s cost report."""

import json

import numpy as np
import pytest

from router.method.lengths import LengthProfile, fit_length_profile, poisson_ridge, task_factors
from router.method.profiles import Annotation, build_profiles, load_profiles, rank_weights

pytestmark = pytest.mark.timeout(120)

C, K, T = 5, 8, 3


def ranked(rng, n, k, r):
    """n ranked lists of r distinct elements of k."""
    return np.argsort(rng.random((n, k)), axis=1)[:, :r]


def true_log_lengths(ann, cap_effect, know_effect, alpha=0.5):
    w_c, w_k = rank_weights(ann.capabilities.shape[1], alpha), rank_weights(ann.domains.shape[1], alpha)
    return 3.0 + (cap_effect[ann.capabilities] * w_c).sum(1) + (know_effect[ann.domains] * w_k).sum(1)


def test_fitting_recovers_lengths_that_depend_on_capability_and_cluster():
    rng = np.random.default_rng(0)
    cap_effect, know_effect = rng.normal(0, 1.0, C), rng.normal(0, 1.5, K)
    train = Annotation(capabilities=ranked(rng, 20000, C, 3), domains=ranked(rng, 20000, K, 3))
    mean = np.exp(true_log_lengths(train, cap_effect, know_effect))
    # Heavy-tailed answers around the true mean (gamma, mean 1): a second model has no lengths.
    lengths = np.stack([mean * rng.gamma(1.5, 1 / 1.5, len(mean)), np.full(len(mean), np.nan)], axis=1)
    prof, record = fit_length_profile(train, lengths, n_cap=C, n_know=K, n_tasks=None, alpha=0.5)
    assert prof.known.tolist() == [True, False] and prof.rows.tolist() == [20000, 0]
    assert record["cv_deviance"][0]  # kappa was cross-validated
    test = Annotation(capabilities=ranked(rng, 5000, C, 3), domains=ranked(rng, 5000, K, 3))
    truth = np.exp(true_log_lengths(test, cap_effect, know_effect))
    got = prof.predict(test, 0.5)
    assert np.isnan(got[:, 1]).all()
    rel = np.abs(got[:, 0] / truth - 1)
    assert np.median(rel) < 0.05 and rel.max() < 0.25, (np.median(rel), rel.max())
    # The mean, not the geometric mean: the predicted total is the actual total.
    assert abs(prof.predict(train, 0.5)[:, 0].sum() / lengths[:, 0].sum() - 1) < 0.01


def test_a_known_task_multiplies_and_rows_without_one_stay_calibrated():
    rng = np.random.default_rng(1)
    n = 12000
    ann = Annotation(capabilities=ranked(rng, n, C, 3), domains=ranked(rng, n, K, 3), tasks=rng.integers(0, T, n))
    cap_effect, know_effect = rng.normal(0, 0.5, C), rng.normal(0, 0.5, K)
    task_factor = np.array([0.2, 1.0, 3.0])
    mean = np.exp(true_log_lengths(ann, cap_effect, know_effect)) * task_factor[ann.tasks]
    lengths = (mean * rng.gamma(2.0, 0.5, n))[:, None]
    prof, _ = fit_length_profile(ann, lengths, n_cap=C, n_know=K, n_tasks=T, alpha=0.5)
    with_task = prof.predict(ann, 0.5)[:, 0]
    for t in range(T):
        rows = ann.tasks == t
        assert abs(with_task[rows].sum() / lengths[rows, 0].sum() - 1) < 0.03, t
    without = prof.predict(Annotation(ann.capabilities, ann.domains), 0.5)[:, 0]
    assert abs(without.sum() / lengths[:, 0].sum() - 1) < 0.01
    unknown = prof.predict(Annotation(ann.capabilities, ann.domains, np.full(n, -1)), 0.5)[:, 0]
    np.testing.assert_allclose(unknown, without, rtol=1e-6)


def test_thin_elements_are_shrunk_toward_the_model_mean():
    """One-hot lists: a cluster of long answers seen once keeps part of its deviation, seen often
    keeps nearly all of it; with no signal at all, cross-validation shrinks everything to the mean."""
    rng = np.random.default_rng(2)

    def predicted_long_cluster(n_long: int, kappa: float) -> float:
        doms = np.r_[rng.integers(1, K, 400), np.zeros(n_long, np.int64)][:, None]
        caps = np.zeros((len(doms), 1), np.int64)
        lengths = np.where(doms[:, 0] == 0, 300.0, 100.0)[:, None]
        prof, _ = fit_length_profile(Annotation(caps, doms), lengths, n_cap=1, n_know=K, n_tasks=None, alpha=0.5,
                                     kappa=kappa)  # fmt: skip
        return float(prof.predict(Annotation(np.zeros((1, 1), np.int64), np.zeros((1, 1), np.int64)), 0.5)[0, 0])

    thin, some, plenty = (predicted_long_cluster(n, 3.0) for n in (1, 10, 400))
    assert 100 < thin < some < plenty and thin < 250
    assert abs(plenty / 300 - 1) < 0.03
    assert predicted_long_cluster(1, 0.03) > 280  # hardly any shrinkage: the one answer's own length

    n = 3000
    noise = Annotation(capabilities=ranked(rng, n, C, 3), domains=ranked(rng, n, K, 3))
    lengths = rng.gamma(1.0, 100.0, (n, 1))
    prof, _ = fit_length_profile(noise, lengths, n_cap=C, n_know=K, n_tasks=None, alpha=0.5)
    got = prof.predict(noise, 0.5)[:, 0]
    assert np.abs(got / lengths.mean() - 1).max() < 0.15


def test_task_factors_are_the_empirical_bayes_ratio():
    tasks = np.array([0, 0, 1, 1, 1, 1, -1])
    y = np.array([20.0, 20, 5, 5, 5, 5, 99])
    predicted = np.full(7, 10.0)
    f = np.exp(task_factors(tasks, y, predicted, 3, kappa=2.0))
    assert np.allclose(f, [(2 * 2 + 2) / 4, (4 * 0.5 + 2) / 6, 1.0])


def test_poisson_ridge_without_penalty_is_the_mean_per_element():
    x = np.repeat(np.eye(3), [4, 5, 6], axis=0)
    y = np.repeat([2.0, 10.0, 50.0], [4, 5, 6]) * np.tile([0.5, 1.5], 8)[:15]
    b0, b = poisson_ridge(x, y, 1e-9)
    fitted = np.exp(b0 + x @ b)
    for e in range(3):
        rows = x[:, e] == 1
        assert np.isclose(fitted[rows][0], y[rows].mean(), rtol=1e-5)


def _open9_like(tmp_path, lengths: bool):
    rng = np.random.default_rng(3)
    d = 16
    emb = rng.normal(size=(300, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    caps, doms = rng.normal(size=(C, d)), rng.normal(size=(7, d))
    scores = (rng.random((300, 3)) > 0.5).astype(np.float32)
    out = rng.gamma(2.0, 50.0, (300, 3)) if lengths else None
    p = build_profiles(emb, scores, ["a", "b", "c"], capability_vectors=caps, capability_names=list("ABCDE"),
                       domain_vectors=doms, domain_names=list("abcdefg"), n_clusters=6, output_tokens=out,
                       tasks=[f"t{i % 3}" for i in range(300)])  # fmt: skip
    return p, emb


def test_length_profiles_round_trip_select_and_match_the_formula(tmp_path):
    p, emb = _open9_like(tmp_path, lengths=True)
    assert p.length_source == ("profile",) * 3 and set(p.meta["lengths"]["rows"].values()) == {300}
    p.save(tmp_path / "p.npz")
    q = load_profiles(tmp_path / "p.npz")
    tasks = ["t1"] * 10 + ["new"] * 10
    ann = q.annotate(emb[:20], tasks)
    np.testing.assert_array_equal(q.expected_output_tokens(ann), p.expected_output_tokens(ann))
    assert np.isfinite(q.expected_output_tokens(ann)).all()
    np.testing.assert_array_equal(q.select(["c", "a"]).expected_output_tokens(ann),
                                  q.expected_output_tokens(ann)[:, [2, 0]])  # fmt: skip
    L, w = q.lengths, rank_weights(q.r_cap, q.alpha)
    for i in (0, 15):
        log = L.intercept + (w[:, None] * L.cap[ann.capabilities[i]]).sum(0)
        log = log + (w[:, None] * L.know[ann.domains[i]]).sum(0)
        if ann.tasks[i] >= 0:
            log = log + L.task[ann.tasks[i]]
        np.testing.assert_allclose(q.expected_output_tokens(ann)[i], np.exp(log), rtol=1e-5)


def test_files_without_lengths_load_and_predict_as_before(tmp_path):
    """The packaged open9 file (version 1, per-cluster means all NaN) and a version-1 file with
    per-cluster means: `expected_output_tokens` is the top cluster's mean, as it always was."""
    import zipfile

    p = load_profiles("open9")
    assert p.lengths is None and p.length_source == ("none",) * len(p.models)
    emb = np.random.default_rng(0).normal(size=(50, p.dim)).astype(np.float32)
    ann = p.annotate(emb / np.linalg.norm(emb, axis=1, keepdims=True))
    np.testing.assert_array_equal(p.expected_output_tokens(ann), p.output_tokens[ann.domains[:, 0]])

    old, emb = _open9_like(tmp_path, lengths=False)
    means = np.full(old.output_tokens.shape, np.nan, np.float32)
    means[:3, 1] = [10, 20, 30]
    path = tmp_path / "v1.npz"
    from dataclasses import replace

    replace(old, output_tokens=means).save(path)
    with np.load(path) as z:  # as a version-1 file was written: no length arrays, version 1
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("meta").tobytes())
    assert meta["version"] == 2 and not any(k.startswith("length_") for k in arrays)
    meta["version"] = 1
    np.savez_compressed(path, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    assert zipfile.is_zipfile(path)
    v1 = load_profiles(path)
    assert v1.length_source == ("none", "clusters", "none")
    ann = v1.annotate(emb, ["t0"] * len(emb))
    np.testing.assert_array_equal(v1.expected_output_tokens(ann), means[ann.domains[:, 0]])
    np.testing.assert_array_equal(v1.score_annotated(ann), old.score_annotated(ann))


def test_add_model_learns_the_new_model_lengths_and_leaves_the_others(tmp_path):
    from router.method.evaldata import EvalTable
    from router.method.fitting import add_model, remove_model

    p, emb = _open9_like(tmp_path, lengths=True)
    rng = np.random.default_rng(4)
    tasks = [f"t{i % 3}" for i in range(300)]
    table = EvalTable(queries=[str(i) for i in range(300)], models=("b", "new"),
                      scores=(rng.random((300, 2)) > 0.5).astype(np.float32),
                      output_tokens=np.stack([np.full(300, np.nan), rng.gamma(2.0, 20.0, 300)], 1).astype(np.float32),
                      task=tasks)  # fmt: skip
    without = remove_model(p, "b")
    again = add_model(without, table, "new", emb)
    assert again.models == ("a", "c", "new") and again.length_source == ("profile",) * 3
    for name in ("intercept", "kappa", "rows"):
        np.testing.assert_array_equal(getattr(again.lengths, name)[:2], getattr(without.lengths, name))
    for name in ("cap", "know", "task"):
        np.testing.assert_array_equal(getattr(again.lengths, name)[:, :2], getattr(without.lengths, name))
    assert again.lengths.rows[-1] == 300 and again.meta["added_models"][-1]["answer_lengths"] == 300
    # A model added without answer lengths has none (the config plans it); the profile file keeps the rest.
    no_lengths = add_model(without, EvalTable(table.queries, ("b",), table.scores[:, :1], task=tasks), "b", emb)
    assert no_lengths.length_source == ("profile", "profile", "none")
    no_lengths.save(tmp_path / "x.npz")
    assert load_profiles(tmp_path / "x.npz").length_source == ("profile", "profile", "none")
    # Added to a file without length profiles (open9-like): only the new model has one.
    bare, _ = _open9_like(tmp_path, lengths=False)
    added = add_model(bare, table, "new", emb)
    assert added.length_source == ("none", "none", "none", "profile")
    assert np.isnan(added.expected_output_tokens(added.annotate(emb[:5]))[:, :3]).all()


def test_remove_then_add_gives_back_the_same_length_profile(tmp_path):
    from router.method.evaldata import EvalTable
    from router.method.fitting import add_model, remove_model

    rng = np.random.default_rng(5)
    d = 16
    emb = rng.normal(size=(300, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    scores = (rng.random((300, 2)) > 0.5).astype(np.float32)
    out = rng.gamma(2.0, 50.0, (300, 2)).astype(np.float32)
    p = build_profiles(emb, scores, ["a", "b"], capability_vectors=rng.normal(size=(C, d)),
                       capability_names=list("ABCDE"), domain_vectors=rng.normal(size=(7, d)),
                       domain_names=list("abcdefg"), n_clusters=6, output_tokens=out)  # fmt: skip
    table = EvalTable([str(i) for i in range(300)], ("a", "b"), scores, output_tokens=out)
    again = add_model(remove_model(p, "b"), table, "b", emb)
    np.testing.assert_allclose(again.expected_output_tokens(again.annotate(emb)),
                               p.expected_output_tokens(p.annotate(emb)), rtol=1e-5)  # fmt: skip


def test_empty_and_append_keep_shapes():
    a = LengthProfile.empty(C, K, T, 2)
    b = LengthProfile.empty(C, K, None, 1)
    both = a.append(b)
    assert both.task.shape == (T, 3) and both.cap.shape == (C, 3) and not both.known.any()


def fake_encoder(monkeypatch, d=16):
    """Deterministic embeddings instead of the encoder: one direction per task word plus noise."""
    import zlib

    import router.method.evaluate as E
    import router.method.fitting as F

    def encode(model, texts, window="tail"):
        out = []
        for t in texts:
            base = np.random.default_rng(zlib.crc32(t.split()[0].encode())).normal(size=d)
            out.append(base + 0.3 * np.random.default_rng(zlib.crc32(t.encode())).normal(size=d))
        out = np.asarray(out, np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    rng = np.random.default_rng(0)
    monkeypatch.setattr(E, "encode_cached", encode)
    monkeypatch.setattr(F, "taxonomy_vectors", lambda encoder: (rng.normal(size=(7, d)), rng.normal(size=(20, d))))


def test_eval_reports_predicted_against_actual_cost_and_length_errors(tmp_path, monkeypatch):
    from router.method.evaluate import evaluate, format_eval
    from router.method.fitting import ProfileSettings

    fake_encoder(monkeypatch)
    rng = np.random.default_rng(1)
    tasks = {"choose": (2, 60), "solve": (200, 90), "write": (80, 400)}  # answer length per model
    rows = []
    for i in range(150):
        task = list(tasks)[i % 3]
        perf = {m: {"prompt_tokens": 40 + i % 7, "completion_tokens": int(tasks[task][j] * rng.gamma(4, 0.25)) + 1,
                    "success": True, "task_performance": float(rng.random() < 0.3 + 0.4 * j)}
                for j, m in enumerate(("terse", "verbose"))}  # fmt: skip
        rows.append({"task_name": task, "query": f"{task} question number {i}", "model_performance": perf})
    data = tmp_path / "rp.json"
    data.write_text(json.dumps(rows))
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"terse": {"input_price": 0.1, "output_price": 0.2},
                                  "verbose": {"input_price": 1.0, "output_price": 2.0}}))  # fmt: skip
    settings = ProfileSettings(n_clusters=4)
    r = evaluate([str(data)], folds=3, prices_path=str(prices), budget_fraction=0.5, settings=settings)
    assert r["validation"] == "3-fold cross-validation over the queries" and r["n_test"] == 150 and r["actual_costs"]
    assert r["length_source"] == {"terse": "profile", "verbose": "profile"}
    lp = r["length_prediction"]
    assert lp["all"]["answers"] == 300 and lp["all"]["mae"] < 0.6 * lp["all"]["mae_model_mean"]
    for m in ("terse", "verbose"):
        assert abs(lp["per_model"][m]["total_ratio"] - 1) < 0.1
        assert abs(r["cost_prediction"]["per_model"][m]["ratio"] - 1) < 0.1
    at = r["at_budget"]
    assert at["budget_used"] == pytest.approx(at["cost"] / at["budget"])
    assert at["predicted_cost"] <= at["budget"] * (1 + 1e-9)
    assert r["budget_use"]["binding_budgets"] > 0
    text = format_eval(r)
    assert "answer lengths (3-fold cross-validation over the queries)" in text and "of it (predicted" in text

    # Without answer lengths (a scores table and prices): costs as before, predicted = actual.
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps([{"question": x["query"], "scores": {m: p["task_performance"] for m, p in
                                  x["model_performance"].items()}} for x in rows]))  # fmt: skip
    r = evaluate([str(plain)], folds=3, prices_path=str(prices), budget_fraction=0.5, settings=settings)
    assert "length_prediction" not in r and "cost_prediction" not in r and not r["actual_costs"]
    assert r["length_source"] == {"terse": "none", "verbose": "none"}
    assert r["cost_source"].startswith("prices x tokens (input from the text, 256 output tokens)")
    with pytest.raises(ValueError, match="not both"):
        evaluate([str(plain)], [str(plain)], folds=3)


def test_predictions_without_the_tables_of_sums_are_the_same(tmp_path, monkeypatch):
    """Where the tables of every top-r list would be too large, the r gathers give the same lengths."""
    import router.method.profiles as P

    p, emb = _open9_like(tmp_path, lengths=True)
    ann = p.annotate(emb, [f"t{i % 4}" for i in range(len(emb))])
    fast = p.expected_output_tokens(ann)
    monkeypatch.setattr(P, "SUM_TABLE_ENTRIES", 0)
    slow = p.select(p.models).expected_output_tokens(ann)  # a new object: no table built
    np.testing.assert_allclose(fast, slow, rtol=1e-5)
