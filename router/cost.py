"""Predicted cost of every (row, model) pair: prices times token estimates, in USD (DESIGN.md 4)."""

from __future__ import annotations

import numpy as np

# Tokens a chat template adds around a single user turn (role markers, BOS): a small allowance so
# that short prompts are not planned at zero input cost.
TEMPLATE_TOKENS = 16
# Characters per token of English text for common BPE tokenizers, for the `expected` mode.
CHARS_PER_TOKEN = 4.0


def estimate_input_tokens(utf8_bytes: np.ndarray, mode: str) -> np.ndarray:
    """Prompt tokens per row from the prompt's UTF-8 length.

    `hard` mode returns an upper bound: a byte-level tokenizer never makes more tokens than bytes,
    so the plan can never underestimate what a row will cost.
    """
    b = np.asarray(utf8_bytes, dtype=np.int64)
    if mode == "hard":
        return b + TEMPLATE_TOKENS
    return np.ceil(b / CHARS_PER_TOKEN).astype(np.int64) + TEMPLATE_TOKENS


def cost_matrix(
    input_tokens: np.ndarray,
    output_tokens: np.ndarray,
    input_price: np.ndarray,
    output_price: np.ndarray,
    max_context: np.ndarray,
) -> np.ndarray:
    """Cost [N, M] in USD; NaN where the prompt does not fit the model's context.

    input_tokens [N]; output_tokens [N, M] or [M] (planned answer length, per row or the same for
    every row); prices [M] in USD per 1M tokens.
    """
    inp = np.asarray(input_tokens, dtype=np.float64)
    # (inp * input_price + output_tokens * output_price) * 1e-6, in place: one [N, M] array.
    c = np.multiply.outer(inp, np.asarray(input_price, np.float64))
    c += np.asarray(output_tokens, np.float64) * output_price
    c *= 1e-6
    if inp.size and inp.max() >= np.min(max_context):
        c[~(inp[:, None] < max_context)] = np.nan
    return c
