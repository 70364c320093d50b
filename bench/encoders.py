"""Encoder choice: routing quality and encoding speed of each encoder, in the same run.

    python bench/encoders.py minilm FOLDER [FOLDER ...] [--data ../shared/data] [--every 1]

For each encoder (`minilm`, the packaged default, or a local sentence-transformers folder): the
product's encoder (`router.backends.encoder.load_encoder`, torch on the CPU, the tail window) in
rows/s on real prompts (llmrouter-9models' test queries), then the three evaluations of
bench/eval_quality.py (`router eval`'s code), each fitted and routed with that encoder: the
router's AIQ, its calibration error, its gain over the best single model at lambda = 0, and its
AIQ against the best of the strong simple baselines on the same embeddings. The first encoder is
the baseline of the speed ratio.

Encoding the ~26,000 prompts is most of the time (a base-sized encoder: about 40 minutes on two
cores); the embeddings are cached under ROUTER_CACHE_DIR (keyed by the distinct texts, whatever
order the files are listed in), and a second run takes minutes.
`--every K` keeps every K-th row of each table, for a quicker, noisier look.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from encode import timed  # noqa: E402  (bench/encode.py: best of N)
from eval_quality import runs  # noqa: E402

from router.backends.encoder import load_encoder  # noqa: E402
from router.method.evaldata import read_eval_table  # noqa: E402
from router.method.evaluate import evaluate  # noqa: E402


def rows_per_second(encoder: str, texts: list[str], repeat: int = 2) -> float:
    """The product's encoder on `texts` (best of `repeat`, after a warm-up)."""
    enc = load_encoder(encoder, device="cpu", backend="torch")
    enc.encode(texts[:16])
    _, best = timed(lambda: enc.encode(texts), repeat)
    return len(texts) / best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("encoders", nargs="+", help="minilm (packaged) or local sentence-transformers folders")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="the evaluation data")
    ap.add_argument("--every", type=int, default=1, help="keep every K-th row of each table (1: all)")
    ap.add_argument("--speed-rows", type=int, default=200, help="prompts the speed is measured on")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"evaluation data not found at {args.data}", file=sys.stderr)
        return 2
    texts = list(read_eval_table([str(args.data / "llmrouter-9models" / "scores_test.json")]).queries)
    texts = texts[: args.speed_rows]

    print(f"{'encoder':40} {'rows/s':>8} {'ratio':>6}  evaluation: AIQ (router - best baseline), ECE, "
          "lambda=0 gain over the best single model")  # fmt: skip
    base = None
    for encoder in args.encoders:
        speed = rows_per_second(encoder, texts)
        base = base or speed
        print(f"{Path(encoder).name:40} {speed:8.1f} {speed / base:5.2f}x", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            for label, kwargs in runs(args.data, args.every, Path(tmp)):
                r = evaluate(**kwargs, encoder=encoder)
                c = r["comparison"]
                best_aiq = max(d["aiq"] for name, d in c.items() if name != "router")
                gain = r["router"]["accuracy"] - r["best_single"]["accuracy"]
                print(f"    {label:52} AIQ {c['router']['aiq']:.4f} ({c['router']['aiq'] - best_aiq:+.4f}), "
                      f"ECE {c['router']['calibration']['ece']:.3f}, lambda=0 {gain:+.4f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
