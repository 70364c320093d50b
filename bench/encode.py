"""Encoding throughput: the split encoder (tokenize, then embed pre-tokenized batches) against
sentence-transformers' own `encode`, measured in the same run, on CPU or one GPU.

    python bench/encode.py                              # this machine's CPU, packaged MiniLM
    python bench/encode.py --device cuda --rows 200000  # one GPU
    python bench/encode.py --model random               # random weights, MiniLM's shape, no download

`--model random` builds an all-MiniLM-L6-v2-shaped model with random weights from
bench/data/minilm-shape (its config and vocabulary), so the GPU figures can be taken on a machine
with no network and no packaged encoder. Timings do not depend on the weights; faithfulness is
checked against sentence-transformers on the same weights either way.

Prints one table: each method's rows/s, its ratio to `encode`, the lowest cosine similarity of its
embeddings to sentence-transformers' fp32 `encode` of the same text, and peak memory (host RSS,
and GPU memory on a GPU).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import queue
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from router.backends.encoder import EmbeddingModel, Tokenizer, resolve_encoder# noqa: E402

WORDS = ("what how why explain write solve the a of to in is for function number river history "
         "translate code list capital prove sum energy market law poem").split()  # fmt: skip


def prompts(n: int, seed: int = 0, words: tuple[str, ...] | list[str] = WORDS) -> list[str]:
    """Short synthetic prompts, 6 to 40 words drawn from `words` (about 26 word pieces each); the
    other benchmarks use them too."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, k)) + "?" for k in rng.integers(6, 40, n)]


def random_minilm(folder: str) -> str:
    """A sentence-transformers folder with MiniLM-L6's shape and tokenizer and random weights."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel

    shape = HERE / "data" / "minilm-shape"
    os.makedirs(os.path.join(folder, "1_Pooling"), exist_ok=True)
    torch.manual_seed(0)
    BertModel(BertConfig.from_json_file(str(shape / "config.json"))).save_pretrained(folder)
    vocab = os.path.join(folder, "vocab.txt")
    with gzip.open(shape / "vocab.txt.gz", "rb") as src, open(vocab, "wb") as dst:
        shutil.copyfileobj(src, dst)
    BertWordPieceTokenizer(vocab, lowercase=True).save(os.path.join(folder, "tokenizer.json"))
    files = {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
        "sentence_bert_config.json": {"max_seq_length": 256, "do_lower_case": False},
        "tokenizer_config.json": {"do_lower_case": True, "tokenizer_class": "BertTokenizer", "model_max_length": 512},
        "1_Pooling/config.json": {"word_embedding_dimension": 384, "pooling_mode_mean_tokens": True},
    }
    for name, body in files.items():
        with open(os.path.join(folder, name), "w") as f:
            json.dump(body, f)
    return folder


def pipelined(enc: EmbeddingModel, tok: Tokenizer, texts: list[str], chunk: int) -> np.ndarray:
    """Tokenize chunk k+1 on the CPU cores while the model embeds chunk k (the overlap Ray Data's
    Tokenize -> Encoder stages give a job, here in one process)."""
    q: queue.Queue = queue.Queue(maxsize=2)

    def produce():
        for lo in range(0, len(texts), chunk):
            q.put((lo, tok.ids(texts[lo : lo + chunk])))
        q.put(None)

    threading.Thread(target=produce, daemon=True).start()
    out = np.zeros((len(texts), enc.dim), np.float32)
    while (item := q.get()) is not None:
        lo, (offsets, values) = item
        out[lo : lo + len(offsets) - 1] = enc.embed_ids(offsets, values)
    return out


_worker_tok: Tokenizer | None = None


def _init_worker(model: str) -> None:
    global _worker_tok
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per process, as a Ray actor with num_cpus=1
    _worker_tok = Tokenizer(model)


def _tokenize_chunk(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return _worker_tok.ids(texts)


def multiprocess(enc: EmbeddingModel, pool, texts: list[str], chunk: int) -> np.ndarray:
    """Tokenize in separate processes (as the Tokenize actors of a Ray job do) while this process
    embeds, in order."""
    out = np.zeros((len(texts), enc.dim), np.float32)
    chunks = [texts[lo : lo + chunk] for lo in range(0, len(texts), chunk)]
    lo = 0
    for offsets, values in pool.imap(_tokenize_chunk, chunks):
        out[lo : lo + len(offsets) - 1] = enc.embed_ids(offsets, values)
        lo += len(offsets) - 1
    return out


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--rows", type=int, default=3000, help="prompts to encode (default 3000; use 100k+ on a GPU)")
    ap.add_argument("--model", default="minilm", help="minilm (packaged), random (MiniLM's shape), or a folder")
    ap.add_argument("--texts", default="short", help="short (synthetic, 6-40 words) or a scores JSON table")
    ap.add_argument("--chunk", type=int, default=0, help="rows per tokenize chunk (default: 8192 GPU, 1024 CPU)")
    ap.add_argument("--batch-tokens", type=int, default=None, help="padded tokens per model call (default: the encoder's)")
    ap.add_argument("--tokenize-processes", type=int, default=0,
                    help="also feed the model from this many tokenizer processes (as a job's Tokenize actors)")
    ap.add_argument("--repeat", type=int, default=2, help="best of this many timed runs per method")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    tmp = tempfile.mkdtemp(prefix="router-bench-encode-")
    if args.model == "random":  # its ONNX export goes with it
        os.environ["ROUTER_CACHE_DIR"] = tmp
    model = random_minilm(os.path.join(tmp, "minilm-random")) if args.model == "random" else args.model
    if args.texts == "short":
        texts = prompts(args.rows)
    else:
        with open(args.texts) as f:
            texts = [r["question"] for r in json.load(f)][: args.rows]
    cuda = args.device == "cuda"
    chunk = args.chunk or (8192 if cuda else 1024)
    cores = len(os.sched_getaffinity(0))
    results: list[tuple[str, float, float | None]] = []  # method, seconds, min cosine

    ref_enc = EmbeddingModel(model, device="cpu", backend="sentence-transformers")
    sample = texts[: min(len(texts), 2000 if cuda else len(texts))]
    reference = ref_enc.encode(sample)  # fp32 sentence-transformers on the CPU: the yardstick
    del ref_enc

    def cos(emb: np.ndarray) -> float:
        return float((emb[: len(sample)] * reference).sum(1).min())

    st = SentenceTransformer(resolve_encoder(model), device=args.device)
    if cuda:
        st.half()
    st.encode(texts[:512], batch_size=256)  # warm-up
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    emb, sec = timed(lambda: st.encode(texts, batch_size=256, normalize_embeddings=True, convert_to_numpy=True,
                                       show_progress_bar=False), args.repeat)  # fmt: skip
    base = sec
    label = "fp16" if cuda else "fp32"
    results.append((f"sentence-transformers encode ({label}, batch 256): baseline", sec, cos(emb)))


    tok = Tokenizer(model)
    for parallel in ("false", "true"):  # tokenizers reads this at every batch
        os.environ["TOKENIZERS_PARALLELISM"] = parallel
        _, sec = timed(lambda: [tok.ids(texts[lo : lo + chunk]) for lo in range(0, len(texts), chunk)], args.repeat)
        results.append((f"tokenize only, {'all ' + str(cores) + ' cores' if parallel == 'true' else 'one core'}",
                         sec, None))  # fmt: skip

    backends = ["torch"] if cuda else ["torch", "onnx", "onnx-int8"]
    for backend in backends:
        enc = EmbeddingModel(model, device=args.device, backend=backend, max_batch_tokens=args.batch_tokens)
        ids = tok.ids(texts)
        enc.embed_ids(*tok.ids(texts[:512]))  # warm-up (and the ONNX export, once)
        if cuda:
            torch.cuda.synchronize()
        emb, sec = timed(lambda: enc.embed_ids(*ids), args.repeat)
        name = f"{backend} ({'fp16, ' if cuda else ''}{enc.max_batch_tokens} tokens/batch)"
        results.append((f"embed pre-tokenized ids only: {name}", sec, cos(emb)))
        emb, sec = timed(lambda: pipelined(enc, tok, texts, chunk), args.repeat)
        results.append((f"split encoder, tokenize overlapped: {name}", sec, cos(emb)))
        if args.tokenize_processes:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(args.tokenize_processes, _init_worker, (model,)) as pool:
                pool.map(_tokenize_chunk, [texts[:64]] * args.tokenize_processes)  # started
                emb, sec = timed(lambda: multiprocess(enc, pool, texts, chunk // 4), args.repeat)
            results.append((f"split encoder, {args.tokenize_processes} tokenizer processes: {name}", sec, cos(emb)))
        enc.close()

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    gpu = f", GPU peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if cuda else ""
    where = torch.cuda.get_device_name() if cuda else f"CPU, {cores} cores"
    print(f"\n{len(texts)} prompts ({args.texts}), model {args.model}, on {where}; host peak RSS {rss:.2f} GiB{gpu}")
    print(f"{'method':78} {'rows/s':>10} {'ratio':>7} {'min cos':>8}")
    for name, sec, c in results:
        print(f"{name:78} {len(texts) / sec:>10,.0f} {base / sec:>6.2f}x {'' if c is None else f'{c:.5f}':>8}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
