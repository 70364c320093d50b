"""Actual spend against a binding budget: answering in waves, re-solved on what was actually spent
(`budget.waves`, the default), against one plan answered as it is (`budget.waves=[1.0]`), in both
budget modes, on a job of a few thousand real queries through the whole pipeline (local Ray,
MiniLM, the vLLM stand-ins, whose answer lengths vary by prompt and by model).

    python bench/spend.py [--rows 2400] [--share 0.5]     # needs ../shared/data/llmrouter-9models

The budget: the cheapest plan's predicted cost plus `--share` of the way to the best plan's, so it
binds. Prints, per mode and waves: the actual spend as a share of the budget (expected mode's
target: within 3%; hard mode's: never over, at least 95%), the waves' lambdas, rows refused and
wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.config import load_config  # noqa: E402
from router.job.plan import plan_job  # noqa: E402
from router.job.run import run_job  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared/data/llmrouter-9models"
CONFIG = "jobs/configs/local.yaml"


def write_input(path: Path, n: int) -> None:
    with open(DATA / "queries_train.jsonl") as f:
        queries = [json.loads(line) for line in f]
    with open(path, "w") as f:
        for i, q in enumerate(queries[:n]):
            # Long logic-grid puzzles are cut, so that the CPU stand-in's prefill stays short.
            f.write(json.dumps({"id": f"q{i}", "prompt": q["query"][:1500], "task": q["task_name"]}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2400)
    ap.add_argument("--share", type=float, default=0.5, help="budget: cheapest + share x (best - cheapest)")
    args = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"needs {DATA} (the shared evaluation data)")
    tmp = Path(tempfile.mkdtemp(prefix="spend-bench-"))
    inp = tmp / "in.jsonl"
    write_input(inp, args.rows)
    base = [f"input={inp}", "encoder.batch_size=512"]
    free, _ = plan_job(load_config(CONFIG, [*base, "output=unused", "budget.total=inf", "budget.mode=expected"]))
    f = free.frontier
    budget = f["cheapest_usd"] + args.share * (f["best_quality_usd"] - f["cheapest_usd"])
    print(f"{free.n_rows} rows; predicted: cheapest plan {f['cheapest_usd']:.6g} USD, best {f['best_quality_usd']:.6g} USD; "
          f"budget {budget:.6g} USD")  # fmt: skip
    print("| mode | waves | actual / budget | rows refused | lambda per wave | wall s |")
    print("|---|---|---:|---:|---|---:|")
    for mode in ("expected", "hard"):
        for waves in ("[1.0]", "default"):
            out = tmp / f"out-{mode}-{'one' if waves == '[1.0]' else 'waves'}"
            over = [*base, f"output={out}", f"budget.total={budget!r}", f"budget.mode={mode}"]
            if waves != "default":
                over.append(f"budget.waves={waves}")
            t0 = time.perf_counter()
            r = run_job(load_config(CONFIG, over))
            wall = time.perf_counter() - t0
            actual = sum(t.actual_cost or 0.0 for t in r.by_model)
            refused = sum(w.refused for w in r.waves)
            lams = ", ".join("-" if w.lam is None else f"{w.lam:.3g}" for w in r.waves)
            print(f"| {mode} | {waves} | {actual / budget:.2%} | {refused} | {lams} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
