"""The InferenceDynamics maths against the paper's formulas written out with explicit loops."""

import re

import numpy as np
import pytest

from router.method.profiles import build_profiles, load_profiles, rank_weights, spherical_kmeans, top_r, top_r_columns

pytestmark = pytest.mark.timeout(60)


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_rank_weights_follow_the_paper():
    w = rank_weights(3, 0.5)
    assert np.allclose(w, np.array([1, 0.5, 0.25]) / 1.75)
    assert np.allclose(rank_weights(1, 0.5), [1.0])


def test_top_r_is_sorted_and_breaks_ties_by_index():
    s = np.array([[0.1, 0.9, 0.5, 0.9], [3, 2, 1, 0]], np.float32)
    assert top_r(s, 3).tolist() == [[1, 3, 2], [0, 1, 2]]


@pytest.mark.parametrize("k", [1, 2, 7, 32])
def test_top_r_over_columns_equals_top_r(k):
    """The transposed ranking `annotate` uses for the few capabilities: same lists, same ties."""
    rng = np.random.default_rng(k)
    s = rng.integers(0, 4, (500, k)).astype(np.float32)  # many ties
    s[7] = np.nan  # NaN ranks first, as in argmax
    s[9, 0] = np.nan
    for r in (1, 3, 5):
        assert np.array_equal(top_r_columns(np.ascontiguousarray(s[8:].T), r), top_r(s[8:], r))
        assert np.array_equal(top_r_columns(np.ascontiguousarray(s.T), r), top_r(s, r))


def _small_problem(seed=0, n=200, d=16, m=4):
    rng = np.random.default_rng(seed)
    emb = unit(rng.normal(size=(n, d)))
    scores = (rng.random((n, m)) > 0.5).astype(np.float32)
    costs = rng.random((n, m)).astype(np.float32)
    caps = unit(rng.normal(size=(5, d)))
    doms = unit(rng.normal(size=(7, d)))
    return emb, scores, costs, caps, doms


def test_profiles_and_scores_match_the_formulas_written_with_loops():
    emb, scores, costs, caps, doms = _small_problem()
    alpha, beta, r = 0.5, 0.3, 3
    p = build_profiles(emb, scores, ["a", "b", "c", "d"], capability_vectors=caps, capability_names=list("ABCDE"),
                       domain_vectors=doms, domain_names=list("abcdefg"), costs=costs, n_clusters=6, alpha=alpha,
                       beta=beta, r_know=r, r_cap=r)  # fmt: skip
    w = alpha ** np.arange(r) / (alpha ** np.arange(r)).sum()
    ann = p.annotate(emb)
    # Know_t(k) = 1/N_k sum_{i: k in K_i} (s_i^t - beta c_i^t) w_{rank of k in K_i}
    know = np.zeros((6, 4))
    count = np.zeros(6)
    for i in range(len(emb)):
        for j, k in enumerate(ann.domains[i]):
            know[k] += (scores[i] - beta * costs[i]) * w[j]
            count[k] += 1
    for k in range(6):
        if count[k]:
            assert np.allclose(p.know[k], know[k] / count[k], atol=1e-5)
    # Score(t, x) = sum_j w_j Cap_t(c_j) + sum_j w_j Know_t(k_j)
    q = p.score(emb[:20])
    for i in range(20):
        expect = sum(w[j] * p.cap[c] for j, c in enumerate(ann.capabilities[i]))
        expect = expect + sum(w[j] * p.know[k] for j, k in enumerate(ann.domains[i]))
        assert np.allclose(q[i], expect, atol=1e-5)


def test_a_model_that_is_always_right_scores_highest():
    emb, scores, costs, caps, doms = _small_problem(seed=1)
    scores[:, 2] = 1.0
    p = build_profiles(emb, scores, list("abcd"), capability_vectors=caps, capability_names=list("ABCDE"),
                       domain_vectors=doms, domain_names=list("abcdefg"), n_clusters=5)  # fmt: skip
    assert (p.score(emb).argmax(axis=1) == 2).all()


def test_spherical_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(0)
    centers = unit(rng.normal(size=(3, 8)))
    x = unit(np.repeat(centers, 50, axis=0) + 0.05 * rng.normal(size=(150, 8)))
    c = spherical_kmeans(x, 3, seed=0)
    assert np.sort((c @ centers.T).max(axis=0)).min() > 0.95


def test_save_load_round_trip_and_select(tmp_path):
    emb, scores, costs, caps, doms = _small_problem()
    p = build_profiles(emb, scores, list("abcd"), capability_vectors=caps, capability_names=list("ABCDE"),
                       domain_vectors=doms, domain_names=list("abcdefg"), n_clusters=4)  # fmt: skip
    p.save(tmp_path / "p.npz")
    q = load_profiles(tmp_path / "p.npz")
    assert q.models == p.models and np.allclose(q.score(emb), p.score(emb))
    sub = q.select(["d", "b"])
    assert np.allclose(sub.score(emb), p.score(emb)[:, [3, 1]])
    with pytest.raises(KeyError, match="no profile"):
        q.select(["zzz"])


def test_packaged_open9_profiles():
    p = load_profiles("open9")
    assert len(p.models) == 9 and p.dim == 384
    assert p.encoder == "sentence-transformers/all-MiniLM-L6-v2"
    assert p.meta["built_from"][0]["file"] == "scores_train.json"
    assert len(set(p.domain_names)) == len(p.domain_names)


def test_remove_then_add_a_model_gives_back_its_profile_and_leaves_the_others():
    from router.method.evaldata import EvalTable
    from router.method.fitting import add_model, remove_model

    emb, scores, costs, caps, doms = _small_problem(seed=3)
    p = build_profiles(emb, scores, list("abcd"), capability_vectors=caps, capability_names=list("ABCDE"),
                       domain_vectors=doms, domain_names=list("abcdefg"), n_clusters=5)  # fmt: skip
    table = EvalTable(queries=[str(i) for i in range(len(emb))], models=tuple("abcd"), scores=scores)
    without = remove_model(p, "c")
    assert without.models == ("a", "b", "d") and np.array_equal(without.know, p.know[:, [0, 1, 3]])
    again = add_model(without, table, "c", emb)
    assert again.models == ("a", "b", "d", "c")
    assert np.allclose(again.know[:, 3], p.know[:, 2], atol=1e-6)
    assert np.allclose(again.cap[:, 3], p.cap[:, 2], atol=1e-6)
    assert np.array_equal(again.know[:, :3], without.know)
    with pytest.raises(ValueError, match="already profiled"):
        add_model(again, table, "c", emb)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_add_model_by_answering_and_grading_the_packaged_index_set(tmp_path):
    """`router profile add-model --weights`: a model with no evaluation data is run by the project's
    own generation stage on the packaged index set (gold answers), graded, and profiled; the
    profiles of the models already there are untouched."""
    from conftest import run_cli
    from router.method.profiles import load_profiles
    from router.backends.standin import build_standin

    standin = build_standin(tmp_path / "standin")
    out = tmp_path / "with-newbie.npz"
    r = run_cli("profile", "add-model", "--profiles", "open9", "--model", "newbie", "--weights", str(standin),
                "--limit", "40", "--max-tokens", "8", "--max-model-len", "4096", "--backend", "transformers",
                "--out", str(out), timeout=540)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    counts = dict((k, int(v)) for v, k in re.findall(r"(\d+) (queries|answered|graded|skipped)", r.stdout))
    assert counts["queries"] == 40 and counts["graded"] > 0 and counts["graded"] + counts["skipped"] == 40
    assert counts["answered"] >= counts["graded"]
    before, after = load_profiles("open9"), load_profiles(str(out))
    assert after.models == (*before.models, "newbie")
    keep = list(range(len(before.models)))
    np.testing.assert_array_equal(after.know[:, keep], before.know)
    np.testing.assert_array_equal(after.cap[:, keep], before.cap)
    # A random-weight model answers noise: it is profiled as worse than every real model.
    assert np.nanmean(after.know[:, -1]) < np.nanmin(np.nanmean(before.know, axis=0))


def test_scores_gathered_from_the_table_of_rank_sums_equal_the_contraction(monkeypatch):
    """score_annotated gathers each row's rank-weighted sum from a table of every top-r list when
    the table is small; the r gathers contracted with the weights must give the same scores."""
    import router.method.profiles as P

    p = load_profiles("open9")
    emb = unit(np.random.default_rng(0).normal(size=(2000, p.dim)))
    ann = p.annotate(emb)
    fast = p.score_annotated(ann)
    assert p.__dict__.get(f"_rank_sums_know_{p.r_know}") is not None  # the open9 tables are small
    monkeypatch.setattr(P, "SUM_TABLE_ENTRIES", 0)
    slow = p.select(p.models).score_annotated(ann)  # a new object: no table built
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-6)
    assert len(np.unique(fast.argmax(1))) > 1
