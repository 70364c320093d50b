"""`router profile`: build a profile file from evaluation tables with the project's own encoder."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from router.backends.encoder import MINILM, encode_cached, encoder_name
from router.method.calibration import (
    CALIBRATION_FOLDS,
    EVIDENCE_ALPHAS,
    apply_calibration,
    choose_blend,
    evidence_features,
    fit_calibration,
    fit_stack,
    ridge,
    stacked,
)
from router.method.evaldata import EvalTable, read_eval_table
from router.method.lengths import LengthProfile, fit_length_profile, query_folds
from router.method.profiles import Annotation, Profiles, build_profiles
from router.method.taxonomy import CAPABILITIES, DOMAINS


@dataclass(frozen=True)
class ProfileSettings:
    """How profiles are fitted. Where the paper has a default it is used (alpha). The rest were
    checked by 5-fold cross-validation on the llmrouter-9models training table (bench/profile_cv.py):
    clusters in {16, 32, 64} and r in {1, 3} all lie within 0.7 points of accuracy, head and tail
    windows within 0.1; the middle values are kept. On the routerdc-7models training tables the
    same search puts 32 clusters, r = 3 and the task column first (0.649 at lambda=0, tied with
    64 clusters; the others 0.639-0.648). The tail window is for long few-shot prompts
    (bench/window.py: +2.7 to +3.1 points over the best single model against +0.8 with the head,
    in distribution)."""

    n_clusters: int = 32
    alpha: float = 0.5
    """Rank-weight decay, the paper's default."""
    beta: float = 0.0
    """Cost penalty inside the profile scores: 0, since the budget solver prices cost itself."""
    r_know: int = 3
    r_cap: int = 3
    window: str = "tail"
    """What of a long prompt is embedded (see router.backends.encoder.window_texts)."""
    use_tasks: bool = True
    """Use the table's task column, when it has one, as a knowledge element of its own."""
    seed: int = 0
    annotator: str = "embedding"
    """Who annotates the index set: `embedding` (clusters and prototypes), `llm` (an auxiliary
    model, the paper's way) or `distilled` (the llm labels a sample, linear heads the rest); see
    router.method.annotate. Profiles of the latter two route with their heads."""
    distill_sample: int | None = None
    """With `distilled`: how many index queries the llm labels (seeded random; None: all)."""
    ridge: float = 1.0
    """Ridge penalty of the heads fitted on llm labels."""
    length_kappa: float | None = None
    """Shrinkage of the answer-length profiles toward each model's mean (router.method.lengths):
    None chooses it per model by 5-fold cross-validation over the queries."""
    calibrate: bool = True
    """Fit the calibration of predicted quality (router.method.calibration): one isotonic map from
    the prediction onto the scores the models reach, on out-of-fold predictions of the training
    table (embedding-annotated profiles: the refits need no LLM). Monotone and shared by every
    model, it keeps each row's order of models."""
    blend: bool = True
    """After calibrating, move the prediction toward the evidence heads (ridge on the embedding, and
    the task where the row has a known one) by weights (within a row, and the row's level) chosen
    out of fold by the routing they give (router.method.calibration). Needs `calibrate`."""
    stack: bool = False
    """Before calibrating, stack the profile's score per model with a ridge head on the embedding
    and the task (router.method.calibration), instead of the blend. Off by default: on the shared
    tables it routes with 1.0-2.8 points less accuracy at lambda = 0 on routerdc than the blend, and
    a lower AIQ on llmrouter (bench/README.md)."""

    def __post_init__(self) -> None:
        from router.method.annotate import ANNOTATORS

        if self.annotator not in ANNOTATORS:
            raise ValueError(f"annotator must be one of {', '.join(ANNOTATORS)}, got {self.annotator!r}")
        if self.distill_sample is not None and self.distill_sample < 1:
            raise ValueError(f"distill_sample must be a positive number of queries, got {self.distill_sample}")
        if self.length_kappa is not None and not self.length_kappa > 0:
            raise ValueError(f"length_kappa must be a positive number (or None: cross-validated), "
                             f"got {self.length_kappa}")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def taxonomy_vectors(encoder: str) -> tuple[np.ndarray, np.ndarray]:
    """Capability prototypes (mean embedding of each capability's examples) and domain-name vectors."""
    names = list(CAPABILITIES)
    examples = [e for n in names for e in CAPABILITIES[n]]
    emb = encode_cached(encoder, examples, window="head")
    sizes = [len(CAPABILITIES[n]) for n in names]
    cap = np.stack([chunk.mean(axis=0) for chunk in np.split(emb, np.cumsum(sizes)[:-1])])
    return cap, encode_cached(encoder, list(DOMAINS), window="head")


def fit_profiles(
    table: EvalTable,
    embeddings: np.ndarray,
    *,
    encoder: str = MINILM,
    settings: ProfileSettings = ProfileSettings(),
    models: Sequence[str] | None = None,
    scores: np.ndarray | None = None,
    annotator=None,
) -> Profiles:
    """Profiles from a table and its queries' embeddings (`scores` overrides the table's).
    `annotator` is the `router.method.annotate.LLMAnnotator` an `llm` or `distilled` setting needs."""
    cols = list(range(len(table.models)))
    if models:
        missing = [m for m in models if m not in table.models]
        if missing:
            raise ValueError(f"model {missing[0]!r} is not in the evaluation tables ({', '.join(table.models)})")
        cols = [table.models.index(m) for m in models]
    scores = table.scores if scores is None else scores
    s = settings
    if s.annotator != "embedding" and annotator is None:
        raise ValueError(f"`{s.annotator}` profiles need an LLM annotator: name its weights with --annotator-weights")
    if annotator is None:
        cap_vectors, domain_vectors = taxonomy_vectors(encoder)
    else:
        cap_vectors, domain_vectors = annotator.capability_vectors, annotator.mapper.domain_vectors
    meta = {
        "built_from": [{"file": Path(p).name, "sha256": _sha256(p)} for p in table.sources if Path(p).is_file()],
        "n_queries": len(table.queries),
        "window": s.window,
        "choices": {
            "alpha": f"{s.alpha}, the paper's default",
            "beta": f"{s.beta}: cost is priced by the budget solver, not folded into quality",
            "r_know, r_cap": f"{s.r_know}, {s.r_cap}: default, checked by cross-validation (bench/profile_cv.py)",
            "n_clusters": f"{s.n_clusters}: default, checked by cross-validation (bench/profile_cv.py)",
            "window": f"{s.window}: long few-shot prompts end with the question",
            "capabilities": "zero-shot: nearest prototypes of the seven capabilities' example prompts",
            "tasks": "the table's task column, a knowledge element ranked first" if table.task else "none",
            "answer lengths": "the table's answer lengths: a length profile per model (router.method.lengths)"
            if table.output_tokens is not None else "none in the table: the plan uses the config's lengths",
        },
        "annotator": s.annotator,
    }
    by_llm: dict = {}
    if s.annotator != "embedding":
        from router.method.annotate import annotate_index_set

        ia = annotate_index_set(table.queries, embeddings, annotator, kind=s.annotator, alpha=s.alpha,
                                ridge=s.ridge, sample=s.distill_sample, seed=s.seed)  # fmt: skip
        by_llm = {"knowledge": ia.knowledge, "domain_names": ia.domain_names, "annotation": ia.annotation,
                  "heads": ia.heads}  # fmt: skip
        meta["annotation"] = ia.meta
        meta["choices"]["capabilities"] = f"ranked by the {s.annotator} annotator (router.method.annotate)"
        meta["choices"]["n_clusters"] = "unused: the knowledge elements are named domains and `other`"
    profiles = build_profiles(
        embeddings,
        scores[:, cols],
        [table.models[c] for c in cols],
        capability_vectors=cap_vectors,
        capability_names=list(CAPABILITIES),
        domain_vectors=domain_vectors,
        domain_names=by_llm.pop("domain_names", list(DOMAINS)),
        costs=None if table.costs is None else table.costs[:, cols],
        output_tokens=None if table.output_tokens is None else table.output_tokens[:, cols],
        n_clusters=s.n_clusters,
        alpha=s.alpha,
        beta=s.beta,
        r_know=s.r_know,
        r_cap=s.r_cap,
        encoder=encoder_name(encoder),
        seed=s.seed,
        meta=meta,
        tasks=table.task if (s.use_tasks and table.task) else None,
        length_kappa=s.length_kappa,
        **by_llm,
    )
    if (s.calibrate or s.stack) and s.annotator == "embedding" and len(set(table.queries)) >= 2 * CALIBRATION_FOLDS:
        profiles = with_stack(profiles, table, embeddings, scores[:, cols].astype(np.float64), encoder, s)
    return profiles


def _evidence_out_of_fold(x: np.ndarray, y: np.ndarray, fold: np.ndarray) -> tuple[np.ndarray, float]:
    """The evidence head's out-of-fold predictions [N, M] at the alpha that predicts them best, and it."""
    best = None
    for alpha in EVIDENCE_ALPHAS:
        pred = np.full(y.shape, np.nan)
        for f in range(CALIBRATION_FOLDS):
            test, train = fold == f, fold != f
            pred[test] = x[test] @ ridge(x[train], y[train], alpha)
        k = np.isfinite(y)
        err = float(((pred[k] - y[k]) ** 2).mean())
        if best is None or err < best[0]:
            best = (err, pred, alpha)
    return best[1], best[2]


def with_stack(profiles: Profiles, table: EvalTable, embeddings: np.ndarray, scores: np.ndarray, encoder: str,
               s: ProfileSettings) -> Profiles:  # fmt: skip
    """`profiles` with the calibration and the blend, or the stacked predictor
    (router.method.calibration): each training row's profile score from profiles fitted without its
    fold, the evidence heads' likewise, the map and the blend's weights (or the stack and the map)
    fitted on them; the evidence heads then refitted on every row."""
    fold = query_folds(table.queries, CALIBRATION_FOLDS, s.seed)
    inner = replace(s, calibrate=False, stack=False, length_kappa=s.length_kappa or 1.0)  # lengths are not scored
    raw = np.full(scores.shape, np.nan)
    raw_free = np.full(scores.shape, np.nan)  # the same rows scored without their task
    full = np.full((len(table.queries), len(table.models)), np.nan)
    full[:, [table.models.index(m) for m in profiles.models]] = scores
    for f in range(CALIBRATION_FOLDS):
        test, train = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        p = fit_profiles(table.take(train), embeddings[train], encoder=encoder, settings=inner,
                         models=list(profiles.models), scores=full[train])  # fmt: skip
        tasks = [table.task[i] for i in test] if (inner.use_tasks and table.task) else None
        ann = p.annotate(embeddings[test], tasks)
        raw[test] = p.score_annotated(ann)
        raw_free[test] = raw[test] if tasks is None else p.score_annotated(replace(ann, tasks=None))
    if not s.stack:
        meta = {**profiles.meta, "calibration": {
            "folds": CALIBRATION_FOLDS, "what": "one isotonic map of the profile's score, fitted on out-of-fold "
            "predictions of the training table (router.method.calibration)"}}  # fmt: skip
        calibrated = replace(profiles, calibration=fit_calibration(raw, scores) if s.calibrate else None, meta=meta)
        if not (s.calibrate and s.blend):
            return calibrated
        return _with_blend(calibrated, table, embeddings, scores, raw, raw_free, fold, s)
    tasks = profiles.task_index(table.task) if (s.use_tasks and table.task) else None
    x = evidence_features(embeddings, tasks, len(profiles.tasks))
    evidence, alpha = _evidence_out_of_fold(x, scores, fold)
    stack = fit_stack(raw, evidence, scores)
    calibration = fit_calibration(stacked(stack, raw, evidence), scores) if s.calibrate else None
    meta = {**profiles.meta, "stack": {
        "folds": CALIBRATION_FOLDS, "evidence_alpha": alpha,
        "what": "profile score stacked with a ridge head on embedding and task, then one isotonic map; "
                "fitted on out-of-fold predictions of the training table (router.method.calibration)"}}  # fmt: skip
    return replace(profiles, evidence=ridge(x, scores, alpha), stack=stack, calibration=calibration, meta=meta)


def profile_from_tables(
    paths: Sequence[str],
    *,
    fmt: str | None = None,
    encoder: str = MINILM,
    settings: ProfileSettings = ProfileSettings(),
    models: Sequence[str] | None = None,
    tasks_from_files: bool = False,
    score_reading: str = "auto",
    annotator=None,
    prices: dict[str, dict[str, float]] | None = None,
) -> Profiles:
    """`prices`: see `read_eval_table` (answer lengths from RouterBench costs)."""
    table = read_eval_table(paths, fmt, tasks_from_files=tasks_from_files, score_reading=score_reading, prices=prices)
    emb = encode_cached(encoder, table.queries, window=settings.window)
    return fit_profiles(table, emb, encoder=encoder, settings=settings, models=models, annotator=annotator)


def add_model(
    profiles: Profiles, table: EvalTable, model: str, embeddings: np.ndarray, *, name: str | None = None
) -> Profiles:
    """`profiles` with one more model, profiled from its rows of `table` on the existing taxonomy
    (the same clusters, capabilities and tasks), answer lengths included where the table has them:
    the other models' vectors are not touched."""
    from dataclasses import replace

    from router.method.profiles import element_means, knowledge_weights, rank_weights

    name = name or model
    if name in profiles.models:
        raise ValueError(f"model {name!r} is already profiled; remove it first or pick another name")
    if model not in table.models:
        raise ValueError(f"model {model!r} is not in the evaluation tables ({', '.join(table.models)})")
    col = table.models.index(model)
    keep = ~np.isnan(table.scores[:, col])
    if not keep.any():
        raise ValueError(f"the evaluation tables hold no score of {model!r}")
    value = table.scores[keep, col : col + 1].astype(np.float32)
    if table.costs is not None:
        value = value - profiles.beta * np.nan_to_num(table.costs[keep, col : col + 1])
    tasks = [t for t, k in zip(table.task, keep) if k] if table.task else None
    ann = profiles.annotate(embeddings[keep], tasks)
    w_task, w_clusters = knowledge_weights(ann, profiles.alpha)
    know = element_means(ann.domains, len(profiles.centroids), w_clusters, value)
    cap = element_means(ann.capabilities, len(profiles.capability_vectors),
                        rank_weights(ann.capabilities.shape[1], profiles.alpha), value)  # fmt: skip
    task_profile = profiles.task_profile
    if task_profile is not None:
        column = np.full((len(profiles.tasks), 1), float(value.mean()) * float(w_task.max(initial=0.5)), np.float32)
        if ann.tasks is not None and (ann.tasks >= 0).any():
            known = ann.tasks >= 0
            means = element_means(ann.tasks[known, None], len(profiles.tasks), w_task[known, None], value[known])
            seen = np.bincount(ann.tasks[known], minlength=len(profiles.tasks)) > 0
            column[seen] = means[seen]
        task_profile = np.hstack([task_profile, column])
    out = np.full((len(profiles.centroids), 1), np.nan, np.float32)
    if table.output_tokens is not None:
        ot = table.output_tokens[keep, col]
        sums = np.bincount(ann.domains[:, 0], weights=np.nan_to_num(ot), minlength=len(out))
        counts = np.bincount(ann.domains[:, 0], weights=~np.isnan(ot), minlength=len(out))
        out[:, 0] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    lengths = _added_lengths(profiles, table, col, keep, ann)
    stacked_parts = {}
    if profiles.blend is not None and profiles.evidence is not None and profiles.calibration is not None:
        stacked_parts = _added_blend(profiles, table, model, embeddings, keep, ann)
    elif profiles.stack is not None and profiles.evidence is not None:
        stacked_parts = _added_stack(profiles, table, model, embeddings, keep, ann)
    elif profiles.calibration is not None:  # the one map the pool shares
        stacked_parts = {"calibration": _calibration_for_one_more(profiles.calibration)}
    meta = dict(profiles.meta)
    meta["added_models"] = [*meta.get("added_models", []),
                            {"model": name, "from": [Path(s).name for s in table.sources], "rows": int(keep.sum()),
                             "answer_lengths": 0 if lengths is None else int(lengths.rows[-1])}]
    return replace(
        profiles,
        models=(*profiles.models, name),
        know=np.hstack([profiles.know, know]),
        cap=np.hstack([profiles.cap, cap]),
        output_tokens=np.hstack([profiles.output_tokens, out]),
        task_profile=task_profile,
        meta=meta,
        lengths=lengths,
        **stacked_parts,
    )  # fmt: skip


def _with_blend(profiles: Profiles, table: EvalTable, embeddings: np.ndarray, scores: np.ndarray, raw: np.ndarray,
                raw_free: np.ndarray, fold: np.ndarray, s: ProfileSettings) -> Profiles:  # fmt: skip
    """`profiles` (calibrated) with the blend (router.method.calibration): the evidence heads, and
    each kind of row's weights chosen on out-of-fold predictions of the training table: rows with
    their task (the profile's score with the task, the task's head) and rows without one (the
    profile's score without it, the head on the embedding alone)."""
    x_free = evidence_features(embeddings, None, 0)
    e_free, alpha_free = _evidence_out_of_fold(x_free, scores, fold)
    w_free = choose_blend(apply_calibration(raw_free, profiles.calibration), e_free, scores)
    info: dict = {"folds": CALIBRATION_FOLDS, "weights": {}, "evidence_alpha": {"free": alpha_free},
                  "what": "the calibrated score moved toward ridge heads on the embedding (and the task), by "
                          "weights chosen by out-of-fold routing (router.method.calibration)"}  # fmt: skip
    if profiles.tasks and s.use_tasks and table.task:
        x = evidence_features(embeddings, profiles.task_index(table.task), len(profiles.tasks))
        e_task, alpha = _evidence_out_of_fold(x, scores, fold)
        w_task = choose_blend(apply_calibration(raw, profiles.calibration), e_task, scores)
        heads = dict(evidence=ridge(x, scores, alpha), evidence_free=ridge(x_free, scores, alpha_free))
        info["evidence_alpha"]["task"] = alpha
    else:  # no tasks: every row is a row without one
        w_task = w_free
        heads = dict(evidence=ridge(x_free, scores, alpha_free), evidence_free=None)
    info["weights"] = {"task known": [round(float(w), 2) for w in w_task], "no task": [round(float(w), 2) for w in w_free],
                       "of": ["within a row", "the row's level"]}  # fmt: skip
    return replace(profiles, blend=np.array([w_task, w_free], np.float32), meta={**profiles.meta, "blend": info},
                   **heads)  # fmt: skip


def _added_blend(profiles: Profiles, table: EvalTable, model: str, embeddings: np.ndarray, keep: np.ndarray,
                 ann) -> dict[str, np.ndarray]:  # fmt: skip
    """The blend's evidence columns for a model added to `profiles` (see `_with_blend`), fitted on
    its own rows at the pool's alphas; the weights and the calibration map are the pool's."""
    rows = np.flatnonzero(keep)
    y = table.scores[rows, table.models.index(model)][:, None].astype(np.float64)
    alphas = profiles.meta.get("blend", {}).get("evidence_alpha", {})
    free = ridge(evidence_features(embeddings[rows], None, 0), y, float(alphas.get("free", EVIDENCE_ALPHAS[0])))
    out = {"calibration": _calibration_for_one_more(profiles.calibration)}
    if profiles.evidence_free is None:
        out["evidence"] = np.hstack([profiles.evidence, free])
        return out
    x = evidence_features(embeddings[rows], ann.tasks, len(profiles.tasks))
    out["evidence"] = np.hstack([profiles.evidence, ridge(x, y, float(alphas.get("task", EVIDENCE_ALPHAS[0])))])
    out["evidence_free"] = np.hstack([profiles.evidence_free, free])
    return out


def _added_stack(profiles: Profiles, table: EvalTable, model: str, embeddings: np.ndarray, keep: np.ndarray,
                 ann) -> dict[str, np.ndarray]:  # fmt: skip
    """The stacked predictor's columns for a model added to `profiles` (see `with_stack`), fitted on
    its own rows: its profile score and evidence out of fold, its stack, its evidence head on every
    row; the calibration map is the pool's, shared."""
    rows = np.flatnonzero(keep)
    y = table.scores[rows, table.models.index(model)][:, None].astype(np.float64)
    x = evidence_features(embeddings[rows], ann.tasks, len(profiles.tasks))
    alpha = float(profiles.meta.get("stack", {}).get("evidence_alpha", EVIDENCE_ALPHAS[0]))
    bare = replace(profiles, evidence=None, stack=None, calibration=None)
    fold = query_folds([table.queries[i] for i in rows], CALIBRATION_FOLDS, 0)
    raw, evidence = np.full(y.shape, np.nan), np.full(y.shape, np.nan)
    for f in range(CALIBRATION_FOLDS):
        test, train = fold == f, fold != f
        if not test.any() or not train.any():
            continue
        p = add_model(bare, table.take(rows[train]), model, embeddings[rows[train]], name="\0added")
        raw[test, 0] = p.score_annotated(Annotation(ann.capabilities[test], ann.domains[test],
                                                    None if ann.tasks is None else ann.tasks[test]))[:, -1]  # fmt: skip
        evidence[test] = x[test] @ ridge(x[train], y[train], alpha)
    return {
        "evidence": np.hstack([profiles.evidence, ridge(x, y, alpha)]),
        "stack": np.hstack([profiles.stack, fit_stack(raw, evidence, y)]),
        "calibration": None if profiles.calibration is None else _calibration_for_one_more(profiles.calibration),
    }


def _calibration_for_one_more(calibration: np.ndarray) -> np.ndarray:
    """The pool's calibration map [2, knots, M] with a column for one more model: the map is one,
    shared by every model (router.method.calibration.fit_calibration)."""
    return np.concatenate([calibration, calibration[:, :, :1]], axis=2)


def _added_lengths(profiles: Profiles, table: EvalTable, col: int, keep: np.ndarray, ann) -> LengthProfile | None:
    """The profiles' length profiles with one more column: the added model's, fitted on its rows'
    answer lengths (kappa cross-validated on them), or none for it (NaN) when the table has none.
    None when neither the profiles nor the table have lengths."""
    n_cap, n_know = len(profiles.capability_vectors), len(profiles.centroids)
    n_tasks = len(profiles.tasks) if profiles.tasks else None
    answers = None if table.output_tokens is None else table.output_tokens[keep, col : col + 1]
    if answers is not None and np.isfinite(answers).any():
        tasks = n_tasks if ann.tasks is not None else None
        added, _ = fit_length_profile(ann, answers, n_cap=n_cap, n_know=n_know, n_tasks=tasks, alpha=profiles.alpha)
    elif profiles.lengths is not None:
        added = LengthProfile.empty(n_cap, n_know, n_tasks, 1)
    else:
        return None
    before = profiles.lengths or LengthProfile.empty(n_cap, n_know, n_tasks, len(profiles.models))
    return before.append(added)


def remove_model(profiles: Profiles, model: str) -> Profiles:
    if model not in profiles.models:
        raise ValueError(f"model {model!r} is not profiled ({', '.join(profiles.models)})")
    return profiles.select([m for m in profiles.models if m != model])
