"""What of a long few-shot prompt to embed: routing accuracy with each window, in one run.

    python bench/window.py [--data ../shared/data/routerdc-7models] [--shots 5] [--train-rows 400] [--test-rows 300]

Few-shot prompts put the same worked examples first and the question last. This builds such
prompts from RouterDC's seven-model tables: every row of a task gets the same examples (other
questions of that task, drawn once: at least `--shots`, more until they fill MiniLM's 256 word
pieces, as 5- to 25-shot evaluation prompts do) before its own question. It then fits profiles on the few-shot training rows and routes the
few-shot test rows (in distribution, and the out-of-distribution files) with `router eval`'s own
code, once per window:

- `head`: the first 256 word pieces, what the encoder keeps by default: the shared examples;
- `tail, 1000 chars`: the last 1000 characters, then the first word pieces of those (this
  project's window before word-piece truncation from the left; short for Chinese text, where
  1000 characters are about 1000 word pieces and the question is cut off again);
- `tail`: the last 256 word pieces (the default);

and, as the reference, the plain prompts without examples. Without the task column (`tasks: no`)
the embedding is all the router knows of a row; with it (`tasks: yes`) the task is known too.
Rows are drawn per file (seeded), so a run takes minutes; embeddings are cached.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.backends.encoder import MINILM, Tokenizer# noqa: E402
from router.method.evaldata import task_from_file  # noqa: E402
from router.method.evaluate import evaluate  # noqa: E402
from router.method.fitting import ProfileSettings  # noqa: E402

TASKS = ("mmlu", "cmmlu", "arc_easy", "arc_challenge", "humaneval")
OOD = ("MATH_prealgebra", "ceval", "mbpp", "javascript")
OLD_TAIL_CHARS = 1000


def files(data: Path) -> tuple[list[Path], list[Path], list[Path]]:
    train = [data / f"{t}_train.json" for t in TASKS] + [data / "gsm8k-train.json"]
    test = [data / f"{t}_test.json" for t in TASKS] + [data / "gsm8k-test.json"]
    return train, test, [data / f"{t}.json" for t in OOD]


def prefix(task: str, questions: list[str], shots: int, tokenizer: Tokenizer) -> str:
    """The shared head of a task's prompts: at least `shots` examples, and enough to fill the
    encoder's window."""
    head = f"The following are questions about {task.replace('_', ' ')}, with examples.\n\n"
    for i, q in enumerate(questions):
        head += f"Example {i + 1}.\n{q}\n\n"
        if i + 1 >= shots and pieces(tokenizer, head) >= tokenizer.folder.max_seq_length:
            break
    return head


def pieces(tokenizer: Tokenizer, text: str) -> int:
    """Word pieces of the whole text (the window's tokenizer stops at the encoder's limit)."""
    tok = tokenizer.tok("head")
    tok.no_truncation()
    n = len(tok.encode(text).ids)
    tok.enable_truncation(tokenizer.folder.max_seq_length)
    return n


def few_shot(rows: list[dict], head: str) -> list[dict]:
    return [{**r, "question": f"{head}Question.\n{r['question']}\nAnswer:"} for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/routerdc-7models"))
    ap.add_argument("--prices", default=str(Path(__file__).resolve().parent / "data/routerdc_prices.yaml"))
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--train-rows", type=int, default=400, help="rows drawn from each training file")
    ap.add_argument("--test-rows", type=int, default=300, help="rows drawn from each test file")
    args = ap.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        sys.exit(f"RouterDC data not found at {data} (--data)")
    rng = np.random.default_rng(0)
    train, test, ood = files(data)
    tmp = Path(tempfile.mkdtemp(prefix="router-window-"))
    tokenizer = Tokenizer(MINILM)
    shots_of: dict[str, str] = {}
    written: dict[str, dict[str, list[str]]] = {"plain": {}, "few-shot": {}, "few-shot, 1000 chars": {}}
    for group, paths, n in (("train", train, args.train_rows), ("test", test, args.test_rows), ("ood", ood, args.test_rows)):
        for key in written:
            written[key][group] = []
        for path in paths:
            rows = json.loads(path.read_text())
            task = task_from_file(path)
            order = rng.permutation(len(rows))
            if task not in shots_of:  # the training file's, or an OOD file's own rows kept out of the test
                shots_of[task] = prefix(task, [rows[i]["question"] for i in order[:40]], args.shots, tokenizer)
                order = order[40:]
            picked = [rows[i] for i in order[:n]]
            fs = few_shot(picked, shots_of[task])
            cut = [{**r, "question": r["question"][-OLD_TAIL_CHARS:]} for r in fs]
            for key, body in (("plain", picked), ("few-shot", fs), ("few-shot, 1000 chars", cut)):
                out = tmp / key.replace(", ", "-").replace(" ", "") / group / path.name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(body))
                written[key][group].append(str(out))
    sizes = {t: pieces(tokenizer, h) for t, h in shots_of.items()}
    print(f"shared examples per task (word pieces; the encoder reads {tokenizer.folder.max_seq_length}): {sizes}")
    variants = [("plain prompts (reference)", "plain", "tail"), ("few-shot, head", "few-shot", "head"),
                ("few-shot, tail 1000 chars (before)", "few-shot, 1000 chars", "head"),
                ("few-shot, tail (default)", "few-shot", "tail")]  # fmt: skip
    print(f"{'what is embedded':36} {'tasks':>5}  {'in-dist acc':>11} {'vs best':>8}  {'ood acc':>8} {'vs best':>8}")
    for label, key, window in variants:
        for tasks in (False, True):
            res = []
            for group in ("test", "ood"):
                r = evaluate(written[key]["train"], written[key][group], prices_path=args.prices,
                             tasks_from_files=tasks, settings=ProfileSettings(window=window, use_tasks=tasks))  # fmt: skip
                res.append((r["router"]["accuracy"], r["router"]["accuracy"] - r["best_single"]["accuracy"]))
            (a, da), (o, do) = res
            print(f"{label:36} {'yes' if tasks else 'no':>5}  {a:>11.4f} {da:>+8.4f}  {o:>8.4f} {do:>+8.4f}", flush=True)


if __name__ == "__main__":
    main()
