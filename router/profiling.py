"""`router profile`: build a profile file from evaluation tables with the project's own encoder."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from router.encode import MINILM, encode_texts, encoder_name, load_encoder
from router.evaldata import read_eval_table
from router.profiles import Profiles, build_profiles
from router.taxonomy import CAPABILITIES, DOMAINS


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def taxonomy_vectors(st) -> tuple[np.ndarray, np.ndarray]:
    """Capability prototypes (mean embedding of each capability's examples) and domain-name vectors."""
    names = list(CAPABILITIES)
    examples = [e for n in names for e in CAPABILITIES[n]]
    emb = encode_texts(st, examples)
    sizes = [len(CAPABILITIES[n]) for n in names]
    cap = np.stack([chunk.mean(axis=0) for chunk in np.split(emb, np.cumsum(sizes)[:-1])])
    return cap, encode_texts(st, list(DOMAINS))


def profile_from_tables(
    paths: Sequence[str],
    *,
    fmt: str | None = None,
    encoder: str = MINILM,
    n_clusters: int = 32,
    alpha: float = 0.5,
    beta: float = 0.0,
    r_know: int = 3,
    r_cap: int = 3,
    seed: int = 0,
    models: Sequence[str] | None = None,
) -> Profiles:
    table = read_eval_table(paths, fmt)
    st = load_encoder(encoder)
    emb = encode_texts(st, table.queries)
    cap_vectors, domain_vectors = taxonomy_vectors(st)
    cols = list(range(len(table.models)))
    if models:
        missing = [m for m in models if m not in table.models]
        if missing:
            raise ValueError(f"model {missing[0]!r} is not in the evaluation tables ({', '.join(table.models)})")
        cols = [table.models.index(m) for m in models]
    meta = {
        "built_from": [{"file": Path(p).name, "sha256": _sha256(p)} for p in table.sources],
        "n_queries": len(table.queries),
        "choices": {
            "alpha": "0.5, the paper's default",
            "beta": "0: cost is priced by the budget solver, not folded into quality",
            "r_know, r_cap": "3, fixed default",
            "n_clusters": f"{n_clusters}, fixed default",
            "capabilities": "zero-shot: nearest prototypes of the seven capabilities' example prompts",
        },
    }
    return build_profiles(
        emb,
        table.scores[:, cols],
        [table.models[c] for c in cols],
        capability_vectors=cap_vectors,
        capability_names=list(CAPABILITIES),
        domain_vectors=domain_vectors,
        domain_names=list(DOMAINS),
        costs=None if table.costs is None else table.costs[:, cols],
        output_tokens=None if table.output_tokens is None else table.output_tokens[:, cols],
        n_clusters=n_clusters,
        alpha=alpha,
        beta=beta,
        r_know=r_know,
        r_cap=r_cap,
        encoder=encoder_name(encoder),
        seed=seed,
        meta=meta,
    )
