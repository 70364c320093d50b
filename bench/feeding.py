"""How well today's generation stage keeps one engine busy when answers vary in length.

    python bench/feeding.py [--rows 1024] [--batch 256] [--max-tokens 256]

One started vLLM engine (the stand-in, vLLM's CPU build here) serves four pool models whose
stand-ins answer at very different lengths (end-of-sequence biases from verbose to terse), so the
answers are heavy-tailed: most short, a few up to `max_tokens`. The same rows, with the same
per-row sampling, are answered twice:

- baseline: one `LLM.generate` call over all the rows (the engine's running batch is refilled
  from the whole set until the end);
- stage: the stage as each engine actor runs it, `VLLMGenerator.__call__` on `--batch` rows at a
  time, one call after another (each call returns when its longest answer is done, so the running
  batch drains at the end of every call).

Prints answer tokens per second over each one's generation span and their ratio (the stage's
share of the baseline), and how the lengths are spread.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

# From verbose to terse: the four stand-ins' end-of-sequence biases.
EOS_BIASES = {"verbose": -3.5, "long": -1.0, "short": 1.5, "terse": 4.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=256)
    args = ap.parse_args()
    import numpy as np
    import pyarrow as pa

    from router import schema as S
    from router.backends.generators import ModelSettings, VLLMGenerator
    from router.backends.standin import build_standin, default_standin_dir

    settings = {name: ModelSettings(max_tokens=args.max_tokens, input_price=0.0, output_price=0.0, temperature=0.0,
                                    eos_bias=bias) for name, bias in EOS_BIASES.items()}  # fmt: skip
    gen = VLLMGenerator(str(build_standin(default_standin_dir())), models=settings, max_model_len=2048,
                        dtype="float32")  # fmt: skip
    rng = np.random.default_rng(0)
    names = [str(n) for n in rng.choice(list(EOS_BIASES), size=args.rows, p=[0.05, 0.15, 0.3, 0.5])]
    prompts = [f"Question {i}: what is {i} times {i % 17}? Explain briefly." for i in range(args.rows)]
    ids = dict(enumerate(gen.render(prompts)))
    gen._run(list(range(8)), ids, names)  # warm the engine up

    t0 = time.perf_counter()
    base = gen._run(list(range(args.rows)), ids, names)
    base_s = time.perf_counter() - t0
    base_tokens = sum(r.output_tokens for r in base)

    table = pa.table({S.ID: [str(i) for i in range(args.rows)], S.PROMPT: prompts, S.MODEL: names,
                      S.STATUS: [S.OK] * args.rows})  # fmt: skip
    t0 = time.perf_counter()
    out = [gen(table.slice(lo, args.batch)) for lo in range(0, args.rows, args.batch)]
    stage_s = time.perf_counter() - t0
    stage_tokens = sum(sum(t[S.OUTPUT_TOKENS].to_pylist()) for t in out)
    gen.close()

    lengths = np.array([r.output_tokens for r in base])
    print(f"{args.rows} rows, 4 pool models on one engine, max_tokens {args.max_tokens}; answer tokens: median "
          f"{np.median(lengths):.0f}, p90 {np.percentile(lengths, 90):.0f}, max {lengths.max()}, "
          f"{np.mean(lengths == args.max_tokens):.1%} at max_tokens")  # fmt: skip
    print(f"{'':36} {'seconds':>8} {'answer tokens':>14} {'tokens/s':>9}")
    print(f"{'baseline: one LLM.generate':36} {base_s:8.1f} {base_tokens:14d} {base_tokens / base_s:9.0f}")
    print(f"{f'stage: calls of {args.batch} rows':36} {stage_s:8.1f} {stage_tokens:14d} {stage_tokens / stage_s:9.0f}")
    print(f"stage / baseline: {stage_tokens / stage_s / (base_tokens / base_s):.2f}x")


if __name__ == "__main__":
    main()
