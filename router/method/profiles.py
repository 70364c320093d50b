"""InferenceDynamics profiles: per-model capability and knowledge vectors, and scoring in matrix form.

A query's capabilities and knowledge domains are ranked lists (top-r nearest capability
prototypes and knowledge centroids of its embedding); the element at rank j weighs
w_j = alpha^(j-1) / sum_m alpha^(m-1). A model's profile value for an element is the mean, over the
index queries tagged with it, of (score - beta * cost) * w_j; a query's predicted quality for a
model is sum_j w_j Cap(c_j) + sum_j w_j Know(k_j). Everything here is numpy on whole arrays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from router.method.lengths import LengthProfile

# Version 2 adds answer-length profiles (router.method.lengths); version 1 files still load, and
# route as they did.
PROFILE_VERSION = 2
READABLE_VERSIONS = (1, 2)
# Arrays a profile file holds only where they were fitted (router.method.calibration).
OPTIONAL_ARRAYS = ("evidence", "stack", "calibration", "blend", "evidence_free")
PACKAGED = ("open9",)


# Rows per matrix product in `annotate` (see there).
ANNOTATE_BLOCK = 2048
# `annotate`'s product has its columns padded to a multiple of this: OpenBLAS's single-precision
# kernels work on 8 columns at a time, and 39 columns (open9's 32 clusters and 7 capabilities)
# ran 15% slower than 40 on one core of an AVX2 machine.
PRODUCT_COLUMNS = 8


# Rows of the largest table of rank-weighted profile sums `Profiles.score_annotated` gathers from
# (each of M floats: 32^3 clusters x 9 models is 1.2 MB): one gather per row instead of r.
SUM_TABLE_ENTRIES = 1 << 16


def list_codes(idx: np.ndarray, k: int) -> np.ndarray:
    """Each row's ordered index list [N, r] (entries < k) as one number, its row in `rank_sum_table`."""
    code = idx[:, 0].copy()
    for j in range(1, idx.shape[1]):
        code *= k
        code += idx[:, j]
    return code


def rank_weights(r: int, alpha: float) -> np.ndarray:
    """w_j = alpha^(j-1) / sum_{m=1..r} alpha^(m-1), j = 1..r."""
    w = alpha ** np.arange(r, dtype=np.float64)
    return (w / w.sum()).astype(np.float32)


def top_r(similarity: np.ndarray, r: int, *, overwrite: bool = False) -> np.ndarray:
    """Indices [N, r] of the r largest entries of each row, largest first (ties: lower index).
    With `overwrite`, `similarity` is used as scratch space instead of copied."""
    n, k = similarity.shape
    r = min(r, k)
    out = np.empty((n, r), dtype=np.int64)
    if r == 0:
        return out
    # r is small (1-5): r argmax passes beat a partition plus a sort, and argmax's first-maximum
    # rule gives the tie rule for free.
    work = similarity if r == 1 or overwrite else similarity.copy()
    rows = np.arange(n)
    for j in range(r):
        out[:, j] = work.argmax(axis=1)
        if j + 1 < r:
            work[rows, out[:, j]] = -np.inf
    return out


def top_r_columns(similarity_t: np.ndarray, r: int) -> np.ndarray:
    """`top_r(similarity_t.T, r)` for a transposed [k, N] matrix with few rows k (it is used
    as scratch space): elementwise passes over whole rows instead of an argmax per row, which
    costs as much for 7 elements as for 32. Same tie rule; a non-finite entry takes top_r's path."""
    k, n = similarity_t.shape
    r = min(r, k)
    if not np.isfinite(similarity_t).all():  # NaN ranks first in argmax and never in a comparison
        return top_r(np.ascontiguousarray(similarity_t.T), r)
    out = np.empty((n, r), dtype=np.int64)
    best = np.empty(n, similarity_t.dtype)
    better = np.empty(n, bool)
    cols = np.arange(n)
    for j in range(r):
        at = out[:, j]
        best[:] = similarity_t[0]
        at[:] = 0
        for i in range(1, k):
            np.greater(similarity_t[i], best, out=better)  # strictly: the first maximum stays
            np.maximum(best, similarity_t[i], out=best)
            np.copyto(at, i, where=better)
        if j + 1 < r:
            similarity_t[at, cols] = -np.inf
    return out


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def spherical_kmeans(x: np.ndarray, k: int, *, seed: int = 0, iterations: int = 50) -> np.ndarray:
    """Unit-norm centroids [k, D] of unit-norm rows x, cosine k-means with k-means++ seeding."""
    x = normalize(x)
    n = len(x)
    if n < k:
        raise ValueError(f"cannot make {k} clusters from {n} queries; lower the number of clusters")
    rng = np.random.default_rng(seed)
    centroids = np.empty((k, x.shape[1]), dtype=np.float32)
    centroids[0] = x[rng.integers(n)]
    dist = 1.0 - x @ centroids[0]
    for c in range(1, k):
        p = np.maximum(dist, 0) ** 2
        total = p.sum()
        idx = rng.choice(n, p=p / total) if total > 0 else rng.integers(n)
        centroids[c] = x[idx]
        dist = np.minimum(dist, 1.0 - x @ centroids[c])
    labels = None
    for _ in range(iterations):
        new_labels = np.argmax(x @ centroids.T, axis=1)
        if labels is not None and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, x)
        empty = np.linalg.norm(sums, axis=1) == 0
        sums[empty] = centroids[empty]  # keep an emptied centroid where it was
        centroids = normalize(sums)
    return centroids


def rank_sum_table(profile: np.ndarray, r: int, alpha: float) -> np.ndarray | None:
    """[K^r, M]: sum_j w_j profile[i_j] for every ordered list (i_1, ..., i_r) of the profile's K
    rows with the rank weights, at row (..(i_1 K + i_2) K ..) + i_r. None when it would have over
    SUM_TABLE_ENTRIES rows."""
    k, m = profile.shape
    if r < 1 or k**r > SUM_TABLE_ENTRIES:
        return None
    w = rank_weights(r, alpha)
    table = np.zeros((k,) * r + (m,), np.float32)
    for j in range(r):
        table += w[j] * profile.reshape([k if i == j else 1 for i in range(r)] + [m])
    return table.reshape(k**r, m)


def rank_weighted_rows(profile: np.ndarray, idx: np.ndarray, alpha: float, table: np.ndarray | None) -> np.ndarray:
    """sum_j w_j profile[idx[:, j]] [N, M] for ranked lists idx [N, r]: one gather per row from
    `table` (`rank_sum_table` of the profile) when there is one, else r gathers contracted with
    the weights."""
    if table is not None:
        return np.take(table, list_codes(idx, len(profile)), axis=0)  # np.take: much faster than fancy indexing
    return np.einsum("j,njm->nm", rank_weights(idx.shape[1], alpha), profile[idx])


@dataclass(frozen=True)
class Annotation:
    """A batch's ranked capability and knowledge lists, as indices into the profile's taxonomy.

    A row with a known task has that task as the first element of its knowledge list, ahead of
    its clusters: a task label is a stronger signal than any cluster of the text."""

    capabilities: np.ndarray  # int64 [N, r_cap]
    domains: np.ndarray  # int64 [N, r_know]
    tasks: np.ndarray | None = None  # int64 [N], index into Profiles.tasks; -1: no known task
    # float32 [N, M]: embedding @ the blend's head for rows without a known task (no bias), taken
    # from the taxonomy's matrix product where the profiles blend (`Profiles.quality`).
    evidence: np.ndarray | None = None


def knowledge_weights(ann: Annotation, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Rank weights of each row's task [N] (0 without one) and of its clusters [N, r]."""
    r = ann.domains.shape[1]
    n = ann.domains.shape[0]
    if ann.tasks is None:
        return np.zeros(n, np.float32), np.broadcast_to(rank_weights(r, alpha), (n, r))
    known = ann.tasks >= 0
    with_task = rank_weights(r + 1, alpha)
    w_task = np.where(known, with_task[0], 0).astype(np.float32)
    w_clusters = np.where(known[:, None], with_task[1:], rank_weights(r, alpha)).astype(np.float32)
    return w_task, w_clusters


@dataclass(frozen=True)
class Profiles:
    """Capability and knowledge profiles of a pool of models, with the taxonomy they refer to."""

    models: tuple[str, ...]
    centroids: np.ndarray  # float32 [K, D], unit rows: the knowledge clusters
    domain_names: tuple[str, ...]  # [K]: a readable name per cluster, for reports
    capability_vectors: np.ndarray  # float32 [C, D], unit rows: capability prototypes
    capability_names: tuple[str, ...]  # [C]
    know: np.ndarray  # float32 [K, M]
    cap: np.ndarray  # float32 [C, M]
    output_tokens: np.ndarray  # float32 [K, M]: mean answer tokens per cluster and model, NaN unknown
    alpha: float = 0.5
    beta: float = 0.0
    r_know: int = 3
    r_cap: int = 3
    encoder: str = "sentence-transformers/all-MiniLM-L6-v2"
    meta: dict[str, Any] = field(default_factory=dict)
    tasks: tuple[str, ...] = ()  # task labels seen in the index set (a knowledge element each)
    task_profile: np.ndarray | None = None  # float32 [T, M]
    # float32 [D + 1, C + K]: linear heads from an embedding to capability and knowledge scores
    # (last row: bias), fitted on an LLM annotator's labels (router.method.annotate). When present,
    # `annotate` ranks their outputs instead of the nearest prototypes and centroids.
    heads: np.ndarray | None = None
    # Answer-length profiles (router.method.lengths), fitted where the index set has answer lengths;
    # None in files without them.
    lengths: "LengthProfile | None" = None
    # The stacked predictor (router.method.calibration), where the file has it: float32
    # [D + T + 1, M], a ridge head from the embedding, the task (one-hot over `tasks`) and a bias to
    # each model's score (the evidence of the training rows alike); float32 [3, M], the weights of
    # the profile's score, that evidence and a constant; float32 [2, B, M], a monotone map of the
    # result onto the scores the models reach. All fitted on out-of-fold predictions of the
    # training table. None: the profile's score alone.
    evidence: np.ndarray | None = None
    stack: np.ndarray | None = None
    calibration: np.ndarray | None = None
    # The blend (the default where the file has it, instead of a stack): float32 [2, 2], the weights
    # of the evidence in the calibrated prediction (within a row, and the row's level) for rows with
    # a known task and for the others (files written before the split: [2], one weight per kind);
    # float32 [D + 1, M], the evidence head of rows without a known task (embedding and bias; None
    # where the profiles have no tasks: `evidence` is that head then).
    blend: np.ndarray | None = None
    evidence_free: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def task_index(self, tasks: Sequence[str | None] | np.ndarray | None) -> np.ndarray | None:
        """Indices into `self.tasks` (-1 for a task the profiles never saw), or None."""
        if tasks is None or not self.tasks:
            return None
        names, inverse = np.unique(np.asarray(tasks, dtype=object).astype(str), return_inverse=True)
        lookup = {t: i for i, t in enumerate(self.tasks)}
        return np.array([lookup.get(t, -1) for t in names], np.int64)[inverse]

    @cached_property
    def _taxonomy_t(self) -> np.ndarray:
        """[D, K + C + pad]: centroids and capability prototypes side by side, for one matrix
        product, and zero columns up to a multiple of PRODUCT_COLUMNS."""
        both = np.concatenate([self.centroids, self.capability_vectors])
        free = self._free_head
        cols = len(both) + (0 if free is None else free.shape[1])
        width = -(-cols // PRODUCT_COLUMNS) * PRODUCT_COLUMNS
        out = np.zeros((self.dim, width), np.float32)
        out[:, : len(both)] = both.T
        if free is not None:  # the blend's head rides on the same product (its bias is added later)
            out[:, len(both) : cols] = free[: self.dim]
        return out

    @property
    def _free_head(self) -> np.ndarray | None:
        """[D + 1, M]: the blend's evidence head of rows without a known task (None: no blend)."""
        if self.blend is None or self.evidence is None or self.calibration is None:
            return None
        return self.evidence if self.evidence_free is None else self.evidence_free

    def annotate(self, embeddings: np.ndarray, tasks=None) -> Annotation:
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise ValueError(f"embeddings must be [N, {self.dim}] for these profiles, got {emb.shape}")
        if self.heads is not None:
            c = len(self.capability_vectors)
            out = emb @ self.heads[:-1] + self.heads[-1]
            return Annotation(
                capabilities=top_r(out[:, :c], self.r_cap),
                domains=top_r(out[:, c:], self.r_know),
                tasks=self.task_index(tasks),
            )
        # One product per block of rows (a narrow one for the few capabilities alone runs far
        # below the machine's speed), small enough that the argmax passes that use it as scratch
        # space read it from cache (faster than one product over the whole batch: bench/route.py).
        # The few capabilities are ranked over the whole batch at once, transposed (top_r_columns).
        k, c, n = len(self.centroids), len(self.capability_vectors), len(emb)
        cap_sims = np.empty((c, n), np.float32)
        doms = np.empty((n, min(self.r_know, k)), np.int64)
        free = self._free_head
        ev = None if free is None else np.empty((n, free.shape[1]), np.float32)
        for lo in range(0, n, ANNOTATE_BLOCK):
            sims = emb[lo : lo + ANNOTATE_BLOCK] @ self._taxonomy_t
            cap_sims[:, lo : lo + len(sims)] = sims[:, k : k + c].T
            if ev is not None:
                ev[lo : lo + len(sims)] = sims[:, k + c : k + c + ev.shape[1]]
            doms[lo : lo + len(sims)] = top_r(sims[:, :k], self.r_know, overwrite=True)
        caps = top_r_columns(cap_sims, self.r_cap)
        return Annotation(capabilities=caps, domains=doms, tasks=self.task_index(tasks), evidence=ev)

    def _rank_sums(self, which: str, r: int) -> np.ndarray | None:
        """`rank_sum_table` of the `which` profile (`cap` or `know`), built once per profiles object."""
        key = f"_rank_sums_{which}_{r}"
        if key not in self.__dict__:  # cached like functools.cached_property (frozen dataclass)
            self.__dict__[key] = rank_sum_table(getattr(self, which), r, self.alpha)
        return self.__dict__[key]

    def score_annotated(self, ann: Annotation) -> np.ndarray:
        """The profile's score [N, M]: A_cap @ Cap + A_know @ Know (+ the task's weight times its
        profile), with the rank weights in A, without building the one-hot weight matrices: one
        gather per row from the table of rank-weighted sums of every top-r list where it is small,
        else r gathers [N, r, M] contracted with the weights. `quality` is what routing uses."""
        w_task, wk = knowledge_weights(ann, self.alpha)
        r_cap = ann.capabilities.shape[1]
        q = rank_weighted_rows(self.cap, ann.capabilities, self.alpha, self._rank_sums("cap", r_cap))
        table = self._rank_sums("know", ann.domains.shape[1]) if ann.tasks is None else None  # rows share weights
        if table is not None:
            q += np.take(table, list_codes(ann.domains, len(self.know)), axis=0)
        else:
            q += np.einsum("nj,njm->nm", wk, self.know[ann.domains])
        if ann.tasks is not None and self.task_profile is not None:
            q += w_task[:, None] * self.task_profile[np.maximum(ann.tasks, 0)]
        return q.astype(np.float32, copy=False)

    def quality(self, embeddings: np.ndarray, ann: Annotation) -> np.ndarray:
        """Predicted quality [N, M] (float32) of rows annotated by these profiles: the profile's
        score, calibrated and blended with the evidence heads, or stacked with the evidence head and
        calibrated, as the file has them (router.method.calibration); else the score alone."""
        q = self.score_annotated(ann)
        if self._free_head is not None:  # the file blends
            return self._blended(embeddings, ann, q)
        if self.stack is not None and self.evidence is not None:
            from router.method.calibration import evidence_scores

            e = evidence_scores(self.evidence, embeddings, ann.tasks)
            q = self.stack[0] * q + self.stack[1] * e + self.stack[2]
        if self.calibration is not None:
            from router.method.calibration import apply_calibration

            q = apply_calibration(q, self.calibration)
        return q.astype(np.float32, copy=False)

    def _blended(self, embeddings: np.ndarray, ann: Annotation, q: np.ndarray) -> np.ndarray:
        """The calibrated score moved toward the evidence (router.method.calibration): rows with a
        known task by the task's head and the first weight, the others by the head without a task
        and the second."""
        from router.method.calibration import apply_calibration, blended, evidence_scores

        q = apply_calibration(q, self.calibration)
        known = None if ann.tasks is None or not self.tasks else np.asarray(ann.tasks) >= 0
        free = self._free_head
        fused = ann.evidence is not None and ann.evidence.shape == q.shape  # from `annotate`'s product
        if known is None or not known.any():
            e = ann.evidence + free[-1] if fused else evidence_scores(free, embeddings, None)
            return blended(q, e, self.blend[1])
        if known.all():
            return blended(q, evidence_scores(self.evidence, embeddings, ann.tasks), self.blend[0])
        out = np.empty_like(q)
        out[known] = blended(q[known], evidence_scores(self.evidence, embeddings[known], ann.tasks[known]),
                             self.blend[0])  # fmt: skip
        e = ann.evidence[~known] + free[-1] if fused else evidence_scores(free, embeddings[~known], None)
        out[~known] = blended(q[~known], e, self.blend[1])
        return out

    def score(self, embeddings: np.ndarray, tasks=None) -> np.ndarray:
        """Predicted quality [N, M] (float32) for L2-normalised embeddings [N, D]; `tasks` (one
        label per row, optional) adds each row's task as its first knowledge element."""
        return self.quality(embeddings, self.annotate(embeddings, tasks))

    def expected_output_tokens(self, ann: Annotation) -> np.ndarray:
        """Expected answer tokens [N, M] (float32): from the length profile for models that have one
        (per row, from its capabilities, clusters and task), else the mean of the row's top
        cluster where a file of version 1 has it; NaN where neither has data (the plan then falls
        back to the config). See `length_source`."""
        if self.lengths is None or not self.lengths.known.any():
            return self.output_tokens[ann.domains[:, 0]]
        out = self.lengths.predict(ann, self.alpha)
        unknown = np.flatnonzero(~self.lengths.known)
        if unknown.size:
            out[:, unknown] = self.output_tokens[ann.domains[:, :1], unknown]
        return out

    @property
    def length_source(self) -> tuple[str, ...]:
        """Per model, where `expected_output_tokens` comes from: `profile` (its length profile),
        `clusters` (per-cluster means, some clusters only) or `none` (no length data: the plan uses
        the config's `expected_output_tokens` or `budget.default_output_tokens`)."""
        known = self.lengths.known if self.lengths is not None else np.zeros(len(self.models), bool)
        clusters = np.isfinite(self.output_tokens).any(axis=0)
        return tuple("profile" if k else "clusters" if c else "none" for k, c in zip(known, clusters))

    def select(self, models: Sequence[str]) -> "Profiles":
        """The same profiles restricted to (and ordered as) `models`."""
        missing = [m for m in models if m not in self.models]
        if missing:
            raise KeyError(
                f"model {missing[0]!r} has no profile (profiled: {', '.join(self.models)}); "
                "build one with `router profile`"
            )
        cols = [self.models.index(m) for m in models]
        return replace(
            self,
            models=tuple(models),
            know=self.know[:, cols],
            cap=self.cap[:, cols],
            output_tokens=self.output_tokens[:, cols],
            task_profile=None if self.task_profile is None else self.task_profile[:, cols],
            lengths=None if self.lengths is None else self.lengths.select(cols),
            evidence=None if self.evidence is None else self.evidence[:, cols],
            stack=None if self.stack is None else self.stack[:, cols],
            calibration=None if self.calibration is None else self.calibration[:, :, cols],
            evidence_free=None if self.evidence_free is None else self.evidence_free[:, cols],
        )

    def save(self, path: str | Path) -> None:
        meta = {
            "version": PROFILE_VERSION,
            "models": list(self.models),
            "domain_names": list(self.domain_names),
            "capability_names": list(self.capability_names),
            "alpha": self.alpha,
            "beta": self.beta,
            "r_know": self.r_know,
            "r_cap": self.r_cap,
            "encoder": self.encoder,
            "dim": self.dim,
            "tasks": list(self.tasks),
            "meta": self.meta,
        }
        extra = {} if self.task_profile is None else {"task_profile": self.task_profile}
        if self.heads is not None:
            extra["heads"] = self.heads
        if self.lengths is not None:
            extra.update(self.lengths.arrays())
        for name in OPTIONAL_ARRAYS:
            if getattr(self, name) is not None:
                extra[name] = getattr(self, name)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            np.savez_compressed(
                f,
                meta=np.frombuffer(json.dumps(meta, indent=1).encode(), dtype=np.uint8),
                centroids=self.centroids,
                capability_vectors=self.capability_vectors,
                know=self.know,
                cap=self.cap,
                output_tokens=self.output_tokens,
                **extra,
            )


def profile_path(name_or_path: str | Path) -> Path:
    if str(name_or_path) in PACKAGED:
        return Path(str(resources.files("router") / "profiles" / f"{name_or_path}.npz"))
    return Path(name_or_path)


def load_profiles(path: str | Path) -> Profiles:
    """Load a profile file written by `router profile` (or a packaged name such as `open9`)."""
    p = profile_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"profile file {str(p)!r} not found; build one with `router profile`")
    with np.load(p, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        if meta.get("version") not in READABLE_VERSIONS:
            raise ValueError(
                f"profile file {str(p)!r} has version {meta.get('version')}, this router reads "
                f"versions {', '.join(map(str, READABLE_VERSIONS))}; rebuild it with `router profile`"
            )
        from router.method.lengths import LengthProfile

        return Profiles(
            models=tuple(meta["models"]),
            centroids=z["centroids"].astype(np.float32),
            domain_names=tuple(meta["domain_names"]),
            capability_vectors=z["capability_vectors"].astype(np.float32),
            capability_names=tuple(meta["capability_names"]),
            know=z["know"].astype(np.float32),
            cap=z["cap"].astype(np.float32),
            output_tokens=z["output_tokens"].astype(np.float32),
            alpha=float(meta["alpha"]),
            beta=float(meta["beta"]),
            r_know=int(meta["r_know"]),
            r_cap=int(meta["r_cap"]),
            encoder=meta["encoder"],
            meta=meta.get("meta", {}),
            tasks=tuple(meta.get("tasks", ())),
            task_profile=z["task_profile"].astype(np.float32) if "task_profile" in z.files else None,
            heads=z["heads"].astype(np.float32) if "heads" in z.files else None,
            lengths=LengthProfile.from_arrays(z),
            **{name: z[name].astype(np.float32) if name in z.files else None
               for name in OPTIONAL_ARRAYS},
        )


def _tag_matrix(idx: np.ndarray, n_elements: int, weights: np.ndarray) -> np.ndarray:
    """One-hot rank-weight matrix A [N, E] with A[i, idx[i, j]] = w_j."""
    a = np.zeros((idx.shape[0], n_elements), dtype=np.float32)
    np.put_along_axis(a, idx, np.broadcast_to(weights, idx.shape), axis=1)
    return a


def element_means(idx: np.ndarray, n_elements: int, weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(A^T @ values) / N_e where N_e counts the queries tagged with element e."""
    a = _tag_matrix(idx, n_elements, weights)
    counts = (a > 0).sum(axis=0).astype(np.float32)
    sums = a.T @ values
    # An element no index query was tagged with says nothing about any model: give it the pool's
    # overall mean so it does not favour one model.
    fallback = values.mean(axis=0, keepdims=True) * float(np.mean(weights))
    return np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], fallback).astype(np.float32)


def build_profiles(
    embeddings: np.ndarray,
    scores: np.ndarray,
    models: Sequence[str],
    *,
    capability_vectors: np.ndarray,
    capability_names: Sequence[str],
    domain_vectors: np.ndarray,
    domain_names: Sequence[str],
    costs: np.ndarray | None = None,
    output_tokens: np.ndarray | None = None,
    n_clusters: int = 32,
    alpha: float = 0.5,
    beta: float = 0.0,
    r_know: int = 3,
    r_cap: int = 3,
    encoder: str = "sentence-transformers/all-MiniLM-L6-v2",
    seed: int = 0,
    meta: dict[str, Any] | None = None,
    tasks: Sequence[str] | None = None,
    knowledge: np.ndarray | None = None,
    annotation: Annotation | None = None,
    heads: np.ndarray | None = None,
    length_kappa: float | None = None,
) -> Profiles:
    """Profiles from an index set: embeddings [N, D], scores [N, M] in [0, 1] (NaN: not evaluated).

    By default the knowledge elements are `n_clusters` clusters of the embeddings and the index
    queries are annotated by nearness. `knowledge` [K, D] fixes the elements instead (named by
    `domain_names`), `annotation` gives the index queries' lists from another annotator, and
    `heads` is stored for routing (router.method.annotate). `output_tokens` [N, M] (the answers'
    lengths, NaN unknown) adds answer-length profiles (router.method.lengths), shrunk with
    `length_kappa` (None: chosen by cross-validation)."""
    emb = normalize(embeddings)
    scores = np.asarray(scores, dtype=np.float32)
    if scores.shape != (len(emb), len(models)):
        raise ValueError(f"scores must be [{len(emb)}, {len(models)}], got {scores.shape}")
    if knowledge is not None:
        centroids = normalize(knowledge)  # a zero row (an `other` element) stays zero
        cluster_names = list(map(str, domain_names))
        n_clusters = len(centroids)
        if len(cluster_names) != n_clusters:
            raise ValueError(f"knowledge has {n_clusters} elements but domain_names names {len(cluster_names)}")
    else:
        centroids = spherical_kmeans(emb, n_clusters, seed=seed)
        names = np.asarray(domain_names)[np.argmax(centroids @ normalize(domain_vectors).T, axis=1)]
        # Clusters that land on the same domain name get a numeric suffix so report labels stay unique.
        seen: dict[str, int] = {}
        cluster_names = []
        for n in map(str, names):
            seen[n] = seen.get(n, 0) + 1
            cluster_names.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    cap_vectors = normalize(capability_vectors)
    value = scores if costs is None else scores - beta * np.asarray(costs, dtype=np.float32)
    # A model not evaluated on a query contributes the model's mean there, not zero.
    col_mean = np.nanmean(value, axis=0)
    value = np.where(np.isnan(value), col_mean[None, :], value).astype(np.float32)
    profiles = Profiles(
        models=tuple(models),
        centroids=centroids,
        domain_names=tuple(cluster_names),
        capability_vectors=cap_vectors,
        capability_names=tuple(capability_names),
        know=np.zeros((n_clusters, len(models)), np.float32),
        cap=np.zeros((len(cap_vectors), len(models)), np.float32),
        output_tokens=np.full((n_clusters, len(models)), np.nan, np.float32),
        alpha=alpha,
        beta=beta,
        r_know=r_know,
        r_cap=r_cap,
        encoder=encoder,
        meta=dict(meta or {}),
        tasks=tuple(sorted(set(map(str, tasks)))) if tasks is not None else (),
        heads=None if heads is None else np.asarray(heads, np.float32),
    )
    ann = profiles.annotate(emb, tasks)
    if annotation is not None:
        ann = replace(annotation, tasks=ann.tasks)
    w_task, w_clusters = knowledge_weights(ann, alpha)
    know = element_means(ann.domains, n_clusters, w_clusters, value)
    task_profile = None
    if ann.tasks is not None:
        task_profile = element_means(ann.tasks[:, None], len(profiles.tasks), w_task[:, None], value)
    cap = element_means(ann.capabilities, len(cap_vectors), rank_weights(ann.capabilities.shape[1], alpha), value)
    out = profiles.output_tokens
    if output_tokens is not None:
        top = ann.domains[:, 0]
        ot = np.asarray(output_tokens, dtype=np.float32)
        sums = np.zeros((n_clusters, len(models)), np.float64)
        counts = np.zeros((n_clusters, len(models)), np.float64)
        np.add.at(sums, top, np.nan_to_num(ot))
        np.add.at(counts, top, ~np.isnan(ot))
        out = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).astype(np.float32)
    lengths = None
    if output_tokens is not None and np.isfinite(output_tokens).any():
        from router.method.lengths import fit_length_profile

        lengths, record = fit_length_profile(
            ann, output_tokens, n_cap=len(cap_vectors), n_know=n_clusters,
            n_tasks=len(profiles.tasks) if ann.tasks is not None else None, alpha=alpha, kappa=length_kappa, seed=seed,
        )  # fmt: skip
        names = profiles.models
        profiles.meta["lengths"] = {
            "fit": "Poisson regression with a log link on rank-weighted capabilities and clusters, a task factor "
                   "(router.method.lengths)",
            "kappa_chosen_by": record["kappa_chosen_by"],
            "kappa": {m: float(k) for m, k, r in zip(names, lengths.kappa, lengths.rows) if r},
            "rows": {m: int(r) for m, r in zip(names, lengths.rows)},
            "cv_deviance": {names[t]: e for t, e in record["cv_deviance"].items()},
        }  # fmt: skip
    return replace(profiles, know=know, cap=cap, output_tokens=out, task_profile=task_profile, lengths=lengths)
