"""The Python API's global-budget barrier: `Router.plan` on a Ray Dataset against the same rows
planned from the file (the CLI's path), and where the time goes.

    python bench/api.py [--rows 20000]        # needs ../shared/data/llmrouter-9models

The budget needs every row scored before any is assigned: the scores are kept (materialised) in
Ray's object store while the driver solves. Prints both plans' wall time and their ratio, the
phases of the Dataset's plan (the barrier: the budget solve, the frontier and the assignment,
which a streaming router without a global budget would not have), and the routed Dataset's bytes
per row.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DATA = Path(__file__).resolve().parent.parent.parent / "shared/data/llmrouter-9models"
CONFIG = "jobs/configs/local.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20000)
    args = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"needs {DATA} (the shared evaluation data)")
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    import router

    queries = [json.loads(line)["query"] for line in open(DATA / "queries_train.jsonl")]
    prompts = [queries[i % len(queries)][:1500] for i in range(args.rows)]
    path = Path(tempfile.mkdtemp(prefix="api-bench-")) / "in.parquet"
    pq.write_table(pa.table({"id": [f"q{i}" for i in range(args.rows)], "prompt": prompts}), path)
    budget = {"total": 0.5, "mode": "expected"}

    from_file = router.Router.from_config(CONFIG, input=str(path), budget=budget)
    t0 = time.perf_counter()
    from_file.plan().materialize()
    file_s = time.perf_counter() - t0

    r = router.Router.from_config(CONFIG, budget=budget)
    t0 = time.perf_counter()
    routed = r.plan(ray.data.read_parquet(str(path))).materialize()
    ds_s = time.perf_counter() - t0
    print(f"\n{args.rows} rows, 9 models: plan from the file {file_s:.1f}s, from a Dataset {ds_s:.1f}s "
          f"({ds_s / file_s:.2f}x)")  # fmt: skip
    total = sum(p.seconds for p in r.result.phases)
    for p in r.result.phases:
        print(f"  {p.name:40} {p.seconds:8.2f}s  {p.seconds / total:6.1%}")
    barrier = sum(p.seconds for p in r.result.phases if not p.name.startswith("read"))
    print(f"  the barrier (everything after the last row is scored): {barrier:.2f}s, {barrier / total:.1%} of the plan")
    print(f"  the routed Dataset: {routed.size_bytes() / args.rows:.0f} bytes per row (the scores the solve holds "
          "add a quality and a cost per model: 8 bytes x 9 here, plus each row's price hull)")  # fmt: skip


if __name__ == "__main__":
    main()
