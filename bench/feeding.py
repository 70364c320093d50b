"""How well the generation stage keeps one engine busy when answers vary in length.

    python bench/feeding.py [--rows 4096] [--batch 256] [--max-tokens 256] [--calls N[,N...]] [--order] [--repeat K]
    python bench/feeding.py --model 1b --rows 20000 --max-tokens 512     # on a GPU machine with vLLM

One started vLLM engine (the stand-in, vLLM's CPU build here) serves four pool models whose
stand-ins answer at very different lengths (end-of-sequence biases from verbose to terse), so the
answers are heavy-tailed: most short, a few up to `max_tokens`. The same rows, with the same
per-row sampling (greedy: the same tokens each time), are answered three ways:

- baseline: one `LLM.generate` call over all the rows (the engine's running batch is refilled
  from the whole set until the end);
- stage: the stage as an engine actor runs it, `VLLMGenerator.__call__` on `--batch` rows per
  call, `--calls` calls at once (threads, as the actor's `max_concurrency` runs them; default:
  what the job runs, `engine_calls_in_flight`), every call's rows in one running batch;
- one call at a time: the same calls one after another (each returns when its longest answer is
  done, so the running batch drains at the end of every call; the stage before continuous feeding).

`--model 1b`: a random-weight model of about 1B parameters in Llama's shape (hidden 2048, 22
layers), built on the machine on first use (no download), in bfloat16 with CUDA graphs on a GPU:
the GPU check of continuous feeding. Where the machine has a GPU both sides run vLLM's default
engine (its core in a process of its own); on a CPU both run it in-process, as the job does.

Prints answer tokens per second over each one's generation span and its share of the baseline,
the engine steps each took (how full each kept the running batch: the one figure here that the
machine's speed does not move), and how the lengths are spread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

# From verbose to terse: the four stand-ins' end-of-sequence biases.
EOS_BIASES = {"verbose": -3.5, "long": -1.0, "short": 1.5, "terse": 4.0}


def rows(n: int) -> tuple[list[str], list[str]]:
    """The bench's prompts and the pool model each is routed to (heavy-tailed answer lengths)."""
    import numpy as np

    rng = np.random.default_rng(0)
    names = [str(m) for m in rng.choice(list(EOS_BIASES), size=n, p=[0.05, 0.15, 0.3, 0.5])]
    return [f"Question {i}: what is {i} times {i % 17}? Explain briefly." for i in range(n)], names


# What `--model` builds: the stand-in every test uses, or ~1B parameters in Llama's shape.
SHAPES = {"tiny": {}, "1b": dict(hidden_size=2048, layers=22, heads=32, vocab_size=32000)}


def model(size: str) -> str:
    """The weights for `--model` (built once, cached beside the stand-in)."""
    from router.backends.standin import build_standin, default_standin_dir

    where = default_standin_dir()
    return str(build_standin(where if size == "tiny" else where.parent / f"random-llama-{size}", **SHAPES[size]))


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def engine_args(gpu: bool) -> dict:
    """Both sides' engine settings: the job's, for the device."""
    from router.config import GenerationSpec

    return dict(max_model_len=2048, dtype="bfloat16" if gpu else "float32", **GenerationSpec().vllm_engine_args())


def baseline(n: int, max_tokens: int, size: str = "tiny") -> dict:
    """One `LLM.generate` over all the rows, in an engine built and driven by this process's main
    thread as a script using vLLM would; the chat turns rendered to tokens inside the span, as the
    stage renders them. Returns its seconds and each answer's length."""
    import vllm

    from router.backends.tokens import render_ids

    prompts, names = rows(n)
    gpu = on_gpu()
    if gpu:  # vLLM's defaults: CUDA graphs, the engine core in a process of its own
        llm = vllm.LLM(model=model(size), **engine_args(gpu))
    else:  # in-process and eager, as the stage runs on a CPU
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        llm = vllm.LLM(model=model(size), enforce_eager=True, distributed_executor_backend="uni", **engine_args(gpu))
    tokenizer = llm.get_tokenizer()
    sampling = {m: vllm.SamplingParams(max_tokens=max_tokens, temperature=0.0, logit_bias={tokenizer.eos_token_id: b})
                for m, b in EOS_BIASES.items()}  # fmt: skip
    params = [sampling[m] for m in names]
    warm = [{"prompt_token_ids": t} for t in render_ids(tokenizer, prompts[:8])]
    llm.generate(warm, params[:8], use_tqdm=False)
    steps = count_steps(llm)
    t0 = time.perf_counter()
    requests = [{"prompt_token_ids": t} for t in render_ids(tokenizer, prompts)]
    out = llm.generate(requests, params, use_tqdm=False)
    return {"seconds": time.perf_counter() - t0, "lengths": [len(o.outputs[0].token_ids) for o in out],
            "steps": steps[0]}  # fmt: skip


def count_steps(llm) -> list[int]:
    """From now on, count the engine's steps (an in-process engine: where the device's time goes
    is the same on both sides; the step count says how full each kept the running batch)."""
    engine, step, count = llm.llm_engine, llm.llm_engine.step, [0]

    def counted():
        count[0] += 1
        return step()

    engine.step = counted
    return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--model", choices=sorted(SHAPES), default="tiny", help="the stand-in, or ~1B random weights")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--calls", default=None, help="calls at once, or a list (16,auto,64) to compare; auto "
                    "(default): the job's (engine_calls_in_flight, from the predicted lengths with --order)")
    ap.add_argument("--one-at-a-time", action="store_true", help="also run the calls one after another (slow)")
    ap.add_argument("--order", action="store_true", help="give each row its model's mean answer length as its "
                    "predicted length, as a length profile would: each call starts its longest first, and "
                    "the calls at once follow the predicted lengths as the job's do")
    ap.add_argument("--repeat", type=int, default=1, help="run both sides this many times, alternating (the "
                    "baseline in a fresh process each time), and report the median: this machine's speed "
                    "moves by 10-20%% between runs")
    ap.add_argument("--beside", action="store_true", help="also run the stage with each call's own work (the chat "
                    "template, tokenizing) in the call's thread beside the engine's steps (before), not between them")
    ap.add_argument("--baseline-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_only:  # the baseline's own process (an engine each: two in one process slow each other)
        print(json.dumps(baseline(args.rows, args.max_tokens, args.model)))
        return
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import pyarrow as pa

    from router import schema as S
    from router.backends.generators import ModelSettings, VLLMGenerator
    from router.config import GenerationSpec
    from router.job.engines import AnswerLengths, engine_calls_in_flight

    def run_baseline() -> dict:
        done = subprocess.run([sys.executable, __file__, "--baseline-only", "--rows", str(args.rows), "--max-tokens",
                               str(args.max_tokens), "--model", args.model], stdout=subprocess.PIPE, text=True,
                              check=True)  # fmt: skip
        return json.loads(done.stdout.strip().splitlines()[-1])

    bases = [run_baseline()]
    lengths = np.array(bases[0]["lengths"])
    base_tokens = int(lengths.sum())

    prompts, names = rows(args.rows)
    gen_spec = GenerationSpec(batch_size=args.batch)
    settings = {name: ModelSettings(max_tokens=args.max_tokens, input_price=0.0, output_price=0.0, temperature=0.0,
                                    eos_bias=bias) for name, bias in EOS_BIASES.items()}  # fmt: skip
    gpu = on_gpu()
    table = pa.table({S.ID: [str(i) for i in range(args.rows)], S.PROMPT: prompts, S.MODEL: names,
                      S.STATUS: [S.OK] * args.rows})  # fmt: skip
    predicted = None
    if args.order:  # the prediction a router has: each model's mean answer length
        mean = {m: float(np.mean(lengths[np.array(names) == m])) for m in EOS_BIASES}
        table = table.append_column(S.EST_OUTPUT_TOKENS, pa.array([mean[m] for m in names], pa.float32()))
        predicted = AnswerLengths(float(np.mean([mean[m] for m in names])), args.max_tokens)
    auto = engine_calls_in_flight(gen_spec, "vllm", gpu, predicted)
    calls = [auto if c == "auto" else int(c) for c in (args.calls or "auto").split(",")]
    batches = [table.slice(lo, args.batch) for lo in range(0, args.rows, args.batch)]

    def started() -> tuple[VLLMGenerator, list[int]]:
        """The stage's engine, warmed up, and its step counter."""
        kwargs = engine_args(gpu)
        gen = VLLMGenerator(model(args.model), models=settings, max_model_len=kwargs.pop("max_model_len"),
                            dtype=kwargs.pop("dtype"), engine_kwargs=kwargs)  # fmt: skip
        gen(table.slice(0, 8))
        return gen, count_steps(gen.llm)

    gen, steps = started()

    def stage(at_once: int, beside: bool = False) -> tuple[float, int, int]:
        before = steps[0]
        if beside:  # the call's own work in its own thread, as before
            gen._between_steps = lambda fn: fn()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(at_once) as pool:
            out = list(pool.map(gen, batches))
        if beside:
            del gen._between_steps
        seconds = time.perf_counter() - t0
        return seconds, sum(sum(t[S.OUTPUT_TOKENS].to_pylist()) for t in out), steps[0] - before

    labels = [f"stage: calls of {args.batch} rows, {k} at once" for k in calls]
    sides = [(k, False) for k in calls]
    if args.beside:
        labels += [f"stage, {k} at once, work beside the steps" for k in calls]
        sides += [(k, True) for k in calls]
    runs: dict[str, list[tuple[float, int, int]]] = {label: [] for label in labels}
    ratios: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(args.repeat):
        if r:  # one engine on the machine at a time: the baseline's process builds its own
            gen.close()
            bases.append(run_baseline())
            gen, steps = started()
        for (k, beside), label in zip(sides, labels):
            runs[label].append(stage(k, beside))
            ratios[label].append(runs[label][-1][1] / runs[label][-1][0] / (base_tokens / bases[-1]["seconds"]))
    if args.one_at_a_time:
        labels.append(f"one call of {args.batch} rows at a time")
        runs[labels[-1]] = [stage(1)]
        ratios[labels[-1]] = [runs[labels[-1]][0][1] / runs[labels[-1]][0][0] / (base_tokens / bases[-1]["seconds"])]
    gen.close()

    print(f"{args.rows} rows, {args.model} model on {'a GPU' if gpu else 'the CPU'}, 4 pool models on one engine, max_tokens {args.max_tokens}; answer tokens: median "
          f"{np.median(lengths):.0f}, p90 {np.percentile(lengths, 90):.0f}, max {lengths.max()}, "
          f"{np.mean(lengths == args.max_tokens):.1%} at max_tokens"
          + (f"; {args.repeat} runs each, alternating, medians" if args.repeat > 1 else ""))  # fmt: skip
    print(f"{'':40} {'seconds':>8} {'answer tokens':>14} {'tokens/s':>9} {'steps':>6} {'of baseline':>12}")
    base_s = float(np.median([b["seconds"] for b in bases]))
    print(f"{'baseline: one LLM.generate':40} {base_s:8.1f} {base_tokens:14d} {base_tokens / base_s:9.0f} "
          f"{int(np.median([b['steps'] for b in bases])):6d} {1:11.0%}")  # fmt: skip
    for label in labels:
        s_, n, st = (float(np.median([x[i] for x in runs[label]])) for i in range(3))
        spread = f" ({min(ratios[label]):.0%}-{max(ratios[label]):.0%})" if len(ratios[label]) > 1 else ""
        print(f"{label:40} {s_:8.1f} {int(n):14d} {n / s_:9.0f} {int(st):6d} {np.median(ratios[label]):11.0%}{spread}")


if __name__ == "__main__":
    main()
