"""The encoding stage: Ray Data callables that turn prompt text into embeddings.

Encoding is split in two so that neither half waits on the other:

- `Tokenize` (CPU, runs as many tasks as the cluster has cores) turns the text into word-piece
  ids, an Arrow list<int32> column `input_ids`;
- `Encoder` (one actor per GPU, or a CPU actor) runs the embedding model
  (`router.backends.encoder.EmbeddingModel`) on pre-tokenized batches.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from router import schema as S
from router.backends.encoder import (
    INPUT_IDS,
    MINILM,
    EmbeddingModel,
    Tokenizer,
    embeddings_to_arrow,
    ids_from_arrow,
    ids_to_arrow,
)


class Tokenize:
    """Ray Data stage (tasks or actors, CPU): adds `input_ids` (list<int32>) to every row; rows not
    `ok` get an empty list and are never encoded."""

    def __init__(self, model: str = MINILM, window: str = "tail") -> None:
        self.tokenizer = Tokenizer(model, window)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch.append_column(INPUT_IDS, tokenize_batch(self.tokenizer, batch))


def tokenize_batch(tokenizer: Tokenizer, batch: pa.Table) -> pa.ListArray:
    """The `input_ids` column of a batch: the ok rows' ids, an empty list for the others."""
    ok = np.asarray(batch[S.STATUS].to_numpy(zero_copy_only=False) == S.OK)
    offsets, values = tokenizer.ids(batch[S.PROMPT].filter(pa.array(ok)).to_pylist())
    lengths = np.zeros(batch.num_rows, np.int64)
    lengths[ok] = np.diff(offsets)
    full = np.zeros(batch.num_rows + 1, np.int64)
    np.cumsum(lengths, out=full[1:])
    return ids_to_arrow(full, values)


class Encoder:
    """Ray Data stage: adds `embedding` (fixed-size list of float32) to every row and drops
    `input_ids`.

    Rows arrive tokenized by `Tokenize` (backends torch, onnx, onnx-int8) or as text (backend
    sentence-transformers). Only rows still `ok` are encoded; the others get zero vectors and are
    never routed.
    """

    def __init__(self, model: str = MINILM, *, device: str = "auto", backend: str = "auto",
                 window: str = "tail", max_batch_tokens: int | None = None, threads: int | None = None):  # fmt: skip
        self.enc = EmbeddingModel(model, device=device, backend=backend, window=window,
                                  max_batch_tokens=max_batch_tokens, threads=threads)  # fmt: skip
        self.dim = self.enc.dim

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok = np.asarray(batch[S.STATUS].to_numpy(zero_copy_only=False) == S.OK)
        emb = np.zeros((batch.num_rows, self.dim), dtype=np.float32)
        if INPUT_IDS in batch.column_names:
            ids = batch[INPUT_IDS]
            batch = batch.drop_columns([INPUT_IDS])
        elif self.enc.backend != "sentence-transformers":
            ids = tokenize_batch(self.enc.tokenizer, batch)
        if ok.any():
            if self.enc.backend == "sentence-transformers":
                emb[ok] = self.enc.encode(batch[S.PROMPT].filter(pa.array(ok)).to_pylist())
            else:
                # Rows not ok hold no ids, so `values` are the ok rows' ids, in order.
                offsets, values = ids_from_arrow(ids)
                rows = np.flatnonzero(ok)
                sub = np.zeros(len(rows) + 1, np.int64)
                np.cumsum(np.diff(offsets)[rows], out=sub[1:])
                emb[rows] = self.enc.embed_ids(sub, values)
        return batch.append_column(S.EMBEDDING, embeddings_to_arrow(emb))
