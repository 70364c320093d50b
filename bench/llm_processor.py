"""The generation stage against Ray's own `ray.data.llm` vLLM processor, on the same rows.

    python bench/llm_processor.py [--rows 200] [--batch 64] [--max-tokens 16] [--varied] [--side both|stage|processor]

Each side runs in a fresh process with its own local Ray (2 CPUs), on the stand-in model (vLLM's
CPU build here), greedy decoding, one engine replica, `batch` rows per engine call. `--varied`:
each row's answer length drawn from four stand-in verbosities (an end-of-sequence bias per row,
the same on both sides: heavy-tailed, most answers short, a few at max_tokens) instead of every
answer running to max_tokens.

- `stage`: the router's `VLLMGenerator` on `map_batches`, as `router run` builds it (calls at once
  per engine: `engine_calls_in_flight`);
- `processor`: `vLLMEngineProcessorConfig` + `build_processor`, with the settings it needs here
  (`placement_group_config={"bundles": [{"CPU": 1}]}`; the pool model's name in a column other
  than `model`, which the processor reads as a LoRA adapter's name).

Printed per side: wall time from building the dataset to the last row (engine start included),
the generation span (first request into the engine to the last answer), and generated tokens/s
of each. Both keep several batches in flight per engine (the processor: `max_concurrent_batches`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SIDE = r"""
import json, os, sys, time
spec = json.loads(sys.argv[1])
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
import ray, pyarrow as pa
ray.init(address="local", num_cpus=2, include_dashboard=False)
import random
rng = random.Random(0)
BIAS = {"verbose": -3.5, "long": -1.0, "short": 1.5, "terse": 4.0} if spec["varied"] else {"m": 0.0}
names = rng.choices(list(BIAS), weights=[0.05, 0.15, 0.3, 0.5] if spec["varied"] else [1], k=spec["rows"])
rows = [{"id": str(i), "pool_model": names[i], "prompt": f"What is 2 + {i}? Answer with one number."} for i in range(spec["rows"])]
t = time.time()
ds = ray.data.from_items(rows)
if spec["side"] == "stage":
    from router.backends.generators import VLLMGenerator
    from router.config import GenerationSpec
    from router.job.engines import engine_calls_in_flight

    class Timed(VLLMGenerator):
        def __call__(self, batch):
            t0 = time.time()
            out = super().__call__(batch.rename_columns(["model" if c == "pool_model" else c for c in batch.column_names]))
            return out.append_column("t0", pa.array([t0] * out.num_rows)).append_column("t1", pa.array([time.time()] * out.num_rows))

    settings = {m: dict(max_tokens=spec["max_tokens"], temperature=0.0, input_price=0.1, output_price=0.1, eos_bias=b)
                for m, b in BIAS.items()}
    k = engine_calls_in_flight(GenerationSpec(batch_size=spec["batch"]), "vllm", on_gpu=False)
    out = ds.map_batches(Timed, fn_constructor_kwargs=dict(weights=spec["model"], models=settings, max_model_len=1024,
                                                           dtype="float32"),
                         compute=ray.data.ActorPoolStrategy(size=1, max_concurrent_calls_per_actor=k,
                                                            max_tasks_in_flight_per_actor=k, enable_true_multi_threading=True),
                         batch_size=spec["batch"], batch_format="pyarrow", num_cpus=1).take_all()
    wall = time.time() - t
    span = max(r["t1"] for r in out) - min(r["t0"] for r in out)
    tokens = sum(r["output_tokens"] for r in out)
    finish = sorted({r["finish_reason"] for r in out})
else:
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(spec["model"]).eos_token_id

    cfg = vLLMEngineProcessorConfig(
        model_source=spec["model"], engine_kwargs=dict(dtype="float32", max_model_len=1024, enforce_eager=True),
        batch_size=spec["batch"], concurrency=1, placement_group_config={"bundles": [{"CPU": 1}]},
    )
    proc = build_processor(
        cfg,
        preprocess=lambda r: dict(messages=[{"role": "user", "content": r["prompt"]}],
                                  sampling_params=dict(max_tokens=spec["max_tokens"], temperature=0.0,
                                                       logit_bias={eos: BIAS[r["pool_model"]]} if BIAS[r["pool_model"]] else None)),
        postprocess=lambda r: dict(id=r["id"], tokens=r["num_generated_tokens"], arrival=r["metrics"]["arrival_time"],
                                   done=r["metrics"]["arrival_time"] + r["metrics"]["last_token_ts"] - r["metrics"]["queued_ts"]),
    )
    out = proc(ds).take_all()
    wall = time.time() - t
    span = max(r["done"] for r in out) - min(r["arrival"] for r in out)
    tokens = sum(r["tokens"] for r in out)
    finish = "(no finish_reason column)"
assert sorted(r["id"] for r in out) == sorted(r["id"] for r in rows)
print("RESULT " + json.dumps({"side": spec["side"], "rows": len(out), "wall_s": wall, "span_s": span, "tokens": tokens,
                              "finish": str(finish)}))
"""


def run_side(side: str, args, model: str) -> dict:
    spec = dict(side=side, rows=args.rows, batch=args.batch, max_tokens=args.max_tokens, model=model, varied=args.varied)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ROUTER_PROGRESS": "0", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    res = subprocess.run([sys.executable, "-c", SIDE, json.dumps(spec)], capture_output=True, text=True, env=env,
                         timeout=1800, start_new_session=True)  # fmt: skip
    line = next((x for x in res.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{side} failed (rc {res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--varied", action="store_true", help="heavy-tailed answer lengths (else every answer runs to max_tokens)")
    ap.add_argument("--side", choices=("both", "stage", "processor"), default="both")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from router.backends.standin import build_standin, default_standin_dir

    model = str(build_standin(default_standin_dir()))
    sides = ("stage", "processor") if args.side == "both" else (args.side,)
    results = [run_side(s, args, model) for s in sides]
    print(f"{'side':12} {'rows':>6} {'tokens':>7} {'wall s':>8} {'tok/s wall':>11} {'span s':>8} {'tok/s span':>11}  finish")
    for r in results:
        print(f"{r['side']:12} {r['rows']:>6} {r['tokens']:>7} {r['wall_s']:>8.1f} {r['tokens'] / r['wall_s']:>11.1f} "
              f"{r['span_s']:>8.2f} {r['tokens'] / r['span_s']:>11.1f}  {r['finish']}")
    if len(results) == 2:
        a, b = results
        print(f"processor / stage: wall tokens/s {(b['tokens'] / b['wall_s']) / (a['tokens'] / a['wall_s']):.2f}x, "
              f"span tokens/s {(b['tokens'] / b['span_s']) / (a['tokens'] / a['span_s']):.2f}x")


if __name__ == "__main__":
    main()
