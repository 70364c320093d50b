"""The split encoder (tokenize, then embed pre-tokenized, length-sorted batches) must give what
sentence-transformers' own `encode` gives, on every backend, and route the same."""

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pytest

from router import schema as S
from router.backends.encoder import INPUT_IDS, EmbeddingModel, length_batches, padded, resolve_encoder
from router.stages.encode import Encoder, Tokenize

pytestmark = pytest.mark.timeout(600)

TEXTS = [
    "What is the capital of France?",
    "Write a Python function that reverses a linked list.",
    "Solve for x: 3x + 7 = 22.",
    "¿Cuál es la raíz cuadrada de 144? 平方根は？",
    "x",
    " ".join(["A few-shot example about rivers and their lengths."] * 60) + " Q: how long is the Nile?",
]


@pytest.fixture(scope="module")
def reference():
    return EmbeddingModel("minilm", device="cpu", backend="sentence-transformers")


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_backends_match_sentence_transformers(reference, backend):
    enc = EmbeddingModel("minilm", device="cpu", backend=backend)
    assert enc.backend == backend
    for window in ("tail", "head"):  # the long text is cut differently by each window
        ref = reference.encode(TEXTS, window)
        got = enc.encode(TEXTS, window)
        assert got.shape == ref.shape and got.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert (got * ref).sum(1).min() >= 0.999
    assert enc.encode([]).shape == (0, enc.dim)


def test_the_int8_backend_stays_close_to_the_model(reference):
    """`onnx-int8` (opt-in, about 2x `onnx` on a CPU) trades a little of the embedding for speed:
    unit rows near the model's own, from one quantized file made once."""
    from router.backends.encoder import quantize_onnx

    enc = EmbeddingModel("minilm", device="cpu", backend="onnx-int8")
    assert enc.backend == "onnx-int8"
    for window in ("tail", "head"):
        ref = reference.encode(TEXTS, window)
        got = enc.encode(TEXTS, window)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        cos = (got * ref).sum(1)
        assert cos.min() >= 0.97 and cos.mean() >= 0.98, cos
        assert cos.min() < 0.99999  # quantized for real, not the float model again
    assert quantize_onnx(enc.folder) == quantize_onnx(enc.folder)  # made once, then read back


@pytest.mark.slow
def test_same_routing_decisions_on_llmrouter_test(shared_data, reference):
    """The issue's yardstick: >= 99% of the llmrouter-9models test rows get the same best model,
    and every embedding is within cosine 0.99 of sentence-transformers'."""
    from router import load_profiles

    with open(shared_data / "llmrouter-9models" / "scores_test.json") as f:
        queries = [r["question"] for r in json.load(f)]
    profiles = load_profiles("open9")
    window = profiles.meta.get("window", "head")
    ref = reference.encode(queries, window)
    got = EmbeddingModel("minilm", device="cpu", backend="onnx").encode(queries, window)
    assert (got * ref).sum(1).min() >= 0.99
    same = (profiles.score(got).argmax(1) == profiles.score(ref).argmax(1)).mean()
    assert same >= 0.99, same


def test_length_batches_cover_every_row_once_within_the_token_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, 5000)
    groups = length_batches(lengths, max_tokens=2048, max_rows=64)
    rows = np.concatenate(groups)
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    for g in groups:
        assert len(g) <= 64
        assert len(g) == 1 or len(g) * lengths[g].max() <= 2048
    # sorted by length: a group's rows are no longer than the next group's
    assert all(lengths[a].max() <= lengths[b].min() for a, b in zip(groups, groups[1:]))


def test_padded_ids_and_mask():
    offsets = np.array([0, 3, 3, 5])
    values = np.array([7, 8, 9, 4, 5], np.int32)
    ids, mask = padded(offsets, values, np.array([2, 0, 1]))
    assert ids.tolist() == [[4, 5, 0], [7, 8, 9], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 0], [1, 1, 1], [0, 0, 0]]


def test_stages_encode_ok_rows_only(reference):
    statuses = [S.OK, S.INVALID_INPUT, S.OK, S.OK, S.INVALID_INPUT, S.OK]
    batch = pa.table({S.PROMPT: TEXTS, S.STATUS: statuses})
    tokenized = Tokenize("minilm")(batch)
    lists = tokenized[INPUT_IDS].to_pylist()
    assert [len(x) > 0 for x in lists] == [s == S.OK for s in statuses]
    out = Encoder("minilm", device="cpu", backend="onnx")(tokenized)
    assert INPUT_IDS not in out.column_names and out.num_rows == batch.num_rows
    emb = np.asarray(out[S.EMBEDDING].to_pylist(), np.float32)
    ok = np.array(statuses) == S.OK
    assert not emb[~ok].any()
    ref = reference.encode([t for t, k in zip(TEXTS, ok) if k])
    assert (emb[ok] * ref).sum(1).min() >= 0.999
    # Without a Tokenize stage in front, the encoder tokenizes itself; same result.
    again = Encoder("minilm", device="cpu", backend="onnx")(batch)
    np.testing.assert_allclose(np.asarray(again[S.EMBEDDING].to_pylist()), emb, atol=1e-6)


def test_unsupported_module_stack_falls_back_to_sentence_transformers(tmp_path, reference):
    """Max pooling is not in the fast path: the encoder says so by using sentence-transformers."""
    src = resolve_encoder("minilm")
    folder = tmp_path / "minilm-max"
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    os.symlink(os.path.join(src, "model.safetensors"), folder / "model.safetensors")
    with open(folder / "1_Pooling" / "config.json", "w") as f:
        json.dump({"word_embedding_dimension": 384, "pooling_mode_max_tokens": True}, f)
    enc = EmbeddingModel(str(folder), device="cpu", backend="onnx")
    assert enc.backend == "sentence-transformers"
    emb = enc.encode(TEXTS[:3])
    assert emb.shape == (3, 384)
    assert (emb * reference.encode(TEXTS[:3])).sum(1).min() < 0.999  # max pooling really is used


def test_embedding_cache_is_keyed_by_the_distinct_texts_not_their_order(tmp_path, monkeypatch, reference):
    """`router eval` and `router profile build` cache their tables' embeddings: the same tables
    listed in another order (or with a repeated prompt) are read back, each row its own text's."""
    import router.backends.encoder as E

    monkeypatch.setenv("ROUTER_CACHE_DIR", str(tmp_path))
    texts = TEXTS[:4]
    first = E.encode_cached("minilm", texts)
    assert first.shape == (4, 384)
    assert (first * reference.encode(texts, "tail")).sum(1).min() >= 0.999

    def no_encoder(*a, **k):
        raise AssertionError("encoded again")

    monkeypatch.setattr(E, "load_encoder", no_encoder)
    order = [2, 0, 3, 1, 2]
    again = E.encode_cached("minilm", [texts[i] for i in order])
    np.testing.assert_array_equal(again, first[order])
    with pytest.raises(AssertionError, match="encoded again"):  # another window is another cache entry
        E.encode_cached("minilm", texts, window="head")
