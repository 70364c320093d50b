"""Scoring speed: `Profiles.score` on N embeddings against the one matrix product it cannot avoid.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/score.py [--rows 1000000] [--repeat 5]

Baseline: embeddings [N, D] times the stacked centroid and capability matrix [D, K + C], the
product every InferenceDynamics router must compute. Prints the best of --repeat runs of each and
the ratio (target: at most 2). Pin one thread to measure one core.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.method.profiles import load_profiles  # noqa: E402


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profiles", default="open9")
    args = ap.parse_args()
    p = load_profiles(args.profiles)
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((args.rows, p.dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    w = np.ascontiguousarray(np.concatenate([p.centroids, p.capability_vectors]).T)
    base = best_of(lambda: emb @ w, args.repeat)
    score = best_of(lambda: p.score(emb), args.repeat)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'what':34} {'seconds':>8} {'rows/s':>12}")
    print(f"{'matmul [N,D]x[D,K+C] (baseline)':34} {base:8.3f} {args.rows / base:12,.0f}")
    print(f"{'Profiles.score':34} {score:8.3f} {args.rows / score:12,.0f}")
    print(f"ratio score/matmul: {score / base:.2f}   (N={args.rows}, D={p.dim}, K={len(p.centroids)}, "
          f"C={len(p.capability_vectors)}, M={len(p.models)}; peak RSS {peak:.0f} MiB)")  # fmt: skip


if __name__ == "__main__":
    main()
