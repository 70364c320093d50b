"""What a row costs: the one formula (tokens times prices) and the token counts it is fed.

Every place that turns tokens into money uses `token_usd`: the plan's cost matrix, the engines'
actual cost per row, `router eval` and the schedule's loads."""

from __future__ import annotations

import numpy as np

# Tokens a chat template adds around a single user turn (role markers, BOS): a small allowance so
# that short prompts are not planned at zero input cost.
TEMPLATE_TOKENS = 16
# Characters per token of English text for common BPE tokenizers, for the `expected` mode.
CHARS_PER_TOKEN = 4.0


def estimate_input_tokens(utf8_bytes: np.ndarray) -> np.ndarray:
    """Prompt tokens per row from the prompt's UTF-8 length, where no tokenizer is at hand: about
    CHARS_PER_TOKEN bytes a token, plus the chat template's allowance."""
    b = np.asarray(utf8_bytes, dtype=np.int64)
    return np.ceil(b / CHARS_PER_TOKEN).astype(np.int64) + TEMPLATE_TOKENS


def token_usd(input_tokens, output_tokens, input_price, output_price, *, out: np.ndarray | None = None):
    """USD of `input_tokens` and `output_tokens` at prices in USD per 1M tokens (numpy broadcasting;
    plain numbers give a float). `out` takes the input part in place, as the cost matrix does."""
    c = np.multiply(input_tokens, input_price, out=out, dtype=np.float64)
    c += np.multiply(output_tokens, output_price, dtype=np.float64)
    c *= 1e-6
    return c if out is not None or np.ndim(c) else float(c)


def planned_output_tokens(expected_output_tokens: int | None, default_output_tokens: int, max_tokens: int) -> int:
    """The answer length a model is planned at when its profile predicts none: the model's own
    `expected_output_tokens`, else the budget's default, never above `max_tokens`."""
    return min(expected_output_tokens or default_output_tokens, max_tokens)


def cost_matrix(
    input_tokens: np.ndarray,
    output_tokens: np.ndarray,
    input_price: np.ndarray,
    output_price: np.ndarray,
    max_context: np.ndarray,
) -> np.ndarray:
    """Cost [N, M] in USD; NaN where the prompt does not fit the model's context.

    input_tokens [N] (the same for every model) or [N, M] (counted per model family);
    output_tokens [N, M] or [M] (planned answer length, per row or the same for every row); prices
    [M] in USD per 1M tokens.
    """
    inp = np.asarray(input_tokens, dtype=np.float64)
    inp = inp if inp.ndim == 2 else inp[:, None]
    price_in = np.asarray(input_price, np.float64)
    c = token_usd(inp, output_tokens, price_in, output_price,
                  out=np.empty((inp.shape[0], price_in.size), np.float64))  # fmt: skip
    if inp.size and inp.max() >= np.min(max_context):
        c[~(inp < max_context)] = np.nan
    return c
