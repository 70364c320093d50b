"""The whole pipeline (read, encode, route, generate, write) against calling `vllm.LLM.generate`
directly on the same prompts, model and sampling settings, in the same run.

    python bench/pipeline.py [--rows 2000] [--config jobs/configs/local.yaml] [--varied [--max-tokens 256]]

Each side runs in a fresh process, one after the other, on the config's stand-in model (vLLM's
CPU build here). The table gives generated tokens per second of each: the baseline counts
`generate` alone (engine already started) and with the engine's start, once with vLLM's default
engine (its core and worker in processes of their own) and once with the engine in one process,
as the pipeline runs it on a CPU (the ratios are against that one); the pipeline counts its whole
wall time, from `router run` to the last parquet file, plus its own phase table.

By default every answer runs to max_tokens on both sides. `--varied`: each pool model's stand-in
answers at its own length (the job's end-of-sequence bias per model, from verbose to terse), and
the baseline answers the rows the pipeline answered, each with the sampling of the model it was
routed to: heavy-tailed lengths, most short, a few at max_tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))
from encode import prompts  # noqa: E402  (bench/encode.py: the same synthetic prompts)

# A larger vocabulary than the other benchmarks' prompts.
WORDS = ("what how why explain write solve the a of to in is for function number river history translate code "
         "list capital prove sum energy market law poem mountain protein algebra court novel engine").split()  # fmt: skip

BASELINE = r"""
import json, os, sys, time
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
spec = json.loads(sys.argv[1])
lines = [json.loads(l) for l in open(spec["input"])]
prompts = [x["prompt"] for x in lines]
t0 = time.perf_counter()
engine = {}
if spec["in_process"]:  # the pipeline's setting for CPU engines (router.backends.generators._engine_in_this_process)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    engine["distributed_executor_backend"] = "uni"
import vllm
llm = vllm.LLM(model=spec["weights"], dtype=spec["dtype"], max_model_len=spec["max_model_len"], enforce_eager=True,
               **engine)
tok = llm.get_tokenizer()
if getattr(tok, "chat_template", None):  # one user turn, as the pipeline renders it
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    ids = [list(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]
else:
    ids = [list(x) for x in tok(prompts)["input_ids"]]
made = {}  # one SamplingParams per end-of-sequence bias (a row's model's), as the pipeline's side
params = [made.setdefault(x["bias"], vllm.SamplingParams(**spec["sampling"], logit_bias={tok.eos_token_id: x["bias"]}))
          for x in lines]
t1 = time.perf_counter()
outs = llm.generate([{"prompt_token_ids": x} for x in ids], params, use_tqdm=False)
t2 = time.perf_counter()
print("RESULT " + json.dumps({"tokens": sum(len(o.outputs[0].token_ids) for o in outs), "generate_s": t2 - t1,
                  "with_start_s": t2 - t0}), flush=True)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--config", default="jobs/configs/local.yaml")
    ap.add_argument("--varied", action="store_true", help="each model's stand-in at its own answer length")
    ap.add_argument("--max-tokens", type=int, default=None, help="every pool model's max_tokens")
    ap.add_argument("overrides", nargs="*", help="key=value settings for the pipeline's config")
    args = ap.parse_args()
    from router.config import load_config
    from router.job.engines import standin_weights

    os.chdir(ROOT)
    from router.backends.standin import standin_eos_bias

    cfg = load_config(args.config, ["input=x", "output=y", *args.overrides])
    if args.max_tokens:
        args.overrides = [*(f"models.{m.name}.max_tokens={args.max_tokens}" for m in cfg.models), *args.overrides]
    if not args.varied:  # every answer runs to max_tokens on both sides
        args.overrides = [*(f"models.{m.name}.standin_eos_bias=-100" for m in cfg.models), *args.overrides]
    cfg = load_config(args.config, ["input=x", "output=y", *args.overrides])
    bias = {m.name: -100.0 if not args.varied else
            standin_eos_bias(m.name) if m.standin_eos_bias is None else m.standin_eos_bias for m in cfg.models}
    sampling = {(m.max_tokens, m.temperature, m.top_p) for m in cfg.models}
    if len(sampling) != 1 or not cfg.generation.standin:
        sys.exit("the baseline needs one stand-in engine and one sampling setting shared by every pool model")
    (max_tokens, temperature, top_p), = sampling
    weights_of, context_limit = standin_weights(cfg)
    weights = weights_of(cfg.models[0])
    max_len = min([m.max_context for m in cfg.models] + ([context_limit] if context_limit else []))
    # The config's budget per row, scaled to this many rows: routing binds as it does on the example.
    per_row = cfg.budget.total / 60 if np.isfinite(cfg.budget.total) else cfg.budget.total

    with tempfile.TemporaryDirectory(prefix="router-bench-pipeline-") as d:
        inp = os.path.join(d, "prompts.jsonl")
        with open(inp, "w") as f:
            for i, p in enumerate(prompts(args.rows, words=WORDS)):
                f.write(json.dumps({"id": f"p{i}", "prompt": p}) + "\n")
        out = os.path.join(d, "out")
        env = {**os.environ, "ROUTER_PROGRESS": "0", "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
        t = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "router.cli", "run", args.config, f"input={inp}", f"output={out}",
                              f"budget.total={per_row * args.rows}", *args.overrides], env=env, capture_output=True, text=True)  # fmt: skip
        pipeline_s = time.perf_counter() - t
        if run.returncode:
            sys.exit(f"router run failed:\n{run.stderr[-3000:]}")
        with open(os.path.join(out, "_report.json")) as f:
            report = json.load(f)
        tokens = sum(m.get("output_tokens_sum") or 0 for m in report["models"])
        import pyarrow.dataset as pads

        answered = pads.dataset(out, format="parquet").to_table(columns=["id", "prompt", "model", "status"]).to_pylist()
        base_inp = os.path.join(d, "baseline.jsonl")
        with open(base_inp, "w") as f:  # the rows the pipeline answered, each with its model's sampling
            for r in answered:
                if r["status"] == "ok":
                    f.write(json.dumps({"prompt": r["prompt"], "bias": bias[r["model"]]}) + "\n")

        spec = dict(input=base_inp, weights=weights, dtype="float32", max_model_len=max_len,
                    sampling=dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p))  # fmt: skip
        base = {}
        for in_process in (False, True):
            r = subprocess.run([sys.executable, "-c", BASELINE, json.dumps({**spec, "in_process": in_process})],
                               env=env, capture_output=True, text=True)  # fmt: skip
            if r.returncode:
                sys.exit(f"baseline failed:\n{r.stderr[-3000:]}")
            base[in_process] = json.loads(next(x for x in r.stdout.splitlines() if x.startswith("RESULT "))[7:])

    # vLLM's default engine (its core and worker in processes of their own), and the engine as the
    # pipeline runs it on a CPU (all in one process): the fair baseline for the ratio.
    rows = []
    for in_process, how in ((False, "vLLM default engine"), (True, "in-process engine, as the pipeline")):
        b = base[in_process]
        rows += [(f"LLM.generate, {how}: engine started", b["tokens"], b["generate_s"]),
                 (f"LLM.generate, {how}: incl. engine start", b["tokens"], b["with_start_s"])]  # fmt: skip
    rows.append(("pipeline: router run, whole wall time", tokens, pipeline_s))
    b = base[True]
    lengths = "varied lengths (each model's stand-in)" if args.varied else "every answer at max_tokens"
    print(f"\n{args.rows} prompts, max_tokens {max_tokens}, {lengths}, stand-in {weights}, {os.cpu_count()} CPUs")
    print(f"{'what':66} {'out tokens':>10} {'seconds':>8} {'tokens/s':>9} {'vs started':>10} {'vs incl. start':>14}")
    ref, ref_start = b["tokens"] / b["generate_s"], b["tokens"] / b["with_start_s"]
    for name, tok, sec in rows:
        print(f"{name:66} {tok:>10} {sec:>8.1f} {tok / sec:>9.0f} {tok / sec / ref:>10.0%} {tok / sec / ref_start:>14.0%}")
    print("(ratios against the in-process engine, the pipeline's own setting)")
    print("\npipeline phases (from its report):")
    for ph in report["phases"]:
        print(f"  {ph['phase']:40} {ph['rows']:>7} rows {ph['seconds']:>7.1f} s")


if __name__ == "__main__":
    main()
