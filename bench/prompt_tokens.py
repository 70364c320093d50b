"""Prompt tokens counted by a model family's own tokenizer: the calibration the plan fits on a sample
of the job's prompts, against counting every prompt, on held-out queries; and what it costs.

    python bench/prompt_tokens.py            # needs ../shared/data/llmrouter-9models

Baselines in the same run: every held-out prompt counted by the tokenizer (the truth), the UTF-8
estimate the plan falls back to (bytes / 4 + 16), and the routing stage's prompt tokens without a
calibration (one number per row instead of one per row and model).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.backends.standin import build_standin, default_standin_dir  # noqa: E402
from router.backends.tokens import calibrate, load_tokenizer, render_ids  # noqa: E402
from router.config import load_config  # noqa: E402
from router.cost import estimate_input_tokens  # noqa: E402
from router.stages.route import PoolArrays  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared/data/llmrouter-9models"


def queries(name: str, n: int) -> list[str]:
    with open(DATA / name) as f:
        return [json.loads(line)["query"] for line in f][:n]


def main() -> None:
    if not DATA.exists():
        sys.exit(f"needs {DATA} (the shared evaluation data)")
    tokenizer = load_tokenizer(str(build_standin(default_standin_dir())))
    sample, held = queries("queries_test.jsonl", 2000), queries("queries_train.jsonl", 5000)
    t0 = time.perf_counter()
    fit = calibrate(tokenizer, sample, "the stand-in")
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    counted = np.array([len(ids) for ids in render_ids(tokenizer, held)], np.float64)
    count_s = time.perf_counter() - t0
    utf8 = np.array([len(q.encode()) for q in held])
    print(f"calibration: {fit.describe()}; {fit_s / fit.rows * 1e6:.0f} us per sampled prompt, once per job")
    print(f"| {len(held)} held-out prompts | total vs counted | mean abs error per prompt |")
    print("|---|---:|---:|")
    for label, predicted in (("calibration", fit.tokens(utf8)), ("bytes / 4 + 16", estimate_input_tokens(utf8, "expected"))):
        print(f"| {label} | {predicted.sum() / counted.sum() - 1:+.2%} | {np.mean(np.abs(predicted - counted) / counted):.1%} |")
    print(f"counting every prompt instead: {count_s / len(held) * 1e6:.0f} us per prompt and model family")
    cfg = load_config("jobs/configs/local.yaml", ["input=x", "output=y", "budget.mode=expected"])
    n = 1 << 16
    rows = np.random.default_rng(0).integers(10, 3000, n)
    pools = (("UTF-8 estimate, [N]", PoolArrays.from_config(cfg)),
             ("calibrated, [N, M]", PoolArrays.from_config(cfg, {m: fit for m in cfg.model_names})))  # fmt: skip
    for label, pool in pools:
        best = float("inf")
        for _ in range(7):
            t0 = time.perf_counter()
            pool.prompt_tokens(rows)
            best = min(best, time.perf_counter() - t0)
        print(f"routing stage's prompt tokens, {label}: {best / n * 1e9:.0f} ns per row ({len(cfg.models)} models)")


if __name__ == "__main__":
    main()
