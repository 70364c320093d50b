"""Who gives a query its ranked capability and knowledge lists: the embedding annotator (nearest prototypes and clusters), the paper's LLM annotator
(an auxiliary model served by the project's vLLM stage), and linear heads distilled from the LLM's
labels, which annotate at embedding cost and are what the pipeline routes with.

Everything returns a `router.method.profiles.Annotation` of indices into the profile's taxonomy. The
LLM's knowledge taxonomy is the named domains of `router.method.taxonomy.DOMAINS` plus an `other`
element (index K) for domains that resemble none of them.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from router.method.profiles import Annotation, Profiles, normalize, rank_weights, top_r

ANNOTATORS = ("embedding", "llm", "distilled")
OTHER = "other"
ANNOTATOR_MODEL = "annotator"  # the pool-model name the annotator's engine serves

PROMPT = """Query:
{query}

Which capabilities and knowledge domains does answering the query above require?
Capabilities, chosen from: {capabilities}.
Domains: free text, such as algebra, biology, law, programming.
Name at most {r_cap} capabilities and {r_know} domains, the most important first, in exactly this format:
Capabilities: a, b, c
Domains: x, y, z"""

# What an LLM calls a capability when it does not use the taxonomy's own words.
CAPABILITY_SYNONYMS: dict[str, tuple[str, ...]] = {
    "reasoning": (
        "logical reasoning", "logic", "math", "maths", "mathematics", "mathematical reasoning",
        "math reasoning", "problem solving", "deduction", "deductive reasoning", "analysis",
        "analytical reasoning", "critical thinking", "commonsense reasoning", "calculation",
        "computation", "arithmetic", "quantitative reasoning",
    ),
    "comprehension": (
        "reading comprehension", "understanding", "reading", "text comprehension",
        "language understanding", "natural language understanding", "summarization",
        "summarisation", "text understanding", "context understanding",
    ),
    "instruction_following": (
        "instruction following", "following instructions", "instructions", "formatting",
        "format following", "constraint following", "adherence to instructions",
    ),
    "agentic": (
        "agent", "agents", "agentic reasoning", "tool use", "tool calling", "tool usage",
        "function calling", "planning", "task planning", "decision making",
    ),
    "knowledge_retrieval": (
        "knowledge", "factual knowledge", "world knowledge", "fact retrieval", "factual recall",
        "recall", "retrieval", "memorization", "domain knowledge", "general knowledge",
        "information retrieval", "knowledge recall",
    ),
    "coding": (
        "code", "programming", "code generation", "software development", "software engineering",
        "debugging", "code understanding", "code writing",
    ),
    "multilingual": (
        "translation", "multilinguality", "multilingualism", "languages", "language translation",
        "cross lingual", "cross-lingual", "non english", "foreign language",
    ),
}

_SUFFIXES = ("skills", "skill", "abilities", "ability", "capabilities", "capability")


def normalize_phrase(text: str) -> str:
    """Lower case, `_`/`-` as spaces, single spaces: the form names are compared in."""
    text = re.sub(r"[_\-]+", " ", text.lower())
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# Parsing the annotator's answer

_HEADERS = {
    "capabilities": ("capabilities", "capability", "skills", "skill", "abilities", "ability"),
    "domains": ("domains", "domain", "knowledge domains", "knowledge domain", "knowledge", "topics",
                "topic", "fields", "field", "subjects", "subject"),
}  # fmt: skip
_HEADER_RE = re.compile(
    r"^[\W_]*(?P<name>[a-z][a-z ]*?)[\W_]*(?:\([^)]*\))?[\W_]*?\s*[:：=]\s*(?P<rest>.*)$", re.IGNORECASE
)
_ITEM_MARK_RE = re.compile(r"^\s*(?:[-*•·>]+|\(?\d{1,2}[.)]|\(?[a-g][.)])\s+")
_SPLIT_RE = re.compile(r"[,;|\n、，；]|\s+>\s+|\s+\d{1,2}[.)]\s+")
_MAX_ITEM_CHARS = 60
_MAX_ITEM_WORDS = 6


def _header_kind(line: str) -> tuple[str, str] | None:
    m = _HEADER_RE.match(line)
    if not m:
        return None
    name = normalize_phrase(m.group("name"))
    for kind, names in _HEADERS.items():
        if name in names or (name.startswith("required ") and name[9:] in names):
            return kind, m.group("rest")
    return None


def _clean_item(item: str) -> str | None:
    item = _ITEM_MARK_RE.sub("", item)
    item = re.sub(r"\([^)]*\)|\[[^\]]*\]", " ", item)  # "(most important)", "[1]"
    item = item.strip().strip("\"'`*_[]{}<>").strip().rstrip(".:!?").strip().strip("\"'`*")
    item = " ".join(item.split())
    if not item or not re.search(r"[^\W\d_]", item):
        return None
    if len(item) > _MAX_ITEM_CHARS or len(item.split()) > _MAX_ITEM_WORDS:
        return None  # a sentence, not a name
    return item


def _items(text: str) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for piece in _SPLIT_RE.split(text):
        item = _clean_item(piece)
        if item is not None and normalize_phrase(item) not in seen:
            seen.add(normalize_phrase(item))
            out.append(item)
    return out


def _from_json(text: str) -> tuple[list[str], list[str]] | None:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        obj = json.loads(text[start : end + 1])
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    found: dict[str, list[str]] = {"capabilities": [], "domains": []}
    for key, value in obj.items():
        kind = _header_kind(f"{key}:")
        if kind is None or found[kind[0]]:
            continue
        values = value if isinstance(value, list) else [value]
        found[kind[0]] = _items("\n".join(str(v) for v in values if isinstance(v, (str, int, float))))
    if not (found["capabilities"] or found["domains"]):
        return None
    return found["capabilities"], found["domains"]


def parse_response(text: str | None) -> tuple[list[str], list[str]]:
    """(capabilities, domains) named in an annotator's answer, in its order, duplicates dropped.

    Reads `Capabilities: a, b` / `Domains: x, y` lines (any case, markdown emphasis, bullets or
    numbers, items on the header line or listed under it) or a JSON object with such keys. The
    first block of each kind counts: a model that rambles on after its answer is not believed.
    Sentences and items without letters are dropped."""
    if not text or not text.strip():
        return [], []
    parsed = _from_json(text) if "{" in text else None
    if parsed is not None:
        return parsed
    found: dict[str, list[str]] = {"capabilities": [], "domains": []}
    kind: str | None = None  # the block the current line continues
    for line in text.splitlines():
        header = _header_kind(line)
        if header is not None:
            kind, rest = header
            if found[kind]:
                kind = None  # a second block of the same kind: ignore it
                continue
            found[kind] = _items(rest)
            if not found[kind]:
                continue  # items follow on the next lines
            if not _SPLIT_RE.search(rest) and len(found[kind]) == 1:
                continue  # "Capabilities: reasoning" then maybe "- coding" below
            kind = None
        elif kind is not None:
            if not line.strip():
                if found[kind]:
                    kind = None
                continue
            if found[kind] and not _ITEM_MARK_RE.match(line):
                kind = None
                continue
            have = {normalize_phrase(x) for x in found[kind]}
            found[kind].extend(i for i in _items(line) if normalize_phrase(i) not in have)
    return found["capabilities"], found["domains"]


# ---------------------------------------------------------------------------------------------
# Mapping names to the taxonomy

Encode = Callable[[Sequence[str]], np.ndarray]
"""Texts to unit-norm embeddings [N, D] (the profile's encoder)."""


class TaxonomyMapper:
    """Free-text capability and domain names to taxonomy indices, with a cache of what it has seen.

    Capabilities: the taxonomy's names and `CAPABILITY_SYNONYMS` exactly, then a close spelling,
    then the most similar capability name by embedding if similar enough, else dropped.
    Domains: a domain name exactly, then the most similar domain by embedding if its cosine is at
    least `domain_threshold`, else `other` (index `len(domain_names)`)."""

    def __init__(
        self,
        capability_names: Sequence[str],
        domain_names: Sequence[str],
        domain_vectors: np.ndarray,
        encode: Encode,
        *,
        domain_threshold: float = 0.45,
        capability_threshold: float = 0.6,
    ) -> None:
        self.capability_names = tuple(capability_names)
        self.domain_names = tuple(domain_names)
        self.domain_vectors = normalize(domain_vectors)
        if len(self.domain_vectors) != len(self.domain_names):
            raise ValueError(f"{len(self.domain_names)} domain names but {len(self.domain_vectors)} vectors")
        self.encode = encode
        self.domain_threshold = domain_threshold
        self.capability_threshold = capability_threshold
        self.other = len(self.domain_names)
        self._cap_lookup: dict[str, int] = {}
        for i, name in enumerate(self.capability_names):
            for s in (name, *CAPABILITY_SYNONYMS.get(name, ())):
                self._cap_lookup.setdefault(normalize_phrase(s), i)
        self._domain_lookup = {normalize_phrase(n): i for i, n in enumerate(self.domain_names)}
        self._domain_lookup[OTHER] = self.other
        self._cap_cache: dict[str, int | None] = {}
        self._domain_cache: dict[str, int] = {}
        self._cap_name_vectors: np.ndarray | None = None

    def _capability_by_spelling(self, phrase: str) -> int | None:
        key = normalize_phrase(phrase)
        words = key.split()
        while len(words) > 1 and words[-1] in _SUFFIXES:  # "coding skills"
            words = words[:-1]
        key = " ".join(words)
        if key in self._cap_lookup:
            return self._cap_lookup[key]
        close = difflib.get_close_matches(key, list(self._cap_lookup), n=1, cutoff=0.85)
        return self._cap_lookup[close[0]] if close else None

    def map(self, capabilities: Sequence[Sequence[str]], domains: Sequence[Sequence[str]]):
        """Index lists per row: capabilities (unknown ones dropped) and domains (unknown: other).
        All phrases not seen before are embedded in one call."""
        new_caps = {normalize_phrase(p) for row in capabilities for p in row} - self._cap_cache.keys()
        for key in list(new_caps):
            hit = self._capability_by_spelling(key)
            if hit is not None:
                self._cap_cache[key] = hit
                new_caps.discard(key)
        new_domains = {normalize_phrase(p) for row in domains for p in row} - self._domain_cache.keys()
        for key in list(new_domains):
            if key in self._domain_lookup:
                self._domain_cache[key] = self._domain_lookup[key]
                new_domains.discard(key)
        caps, doms = sorted(new_caps), sorted(new_domains)
        if caps or doms:
            if caps and self._cap_name_vectors is None:
                self._cap_name_vectors = normalize(self.encode([n.replace("_", " ") for n in self.capability_names]))
            emb = normalize(self.encode(caps + doms))
            if caps:
                sims = emb[: len(caps)] @ self._cap_name_vectors.T
                best = sims.argmax(axis=1)
                for key, b, s in zip(caps, best, sims[np.arange(len(caps)), best]):
                    self._cap_cache[key] = int(b) if s >= self.capability_threshold else None
            if doms:
                sims = emb[len(caps) :] @ self.domain_vectors.T
                best = sims.argmax(axis=1)
                for key, b, s in zip(doms, best, sims[np.arange(len(doms)), best]):
                    self._domain_cache[key] = int(b) if s >= self.domain_threshold else self.other
        cap_idx = [[c for c in (self._cap_cache[normalize_phrase(p)] for p in row) if c is not None]
                   for row in capabilities]  # fmt: skip
        dom_idx = [[self._domain_cache[normalize_phrase(p)] for p in row] for row in domains]
        return cap_idx, dom_idx


def complete_lists(ranked: Sequence[Sequence[int]], fallback: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-width lists [N, r]: each row's own elements first (duplicates dropped), then its
    `fallback` ranking [N, >= 2r] up to r; and how many of each row's r came from its own list."""
    n = len(ranked)
    out = np.empty((n, r), np.int64)
    own = np.zeros(n, np.int64)
    for i, row in enumerate(ranked):
        picked: list[int] = []
        for e in row:
            if e not in picked:
                picked.append(int(e))
                if len(picked) == r:
                    break
        own[i] = len(picked)
        for e in fallback[i]:
            if len(picked) == r:
                break
            if e not in picked:
                picked.append(int(e))
        out[i] = picked
    return out, own


# ---------------------------------------------------------------------------------------------
# Annotators


class Annotator(Protocol):
    """Gives each query its ranked capability and knowledge lists."""

    def annotate(self, texts: Sequence[str], embeddings: np.ndarray) -> Annotation: ...


@dataclass(frozen=True)
class EmbeddingAnnotator:
    """The profile's own annotation: nearest capability prototypes and knowledge centroids (or,
    for a profile with heads, its heads). Reads only the embeddings."""

    profiles: Profiles

    def annotate(self, texts: Sequence[str], embeddings: np.ndarray) -> Annotation:
        return self.profiles.annotate(embeddings)


@dataclass(frozen=True)
class LinearHeads:
    """Linear maps from an embedding to capability and knowledge scores; a query's lists are the
    top-r of each. The last row of each matrix is its bias."""

    capabilities: np.ndarray  # float32 [D + 1, C]
    knowledge: np.ndarray  # float32 [D + 1, K]

    def stacked(self) -> np.ndarray:
        """[D + 1, C + K], the form `Profiles.heads` stores."""
        return np.hstack([self.capabilities, self.knowledge]).astype(np.float32)

    @classmethod
    def from_stacked(cls, heads: np.ndarray, n_cap: int) -> LinearHeads:
        return cls(heads[:, :n_cap], heads[:, n_cap:])

    def annotate(self, embeddings: np.ndarray, r_cap: int, r_know: int) -> Annotation:
        emb = np.asarray(embeddings, np.float32)
        w = self.stacked()
        out = emb @ w[:-1] + w[-1]
        c = self.capabilities.shape[1]
        return Annotation(capabilities=top_r(out[:, :c], r_cap), domains=top_r(out[:, c:], r_know))


@dataclass(frozen=True)
class DistilledAnnotator:
    """Linear heads fitted on an LLM annotator's labels: the LLM's taxonomy at embedding cost."""

    heads: LinearHeads
    r_cap: int = 3
    r_know: int = 3

    def annotate(self, texts: Sequence[str], embeddings: np.ndarray) -> Annotation:
        return self.heads.annotate(embeddings, self.r_cap, self.r_know)


def label_matrix(idx: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """Rank-weight targets [N, n]: row i holds w_j at column idx[i, j]."""
    a = np.zeros((idx.shape[0], n), np.float32)
    np.put_along_axis(a, idx, np.broadcast_to(rank_weights(idx.shape[1], alpha), idx.shape), axis=1)
    return a


def _ridge(x: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    """[D + 1, E]: ridge regression of y on x with an unpenalised bias (the last row)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - x_mean, y - y_mean
    if ridge > 0:
        w = np.linalg.solve(xc.T @ xc + ridge * np.eye(x.shape[1]), xc.T @ yc)
    else:
        w = np.linalg.lstsq(xc, yc, rcond=None)[0]
    return np.vstack([w, y_mean - x_mean @ w]).astype(np.float32)


def fit_heads(
    embeddings: np.ndarray, annotation: Annotation, n_cap: int, n_know: int, alpha: float = 0.5, *, ridge: float = 1.0
) -> LinearHeads:
    """Heads that reproduce `annotation` from `embeddings`: ridge regression onto each query's
    rank-weight vector (the same weights the profiles use), one matrix per taxonomy."""
    emb = np.asarray(embeddings, np.float32)
    if len(emb) != len(annotation.capabilities) or len(emb) != len(annotation.domains):
        raise ValueError(f"{len(emb)} embeddings but {len(annotation.capabilities)} annotated rows")
    if len(emb) == 0:
        raise ValueError("no annotated rows to fit heads on")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    return LinearHeads(
        capabilities=_ridge(emb, label_matrix(annotation.capabilities, n_cap, alpha), ridge),
        knowledge=_ridge(emb, label_matrix(annotation.domains, n_know, alpha), ridge),
    )


class LLMAnnotator:
    """The paper's annotator: an auxiliary model names each query's capabilities and domains.

    `generator` is a `router.backends.generators.VLLMGenerator` (or anything that takes the same Arrow batch
    and returns `response` and `status`) serving the pool-model name `model`; `engine_factory`
    makes one on first use instead, and `close` stops it. Answers are read by `parse_response`
    and mapped by a `TaxonomyMapper`. Every row gets exactly r_cap capabilities and r_know
    domains: the model's own first, then the embedding ranking over the same taxonomy (nearest
    capability prototypes, nearest domain names). A row whose answer yields nothing thus gets
    the embedding annotator's lists; `stats` counts such rows."""

    def __init__(
        self,
        generator=None,
        *,
        engine_factory: Callable[[], Any] | None = None,
        encode: Encode,
        capability_names: Sequence[str],
        capability_vectors: np.ndarray,
        domain_names: Sequence[str],
        domain_vectors: np.ndarray,
        r_cap: int = 3,
        r_know: int = 3,
        domain_threshold: float = 0.45,
        capability_threshold: float = 0.6,
        model: str = ANNOTATOR_MODEL,
        max_query_chars: int = 2000,
        weights: str | None = None,
    ) -> None:
        if (generator is None) == (engine_factory is None):
            raise ValueError("give the LLM annotator a generator or an engine_factory (exactly one)")
        if len(capability_vectors) != len(capability_names):
            raise ValueError(f"{len(capability_names)} capability names but {len(capability_vectors)} vectors")
        if not 1 <= r_cap <= len(capability_names) or not 1 <= r_know <= len(domain_names):
            raise ValueError(f"r_cap must be in 1..{len(capability_names)} and r_know in 1..{len(domain_names)}")
        self._generator = generator
        self._engine_factory = engine_factory
        self.capability_vectors = normalize(capability_vectors)
        self.mapper = TaxonomyMapper(
            capability_names, domain_names, domain_vectors, encode,
            domain_threshold=domain_threshold, capability_threshold=capability_threshold,
        )  # fmt: skip
        self.r_cap, self.r_know = r_cap, r_know
        self.model = model
        self.max_query_chars = max_query_chars
        self.weights = weights  # what the engine serves, for the profile's record
        self.stats: dict[str, int] = dict.fromkeys(
            ("rows", "generation_errors", "fallback_rows", "llm_capabilities", "llm_domains", "other_domains"), 0
        )
        self.last_responses: list[str | None] = []

    @property
    def capability_names(self) -> tuple[str, ...]:
        return self.mapper.capability_names

    @property
    def n_cap(self) -> int:
        return len(self.capability_names)

    @property
    def knowledge_names(self) -> tuple[str, ...]:
        """The knowledge taxonomy the annotations index: the domain names, then `other`."""
        return (*self.mapper.domain_names, OTHER)

    @property
    def knowledge_vectors(self) -> np.ndarray:
        """[K + 1, D]: the domain vectors and a zero row for `other`."""
        v = self.mapper.domain_vectors
        return np.vstack([v, np.zeros((1, v.shape[1]), v.dtype)])

    def prompts(self, texts: Sequence[str]) -> list[str]:
        caps = ", ".join(n.replace("_", " ") for n in self.capability_names)
        # The question ends a long few-shot prompt, so its tail is what the annotator must see.
        return [PROMPT.format(query=t if len(t) <= self.max_query_chars else t[-self.max_query_chars :],
                              capabilities=caps, r_cap=self.r_cap, r_know=self.r_know)
                for t in texts]  # fmt: skip

    def generate(self, texts: Sequence[str]) -> list[str | None]:
        """The annotator's raw answer per text (None where the engine could not answer)."""
        import pyarrow as pa

        from router import schema as S

        if self._generator is None:
            self._generator = self._engine_factory()
        n = len(texts)
        batch = pa.table({
            S.ID: [str(i) for i in range(n)],
            S.PROMPT: self.prompts(texts),
            S.MODEL: [self.model] * n,
            S.STATUS: [S.OK] * n,
        })  # fmt: skip
        out = self._generator(batch)
        responses = out[S.RESPONSE].to_pylist()
        status = out[S.STATUS].to_pylist()
        return [r if s == S.OK else None for r, s in zip(responses, status)]

    def annotate(self, texts: Sequence[str], embeddings: np.ndarray) -> Annotation:
        emb = normalize(embeddings)
        if len(emb) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(emb)} embeddings")
        responses = self.generate(texts) if len(texts) else []
        self.last_responses = responses
        return self.annotate_responses(responses, emb)

    def annotate_responses(self, responses: Sequence[str | None], embeddings: np.ndarray) -> Annotation:
        """The annotation of answers already generated (one per embedding row)."""
        emb = normalize(embeddings)
        parsed = [parse_response(r) for r in responses]
        cap_idx, dom_idx = self.mapper.map([p[0] for p in parsed], [p[1] for p in parsed])
        k = len(self.mapper.domain_names)
        cap_rank = top_r(emb @ self.capability_vectors.T, min(2 * self.r_cap, self.n_cap))
        know_rank = top_r(emb @ self.mapper.domain_vectors.T, min(2 * self.r_know, k))
        capabilities, own_caps = complete_lists(cap_idx, cap_rank, self.r_cap)
        domains, own_domains = complete_lists(dom_idx, know_rank, self.r_know)
        s = self.stats
        s["rows"] += len(responses)
        s["generation_errors"] += sum(r is None for r in responses)
        s["fallback_rows"] += int(((own_caps == 0) & (own_domains == 0)).sum())
        s["llm_capabilities"] += int(own_caps.sum())
        s["llm_domains"] += int(own_domains.sum())
        s["other_domains"] += int((domains == self.mapper.other).sum())
        return Annotation(capabilities=capabilities, domains=domains)

    def close(self) -> None:
        """Stop the engine if this annotator started it."""
        if self._engine_factory is not None and self._generator is not None:
            close = getattr(self._generator, "close", None)
            if close is not None:
                close()
            self._generator = None

    def __enter__(self) -> LLMAnnotator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Builders


class _LazyEncoder:
    """The profile's encoder, loaded on the first phrase to embed."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._st = None

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        from router.backends.encoder import encode_texts, load_encoder

        if self._st is None:
            self._st = load_encoder(self.model)
        return encode_texts(self._st, list(texts), window="head")


def vllm_engine_factory(
    weights: str, *, max_tokens: int = 64, max_model_len: int | None = None, dtype: str = "auto"
) -> Callable[[], Any]:
    """Makes the annotator's engine: the project's vLLM stage, greedy, serving `ANNOTATOR_MODEL`."""

    def factory():
        from router.backends.generators import VLLMGenerator

        settings = {"max_tokens": max_tokens, "temperature": 0.0, "input_price": 0.0, "output_price": 0.0}
        return VLLMGenerator(weights, models={ANNOTATOR_MODEL: settings}, max_model_len=max_model_len, dtype=dtype)

    return factory


def llm_annotator(
    weights: str,
    *,
    encoder: str,
    r_cap: int = 3,
    r_know: int = 3,
    max_tokens: int = 64,
    max_model_len: int | None = None,
    dtype: str = "auto",
    domain_threshold: float = 0.45,
) -> LLMAnnotator:
    """The LLM annotator the `--annotator llm|distilled` commands use: `weights` served by vLLM
    (started on first use), phrases embedded with the profile's `encoder`."""
    from router.method.fitting import taxonomy_vectors
    from router.method.taxonomy import CAPABILITIES, DOMAINS

    cap_vectors, domain_vectors = taxonomy_vectors(encoder)
    ann = LLMAnnotator(
        engine_factory=vllm_engine_factory(weights, max_tokens=max_tokens, max_model_len=max_model_len, dtype=dtype),
        encode=_LazyEncoder(encoder), capability_names=list(CAPABILITIES), capability_vectors=cap_vectors,
        domain_names=list(DOMAINS), domain_vectors=domain_vectors, r_cap=r_cap, r_know=r_know,
        domain_threshold=domain_threshold, weights=weights,
    )  # fmt: skip
    return ann


@dataclass
class IndexAnnotation:
    """What `annotate_index_set` gives `router.method.profiles.build_profiles`, and what to record."""

    knowledge: np.ndarray  # [K + 1, D]
    domain_names: list[str]  # [K + 1]
    annotation: Annotation
    heads: np.ndarray  # [D + 1, C + K + 1]
    meta: dict[str, Any] = field(default_factory=dict)


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a[:, 0] == b[:, 0]).mean()) if len(a) else float("nan")


def annotate_index_set(
    texts: Sequence[str],
    embeddings: np.ndarray,
    annotator: LLMAnnotator,
    *,
    kind: str,
    alpha: float = 0.5,
    ridge: float = 1.0,
    sample: int | None = None,
    seed: int = 0,
) -> IndexAnnotation:
    """The index set's lists for an `llm` or `distilled` profile, and the heads it routes with.

    `llm`: the annotator labels every query and heads are fitted on all of them. `distilled`: it
    labels `sample` queries (a seeded random sample; None: all), heads are fitted on those, and
    the heads label the rest."""
    if kind not in ("llm", "distilled"):
        raise ValueError(f"annotate_index_set makes llm or distilled profiles, not {kind!r}")
    emb = normalize(embeddings)
    n = len(emb)
    labelled = np.arange(n)
    if kind == "distilled" and sample is not None and sample < n:
        if sample < 1:
            raise ValueError(f"the distillation sample must hold at least 1 query, got {sample}")
        labelled = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
    before = dict(annotator.stats)
    by_llm = annotator.annotate([texts[i] for i in labelled], emb[labelled])
    stats = {k: annotator.stats[k] - before.get(k, 0) for k in annotator.stats}
    n_know = len(annotator.knowledge_names)
    heads = fit_heads(emb[labelled], by_llm, annotator.n_cap, n_know, alpha, ridge=ridge)
    own = heads.annotate(emb[labelled], annotator.r_cap, annotator.r_know)
    capabilities, domains = by_llm.capabilities, by_llm.domains
    if len(labelled) < n:
        rest = np.setdiff1d(np.arange(n), labelled)
        by_heads = heads.annotate(emb[rest], annotator.r_cap, annotator.r_know)
        capabilities = np.empty((n, annotator.r_cap), np.int64)
        domains = np.empty((n, annotator.r_know), np.int64)
        capabilities[labelled], capabilities[rest] = by_llm.capabilities, by_heads.capabilities
        domains[labelled], domains[rest] = by_llm.domains, by_heads.domains
    rows = max(stats["rows"], 1)
    meta = {
        "annotator": kind,
        "annotator_weights": annotator.weights,
        "labelled_by_llm": int(len(labelled)),
        "labelled_by_heads": int(n - len(labelled)),
        "llm": {
            **stats,
            "llm_capability_share": stats["llm_capabilities"] / (rows * annotator.r_cap),
            "llm_domain_share": stats["llm_domains"] / (rows * annotator.r_know),
            "note": "list slots the annotator's answer did not fill hold the embedding ranking over the same "
            "taxonomy; fallback_rows got nothing usable from the annotator (generation error or no "
            "parsable name) and carry the embedding annotator's lists entirely",
        },
        "knowledge": "the named domains of router.method.taxonomy.DOMAINS plus `other`; free-text domains map to the "
        f"most similar name at cosine >= {annotator.mapper.domain_threshold}, else to `other`",
        "heads": {
            "ridge": ridge,
            "fitted_on": int(len(labelled)),
            "top1_agreement_capabilities": _agreement(own.capabilities, by_llm.capabilities),
            "top1_agreement_domains": _agreement(own.domains, by_llm.domains),
        },
        "routing": "the pipeline annotates with Profiles.annotate, which for this profile is its linear heads "
        "(fitted on the llm labels; no generation per query at routing time)"
        + ("; `router eval --annotator llm` annotates the test queries with the llm itself" if kind == "llm" else ""),
    }
    return IndexAnnotation(
        knowledge=annotator.knowledge_vectors,
        domain_names=list(annotator.knowledge_names),
        annotation=Annotation(capabilities=capabilities, domains=domains),
        heads=heads.stacked(),
        meta=meta,
    )
