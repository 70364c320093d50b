"""Rows per second of each pipeline stage on this machine, each stage's callable run in-process on
realistic batches (no Ray scheduling), so the figures say what a stage costs, not what starting a
cluster costs.

    python bench/stages.py [--rows 100000] [--encode-rows 2000] [--generate-rows 256] [--no-generate]

Stages: read+validate (jsonl), encode (MiniLM, CPU), score+cost (Scorer), budget (solve_budget
with a binding budget), assign (Assigner), generate (vLLM stand-in, max_tokens 32).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.budget import BudgetPlan, solve_budget  # noqa: E402
from router import schema as S  # noqa: E402
from router.config import load_config  # noqa: E402
from router.backends.encoder import embeddings_to_arrow
from router.stages.encode import Encoder# noqa: E402
from router.stages.read import ReadUnits, plan_read, units_as_items  # noqa: E402
from router.job.cluster import ROUTE_BATCH  # noqa: E402
from router.stages.route import Assigner, PoolArrays, Scorer, matrix_from_column  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode import prompts  # noqa: E402  (bench/encode.py: the same synthetic prompts)

def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--encode-rows", type=int, default=2000)
    ap.add_argument("--generate-rows", type=int, default=256)
    ap.add_argument("--no-generate", action="store_true")
    args = ap.parse_args()
    cfg = load_config("jobs/configs/local.yaml", ["input=x", "output=y"])
    results = []

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "p.jsonl")
        texts = prompts(args.rows)
        with open(path, "w") as f:
            for i, t in enumerate(texts):
                f.write(json.dumps({"id": f"r{i}", "prompt": t}) + "\n")
        units, _ = plan_read(path, "prompt", "id")
        reader = ReadUnits("prompt", "id")
        table, sec = timed(lambda: pa.concat_tables(
            t for u in units_as_items(units) for t in reader(pa.Table.from_pylist([u]))))  # fmt: skip
        results.append(("read + validate (jsonl)", table.num_rows, sec))

    enc = Encoder("minilm", device="cpu")
    small = table.slice(0, args.encode_rows)
    encoded, sec = timed(lambda: enc(small))
    results.append((f"encode (MiniLM, CPU, {enc.enc.backend})", small.num_rows, sec))

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((table.num_rows, enc.dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    with_emb = table.append_column(S.EMBEDDING, embeddings_to_arrow(emb))
    scorer = Scorer(cfg.profiles, PoolArrays.from_config(cfg))
    scored, sec = timed(lambda: pa.concat_tables(scorer(b) for b in _batches(with_emb, ROUTE_BATCH)))
    results.append(("score + cost (Scorer)", scored.num_rows, sec))

    q = matrix_from_column(scored[S.QUALITY])
    c = matrix_from_column(scored[S.COST]).astype(np.float64)
    budget = 0.5 * float(np.nansum(np.nanmin(c, axis=1)) + np.nansum(c[np.arange(len(c)), np.nanargmax(q, 1)]))
    sol, sec = timed(lambda: solve_budget(q, c, budget))
    results.append(("budget (solve_budget, binding)", len(q), sec))

    plan = BudgetPlan(lam=sol.lam, tie_key=None, predicted_cost=sol.total_cost)
    assigner = Assigner(cfg.model_names, plan, allow_skip=False)
    assigned, sec = timed(lambda: pa.concat_tables(assigner(b) for b in _batches(scored, ROUTE_BATCH)))
    results.append(("assign (Assigner)", assigned.num_rows, sec))

    if not args.no_generate:
        from router.backends.generators import VLLMGenerator
        from router.backends.standin import build_standin, default_standin_dir

        weights = str(build_standin(default_standin_dir()))
        # eos_bias -100: every answer runs to max_tokens, a fixed amount of work per row.
        settings = {m.name: dict(max_tokens=m.max_tokens, temperature=0.0, input_price=m.input_price,
                                 output_price=m.output_price, eos_bias=-100.0) for m in cfg.models}  # fmt: skip
        gen = VLLMGenerator(weights, models=settings, max_model_len=4096, dtype="float32")
        rows = assigned.slice(0, args.generate_rows)
        out, sec = timed(lambda: gen(rows))
        tokens = int(np.nansum(out[S.OUTPUT_TOKENS].to_numpy(zero_copy_only=False).astype(float)))
        results.append((f"generate (vLLM stand-in, {tokens} output tokens)", rows.num_rows, sec))
        gen.close()

    print(f"{'stage':48} {'rows':>8} {'seconds':>8} {'rows/s':>12}")
    for name, n, sec in results:
        print(f"{name:48} {n:>8} {sec:>8.2f} {n / sec if sec else math.inf:>12,.0f}")


def _batches(table: pa.Table, size: int):
    for lo in range(0, table.num_rows, size):
        yield table.slice(lo, size)


if __name__ == "__main__":
    main()
