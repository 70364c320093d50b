"""Answer-length prediction in the routing stage: what `Profiles.expected_output_tokens` costs per row
with a length profile, against quality scoring of the same rows (`score_annotated`), on one core.

    python bench/lengths.py [--rows 65536]

The packaged open9 profiles get a length profile fitted on synthetic answer lengths (the maths is
the same whatever the lengths); the rows are synthetic unit embeddings, annotated once. Printed:
each step's time, rows/s and its ratio to quality scoring, with and without a task per row, and
the version-1 path (the top cluster's mean) for scale. Then the whole Scorer (the routing stage's
first step, as bench/route.py times it) on an Arrow batch: in `hard` mode (answers at max_tokens,
no prediction), in `expected` mode with the packaged open9 file (no lengths: the config's), and in
`expected` mode with the length profile; ratios to the first.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy loads: one core
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.method.lengths import fit_length_profile  # noqa: E402
from router.method.profiles import load_profiles  # noqa: E402


def best_of(fn, repeat: int = 7) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=65536, help="rows per batch (default 65536, as `router run`)")
    args = ap.parse_args()
    base = load_profiles("open9")
    tasks = tuple(f"task{i}" for i in range(12))
    base = replace(base, tasks=tasks, task_profile=np.zeros((len(tasks), len(base.models)), np.float32))
    rng = np.random.default_rng(0)
    index = base.annotate(unit_rows(5000, base.dim, 1), rng.choice(tasks, 5000))
    lengths = rng.gamma(1.0, 100.0, (5000, len(base.models)))
    fitted, _ = fit_length_profile(index, lengths, n_cap=len(base.cap), n_know=len(base.know), n_tasks=len(tasks),
                                   alpha=base.alpha, kappa=3.0)  # fmt: skip
    p = replace(base, lengths=fitted)
    emb = unit_rows(args.rows, p.dim, 2)
    plain = p.annotate(emb)
    tasked = p.annotate(emb, rng.choice(tasks, args.rows))
    p.score_annotated(plain), p.expected_output_tokens(plain), p.expected_output_tokens(tasked)  # build tables once
    quality = best_of(lambda: p.score_annotated(plain))
    rows = [
        ("quality: score_annotated (the baseline)", quality),
        ("lengths: expected_output_tokens, no task", best_of(lambda: p.expected_output_tokens(plain))),
        ("lengths: expected_output_tokens, a task per row", best_of(lambda: p.expected_output_tokens(tasked))),
        ("version-1 file: the top cluster's mean", best_of(lambda: base.expected_output_tokens(plain))),
    ]
    print(f"one core, {args.rows:,} rows, {len(p.models)} models, r = {p.r_cap}")
    print(f"{'step':52} {'ms':>8} {'rows/s':>12} {'x quality':>10}")
    for name, sec in rows:
        print(f"{name:52} {sec * 1e3:>8.2f} {args.rows / sec:>12,.0f} {sec / quality:>9.2f}x")
    scorer_modes(p, emb)


def scorer_modes(with_lengths, emb: np.ndarray) -> None:
    import tempfile

    from router.config import load_config
    from router.stages.route import PoolArrays, Scorer

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from route import synthetic  # the Arrow batch bench/route.py scores

    cfg = load_config("jobs/configs/local.yaml", ["input=x", "output=y"])
    batch = synthetic(0, len(emb))
    pool = PoolArrays.from_config(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "with-lengths.npz"
        with_lengths.save(path)
        scorers = [("Scorer, open9 (no lengths: the config's length)", Scorer("open9", pool)),
                   ("Scorer, length profile", Scorer(str(path), pool))]  # fmt: skip
    times = []
    for name, scorer in scorers:
        scorer(batch)
        times.append((name, best_of(lambda: scorer(batch), repeat=5)))
    print(f"\n{'the whole Scorer on an Arrow batch':52} {'ms':>8} {'rows/s':>12} {'x first':>10}")
    for name, sec in times:
        print(f"{name:52} {sec * 1e3:>8.1f} {len(emb) / sec:>12,.0f} {sec / times[0][1]:>9.2f}x")


if __name__ == "__main__":
    main()
